"""Generic 1-D spectra: FITS images with a wavelength WCS, and text tables (CSV/TXT/DAT).

**FITS** (e.g. the MILES library): a 1-D image (or (1, N)) in the primary HDU, or in the
first image extension when the primary is empty. Pixel p (1-based) has
``x = CRVAL1 + CD1_1 * (p - CRPIX1)`` (CDELT1 when CD1_1 is absent; CRPIX1 defaults to 1):

* ``DC-FLAG = 1`` or ``WFITTYPE = 'LOG-LINEAR'``: x is log10(wavelength) (IRAF/LAMOST);
* ``CTYPE1 = 'WAVE-LOG'``/``'AWAV-LOG'``: wavelength = CRVAL1 * exp(x' / CRVAL1) with
  x' = CD1_1 * (p - CRPIX1) (FITS WCS paper III);
* otherwise linear; ``DC-FLAG = 2`` (IRAF non-linear) is refused.

An error spectrum is taken from an image extension named IVAR/INVVAR, ERR/ERROR/SIGMA/
NOISE/UNCERTAINTY (1/err^2) or VAR/VARIANCE (1/var) of the same length.

**FITS tables** (SDSS/BOSS ``spec``/``spec-lite`` files, ESO Phase 3 1-D spectra, stellar
libraries such as XSL, any binary table of a spectrum), read when the file holds no
spectrum image: the first table HDU with a flux column and a wavelength (or ``loglam``)
column, named as in text tables (below). Either one row per pixel (SDSS ``COADD``) or one
row of array cells (ESO ``WAVE``/``FLUX``/``ERR``); a table of several spectra is refused.
The wavelength unit comes from the column's ``TUNITn``; a mask column (``and_mask``,
``QUAL``...) flags every pixel where it is non-zero. SDSS files also give the spectrum id
(``spec-PLATE-MJD-FIBER``), the plug position, the redshift and class of their ``SPALL``/
``specObj`` row, and the resolving power (the median of ``wdisp``).

**Text**: see :mod:`specsearch.io._text` (columns wavelength/wave/lambda/loglam, flux, and
optionally ivar, error/err/sigma, variance, mask).

**Resolution** (for :mod:`specsearch.preprocess.lsf`, which broadens spectra much sharper
than LAMOST): ``meta['fwhm_A']`` from a ``FWHM`` card (Angstrom, e.g. MILES) or a
``# fwhm = ...`` comment; ``meta['resolving_power']`` from ``SPEC_RES`` (ESO), SDSS
``wdisp``, or a ``# resolving_power = ...`` comment.

**Wavelength unit** (result is always Angstrom): the unit the file states (FITS ``CUNIT1``
or ``WAT1_001 units=``; a text column name such as ``wavelength_nm`` or a ``# wavelength_unit
= nm`` comment), else, from the values (:func:`guess_wavelength_unit`): all values within
2.5-5 -> log10 Angstrom; maximum < 30 -> micron; maximum < 2500 -> nm; else Angstrom.
``wavelength_unit=`` overrides. ``meta['unit_from']`` records which rule decided.

**Air or vacuum** (result is always vacuum; the conversion is
:func:`specsearch.preprocess.air_to_vacuum`, nowhere else): ``air=True/False`` overrides
(the CLI's ``--medium``, the HTTP ``medium``). Otherwise the file decides: FITS
``CTYPE1`` AWAV (air) / WAVE (vacuum), ``AIRORVAC``,
``VACUUM = T/F``; MILES is recognised by its ``TPLLIB = 'MILES'`` header card (MILES is in
air but does not say so). FITS tables: the wavelength column's ``TUCDn`` (``obs.atmos``:
air, as ESO writes it; ``em.wl`` alone: vacuum), ``air``/``vac`` in its name, the header
cards above; SDSS files (``TELESCOP = 'SDSS 2.5-M'``) and ``loglam`` columns are vacuum.
Text: ``air``/``vac`` in the wavelength column name, or a
``# medium = air`` comment. When the file says nothing, FITS images and tables are taken as **air**
(the IRAF convention that 1-D FITS spectral libraries from ground-based optical
spectrographs follow) and text tables as **vacuum** (this project's convention, so spectra
it exports read back unchanged). ``meta['wavelength_medium']`` and ``meta['medium_from']``
record the decision.

**No error column**: ivar is set to the constant 1/noise^2 with the noise estimated by
DER_SNR (Stoehr et al. 2008; :func:`estimate_noise`) and ``meta['ivar_from'] =
'der_snr estimate'`` flags it. Never unit ivar.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from specsearch.errors import ReaderError
from specsearch.io._fits import (AIR_LIBRARIES, fits_medium, has_fits_suffix, hdu_data,
                                 header_float, header_gaia_source_id, header_int, header_str,
                                 open_fits, read_primary_header, sniff)
from specsearch.io._text import (classify_name, has_text_suffix, looks_like_text_spectrum,
                                 parse_text)
from specsearch.io.fits_table import read_table_spectrum
from specsearch.io.spectrum_build import (NOISE_FLOOR, column_arrays, estimate_noise,
                                          file_stem, finish_spectrum, guess_wavelength_unit,
                                          to_angstrom, to_float)
from specsearch.spectrum import Spectrum

__all__ = ["AIR_LIBRARIES", "FORMAT_NAME", "NOISE_FLOOR", "estimate_noise",
           "guess_wavelength_unit", "identify", "read", "read_generic", "to_angstrom"]

FORMAT_NAME = "generic"

ERROR_EXTENSIONS = {"IVAR": "ivar", "INVVAR": "ivar", "ERR": "error", "ERROR": "error",
                    "SIGMA": "error", "NOISE": "error", "UNCERTAINTY": "error",
                    "VAR": "variance", "VARIANCE": "variance"}
_MILES_ID = re.compile(r"(m\d{4}V)")
SNIFF_BYTES = 40 * 2880


# --------------------------------------------------------------------------- public API

def identify(path: str | Path) -> bool:
    """True for a 1-D FITS image with a wavelength WCS, a FITS table with wavelength and flux
    columns, or a text table of a spectrum."""
    header = read_primary_header(path)
    if header is not None:
        if _is_wcs_1d(header):
            return True
        if header.get("NAXIS") != 0:
            return False
        head = sniff(path, SNIFF_BYTES)
        return b"XTENSION= 'IMAGE" in head or _sniffed_spectrum_table(head)
    return has_text_suffix(path) and looks_like_text_spectrum(path)


_TTYPE = re.compile(rb"TTYPE\d{1,3} *= *'([^']{0,68})'")


def _sniffed_spectrum_table(head: bytes) -> bool:
    """True when the sniffed bytes hold a table header naming flux and wavelength columns."""
    at = head.find(b"XTENSION= 'BINTABLE'")
    if at < 0:
        at = head.find(b"XTENSION= 'TABLE")
    if at < 0:
        return False
    end = head.find(b"END" + b" " * 77, at)
    block = head[at:end if end > 0 else len(head)]
    roles = {classify_name(m.group(1).decode("ascii", "replace"))[0]
             for m in _TTYPE.finditer(block)}
    return "flux" in roles and bool(roles & {"wavelength", "loglam"})


def read(path: str | Path, *, air: bool | None = None) -> Iterator[Spectrum]:
    """Registry protocol: the one spectrum of a generic file."""
    yield read_generic(path, air=air)


def read_generic(path: str | Path, *, air: bool | None = None,
                 wavelength_unit: str | None = None) -> Spectrum:
    """Read a generic FITS or text spectrum into a validated :class:`Spectrum`.

    Args:
        path: a ``.fits``/``.fit``/``.fts`` (optionally ``.gz``) image, or a text table.
        air: True if the file's wavelengths are in air, False if vacuum, None to decide
            from the file (see the module docstring).
        wavelength_unit: override the file's wavelength unit ("Angstrom", "nm", "um",
            "log10 Angstrom").
    Returns:
        Vacuum Angstrom wavelengths, increasing; modality None; spectrum_id = the file stem
        (the MILES star id, e.g. ``m0001V``, for MILES files); decisions recorded in meta.
    Raises:
        ReaderError: the file is unreadable, truncated, of the wrong shape, lacks a
            wavelength or flux, or has no usable flux. The message names the file.
    """
    path = Path(path)
    if sniff(path, 6) == b"SIMPLE" or has_fits_suffix(path):
        return _read_fits(path, air, wavelength_unit)
    return _read_text(path, air, wavelength_unit)


# --------------------------------------------------------------------------- FITS

def _is_wcs_1d(header: fits.Header) -> bool:
    naxis = header.get("NAXIS", 0)
    dims = [header.get(f"NAXIS{i}", 0) for i in range(1, naxis + 1)]
    one_d = naxis == 1 or (naxis == 2 and 1 in dims)
    return bool(one_d and header_float(header, "CRVAL1") is not None)


def _find_image(hdul: fits.HDUList, path: Path, *, required: bool = True
                ) -> tuple[Any, fits.Header] | None:
    primary = hdul[0]
    if primary.header.get("NAXIS", 0) >= 1:
        return primary, primary.header
    for hdu in hdul[1:]:
        if isinstance(hdu, fits.ImageHDU) and hdu.header.get("NAXIS", 0) >= 1:
            merged = primary.header.copy(strip=True)
            merged.update(hdu.header.copy(strip=True))
            return hdu, merged
    if not required:
        return None
    raise ReaderError(path, f"missing HDU: no image holding a spectrum (HDUs found: "
                            f"{[h.name or type(h).__name__ for h in hdul]})")


def _fits_wavelength(header: fits.Header, npix: int, path: Path,
                     unit_override: str | None) -> tuple[np.ndarray, dict[str, Any]]:
    crval = header_float(header, "CRVAL1")
    step = header_float(header, "CD1_1", "CDELT1")
    if crval is None or not step:
        raise ReaderError(path, "missing wavelength info: the header needs CRVAL1 and "
                                "CDELT1 or CD1_1 (a wavelength WCS on axis 1)")
    crpix = header_float(header, "CRPIX1") or 1.0
    ctype = (header_str(header, "CTYPE1") or "").upper()
    dc_flag = header_int(header, "DC-FLAG")
    if dc_flag == 2:
        raise ReaderError(path, "DC-FLAG = 2 (IRAF non-linear dispersion) is not supported; "
                                "resample the spectrum to a linear or log-linear grid")
    offset = step * (np.arange(npix) + 1.0 - crpix)
    unit = unit_override or _fits_unit(header)
    info: dict[str, Any] = {"unit_from": "override" if unit_override else
                            ("header" if unit else "values")}
    if ctype.endswith("-LOG"):
        x, info["wcs"] = crval * np.exp(offset / crval), "WAVE-LOG (natural)"
    elif dc_flag == 1 or (header_str(header, "WFITTYPE") or "").upper() == "LOG-LINEAR":
        x, info["wcs"] = 10.0 ** (crval + offset), "log10-linear"
        unit = unit or "Angstrom"
    else:
        x, info["wcs"] = crval + offset, "linear"
    unit = unit or guess_wavelength_unit(x)
    info["wavelength_unit"] = unit
    try:
        return to_angstrom(x, unit), info
    except ReaderError as exc:
        raise ReaderError(path, exc.reason) from exc


def _fits_unit(header: fits.Header) -> str | None:
    cunit = header_str(header, "CUNIT1")
    if cunit:
        return {"angstroms": "Angstrom", "microns": "um"}.get(cunit.lower(), cunit)
    wat = header_str(header, "WAT1_001") or ""
    match = re.search(r"units=(\w+)", wat)
    if match:
        word = match.group(1).lower()
        return {"angstroms": "Angstrom", "angstrom": "Angstrom", "nanometers": "nm",
                "microns": "um", "micrometers": "um"}.get(word)
    return None


def _error_extension(hdul: fits.HDUList, path: Path, npix: int) -> tuple[np.ndarray, str] | None:
    for hdu in hdul[1:]:
        kind = ERROR_EXTENSIONS.get((hdu.name or "").strip().upper())
        if kind is None or not isinstance(hdu, fits.ImageHDU):
            continue
        values = np.asarray(hdu_data(hdu, path, f"{hdu.name} extension"), dtype=np.float64)
        values = values.reshape(-1) if values.ndim > 1 else values
        if values.size != npix:
            raise ReaderError(path, f"wrong array lengths: the {hdu.name} extension has "
                                    f"{values.size} pixels, the flux {npix}")
        return values, kind
    return None


def _read_fits(path: Path, air: bool | None, unit: str | None) -> Spectrum:
    with open_fits(path) as hdul:
        if _find_image(hdul, path, required=False) is None:
            return read_table_spectrum(hdul, path, air, unit)
        hdu, header = _find_image(hdul, path)
        data = hdu_data(hdu, path, "spectrum image")
        shape = getattr(data, "shape", None)
        if data is None or not shape or sum(n > 1 for n in shape) > 1:
            raise ReaderError(path, f"wrong shape: the image is {shape}, expected a 1-D "
                                    f"spectrum (N,) or (1, N); multi-row images (IRAF "
                                    f"multispec) are not supported")
        flux = np.asarray(data, dtype=np.float64).reshape(-1)
        wave, meta = _fits_wavelength(header, flux.size, path, unit)
        errors = _error_extension(hdul, path, flux.size)
    medium, medium_from = fits_medium(header)
    if medium is None:
        medium, medium_from = "air", "default for FITS images (IRAF convention: air)"
    library = (header_str(header, "TPLLIB") or "").upper()
    match = _MILES_ID.search(path.name)
    spectrum_id = match.group(1) if library == "MILES" and match else file_stem(path)
    if library == "MILES" and match:
        meta["miles_id"] = match.group(1)
    meta.update(format="generic-fits", object=header_str(header, "OBJECT", "OBJNAME"),
                fwhm_A=header_float(header, "FWHM"), library=library or None,
                resolving_power=header_float(header, "SPEC_RES"))
    source_id, _ = header_gaia_source_id(header)
    return finish_spectrum(path, wave, flux, errors, meta, air=air, medium=medium,
                           medium_from=medium_from, spectrum_id=spectrum_id,
                           source_id=source_id, ra=header_float(header, "RA"),
                           dec=header_float(header, "DEC"),
                           flux_unit=header_str(header, "BUNIT") or
                           ("relative F_lambda" if library == "MILES" else ""))


# --------------------------------------------------------------------------- text

def _read_text(path: Path, air: bool | None, unit: str | None) -> Spectrum:
    table = parse_text(path)
    arrays = column_arrays(path, table.columns, table.names, override=unit,
                           stated=table.wavelength_unit, stated_from="column name or comment")
    meta: dict[str, Any] = {"format": "generic-text", "header_less": table.header_less,
                            **arrays.meta}
    cm = table.comment_meta
    medium, medium_from = table.medium, table.medium_from
    if medium is None:
        medium, medium_from = "vacuum", "default for text tables (project convention: vacuum)"
    meta.update({k: cm[k] for k in ("object", "z", "fwhm_A", "resolving_power") if k in cm})
    for key in ("z", "fwhm_A", "resolving_power"):
        if key in meta:
            meta[key] = to_float(meta[key])
    source_id = cm.get("source_id")
    return finish_spectrum(path, arrays.wave, table.columns["flux"], arrays.errors, meta,
                           air=air, medium=medium, medium_from=medium_from,
                           spectrum_id=str(cm.get("spectrum_id") or file_stem(path)),
                           source_id=int(source_id) if str(source_id or "").isdigit()
                           else None,
                           ra=to_float(cm.get("ra")), dec=to_float(cm.get("dec")),
                           flux_unit=str(cm.get("flux_unit", "")), extra_mask=arrays.mask,
                           snr=to_float(cm.get("snr")))
