"""Gaia XP spectra: continuous (coefficient) and sampled tables, and their vectorised calibration.

Reads Gaia DR3 ``xp_continuous_mean_spectrum`` rows from any table format
:func:`specsearch.io.tables.read_table` reads (archive CSV with ``"(..)"`` arrays, ECSV, FITS,
VOTable, Parquet), with array columns (``bp_coefficients``, ``bp_coefficient_errors``,
``bp_coefficient_correlations``...) or one column per coefficient (``bp_coeff_0..54`` and
``e_bp_coeff_0..54``); column names are matched case-insensitively. A source without BP or
RP (all values null) keeps NaN rows for that band. Also reads GaiaXPy ``calibrate`` output
(``source_id``, ``flux``, ``flux_error`` arrays; the sampling from the file's metadata, a
``<name>_sampling.csv`` beside a CSV, or GaiaXPy's default grid when there are 343 samples).

:func:`calibrate` equals ``gaiaxpy.calibrate`` (default: no truncation, correlations used
when present) but does each band as a few matrix products over all sources at once; see
:mod:`specsearch.io.xp_basis` for the model and the error propagation.

This module is the registered reader (``identify``, ``read``, the fast ingest path); the
containers and :func:`calibrate` live in :mod:`specsearch.io.xp_spectra`, the table
parsing in :mod:`specsearch.io.xp_columns`, and are re-exported here.

Wavelengths: Gaia XP calibrated wavelengths are given in nm, and are treated here as
**vacuum** wavelengths (Gaia observes from space and DPAC's external calibration defines its
wavelength scale in vacuum). Either way the air/vacuum difference (0.1-0.3 nm over
336-1020 nm) is a small fraction of the 2 nm sampling and of the XP resolution (R ~ 20-90),
so no conversion is applied: Angstrom = nm * 10. Spectra and catalog rows carry flux in the
catalog unit, 1e-17 W m^-2 nm^-1 (:data:`specsearch.preprocess.XP_FLUX_SCALE`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from specsearch.errors import ReaderError
from specsearch.io.tables import iter_table_batches, read_column_names, read_table
from specsearch.io.xp_columns import (xp_continuous_from_table, xp_sampled_from_table,
                                      xp_table_kind)
from specsearch.io.xp_spectra import BANDS, XPContinuous, XPSampled, calibrate
from specsearch.preprocess import XP_GRID, rebinner
from specsearch.spectrum import Spectrum

__all__ = ["BANDS", "XPContinuous", "XPSampled", "calibrate", "identify",
           "iter_xp_catalog_columns", "iter_xp_sampled", "read", "read_xp_continuous",
           "read_xp_sampled", "xp_continuous_from_table", "xp_sampled_from_table"]

log = logging.getLogger(__name__)


def read_xp_continuous(path: str | Path) -> XPContinuous:
    """Read a whole continuous-spectrum table (any format); see :func:`xp_continuous_from_table`."""
    return xp_continuous_from_table(read_table(path), path)


def read_xp_sampled(path: str | Path) -> XPSampled:
    """Read a GaiaXPy sampled-spectra table (CSV/ECSV/FITS/VOTable/Parquet)."""
    return xp_sampled_from_table(read_table(path), path)


def identify(path: str | Path) -> bool:
    """True for a table with BP/RP coefficient columns or sampled flux arrays; never raises."""
    try:
        return xp_table_kind(read_column_names(path)) is not None
    except Exception:  # noqa: BLE001 - identify must never raise
        return False


def iter_xp_sampled(path: str | Path, batch_size: int = 8192) -> Iterator[XPSampled]:
    """Stream a continuous or sampled XP table as calibrated :class:`XPSampled` blocks."""
    path = Path(path)
    kind = xp_table_kind(read_column_names(path))
    if kind is None:
        raise ReaderError(path, "not a Gaia XP table: no bp/rp coefficient columns and no "
                                "source_id/flux/flux_error arrays")
    any_rows = False
    for batch in iter_table_batches(path, batch_size):
        if batch.num_rows == 0:
            continue
        any_rows = True
        if kind == "continuous":
            yield calibrate(xp_continuous_from_table(batch, path))
        else:
            yield xp_sampled_from_table(batch, path)
    if not any_rows:
        raise ReaderError(path, "the table has no rows")


def _usable(sampled: XPSampled, path: Path,
            on_skip: Callable[[int, str], None] | None) -> np.ndarray:
    ok = np.isfinite(sampled.flux).any(axis=1)
    for sid in sampled.source_id[~ok]:
        reason = "neither BP nor RP spectrum (all values missing)"
        if on_skip is not None:
            on_skip(int(sid), reason)
        else:
            log.warning("%s: source_id %d skipped: %s", path, sid, reason)
    return ok


def read(path: str | Path) -> Iterator[Spectrum]:
    """One :class:`Spectrum` per source (modality ``xp``) on the table's sampling.

    Wavelength in vacuum Angstrom (nm * 10), flux in 1e-17 W m^-2 nm^-1, ivar = 1/err^2
    (0 and masked where undefined), ``spectrum_id = "xp-<source_id>"``. Sources with neither
    band are skipped with a logged warning.
    """
    path = Path(path)
    for sampled in iter_xp_sampled(path):
        flux, ivar = sampled.catalog_flux(np.float64)
        snr = sampled.snr()
        wave = sampled.wavelength_nm * 10.0
        for i in np.flatnonzero(_usable(sampled, path, None)):
            sid = int(sampled.source_id[i])
            yield Spectrum(
                wavelength=wave, flux=flux[i], ivar=ivar[i], mask=ivar[i] <= 0,
                spectrum_id=f"xp-{sid}", source_id=sid, modality="xp",
                ra=_opt(sampled.ra, i), dec=_opt(sampled.dec, i), snr=_opt(snr, i),
                flux_unit=XP_GRID.flux_unit, path=str(path))


def _opt(values: np.ndarray | None, i: int) -> float | None:
    if values is None or not np.isfinite(values[i]):
        return None
    return float(values[i])


def iter_xp_catalog_columns(path: str | Path, batch_size: int = 8192, *,
                            on_skip: Callable[[int, str], None] | None = None,
                            ) -> Iterator[dict[str, np.ndarray | list]]:
    """Fast ingest path: catalog-ready columns, ``batch_size`` sources at a time.

    Yields dicts with spectrum_id (list of str), source_id int64, modality (list), flux and
    ivar (n, 343) float32 on :data:`XP_GRID` in the catalog unit, snr float32, ra/dec float64
    (NaN if absent) and, for continuous input, bp/rp_coefficients and
    bp/rp_coefficient_errors (n, 55) float32. Sources with neither band are left out and
    reported through ``on_skip(source_id, reason)`` (default: a logged warning).
    """
    path = Path(path)
    for sampled in iter_xp_sampled(path, batch_size):
        ok = _usable(sampled, path, on_skip)
        flux, ivar = sampled.catalog_flux()
        if not np.array_equal(sampled.wavelength_nm * 10.0, XP_GRID.wavelength):
            flux, ivar = rebinner(sampled.wavelength_nm * 10.0, XP_GRID)(flux, ivar)
        keep = slice(None) if ok.all() else ok   # no copies in the usual case
        sid = sampled.source_id[keep]
        nan = np.full(len(sampled), np.nan)
        cols: dict = {
            "spectrum_id": [f"xp-{s}" for s in sid.tolist()], "source_id": sid,
            "modality": ["xp"] * len(sid), "flux": flux[keep], "ivar": ivar[keep],
            "ra": np.asarray(nan if sampled.ra is None else sampled.ra, dtype=np.float64)[keep],
            "dec": np.asarray(nan if sampled.dec is None else sampled.dec,
                              dtype=np.float64)[keep],
            "snr": sampled.snr()[keep]}
        if sampled.continuous is not None:
            for b in BANDS:
                for key in (f"{b}_coefficients", f"{b}_coefficient_errors"):
                    cols[key] = getattr(sampled.continuous, key)[keep].astype(np.float32)
        yield cols
