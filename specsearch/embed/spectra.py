"""Catalog batches -> (n, npix) flux / ivar arrays and the metadata rows that go with them.

Catalogs store spectra as ``FixedSizeList<float32>[npix]`` columns; files written by other
tools may hold variable-length ``list``/``large_list`` columns (rows of the wrong length or
null are dropped and counted). Both decode without a per-row step: the list's child values
are one contiguous float buffer, viewed as (n, npix) without a copy where the layout allows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from specsearch.errors import CatalogError

VECTOR_COLUMNS = ("flux", "ivar")


@dataclass
class SpectraChunk:
    """One catalog batch ready for the model.

    Attributes:
        batch: the catalog rows whose spectra have the grid's length (metadata columns).
        flux, ivar: (n, npix) float32 arrays (numpy, or pinned torch tensors for a GPU).
        skipped: rows dropped before the model, by reason.
    """

    batch: pa.RecordBatch
    flux: Any
    ivar: Any
    skipped: Counter


def metadata_fields(files: Sequence[Path]) -> list[pa.Field]:
    """Catalog columns copied to the embeddings: everything but spectra and list columns.

    The union over all files of a modality (their extra columns may differ: synthetic parts
    carry ``population``, ingested ones ``origin``), so every output file has the same
    columns; a column absent from a file is null there.
    """
    fields: dict[str, pa.Field] = {}
    for path in files:
        for f in pq.read_schema(path):
            if (f.name in VECTOR_COLUMNS or pa.types.is_list(f.type)
                    or pa.types.is_fixed_size_list(f.type)):
                continue
            if f.name not in fields or pa.types.is_null(fields[f.name].type):
                fields[f.name] = f
    return list(fields.values())


def read_columns(path: Path, meta_cols: Sequence[pa.Field]) -> list[str]:
    """The catalog columns the output needs, in file order (spectra, ids, metadata)."""
    wanted = {"spectrum_id", "source_id", *VECTOR_COLUMNS, *(f.name for f in meta_cols)}
    names = pq.read_schema(path).names
    missing = [c for c in ("spectrum_id", "source_id", *VECTOR_COLUMNS) if c not in names]
    if missing:
        raise CatalogError(f"{path}: missing column(s) {missing}; present: {names}")
    return [n for n in names if n in wanted]


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)


def _good_rows(col: pa.Array, npix: int) -> np.ndarray | None:
    """Bool mask of rows with ``npix`` non-null values, or None when every row has them."""
    if pa.types.is_fixed_size_list(col.type):
        if col.type.list_size != npix:
            return np.zeros(len(col), dtype=bool)
        return np.asarray(col.is_valid()) if col.null_count else None
    lengths = np.asarray(col.value_lengths().fill_null(-1))
    good = lengths == npix
    return None if good.all() else good


def list_values(col: pa.Array, npix: int) -> np.ndarray:
    """(n, npix) float32 view of a list column whose rows all hold ``npix`` values.

    The child values of a fixed-size list without nulls, or of a variable list whose
    offsets advance by ``npix`` from its first row, are the rows back to back: they are
    sliced and viewed without a copy. Other layouts (nulls, gaps) go through ``flatten``.
    """
    n = len(col)
    if pa.types.is_fixed_size_list(col.type) and not col.null_count:
        values = col.values.slice(col.offset * npix, n * npix)
    elif not pa.types.is_fixed_size_list(col.type) and not col.null_count and n:
        offsets = np.asarray(col.offsets)
        start = int(offsets[0])
        contiguous = int(offsets[-1]) - start == n * npix
        values = (col.values.slice(start, n * npix) if contiguous else col.flatten())
    else:
        values = col.flatten()
    arr = values.to_numpy(zero_copy_only=False)
    return arr.reshape(n, npix).astype(np.float32, copy=False)


def spectra_arrays(batch: pa.RecordBatch, npix: int, source: str = "catalog"
                   ) -> SpectraChunk:
    """Split a catalog batch into metadata rows and (n, npix) flux / ivar arrays.

    Rows whose flux or ivar is null or does not have ``npix`` values are dropped and
    counted (``skipped``), the others kept. Zero-copy for the catalog layout.
    """
    skipped: Counter = Counter()
    names = batch.schema.names
    for col in VECTOR_COLUMNS:
        if col not in names:
            raise CatalogError(f"{source}: no {col!r} column (present: {names})")
    columns = [batch.column(c) for c in VECTOR_COLUMNS]
    for c, col in zip(VECTOR_COLUMNS, columns):
        if not _is_list(col.type):
            raise CatalogError(f"{source}: column {c!r} must be a list of floats, "
                               f"got {col.type}")
    keep = None
    for col in columns:
        good = _good_rows(col, npix)
        if good is not None:
            keep = good if keep is None else keep & good
    if keep is not None:
        n_bad = int((~keep).sum())
        if n_bad:
            skipped[f"flux/ivar missing or not {npix} pixels"] += n_bad
        batch = batch.filter(pa.array(keep))
        columns = [batch.column(c) for c in VECTOR_COLUMNS]
    flux, ivar = (list_values(col, npix) for col in columns)
    return SpectraChunk(batch, flux, ivar, skipped)
