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

Wavelengths: Gaia XP calibrated wavelengths are given in nm, and are treated here as
**vacuum** wavelengths (Gaia observes from space and DPAC's external calibration defines its
wavelength scale in vacuum). Either way the air/vacuum difference (0.1-0.3 nm over
336-1020 nm) is a small fraction of the 2 nm sampling and of the XP resolution (R ~ 20-90),
so no conversion is applied: Angstrom = nm * 10. Spectra and catalog rows carry flux in the
catalog unit, 1e-17 W m^-2 nm^-1 (:data:`specsearch.preprocess.XP_FLUX_SCALE`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from specsearch.errors import ReaderError
from specsearch.io import xp_basis as xb
from specsearch.io.tables import (META_KEY, iter_table_batches, parse_array_strings,
                                  read_column_names, read_table)
from specsearch.preprocess import XP_FLUX_SCALE, XP_GRID, rebinner
from specsearch.spectrum import Spectrum

log = logging.getLogger(__name__)
BANDS = ("bp", "rp")
_PER_COEFF = re.compile(r"^(e_)?(bp|rp)_coeff(?:icient)?s?(_err(?:or)?s?)?_(\d+)$")


@dataclass
class XPContinuous:
    """Gaia XP continuous spectra of N sources (per band ``b`` in bp, rp).

    Attributes:
        source_id: (N,) int64 Gaia DR3 source_id.
        bp_coefficients, rp_coefficients: (N, 55) float64; NaN rows where the band is missing.
        bp_coefficient_errors, rp_coefficient_errors: (N, 55) float64 (1-sigma).
        bp_coefficient_correlations, rp_coefficient_correlations: (N, 1485) float64 lower
            triangles in archive order, or None when the file has none.
        bp_n_relevant_bases, rp_n_relevant_bases: (N,) int (0 = unknown: no truncation).
        bp_standard_deviation, rp_standard_deviation: (N,) float64 (NaN if absent).
        ra, dec: (N,) float64 degrees (NaN if absent).
        path: the source file.
    """

    source_id: np.ndarray
    bp_coefficients: np.ndarray
    rp_coefficients: np.ndarray
    bp_coefficient_errors: np.ndarray
    rp_coefficient_errors: np.ndarray
    bp_coefficient_correlations: np.ndarray | None
    rp_coefficient_correlations: np.ndarray | None
    bp_n_relevant_bases: np.ndarray
    rp_n_relevant_bases: np.ndarray
    bp_standard_deviation: np.ndarray
    rp_standard_deviation: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    path: str | None = None

    def __len__(self) -> int:
        return int(self.source_id.shape[0])

    def band(self, b: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """(coefficients, errors, correlations or None, n_relevant_bases) of band ``b``."""
        return (getattr(self, f"{b}_coefficients"), getattr(self, f"{b}_coefficient_errors"),
                getattr(self, f"{b}_coefficient_correlations"),
                getattr(self, f"{b}_n_relevant_bases"))

    def has(self, b: str) -> np.ndarray:
        """(N,) bool: the source has band ``b``."""
        return np.isfinite(getattr(self, f"{b}_coefficients")).all(axis=1)


@dataclass
class XPSampled:
    """Sampled XP spectra (GaiaXPy ``calibrate`` output form).

    Attributes:
        source_id: (N,) int64.
        wavelength_nm: (n,) sampling in nm (vacuum; see the module docstring).
        flux, flux_error: (N, n) W m^-2 nm^-1; NaN where undefined (a missing band's range).
        ra, dec: (N,) float64 degrees or NaN.
        path: the source file.
        continuous: the :class:`XPContinuous` it was calibrated from (None if read sampled).
    """

    source_id: np.ndarray
    wavelength_nm: np.ndarray
    flux: np.ndarray
    flux_error: np.ndarray
    ra: np.ndarray | None = None
    dec: np.ndarray | None = None
    path: str | None = None
    continuous: XPContinuous | None = None

    def __len__(self) -> int:
        return int(self.source_id.shape[0])

    def catalog_flux(self, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
        """(flux, ivar) in the catalog unit (XP_FLUX_SCALE); 0 / 0 where undefined."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ivar = np.square(XP_FLUX_SCALE / self.flux_error).astype(dtype)
            flux = (self.flux / XP_FLUX_SCALE).astype(dtype)
        bad = ~(np.isfinite(ivar) & (ivar > 0) & np.isfinite(flux))
        ivar[bad] = 0.0
        flux[bad] = 0.0
        return flux, ivar

    def snr(self) -> np.ndarray:
        """(N,) float32 median of flux / flux_error over the defined pixels (NaN if none)."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ratio = (self.flux / self.flux_error).astype(np.float32)   # half the traffic
        good = np.isfinite(ratio) & (self.flux_error > 0)
        count = good.sum(axis=1)
        out = np.full(len(count), np.nan, dtype=np.float32)
        full = count == ratio.shape[1]          # the usual case: a partition, not a sort
        out[full] = np.median(ratio[full], axis=1)
        part = np.flatnonzero(~full & (count > 0))
        if part.size:   # a varying number of good pixels: sort with the bad ones last (inf)
            r = np.sort(np.where(good[part], ratio[part], np.inf), axis=1)
            c = count[part][:, None]
            lo = np.take_along_axis(r, (c - 1) // 2, axis=1)[:, 0]
            out[part] = 0.5 * (lo + np.take_along_axis(r, c // 2, axis=1)[:, 0])
        return out


# --------------------------------------------------------------------------- columns

def _float_column(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if pa.types.is_null(col.type):
        return np.full(len(col), np.nan)
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)


def _matrix(col: pa.ChunkedArray | pa.Array, width: int, name: str, path) -> np.ndarray:
    """A list column as (n, width) float64; null or empty cells -> NaN rows."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    out = np.full((len(arr), width), np.nan)
    if pa.types.is_null(arr.type):
        return out
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        parsed = parse_array_strings(arr)
        if parsed is None:
            raise ReaderError(path, f"column {name!r} holds text that is not an array of "
                                    f"numbers like '(1.0, 2.0, ...)'")
        arr = parsed
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)
            or pa.types.is_fixed_size_list(arr.type)):
        raise ReaderError(path, f"column {name!r} should hold arrays of {width} numbers; "
                                f"found type {arr.type}")
    lengths = np.asarray(pc.list_value_length(arr).fill_null(0))
    if width == xb.N_CORR and np.all(lengths[lengths > 0] == xb.N_COEFF ** 2):
        full = _matrix(arr, xb.N_COEFF ** 2, name, path).reshape(-1, xb.N_COEFF, xb.N_COEFF)
        return full[:, xb.CORR_I, xb.CORR_J]
    wrong = np.flatnonzero((lengths > 0) & (lengths != width))
    if wrong.size:
        raise ReaderError(path, f"column {name!r}: row {int(wrong[0])} has "
                                f"{int(lengths[wrong[0]])} values, expected {width} "
                                f"({wrong.size} such row(s)); not a Gaia DR3 XP table?")
    valid = lengths == width
    if valid.any():
        values = arr.filter(pa.array(valid)).flatten()
        out[valid] = _float_column(values).reshape(-1, width)
    return out


def _per_coefficient(cols: dict[str, str], table, band: str, error: bool, path) -> np.ndarray:
    """(n, 55) from one column per coefficient (``bp_coeff_0``, ``e_bp_coeff_0``...)."""
    found = {}
    for lower, name in cols.items():
        m = _PER_COEFF.match(lower)
        if m and m.group(2) == band and bool(m.group(1) or m.group(3)) == error:
            found[int(m.group(4))] = name
    if sorted(found) != list(range(xb.N_COEFF)):
        what = f"{band} coefficient {'errors' if error else 'values'}"
        raise ReaderError(path, f"incomplete per-coefficient {what}: found indices "
                                f"{sorted(found)[:5]}...({len(found)}), expected 0..54")
    return np.column_stack([_float_column(table.column(found[k]))
                            for k in range(xb.N_COEFF)])


def _kind(names: list[str]) -> str | None:
    lower = {n.lower() for n in names}
    if {"bp_coefficients", "rp_coefficients"} & lower or any(
            _PER_COEFF.match(n) for n in lower):
        return "continuous"
    if {"source_id", "flux", "flux_error"} <= lower:
        return "sampled"
    return None


def xp_continuous_from_table(table: pa.Table | pa.RecordBatch,
                             path: str | Path | None = None) -> XPContinuous:
    """Build :class:`XPContinuous` from a table of continuous-spectrum rows.

    Raises:
        ReaderError: no rows, no source_id, missing coefficient or error columns, arrays of
            the wrong length.
    """
    cols = {n.lower(): n for n in table.column_names}
    if table.num_rows == 0:
        raise ReaderError(path, "the table has no rows")
    if "source_id" not in cols:
        raise ReaderError(path, f"no source_id column; columns: {table.column_names}")
    sid = table.column(cols["source_id"])
    if sid.null_count:
        raise ReaderError(path, f"{sid.null_count} row(s) have no source_id")
    data: dict = {"source_id": np.asarray(sid.to_numpy(zero_copy_only=False), dtype=np.int64)}
    n = table.num_rows
    per_coefficient = any(_PER_COEFF.match(c) for c in cols)
    required = [f"{b}_{k}" for b in BANDS for k in ("coefficients", "coefficient_errors")]
    missing = [k for k in required if k not in cols]
    if missing and not per_coefficient:
        raise ReaderError(path, f"missing column(s) {missing} (or per-coefficient columns "
                                f"bp_coeff_0..54, e_bp_coeff_0..54, ...); columns: "
                                f"{table.column_names[:12]}{'...' * (table.num_columns > 12)}")
    for b in BANDS:
        for key, error in ((f"{b}_coefficients", False), (f"{b}_coefficient_errors", True)):
            if key in cols:
                data[key] = _matrix(table.column(cols[key]), xb.N_COEFF, key, path)
            else:
                data[key] = _per_coefficient(cols, table, b, error, path)
        key = f"{b}_coefficient_correlations"
        data[key] = _matrix(table.column(cols[key]), xb.N_CORR, key, path) \
            if key in cols else None
        key = f"{b}_n_relevant_bases"
        nrel = _float_column(table.column(cols[key])) if key in cols else np.zeros(n)
        data[key] = np.where(np.isfinite(nrel), nrel, 0).astype(np.int64)
        key = f"{b}_standard_deviation"
        std = _float_column(table.column(cols[key])) if key in cols else np.full(n, np.nan)
        data[key] = std
        # GaiaXPy drops a band whose coefficients, errors or (given) LSQ sigma are missing.
        ok = np.isfinite(data[f"{b}_coefficients"]).all(axis=1)
        ok &= np.isfinite(data[f"{b}_coefficient_errors"]).all(axis=1)
        if key in cols:
            ok &= np.isfinite(std)
        for k in (f"{b}_coefficients", f"{b}_coefficient_errors"):
            data[k][~ok] = np.nan
    for key in ("ra", "dec"):
        data[key] = _float_column(table.column(cols[key])) if key in cols else np.full(n, np.nan)
    return XPContinuous(**data, path=None if path is None else str(path))


def read_xp_continuous(path: str | Path) -> XPContinuous:
    """Read a whole continuous-spectrum table (any format); see :func:`xp_continuous_from_table`."""
    return xp_continuous_from_table(read_table(path), path)


# --------------------------------------------------------------------------- calibrate

def calibrate(xp: XPContinuous, *, grid_nm: np.ndarray | None = None, truncation: bool = False,
              correlations: bool = True, batch_size: int = 16384,
              error_precision: str = "single") -> XPSampled:
    """Sample continuous XP spectra: GaiaXPy's ``calibrate`` for all sources at once.

    Args:
        xp: the continuous spectra.
        grid_nm: sampling in nm (None: GaiaXPy's default 336-1020 nm, 2 nm).
        truncation: keep only the first ``n_relevant_bases`` coefficients per band (GaiaXPy's
            ``truncation=True``; off by default there and here; 0 = keep all).
        correlations: use the coefficient correlations when the table has them (as GaiaXPy
            does); False propagates the errors as if uncorrelated (faster, underestimates).
        batch_size: sources per block: bounds the temporaries (~10 kB a source) besides the
            (N, n) float64 outputs.
        error_precision: arithmetic of the correlation term of the errors: ``"single"``
            (twice as fast, within ~1e-6 of double) or ``"double"`` (see ``xp_basis.sample``).
    Returns:
        :class:`XPSampled` with flux and flux_error in W m^-2 nm^-1. Where a band is missing
        the other band is used alone and its uncovered range is NaN; sources with neither
        band are all NaN.
    """
    design = xb.xp_design(grid_nm)
    n = len(xp)
    flux = np.empty((n, design.npix))
    error = np.empty((n, design.npix))
    keys = [f"{b}_{k}" for k in ("coefficients", "coefficient_errors",
                                  "coefficient_correlations") for b in BANDS]
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        arrays = {k: None if getattr(xp, k) is None else getattr(xp, k)[sl] for k in keys}
        if not correlations:
            arrays["bp_coefficient_correlations"] = arrays["rp_coefficient_correlations"] = None
        if truncation:
            for b in BANDS:
                nrel = getattr(xp, f"{b}_n_relevant_bases")[sl]
                cut = np.arange(xb.N_COEFF) >= np.where(nrel > 0, nrel, xb.N_COEFF)[:, None]
                # A zero error drops the coefficient from every covariance term too.
                for k in (f"{b}_coefficients", f"{b}_coefficient_errors"):
                    arrays[k] = np.where(cut, 0.0, arrays[k])
        xb.sample(*arrays.values(), design=design, out=(flux[sl], error[sl]),
                  error_precision=error_precision)
    return XPSampled(source_id=xp.source_id.copy(), wavelength_nm=design.wavelength_nm.copy(),
                     flux=flux, flux_error=error, ra=xp.ra, dec=xp.dec, path=xp.path,
                     continuous=xp)


# --------------------------------------------------------------------------- sampled tables

def _sampling_from(table: pa.Table | pa.RecordBatch, path: Path, width: int) -> np.ndarray:
    import json

    meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    for key, value in meta.items():
        if key.lower() in ("sampling", "pos"):
            values = value if isinstance(value, list) else \
                parse_array_strings(pa.array([str(value)]))[0].as_py()
            return np.asarray(values, dtype=np.float64)
    sibling = path.with_name(path.name.split(".")[0] + "_sampling.csv")
    if sibling.is_file():
        pos = read_table(sibling).column(0).combine_chunks()
        if pa.types.is_list(pos.type):   # GaiaXPy writes one row: pos = "(336.0, ...)"
            return _float_column(pos[0].values)
        return _float_column(pos)
    if width == xb.DEFAULT_GRID_NM.size:
        return xb.DEFAULT_GRID_NM.copy()
    raise ReaderError(path, f"sampled XP table with {width} samples and no sampling "
                            f"information (no 'sampling' metadata, no {sibling.name}); "
                            f"put GaiaXPy's sampling file next to it")


def xp_sampled_from_table(table: pa.Table | pa.RecordBatch, path: str | Path) -> XPSampled:
    """Build :class:`XPSampled` from GaiaXPy ``calibrate`` output rows."""
    path = Path(path)
    cols = {n.lower(): n for n in table.column_names}
    if "xp" in cols:
        raise ReaderError(path, "this is GaiaXPy 'convert' output (per-band pseudo-wavelength "
                                "spectra in e-/s), not calibrated flux; use 'calibrate' output")
    if table.num_rows == 0:
        raise ReaderError(path, "the table has no rows")
    first = table.column(cols["flux"])
    lengths = pc.list_value_length(parse_array_strings(first) or first)
    width = int(pc.max(lengths).as_py() or 0)
    if width < 2:
        raise ReaderError(path, "column 'flux' holds no arrays")
    wave = _sampling_from(table, path, width)
    if wave.size != width:
        raise ReaderError(path, f"sampling has {wave.size} wavelengths but flux arrays have "
                                f"{width} values")
    n = table.num_rows
    ra = _float_column(table.column(cols["ra"])) if "ra" in cols else np.full(n, np.nan)
    dec = _float_column(table.column(cols["dec"])) if "dec" in cols else np.full(n, np.nan)
    return XPSampled(
        source_id=np.asarray(table.column(cols["source_id"]).to_numpy(zero_copy_only=False),
                             dtype=np.int64),
        wavelength_nm=wave, flux=_matrix(first, width, "flux", path),
        flux_error=_matrix(table.column(cols["flux_error"]), width, "flux_error", path),
        ra=ra, dec=dec, path=str(path))


def read_xp_sampled(path: str | Path) -> XPSampled:
    """Read a GaiaXPy sampled-spectra table (CSV/ECSV/FITS/VOTable/Parquet)."""
    return xp_sampled_from_table(read_table(path), path)


# --------------------------------------------------------------------------- registry

def identify(path: str | Path) -> bool:
    """True for a table with BP/RP coefficient columns or sampled flux arrays; never raises."""
    try:
        return _kind(read_column_names(path)) is not None
    except Exception:  # noqa: BLE001 - identify must never raise
        return False


def iter_xp_sampled(path: str | Path, batch_size: int = 8192) -> Iterator[XPSampled]:
    """Stream a continuous or sampled XP table as calibrated :class:`XPSampled` blocks."""
    path = Path(path)
    kind = _kind(read_column_names(path))
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
