"""Gaia XP tables (pyarrow) as :class:`XPContinuous` / :class:`XPSampled`.

Continuous rows (Gaia DR3 ``xp_continuous_mean_spectrum``) come with array columns
(``bp_coefficients``, ``bp_coefficient_errors``, ``bp_coefficient_correlations``...) or one
column per coefficient (``bp_coeff_0..54`` and ``e_bp_coeff_0..54``); column names are
matched case-insensitively. A source without BP or RP (all values null) keeps NaN rows for
that band. Sampled rows are GaiaXPy ``calibrate`` output (``source_id``, ``flux``,
``flux_error`` arrays; the sampling from the table's metadata, a ``<name>_sampling.csv``
beside a CSV, or GaiaXPy's default grid when there are 343 samples).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from specsearch.errors import ReaderError
from specsearch.io import xp_basis as xb
from specsearch.io.tables import META_KEY, parse_array_strings, read_table
from specsearch.io.xp_spectra import BANDS, XPContinuous, XPSampled

_PER_COEFF = re.compile(r"^(e_)?(bp|rp)_coeff(?:icient)?s?(_err(?:or)?s?)?_(\d+)$")


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


def source_ids(col: pa.ChunkedArray | pa.Array, path) -> np.ndarray:
    """The source_id column as int64; ReaderError for nulls, fractions, text or values
    beyond 64 bits (never a silent truncation)."""
    if col.null_count:
        raise ReaderError(path, f"{col.null_count} row(s) have no source_id")
    try:
        ids = pc.cast(col, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ReaderError(path, f"column source_id must hold 64-bit integers (Gaia DR3 "
                                f"source_id); found {col.type} values that are not: "
                                f"{str(exc)[:120]}") from None
    return np.asarray(ids.to_numpy(zero_copy_only=False), dtype=np.int64)


def xp_table_kind(names: list[str]) -> str | None:
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
    data: dict = {"source_id": source_ids(table.column(cols["source_id"]), path)}
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


def _sampling_from(table: pa.Table | pa.RecordBatch, path: Path, width: int) -> np.ndarray:
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
        source_id=source_ids(table.column(cols["source_id"]), path),
        wavelength_nm=wave, flux=_matrix(first, width, "flux", path),
        flux_error=_matrix(table.column(cols["flux_error"]), width, "flux_error", path),
        ra=ra, dec=dec, path=str(path))
