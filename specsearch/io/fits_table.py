"""Spectra stored as FITS tables: SDSS/BOSS ``spec`` files, ESO Phase 3 1-D spectra, libraries.

:func:`read_fits_table` finds the first table HDU with a flux column and a wavelength (or
``loglam``) column, names matched as in text spectra (:func:`specsearch.io._text.classify_name`),
and returns its columns by role with what the file says about them;
:func:`read_table_spectrum` turns that into a :class:`~specsearch.spectrum.Spectrum` for the
generic reader (:mod:`specsearch.io.generic`).

Two layouts: one row per pixel (SDSS ``COADD``: ``flux``, ``loglam``, ``ivar``,
``and_mask``, ``wdisp``...) or one row whose cells are the arrays (ESO SDP: ``WAVE``,
``FLUX``, ``ERR``, ``QUAL``; X-shooter library). A table of several array rows holds several
spectra and is refused with a message that says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyError
from astropy.utils.exceptions import AstropyWarning

from specsearch.errors import ReaderError
from specsearch.io._fits import (fits_medium, hdu_data, header_float, header_gaia_source_id,
                                 header_get, header_int, header_str)
from specsearch.io._text import UNIT_WORDS, classify_name
from specsearch.io.spectrum_build import column_arrays, file_stem, finish_spectrum
from specsearch.spectrum import Spectrum

ROLE_ORDER = ("wavelength", "loglam", "flux", "ivar", "error", "variance", "mask")
SDSS_WDISP_DEX = 1e-4
"""SDSS ``wdisp`` is the line-spread sigma in units of the 1e-4 dex ``loglam`` pixel."""
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
META_COLUMNS = {"z": "z", "class": "class", "subclass": "subclass"}
"""One-row tables beside the spectrum (SDSS ``SPALL``/``specObj``): columns kept in meta."""


@dataclass
class TableSpectrum:
    """The columns of a spectrum table, by role, and what the file says about them.

    Attributes:
        columns: role (see :data:`ROLE_ORDER`) -> float64 array, all of one length.
        names: role -> the column name as written.
        hdu_name: the table's HDU name (or index).
        wavelength_unit: from the column's ``TUNITn`` or name, else None.
        medium: ``air``/``vacuum`` when the file says so, else None; ``medium_from`` says how.
        header: the primary header merged with the table's.
        meta: spectrum id, resolving power, redshift, class... where the file gives them.
    """

    columns: dict[str, np.ndarray]
    names: dict[str, str]
    hdu_name: str
    wavelength_unit: str | None
    medium: str | None
    medium_from: str
    header: fits.Header
    meta: dict[str, Any] = field(default_factory=dict)


def _roles(hdu: Any) -> dict[str, tuple[int, str, str | None, str | None]]:
    """role -> (column index, name, unit from the name, medium from the name)."""
    out: dict[str, tuple[int, str, str | None, str | None]] = {}
    for i, col in enumerate(hdu.columns):
        role, unit, medium = classify_name(str(col.name))
        if role is not None and role not in out:
            out[role] = (i, str(col.name), unit, medium)
    return out


def _is_spectrum_table(roles: dict) -> bool:
    return "flux" in roles and ("wavelength" in roles or "loglam" in roles)


def _column(data: Any, name: str, path: Path, hdu_name: str) -> np.ndarray:
    try:
        values = np.asarray(data[name], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ReaderError(path, f"column {name!r} of table {hdu_name!r} is not numeric or "
                                f"holds variable-length arrays: {exc}") from exc
    if values.ndim == 1:
        return values
    if values.ndim == 2 and values.shape[0] == 1:
        return values[0]
    raise ReaderError(path, f"table {hdu_name!r} holds {values.shape[0]} spectra (column "
                            f"{name!r} has shape {values.shape}); one spectrum per file is "
                            f"read: split the table, one row per file")


def _unit(hdu: Any, index: int, from_name: str | None) -> str | None:
    tunit = str(hdu.columns[index].unit or "").strip()
    if tunit:
        word = tunit.lower().rstrip("s")
        return UNIT_WORDS.get(word, UNIT_WORDS.get(tunit.lower(), tunit))
    return from_name


def _medium(hdu: Any, index: int, from_name: str | None, roles: dict,
            header: fits.Header) -> tuple[str | None, str]:
    ucd = (header_str(hdu.header, f"TUCD{index + 1}") or "").lower()
    if "obs.atmos" in ucd:
        return "air", f"TUCD{index + 1}={ucd!r}"
    if from_name:
        return from_name, "wavelength column name"
    if ucd.startswith("em.wl"):
        return "vacuum", f"TUCD{index + 1}={ucd!r}"
    telescope = (header_str(header, "TELESCOP") or "").upper()
    if telescope.startswith("SDSS"):
        return "vacuum", f"TELESCOP={telescope!r} (SDSS wavelengths are vacuum)"
    if "wavelength" not in roles and "loglam" in roles:
        return "vacuum", "loglam column (SDSS convention: vacuum)"
    return None, ""


def _side_meta(hdul: fits.HDUList, skip: Any) -> dict[str, Any]:
    """z/class/subclass from a one-row table beside the spectrum (SDSS SPALL/specObj)."""
    meta: dict[str, Any] = {}
    for hdu in hdul[1:]:
        if hdu is skip or not isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
            continue
        if hdu.header.get("NAXIS2") != 1:
            continue
        names = {str(n).lower(): str(n) for n in hdu.columns.names}
        wanted = {k: v for k, v in META_COLUMNS.items() if k in names}
        if not wanted:
            continue
        try:
            row = hdu.data[0]
            for key, out in wanted.items():
                value = row[names[key]]
                meta[out] = (float(value) if key == "z" else
                             (value.decode() if isinstance(value, bytes) else str(value)).strip())
        except (TypeError, ValueError, IndexError, UnicodeDecodeError):
            continue
        break
    return meta


def _sdss_meta(header: fits.Header, columns: dict[str, np.ndarray],
               names: dict[str, str], wdisp: np.ndarray | None) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    plate = header_int(header, "PLATEID", "PLATE")
    mjd, fiber = header_int(header, "MJD"), header_int(header, "FIBERID")
    if plate is not None and mjd is not None and fiber is not None:
        meta["spectrum_id"] = f"spec-{plate:04d}-{mjd:05d}-{fiber:04d}"
    if wdisp is not None and "loglam" in names:
        good = np.isfinite(wdisp) & (wdisp > 0)
        if "ivar" in columns:
            good &= columns["ivar"] > 0
        if good.any():
            sigma_ln = float(np.median(wdisp[good])) * SDSS_WDISP_DEX * np.log(10.0)
            meta["resolving_power"] = float(1.0 / (FWHM_PER_SIGMA * sigma_ln))
            meta["resolution_from"] = "median wdisp"
    return meta


def read_fits_table(hdul: fits.HDUList, path: Path) -> TableSpectrum:
    """The spectrum table of an open FITS file. ReaderError names the file and the problem."""
    found = []
    for index, hdu in enumerate(hdul[1:], start=1):
        if not isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
            continue
        roles = _roles(hdu)
        found.append(f"{hdu.name or index}: {list(hdu.columns.names)[:12]}")
        if _is_spectrum_table(roles):
            break
    else:
        raise ReaderError(path, "no spectrum in the file: no 1-D image, and no table with a "
                                "flux column and a wavelength (or loglam) column"
                                + (f" (tables found: {'; '.join(found)})" if found else
                                   f" (HDUs found: {[h.name for h in hdul]})"))
    hdu_name = str(hdu.name or index)
    data = hdu_data(hdu, path, f"table {hdu_name!r}")
    if data is None or len(data) == 0:
        raise ReaderError(path, f"table {hdu_name!r} has no rows")
    header = hdul[0].header.copy(strip=True)
    header.update(hdu.header.copy(strip=True))
    columns, names = {}, {}
    for role in ROLE_ORDER:
        if role in roles:
            names[role] = roles[role][1]
            columns[role] = _column(data, roles[role][1], path, hdu_name)
    lengths = {names[r]: columns[r].size for r in columns}
    if len(set(lengths.values())) != 1:
        raise ReaderError(path, f"wrong array lengths in table {hdu_name!r}: {lengths}; "
                                f"every column of a spectrum needs one value per pixel")
    wave_role = "wavelength" if "wavelength" in roles else "loglam"
    index, _, unit_from_name, medium_from_name = roles[wave_role]
    unit = _unit(hdu, index, unit_from_name) if wave_role == "wavelength" else None
    medium, medium_from = _medium(hdu, index, medium_from_name, roles, header)
    wdisp = None
    lower = {str(n).lower(): str(n) for n in hdu.columns.names}
    if "wdisp" in lower:
        wdisp = _column(data, lower["wdisp"], path, hdu_name)
        wdisp = wdisp if wdisp.size == columns["flux"].size else None
    meta = {**_side_meta(hdul, hdu), **_sdss_meta(header, columns, names, wdisp)}
    power = header_float(header, "SPEC_RES")
    if power is not None and "resolving_power" not in meta:
        meta["resolving_power"], meta["resolution_from"] = power, "SPEC_RES"
    fwhm = header_float(header, "FWHM")
    if fwhm is not None:
        meta["fwhm_A"] = fwhm
    meta["bunit"] = header_str(header, f"TUNIT{roles['flux'][0] + 1}", "BUNIT") or ""
    if header_get(header, "TELESCOP") is not None:
        meta["telescope"] = header_str(header, "TELESCOP")
    return TableSpectrum(columns=columns, names=names, hdu_name=hdu_name,
                         wavelength_unit=unit, medium=medium, medium_from=medium_from,
                         header=header, meta=meta)


def read_table_spectrum(hdul: fits.HDUList, path: Path, air: bool | None,
                        unit: str | None) -> Spectrum:
    """The spectrum of an open FITS file's spectrum table (the generic reader's rules for
    units, medium and noise; :mod:`specsearch.io.generic`). ReaderError names the file."""
    try:
        with warnings.catch_warnings():
            # astropy warns about odd column names and formats; damage is an error below
            warnings.simplefilter("ignore", AstropyWarning)
            table = read_fits_table(hdul, path)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, VerifyError) as exc:
        # astropy parses table columns lazily: damage in TFORMn/TDIMn shows up only here
        raise ReaderError(path, f"damaged FITS table: {type(exc).__name__}: {exc}") from exc
    header, tmeta = table.header, table.meta
    arrays = column_arrays(path, table.columns, table.names, override=unit,
                           stated=table.wavelength_unit, stated_from="column unit or name")
    meta: dict[str, Any] = {"format": "generic-fits-table", "table": table.hdu_name,
                            **arrays.meta}
    medium, medium_from = table.medium, table.medium_from
    if medium is None:
        medium, medium_from = fits_medium(header)
    if medium is None:
        medium, medium_from = "air", "default for FITS tables (IRAF convention: air)"
    meta.update({k: v for k, v in tmeta.items() if k not in ("spectrum_id", "bunit")})
    meta["object"] = header_str(header, "OBJECT", "OBJNAME")
    source_id, _ = header_gaia_source_id(header)
    return finish_spectrum(path, arrays.wave, table.columns["flux"], arrays.errors, meta,
                           air=air, medium=medium, medium_from=medium_from,
                           spectrum_id=str(tmeta.get("spectrum_id") or file_stem(path)),
                           source_id=source_id, ra=header_float(header, "PLUG_RA", "RA"),
                           dec=header_float(header, "PLUG_DEC", "DEC"),
                           flux_unit=str(tmeta.get("bunit") or ""), extra_mask=arrays.mask)
