"""Write candidate lists as Parquet, CSV, VOTable or FITS (every column kept).

TOPCAT users open any of these directly. What each format needs:

* Parquet: written as is (fixed-size list columns stay lists).
* CSV: a fixed-size list column ``x`` of length n becomes columns ``x_1 .. x_n`` (CSV has
  no array type; every value is kept and plottable).
* FITS and VOTable (astropy): list columns become vector columns (FITS ``TFORM = nK``,
  VOTable ``arraysize``), strings fixed-width, integer nulls masked (``TNULL``), float nulls
  NaN; units and descriptions are attached where known.

Writes are atomic (:func:`specsearch.fsutil.atomic_path`: temporary file in the same
directory, fsync, rename).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from specsearch.errors import ConfigError
from specsearch.fsutil import atomic_path

FORMATS: dict[str, tuple[str, ...]] = {
    "parquet": (".parquet", ".pq"),
    "csv": (".csv",),
    "votable": (".vot", ".votable", ".xml"),
    "fits": (".fits", ".fit", ".fts"),
}

UNITS: dict[str, str] = {"ra": "deg", "dec": "deg", "teff": "K", "teff_pred": "K",
                         "teff_err": "K", "mag_g": "mag", "rv": "km/s", "ebv": "mag",
                         "logg": "dex", "feh": "dex", "alpha_fe": "dex"}
for _l in ("logg", "feh", "alpha_fe"):
    UNITS[f"{_l}_pred"] = UNITS[f"{_l}_err"] = "dex"

DESCRIPTIONS: dict[str, str] = {
    "rank": "position in the list (1 = most anomalous / most likely)",
    "anomaly_score": "combined outlier score (robust z of the driving component)",
    "anomaly_driver": "component that set anomaly_score",
    "knn_distance": "cosine distance to the k-th nearest other star in the embedding",
    "lof_ratio": "k-distance over the median k-distance of the star's neighbours",
    "crossmodal_distance": "1 - cos between the star's LAMOST and XP embeddings",
    "recon_residual": "reduced chi of the model's reconstruction of the spectrum",
    "translation_residual": "reduced chi of the spectrum translated to the other instrument",
    "recon_relative": "median relative error of the model's reconstruction of the spectrum",
    "out_of_domain": "true if the model's reconstruction misses the spectrum (a star "
                     "unlike its training stars, or too noisy to read): parameters "
                     "unreliable",
    "artefact_flag": "true if any artefact flag is raised",
    "artefact_reasons": "semicolon-separated names of the raised artefact flags",
    "normal_neighbour_source_id": "source_id of the nearest neighbours that are not outliers",
    "normal_neighbour_similarity": "cosine similarity to those neighbours",
    "p_metal_poor": "calibrated probability that [Fe/H] is below the threshold",
}


def format_of(path: str | Path, fmt: str | None = None) -> str:
    """The output format named by ``fmt`` or by the file suffix."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown output format {fmt!r}; choose from {sorted(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    for name, suffixes in FORMATS.items():
        if suffix in suffixes:
            return name
    known = ", ".join(s for v in FORMATS.values() for s in v)
    raise ConfigError(f"{path}: cannot tell the output format from the suffix {suffix!r}; "
                      f"use one of {known} or pass the format explicitly")


def write_table(table: pa.Table, path: str | Path, *, fmt: str | None = None,
                meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``table`` to ``path`` in ``fmt`` (default: from the suffix), atomically.

    Args:
        meta: provenance (model hash, thresholds...) stored as Parquet key-value metadata,
            FITS header cards or VOTable INFO elements.
    """
    path = Path(path)
    fmt = format_of(path, fmt)
    with atomic_path(path, suffix=path.suffix) as tmp:
        if fmt == "parquet":
            import pyarrow.parquet as pq
            md = dict(table.schema.metadata or {})
            md.update({f"specsearch.{k}".encode(): str(v).encode()
                       for k, v in (meta or {}).items()})
            pq.write_table(table.replace_schema_metadata(md), tmp)
        elif fmt == "csv":
            import pyarrow.csv as pcsv
            pcsv.write_csv(flatten_lists(table), tmp)
        else:
            at = to_astropy(table, meta=meta)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # HIERARCH / unit-parsing chatter
                at.write(tmp, format="fits" if fmt == "fits" else "votable", overwrite=True)
    return path


def flatten_lists(table: pa.Table) -> pa.Table:
    """Fixed-size list columns -> one column per element (``name_1`` ... ``name_n``)."""
    cols, names = [], []
    for name, col in zip(table.column_names, table.columns):
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        if pa.types.is_fixed_size_list(col.type):
            n = col.type.list_size
            flat = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), n)
            for j in range(n):
                cols.append(pa.array(flat[:, j]))
                names.append(f"{name}_{j + 1}")
        else:
            cols.append(col)
            names.append(name)
    return pa.table(cols, names=names)


def to_astropy(table: pa.Table, *, meta: Mapping[str, Any] | None = None):
    """An astropy Table with every column of ``table`` (see the module docstring)."""
    from astropy.table import Column, MaskedColumn, Table

    out = Table()
    for name, col in zip(table.column_names, table.columns):
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        typ = col.type
        kwargs = {"name": name, "unit": UNITS.get(name),
                  "description": DESCRIPTIONS.get(name)}
        if pa.types.is_fixed_size_list(typ):
            values = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col),
                                                                          typ.list_size)
            out.add_column(Column(values, **kwargs))
        elif pa.types.is_list(typ) or pa.types.is_large_list(typ):
            raise ConfigError(f"column {name!r}: variable-length lists cannot be written to "
                              f"FITS/VOTable; make it fixed-size first")
        elif pa.types.is_string(typ) or pa.types.is_large_string(typ) or \
                pa.types.is_dictionary(typ):
            values = col.cast(pa.string()).fill_null("").to_pylist()
            width = max([len(v.encode("utf-8")) for v in values] + [1])
            # FITS strings are ASCII: non-ASCII characters are replaced, never dropped.
            values = [v.encode("ascii", "replace").decode() for v in values]
            out.add_column(Column(np.asarray(values, dtype=f"U{width}"), **kwargs))
        elif pa.types.is_boolean(typ):
            values = col.fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
            if col.null_count:
                out.add_column(MaskedColumn(values, mask=col.is_null().to_numpy(
                    zero_copy_only=False), **kwargs))
            else:
                out.add_column(Column(values, **kwargs))
        elif pa.types.is_integer(typ):
            dtype = typ.to_pandas_dtype()
            values = col.fill_null(0).to_numpy(zero_copy_only=False).astype(dtype)
            if col.null_count:
                out.add_column(MaskedColumn(values, mask=col.is_null().to_numpy(
                    zero_copy_only=False), **kwargs))
            else:
                out.add_column(Column(values, **kwargs))
        elif pa.types.is_floating(typ):
            dtype = np.float64 if pa.types.is_float64(typ) else np.float32
            values = col.cast(pa.float64()).fill_null(np.nan).to_numpy(
                zero_copy_only=False).astype(dtype)
            out.add_column(Column(values, **kwargs))
        else:
            values = col.cast(pa.string()).fill_null("").to_pylist()
            out.add_column(Column(np.asarray(values, dtype=str), **kwargs))
    for k, v in (meta or {}).items():
        out.meta[str(k)[:8].upper() if len(str(k)) <= 8 else str(k)] = \
            v if isinstance(v, (int, float, bool)) else str(v)
    return out
