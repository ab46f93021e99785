"""Library results -> API response models (JSON-safe: NaN -> null, numpy -> Python)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from service.schemas import Domain, Estimate, Neighbour, RadialVelocity, Resolution, Telluric
from specsearch.query import Neighbours

# Columns shown as first-class fields of a neighbour (the rest go to ``metadata``).
FIELDS = ("source_id", "spectrum_id", "modality", "ra", "dec", "snr", "mag_g")
HIDDEN = ("embedding",)


def clean(value: Any) -> Any:
    """A JSON-safe scalar: NaN/inf -> None, numpy -> Python, bytes -> str; lists dropped."""
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple, dict, np.ndarray)):
        return None
    return value


def number(value: Any) -> float | None:
    """A float field's JSON value: None for missing/NaN/inf, else ``float(value)`` (what
    the response models' ``float | None`` fields validate an int or a float to)."""
    value = clean(value)
    return None if value is None else float(value)


def domain(model: Any, modality: str, batch: Any, row: int = 0, *,
           broader: bool = False) -> Domain | None:
    """The domain check of row ``row`` of an ``EmbeddingBatch`` made ``with_domain``
    (None when the batch has no relative residual); ``broader``: the spectrum is broader
    than the model reads (:func:`resolution`), which puts it out of domain too."""
    rel = getattr(batch, "recon_relative", None)
    if rel is None:
        return None
    check = getattr(model, "domain_check", None)
    flags = getattr(batch, "out_of_domain", None)
    coverage = getattr(batch, "window_coverage", None)
    rule = None if check is None else check.coverage.get(modality)
    return Domain(recon_relative=number(rel[row]),
                  threshold=None if check is None else check.thresholds.get(modality),
                  window_coverage=None if coverage is None else number(coverage[row]),
                  min_coverage=None if rule is None else float(rule["min_fraction"]),
                  coverage_window_a=None if rule is None else [float(x) for x in
                                                               rule["window_A"]],
                  out_of_domain=None if flags is None else bool(flags[row]) or broader)


def resolution(grid: Any) -> Resolution | None:
    """Set when a :class:`service.spectra.GridSpectrum` is broader than the model reads."""
    pair = getattr(grid, "broader_fwhm_A", None)
    if pair is None:
        return None
    return Resolution(input_fwhm_a=round(float(pair[0]), 2),
                      model_fwhm_a=round(float(pair[1]), 2))


def telluric(model: Any, grid: Any) -> tuple[Any, Telluric | None]:
    """A :class:`service.spectra.GridSpectrum` checked for telluric absorption left in
    (LAMOST grid): ``(grid, Telluric)``, the grid with its telluric bands masked where the
    model finds the O2 A band (:func:`specsearch.model.telluric.check_telluric`) or the
    request said it is uncorrected (then already masked when it was read)."""
    from dataclasses import replace

    from specsearch.model.telluric import mask_where_found

    if grid.modality != "lamost":
        return grid, None
    if grid.telluric_uncorrected:
        return grid, Telluric(masked=True, source="request")
    ivar, found = mask_where_found(model, grid.flux, grid.ivar, grid.rv_kms)
    info = Telluric(masked=bool(found.detected[0]),
                    source="detected" if found.detected[0] else None,
                    a_band_depth=number(round(float(found.depth[0]), 4)),
                    a_band_sigma=number(round(float(found.sigma[0]), 4)))
    return (replace(grid, ivar=ivar) if found.detected[0] else grid), info


def rv(grid: Any) -> RadialVelocity | None:
    """The radial velocity a :class:`service.spectra.GridSpectrum` had removed, if any."""
    value = number(grid.rv_kms)
    if value is None or grid.rv_source is None:
        return None
    return RadialVelocity(removed_kms=round(value, 1), source=grid.rv_source)


def estimate_fields(row: dict[str, Any], label_names: Sequence[str]
                    ) -> dict[str, dict[str, float | None]]:
    """``{label: {value, err}}`` from a row's ``<label>_pred`` / ``<label>_err`` columns."""
    return {name: {"value": number(row.get(f"{name}_pred")),
                   "err": number(row.get(f"{name}_err"))}
            for name in label_names if f"{name}_pred" in row}


def estimates(row: dict[str, Any], label_names: Sequence[str]) -> dict[str, Estimate]:
    """``{label: Estimate}`` from a row's ``<label>_pred`` / ``<label>_err`` columns."""
    return {name: Estimate(**fields)
            for name, fields in estimate_fields(row, label_names).items()}


def scalar_columns(table: pa.Table) -> list[str]:
    """Columns that are not lists (vectors, coefficient arrays)."""
    return [f.name for f in table.schema
            if not (pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)
                    or pa.types.is_large_list(f.type)) and f.name not in HIDDEN]


def neighbour_fields(row: dict[str, Any], *, rank: int, similarity: float,
                     label_names: Sequence[str], modality: str) -> dict[str, Any]:
    """A :class:`Neighbour` as the plain JSON-safe values it serialises to (the batched
    search responses are built from these without the model: same JSON, less CPU)."""
    preds = estimate_fields(row, label_names)
    used = set(FIELDS) | {f"{n}_pred" for n in preds} | {f"{n}_err" for n in preds}
    return {
        "rank": rank, "source_id": int(row["source_id"]),
        "spectrum_id": str(row.get("spectrum_id") or ""),
        "modality": str(row.get("modality") or modality), "similarity": float(similarity),
        "ra": number(row.get("ra")), "dec": number(row.get("dec")),
        "snr": number(row.get("snr")), "mag_g": number(row.get("mag_g")),
        "predictions": preds,
        "metadata": {k: clean(v) for k, v in row.items() if k not in used}}


def row_to_neighbour(row: dict[str, Any], *, rank: int, similarity: float,
                     label_names: Sequence[str], modality: str) -> Neighbour:
    return Neighbour.model_validate(neighbour_fields(
        row, rank=rank, similarity=similarity, label_names=label_names, modality=modality))


def neighbour_dicts(result: Neighbours, label_names: Sequence[str]) -> list[dict[str, Any]]:
    """:func:`neighbour_fields` of each row of a search result (rank is 1-based)."""
    table = result.metadata.select(scalar_columns(result.metadata))
    names = table.column_names
    columns = [column.to_pylist() for column in table.columns]  # faster than row-wise
    return [neighbour_fields(dict(zip(names, values)), rank=int(r) + 1, similarity=float(s),
                             label_names=label_names, modality=result.modality)
            for values, r, s in zip(zip(*columns), result.rank, result.similarity)]


def neighbours(result: Neighbours, label_names: Sequence[str]) -> list[Neighbour]:
    """One :class:`Neighbour` per row of a search result (rank is 1-based)."""
    return [Neighbour.model_validate(fields) for fields in neighbour_dicts(result,
                                                                           label_names)]


def table_rows(table: pa.Table) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, JSON-safe rows) of a candidate table; list columns become short lists."""
    columns = [f.name for f in table.schema if f.name not in HIDDEN]
    rows = []
    for row in table.select(columns).to_pylist():
        out = {}
        for k, v in row.items():
            if isinstance(v, list):
                out[k] = ", ".join("" if clean(x) is None else str(clean(x)) for x in v[:10])
            else:
                out[k] = clean(v)
        rows.append(out)
    return columns, rows
