"""FITS plumbing shared by the spectrum readers: safe opening, cheap header sniffing, header values.

Why not plain ``astropy.io.fits.open``: on a damaged file astropy is forgiving in ways that
hide the damage (a truncated ``.fits.gz`` opens with its last HDUs silently missing; a
truncated ``.fits`` only warns, then fails later with a reshape ``ValueError``). Spectrum
files are small (tens to hundreds of kB), so :func:`open_fits` reads the whole file,
decompresses gzip itself (which checks the stream's end and CRC) and checks the FITS block
structure before astropy parses it. Every failure becomes a :class:`ReaderError` naming the
file and the problem.
"""

from __future__ import annotations

import io
import math
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyError

from specsearch.errors import ReaderError
from specsearch.fsutil import is_gzip, open_maybe_gzip
from specsearch.io.fits_scan import scan_fits_bytes, scan_fits_file
from specsearch.io.limits import read_bytes_capped

FITS_BLOCK = 2880
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")

GAIA_ID_KEYS = ("GAIA_SOURCE_ID", "GAIA_DR3_SOURCE_ID", "GAIADR3_SOURCE_ID", "GAIA_ID",
                "GAIAID", "GAIA_SID", "GAIASID")
"""Header keys that may carry a Gaia DR3 source_id (later LAMOST releases and other
pipelines write one of these). Keys labelled DR2 are deliberately absent: DR2 and DR3 ids
differ for some stars, and ``source_id`` means the DR3 id in this project."""


def has_fits_suffix(path: str | Path) -> bool:
    return str(path).lower().endswith(FITS_SUFFIXES)


def sniff(path: str | Path, nbytes: int = FITS_BLOCK) -> bytes:
    """Up to ``nbytes`` of the file's content (gunzipped if gzip), as much as could be read
    before any damage; b"" if unreadable. Never raises."""
    out = bytearray()
    try:
        with open_maybe_gzip(path) as fh:
            while len(out) < nbytes:
                chunk = fh.read(min(16384, nbytes - len(out)))
                if not chunk:
                    break
                out += chunk
    except (OSError, EOFError, zlib.error):
        pass
    return bytes(out)


def starts_with_gzip_magic(path: str | Path) -> bool:
    """:func:`specsearch.fsutil.is_gzip`, False for an unreadable file. Never raises."""
    try:
        return is_gzip(path)
    except OSError:
        return False


def read_primary_header(path: str | Path) -> fits.Header | None:
    """The primary header, checked by :func:`specsearch.io.fits_scan.scan_fits` (card count and
    structural keywords) and parsed; None if not FITS or damaged.

    Cheap (reads the header, plus the primary data of a ``.fits.gz``) and never raises: for
    ``identify``. Headers of any length up to ``InputLimits.max_header_cards`` are read.
    """
    try:
        hdus = scan_fits_file(path, max_hdus=1)
    except Exception:  # noqa: BLE001 - a sniffer must never raise
        return None
    if not hdus:
        return None
    raw = sniff(path, hdus[0].data_offset)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fits.Header.fromstring(raw.decode("ascii", "replace"))
    except Exception:  # noqa: BLE001 - a sniffer must never raise
        return None


def _file_bytes(path: Path) -> bytes:
    raw = read_bytes_capped(path)
    if not raw:
        raise ReaderError(path, "empty file (0 bytes)" if not starts_with_gzip_magic(path)
                          else "empty file (gzip stream holds 0 bytes)")
    if not raw.startswith(b"SIMPLE"):
        raise ReaderError(path, f"not a FITS file: it starts with {raw[:16]!r}, "
                                f"expected the card 'SIMPLE  ='")
    if len(raw) % FITS_BLOCK:
        raise ReaderError(path, f"truncated FITS file: {len(raw)} bytes is not a whole number "
                                f"of {FITS_BLOCK}-byte FITS blocks; fetch the file again")
    # Card counts, structural keywords and declared sizes, before astropy allocates anything.
    scan_fits_bytes(raw, path)
    return raw


