"""Which reader reads a file: the format registry.

Each format is a module with ``identify(path) -> bool`` (cheap: looks at the file's
structure, never raises) and ``read(path) -> Iterator[Spectrum]``. :func:`read_spectra`
tries the formats in :data:`FORMATS` order (LAMOST, Gaia XP, generic) and reads with the
first that recognises the file. Modules are imported only when needed, so a missing
optional reader (e.g. Gaia XP) only matters when such a file is met.

Uploads (the HTTP service) go through :func:`read_spectra_bytes`, which never uses the
client's file name as a path.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import re
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from specsearch.errors import ConfigError, ReaderError, SpecsearchError, UnknownFormatError
from specsearch.io._fits import has_fits_suffix, open_fits, sniff, starts_with_gzip_magic
from specsearch.io._text import has_text_suffix
from specsearch.io.limits import InputTooLargeError
from specsearch.preprocess import grid_for
from specsearch.spectrum import Spectrum

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FormatInfo:
    """A registered spectrum format.

    Attributes:
        name: the format name (``format=`` argument).
        module: the module implementing ``identify`` and ``read``.
        modality: the modality its spectra belong to, or None for generic spectra, which
            may be put on any modality's grid.
        description: one line for ``--help`` and error messages.
    """

    name: str
    module: str
    modality: str | None
    description: str


FORMATS: tuple[FormatInfo, ...] = (
    FormatInfo("lamost", "specsearch.io.lamost", "lamost",
               "LAMOST LRS FITS (.fits/.fits.gz): DR1-DR7 image and DR8+ COADD layouts"),
    FormatInfo("gaia_xp", "specsearch.io.gaia_xp", "xp",
               "Gaia XP continuous or sampled tables (CSV, ECSV, FITS, VOTable, Parquet)"),
    FormatInfo("generic", "specsearch.io.generic", None,
               "1-D FITS with a wavelength WCS (e.g. MILES) and CSV/TXT wavelength-flux "
               "tables"),
)
"""Formats in the order :func:`read_spectra` tries them."""

MAX_UPLOAD_BYTES = 64 * 2 ** 20
UPLOAD_SUFFIXES = (".fits.gz", ".fit.gz", ".fts.gz", ".csv.gz", ".txt.gz", ".dat.gz",
                   ".fits", ".fit", ".fts", ".csv", ".ecsv", ".txt", ".dat", ".tsv", ".vot",
                   ".xml", ".parquet")
_XP_HINTS = (b"bp_coef", b"rp_coef")


MEDIA = ("air", "vacuum")
"""Names of the wavelength media a caller may state (``--medium``, the HTTP ``medium``)."""


def air_from_medium(medium: str | None) -> bool | None:
    """``air=`` of :func:`read_spectra` for a medium name: ``air`` True, ``vacuum`` False,
    None (the file decides) None. ConfigError naming the valid names otherwise."""
    if medium is None:
        return None
    if medium not in MEDIA:
        raise ConfigError(f"unknown wavelength medium {medium!r}; expected one of "
                          f"{list(MEDIA)} (or none: the file decides)")
    return medium == "air"


def list_formats() -> list[str]:
    """Names of the registered formats, in detection order."""
    return [f.name for f in FORMATS]


def format_info(name: str) -> FormatInfo:
    """The :class:`FormatInfo` of ``name``; ConfigError listing the valid names otherwise."""
    for info in FORMATS:
        if info.name == name:
            return info
    raise ConfigError(f"unknown spectrum format {name!r}; expected one of {list_formats()}")


def _load(info: FormatInfo) -> ModuleType:
    return importlib.import_module(info.module)


def detect_format(path: str | Path) -> FormatInfo:
    """The first format whose ``identify`` accepts ``path``.

    Raises:
        ReaderError: the file is missing, or is a damaged FITS file (the specific problem).
        UnknownFormatError: no format recognises it (the message lists those tried).
    """
    path = Path(path)
    if not path.is_file():
        raise ReaderError(path, "no such file" if not path.exists() else "not a regular file")
    unavailable: dict[str, str] = {}
    for info in FORMATS:
        try:
            module = _load(info)
        except ImportError as exc:
            unavailable[info.name] = f"{type(exc).__name__}: {exc}"
            continue
        with warnings.catch_warnings():  # a probe's complaints about a file are noise here
            warnings.simplefilter("ignore")
            try:
                claimed = module.identify(path)
            except Exception as exc:  # noqa: BLE001
                # identify() should never raise; a damaged header card can still escape
                # astropy's lazy parsing. The file is not this format's to claim.
                log.debug("%s: %s.identify raised %r", path, info.name, exc)
                claimed = False
            if claimed:
                return info
    if "gaia_xp" in unavailable and _looks_like_xp(path):
        raise ReaderError(path, f"this looks like a Gaia XP table (it names bp/rp "
                                f"coefficients) but the gaia_xp reader could not be "
                                f"imported: {unavailable['gaia_xp']}")
    if _fits_like(path):
        try:
            _explain_fits(path)  # raises the specific problem (truncated, corrupt...) if any
        except SpecsearchError:
            raise
        except Exception as exc:  # noqa: BLE001 - astropy on a damaged but parseable file
            raise ReaderError(path, f"corrupt FITS structure: {type(exc).__name__}: "
                                    f"{exc}") from exc
    tried = ", ".join(f"{f.name} ({f.description})" for f in FORMATS)
    extra = "".join(f"; reader {n} unavailable ({why})" for n, why in unavailable.items())
    raise UnknownFormatError(path, f"no reader recognises this file; tried {tried}{extra}. "
                                   f"Pass format= (--format) if you know the format")


def _fits_like(path: Path) -> bool:
    """A FITS file by content or name, or a gzip stream not named as text."""
    return (sniff(path, 6) == b"SIMPLE" or has_fits_suffix(path)
            or (starts_with_gzip_magic(path) and not has_text_suffix(path)))


def _looks_like_xp(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
            fh.seek(max(0, path.stat().st_size - 65536))
            tail = fh.read(65536)
    except OSError:
        return False
    text = (sniff(path, 65536) + head + tail).lower()
    return any(h in text for h in _XP_HINTS)


def _explain_fits(path: Path) -> None:
    """Raise the specific ReaderError of a damaged FITS file; return if it opens fine."""
    with open_fits(path) as hdul:
        found = [f"{i}:{h.name or '-'}({type(h).__name__}, "
                 f"{getattr(h, 'shape', None) or h.header.get('NAXIS')})"
                 for i, h in enumerate(hdul)]
    raise UnknownFormatError(path, f"a valid FITS file, but no reader recognises its layout "
                                   f"(HDUs: {', '.join(found)}); expected a LAMOST (5, NPIX) "
                                   f"image or COADD table, a Gaia XP table, or a 1-D image "
                                   f"with a wavelength WCS (CRVAL1, CDELT1/CD1_1)")


def read_spectra(path: str | Path, *, modality: str | None = None, format: str | None = None,
                 air: bool | None = None) -> Iterator[Spectrum]:
    """Read every spectrum of a file, whatever its format.

    Args:
        path: a LAMOST FITS, a Gaia XP table, or a generic FITS/text spectrum.
        modality: the modality the caller wants (``lamost`` or ``xp``). A survey file of
            the other modality is refused; generic spectra (modality None) are labelled
            with it (``meta['format']`` still says ``generic-...``).
        format: skip detection and use this format (see :func:`list_formats`).
        air: generic spectra only: the file's wavelengths are in air (True) or vacuum
            (False); None lets the file decide (:mod:`specsearch.io.generic`). The CLI's
            ``--medium`` and the service's ``medium`` (:func:`air_from_medium`).
    Yields:
        :class:`Spectrum` objects (vacuum Angstrom).
    Raises:
        ReaderError: the file is missing, damaged or of the wrong modality; raised by the
            first ``next()`` (this is a generator).
        UnknownFormatError: no reader recognises the file.
        ConfigError: unknown ``format`` or ``modality``, or ``air`` given for a survey format.
    """
    path = Path(path)
    if modality is not None:
        grid_for(modality)  # ConfigError for an unknown modality
    info = format_info(format) if format is not None else detect_format(path)
    if modality is not None and info.modality not in (None, modality):
        raise ReaderError(path, f"a {info.name} file holds {info.modality} spectra, not "
                                f"{modality}; read it with modality={info.modality!r} "
                                f"(--modality {info.modality})")
    if air is not None and info.modality is not None:
        raise ConfigError(f"{path}: --medium (air= in Python, medium over HTTP) applies to "
                          f"generic spectra only; {info.name} files state their own "
                          f"wavelength convention (air or vacuum): leave it out for this "
                          f"file")
    try:
        module = _load(info)
    except ImportError as exc:
        raise ReaderError(path, f"the {info.name} reader ({info.module}) cannot be imported: "
                                f"{exc}") from exc
    kwargs = {"air": air} if air is not None else {}
    try:
        for spectrum in module.read(path, **kwargs):
            if info.modality is None and modality is not None:
                spectrum = dataclasses.replace(spectrum, modality=modality)
            yield mask_non_finite(spectrum)
    except SpecsearchError:
        raise
    except MemoryError as exc:
        raise InputTooLargeError(path, f"reading it as {info.name} needs more memory than "
                                       f"this process may use; split the file") from exc
    except Exception as exc:  # noqa: BLE001 - generators: GeneratorExit is a BaseException
        # Last line of defence: a reader bug or an unforeseen damage still names the file.
        raise ReaderError(path, f"cannot read as {info.name}: {type(exc).__name__}: "
                                f"{exc}") from exc


def mask_non_finite(spectrum: Spectrum) -> Spectrum:
    """Non-finite flux or ivar and negative ivar become ivar 0 and masked: never data."""
    flux = np.asarray(spectrum.flux)
    ivar = np.asarray(spectrum.ivar)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(flux) | ~np.isfinite(ivar) | ~(ivar >= 0)
    if not bad.any():
        return spectrum
    return dataclasses.replace(spectrum, ivar=np.where(bad, 0.0, ivar).astype(ivar.dtype),
                               mask=np.asarray(spectrum.mask) | bad)


def safe_upload_name(filename: str) -> str:
    """A file name safe to create in a private temp dir: the client's base name with only
    ``[A-Za-z0-9._-]`` kept (its suffix is what matters for detection)."""
    base = re.split(r"[\\/]", filename or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")[-120:]
    lowered = base.lower()
    if not base or not lowered.endswith(UPLOAD_SUFFIXES):
        suffix = next((s for s in UPLOAD_SUFFIXES if lowered.endswith(s)), "")
        base = (base or "upload") + suffix
    return base


def read_spectra_bytes(data: bytes, filename: str, *, modality: str | None = None,
                       format: str | None = None, air: bool | None = None,
                       max_bytes: int = MAX_UPLOAD_BYTES) -> list[Spectrum]:
    """Read an in-memory upload (the HTTP service) like :func:`read_spectra`.

    The bytes go to a private temporary directory under a sanitised name
    (:func:`safe_upload_name`; the client's name is never used as a path) and are read
    completely before the directory is removed. ``Spectrum.path`` and error messages carry
    the sanitised client file name, not the temporary path.

    Raises:
        ReaderError: empty or too large upload, or any reader error (named after the
            upload); UnknownFormatError; ConfigError (see :func:`read_spectra`).
    """
    name = safe_upload_name(filename)
    if not data:
        raise ReaderError(name, "empty upload (0 bytes)")
    if len(data) > max_bytes:
        raise ReaderError(name, f"upload of {len(data)} bytes exceeds the limit of "
                                f"{max_bytes} bytes")
    with tempfile.TemporaryDirectory(prefix="specsearch-upload-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)

        def scrub(text: str) -> str:   # errors name the client's file, never a server path
            return text.replace(str(path), name).replace(tmp, "upload")

        try:
            spectra = list(read_spectra(path, modality=modality, format=format, air=air))
        except ReaderError as exc:
            raise type(exc)(name, scrub(exc.reason)) from None
        except SpecsearchError as exc:
            raise type(exc)(scrub(str(exc))) from None
    return [dataclasses.replace(s, path=name, meta={**s.meta, "filename": name})
            for s in spectra]
