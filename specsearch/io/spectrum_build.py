"""From columns read out of a generic spectrum file to a validated :class:`Spectrum`.

What every generic reader (FITS images, FITS tables, text tables; :mod:`specsearch.io.generic`,
:mod:`specsearch.io.fits_table`) shares once it has a wavelength array, a flux array and
maybe an error array: the wavelength unit, the noise when the file gives none (DER_SNR),
air to vacuum, order, masks and validation (:func:`finish_spectrum`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u

from specsearch.errors import ReaderError, SpectrumError
from specsearch.preprocess import air_to_vacuum
from specsearch.spectrum import Spectrum

NOISE_FLOOR = 1e-4
"""The DER_SNR noise is floored at this fraction of the median |flux| (S/N <= 10^4), so a
noiseless model spectrum still gets a finite ivar."""


def estimate_noise(flux: np.ndarray) -> float | None:
    """DER_SNR noise (Stoehr et al. 2008) of a spectrum: 1.4826/sqrt(6) * median |2f_i -
    f_(i-2) - f_(i+2)| over finite non-zero pixels, floored at ``NOISE_FLOOR`` x median |f|.
    None when fewer than 5 usable pixels."""
    f = np.asarray(flux, dtype=np.float64)
    f = f[np.isfinite(f) & (f != 0)]
    if f.size < 5:
        return None
    noise = 1.482602 / np.sqrt(6.0) * np.median(np.abs(2.0 * f[2:-2] - f[:-4] - f[4:]))
    floor = NOISE_FLOOR * float(np.median(np.abs(f)))
    return float(max(noise, floor)) if max(noise, floor) > 0 else None


def guess_wavelength_unit(values: np.ndarray) -> str:
    """The unit wavelength values look like (rule in the module docstring)."""
    w = np.asarray(values, dtype=np.float64)
    w = w[np.isfinite(w)]
    if w.size and w.min() > 2.5 and w.max() < 5.0:
        return "log10 Angstrom"
    top = float(w.max()) if w.size else 0.0
    return "um" if top < 30.0 else "nm" if top < 2500.0 else "Angstrom"


@dataclass
class ColumnArrays:
    """What a table of columns by role gives a spectrum (text or FITS table).

    Attributes:
        wave: Angstrom wavelengths (air or vacuum as the file has them).
        errors: (values, kind) of the error column (ivar, then error, then variance), or None.
        mask: True where a mask column is non-zero, or None without one.
        meta: ``columns`` (role -> name as written), ``unit_from``, ``wavelength_unit``.
    """

    wave: np.ndarray
    errors: tuple[np.ndarray, str] | None
    mask: np.ndarray | None
    meta: dict[str, Any]


def column_arrays(path: Path, columns: dict[str, np.ndarray], names: dict[str, str], *,
                  override: str | None, stated: str | None, stated_from: str) -> ColumnArrays:
    """The arrays of a table's ``wavelength`` (or ``loglam``), error and mask columns.

    Args:
        columns, names: the table's columns and their names as written, by role.
        override: the caller's wavelength unit (wins); stated: the unit the file states (its
            column name, ``TUNITn`` or a comment), recorded as ``stated_from``; else the
            unit the values look like (:func:`guess_wavelength_unit`).
    Raises:
        ReaderError: the wavelength unit is unknown (names the file and the column).
    """
    if "wavelength" in columns:
        raw = columns["wavelength"]
        unit_from = "override" if override else stated_from if stated else "values"
        unit = override or stated or guess_wavelength_unit(raw)
    else:
        raw, unit, unit_from = columns["loglam"], "log10 Angstrom", "loglam column"
    try:
        wave = to_angstrom(raw, unit)
    except ReaderError as exc:
        column = names.get("wavelength") or names.get("loglam")
        raise ReaderError(path, f"column {column!r}: {exc.reason}") from exc
    errors = next(((columns[k], k) for k in ("ivar", "error", "variance") if k in columns),
                  None)
    mask = columns["mask"] != 0 if "mask" in columns else None
    return ColumnArrays(wave, errors, mask, {"columns": dict(names), "unit_from": unit_from,
                                             "wavelength_unit": unit})


def to_angstrom(values: np.ndarray, unit: str) -> np.ndarray:
    """Wavelengths in ``unit`` (astropy-parsable, or "log10 Angstrom") to Angstrom."""
    w = np.asarray(values, dtype=np.float64)
    if unit.lower().startswith("log10"):
        return 10.0 ** w
    try:
        return (w * u.Unit(unit)).to_value(u.AA, equivalencies=u.spectral())
    except (ValueError, TypeError, u.UnitsError) as exc:
        raise ReaderError(None, f"unknown wavelength unit {unit!r}: {exc}") from exc


def finish_spectrum(path: Path, wave: np.ndarray, flux: np.ndarray,
            errors: tuple[np.ndarray, str] | None, meta: dict[str, Any], *, air: bool | None,
            medium: str, medium_from: str, spectrum_id: str, source_id: int | None,
            ra: float | None, dec: float | None, flux_unit: str,
            extra_mask: np.ndarray | None = None, snr: float | None = None) -> Spectrum:
    """Common end of the generic readers: ivar, medium, order, mask, validation."""
    flux = np.asarray(flux, dtype=np.float64)
    if not np.isfinite(flux).any():
        raise ReaderError(path, f"no finite flux value in {flux.size} pixels")
    if air is not None:
        medium = "air" if air else "vacuum"
        medium_from = "caller (air=, --medium or the HTTP medium)"
    meta.update(filename=path.name, wavelength_medium=medium, medium_from=medium_from)
    if medium == "air":
        wave = air_to_vacuum(wave)
    if errors is None:
        noise = estimate_noise(flux)
        if noise is None:
            raise ReaderError(path, "no error column and too few finite pixels (< 5) to "
                                    "estimate the noise")
        with np.errstate(over="ignore", divide="ignore"):
            inverse = 1.0 / np.float64(noise) ** 2
        if not (np.isfinite(inverse) and inverse > 0):
            raise ReaderError(path, f"flux values out of range: the estimated noise "
                                    f"({noise:.3g}) gives no usable inverse variance; "
                                    f"rescale the flux or give an error column")
        ivar = np.full(flux.size, inverse)
        meta.update(ivar_from="der_snr estimate", noise_estimate=noise)
        finite = flux[np.isfinite(flux) & (flux != 0)]
        snr = snr if snr is not None else float(np.median(finite) / noise)
    else:
        values, kind = errors
        with np.errstate(divide="ignore", invalid="ignore"):
            ivar = {"ivar": values, "error": 1.0 / values ** 2,
                    "variance": 1.0 / values}[kind]
        ivar = np.where(np.isfinite(ivar) & (ivar > 0), ivar, 0.0)
        meta["ivar_from"] = f"{kind} " + ("extension" if meta["format"] == "generic-fits"
                                           else "column")
    finite_wave = np.isfinite(wave)
    if not finite_wave.all():  # drop rows without a wavelength, and say so
        meta["rows_dropped_no_wavelength"] = int((~finite_wave).sum())
        keep = finite_wave
        wave, flux, ivar = wave[keep], flux[keep], ivar[keep]
        extra_mask = None if extra_mask is None else extra_mask[keep]
    if wave.size >= 2 and np.all(np.diff(wave) < 0):  # descending: flip everything
        wave, flux, ivar = wave[::-1], flux[::-1], ivar[::-1]
        extra_mask = None if extra_mask is None else extra_mask[::-1]
    mask = ~np.isfinite(flux) | (flux == 0) | (ivar <= 0)
    if extra_mask is not None:
        mask |= extra_mask
    source_id_ok = source_id if source_id is None or 0 < source_id < 2 ** 63 else None
    spectrum = Spectrum(wavelength=wave, flux=flux, ivar=ivar, mask=mask,
                        spectrum_id=spectrum_id, source_id=source_id_ok, modality=None,
                        ra=ra, dec=dec, snr=snr, flux_unit=flux_unit, path=str(path),
                        meta=meta)
    try:
        return spectrum.validated()
    except SpectrumError as exc:
        raise ReaderError(path, str(exc).removeprefix(f"{path}: ")) from exc


def file_stem(path: Path) -> str:
    name = path.name.removesuffix(".gz")
    return name.rsplit(".", 1)[0] if "." in name else name


def to_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None