@contextmanager
def open_fits(path: str | Path) -> Iterator[fits.HDUList]:
    """Open a whole FITS (or gzipped FITS) file, checked; every HDU header parsed.

    Raises:
        ReaderError: unreadable, empty, truncated, not FITS, or a header astropy rejects.
    """
    path = Path(path)
    raw = _file_bytes(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(io.BytesIO(raw), memmap=False, lazy_load_hdus=False)
        except Exception as exc:  # noqa: BLE001 - astropy raises OSError/ValueError/KeyError...
            raise ReaderError(path, f"corrupt FITS structure: {exc}") from exc
    truncated = [w for w in caught if "truncated" in str(w.message).lower()]
    if truncated:
        hdul.close()
        raise ReaderError(path, f"truncated FITS file: {truncated[0].message}")
    try:
        yield hdul
    finally:
        hdul.close()


def hdu_data(hdu: Any, path: str | Path, what: str) -> Any:
    """``hdu.data`` with astropy's parse errors turned into a :class:`ReaderError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return hdu.data
    except Exception as exc:  # noqa: BLE001 - reshape ValueError, TypeError, OSError...
        raise ReaderError(path, f"cannot read the {what} data of HDU {hdu.name!r} "
                                f"(damaged or truncated file?): {exc}") from exc


def header_get(header: fits.Header, key: str, default: Any = None) -> Any:
    """``header.get(key, default)``, with a card astropy cannot parse (a damaged value)
    read as absent: header values are parsed lazily, so damage shows up only here."""
    try:
        return header.get(key, default)
    except (VerifyError, ValueError):
        return default


def header_float(header: fits.Header, *keys: str) -> float | None:
    """The first of ``keys`` holding a finite number (numeric strings accepted), else None."""
    for key in keys:
        value = header_get(header, key)
        if isinstance(value, bool) or value is None:
            continue
        try:
            number = float(str(value).strip()) if isinstance(value, str) else float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            return number
    return None


def header_int(header: fits.Header, *keys: str) -> int | None:
    value = header_float(header, *keys)
    return None if value is None or value != int(value) else int(value)


def header_str(header: fits.Header, *keys: str) -> str | None:
    """The first of ``keys`` present as a non-empty string (stripped), else None."""
    for key in keys:
        value = header_get(header, key)
        if value is None or isinstance(value, bool):
            continue
        text = str(value).strip()
        if text:
            return text
    return None


def header_gaia_source_id(header: fits.Header) -> tuple[int | None, str | None]:
    """(Gaia DR3 source_id, the key it came from) when the header carries one, else (None, None)."""
    for key in GAIA_ID_KEYS:
        value = header_get(header, key)
        if value is None or isinstance(value, bool):
            continue
        try:
            number = int(str(value).strip())
        except ValueError:
            continue
        if 0 < number < 2 ** 63:
            return number, key
    return None, None


def as_1d(array: Any) -> np.ndarray:
    """A table cell or image as a 1-D float64 array (drops length-1 axes, keeps others)."""
    arr = np.asarray(array, dtype=np.float64)
    return arr.reshape(-1) if arr.ndim > 1 and sum(n > 1 for n in arr.shape) <= 1 else arr


AIR_LIBRARIES = {"MILES": "TPLLIB=MILES (MILES wavelengths are in air)"}
"""Spectral libraries known to be in air whose headers do not say so, by ``TPLLIB``."""


def fits_medium(header: fits.Header) -> tuple[str | None, str]:
    """("air"/"vacuum", where it was read) from a header's CTYPE1, AIRORVAC, VACUUM or a
    library known to be in air (:data:`AIR_LIBRARIES`); (None, "") when it says nothing."""
    ctype = (header_str(header, "CTYPE1") or "").upper()
    if ctype.startswith("AWAV"):
        return "air", "CTYPE1=AWAV"
    if ctype.startswith("WAVE"):
        return "vacuum", "CTYPE1=WAVE"
    airorvac = (header_str(header, "AIRORVAC", "AIRVAC", "WAVEMED") or "").lower()
    if airorvac.startswith("air"):
        return "air", f"AIRORVAC={airorvac!r}"
    if airorvac.startswith("vac"):
        return "vacuum", f"AIRORVAC={airorvac!r}"
    vacuum = header_get(header, "VACUUM")
    if isinstance(vacuum, bool):
        return ("vacuum" if vacuum else "air"), f"VACUUM={vacuum}"
    library = (header_str(header, "TPLLIB") or "").upper()
    if library in AIR_LIBRARIES:
        return "air", AIR_LIBRARIES[library]
    return None, ""
