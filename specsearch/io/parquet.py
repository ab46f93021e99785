"""Partitioned Parquet datasets: the storage shared by catalogs and embeddings.

A dataset is a directory with a JSON manifest (``<kind>.json``) and one sub-folder per
modality holding ``part-NNNNN.parquet`` files. Files are written atomically
(:func:`specsearch.fsutil.atomic_path`: temp file in the same folder, fsync, rename), so a
reader never sees a half-written file and a killed writer leaves only complete files behind.
Reading streams record batches; nothing loads a whole dataset.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from specsearch.errors import CatalogError
# The atomic writers live in fsutil; this old import path still works.
from specsearch.fsutil import (  # noqa: F401
    atomic_path,
    write_bytes_atomic,
    write_json_atomic,
)

FORMAT_VERSION = 1
_PART_RE = re.compile(r"^(?P<prefix>.+)-(?P<num>\d{5,})\.parquet$")


# --------------------------------------------------------------------------- Parquet files

ROW_GROUP_BYTES = 64 * 1024 * 1024
"""Target size of a Parquet row group (uncompressed): big enough for fast scans, small
enough that a reader (or a Ray read task) holds only a few of them."""
READ_BUFFER_BYTES = 1024 * 1024
"""Readers stream column chunks through a buffer of this size instead of loading a whole
row group's columns (files written elsewhere may have row groups of GBs)."""


def row_group_rows(table: pa.Table, target_bytes: int = ROW_GROUP_BYTES) -> int:
    """Rows per row group for ``table`` so that a group holds about ``target_bytes``."""
    if table.num_rows == 0:
        return 1
    per_row = max(1, table.nbytes // table.num_rows)
    return int(max(256, min(table.num_rows, target_bytes // per_row)))


def float_list_leaves(schema: pa.Schema) -> list[str]:
    """Parquet leaf paths of the schema's list-of-float columns (spectra, coefficients)."""
    leaves = []
    for f in schema:
        t = f.type
        if (pa.types.is_list(t) or pa.types.is_fixed_size_list(t)) \
                and pa.types.is_floating(t.value_type):
            leaves.append(f"{f.name}.list.element")
    return leaves


def write_table_atomic(table: pa.Table, path: str | Path, *,
                       compression: str = "zstd") -> Path:
    """Write a pyarrow Table to a Parquet file atomically (row groups of ~64 MB).

    List-of-float columns (flux, ivar, coefficients) are written with BYTE_STREAM_SPLIT
    pages and no dictionary: the same Arrow schema for every reader, but their decoding
    costs ~1.5x less CPU (a LAMOST spectrum 73 -> 50 us) and the files are smaller (29.0
    -> 23.2 KiB a LAMOST spectrum in a probe; BENCHMARKS.md, embedding builder); a
    dictionary of float pixels never pays off.
    """
    leaves = float_list_leaves(table.schema)
    listed = {leaf.split(".", 1)[0] for leaf in leaves}
    other = [f.name for f in table.schema if f.name not in listed]
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=compression,
                       row_group_size=row_group_rows(table),
                       use_dictionary=other if leaves else True,
                       use_byte_stream_split=leaves or False)
    return Path(path)


def open_parquet(path: str | Path) -> pq.ParquetFile:
    """A ParquetFile that streams its column chunks (bounded memory, any row-group size)."""
    return pq.ParquetFile(path, buffer_size=READ_BUFFER_BYTES, pre_buffer=False)


# --------------------------------------------------------------------------- columns

def fixed_list_type(length: int, value_type: pa.DataType = pa.float32()) -> pa.DataType:
    return pa.list_(value_type, length)


def array_to_fixed_list(values: np.ndarray, value_type: pa.DataType = pa.float32()) -> pa.Array:
    """(n, m) numpy array -> FixedSizeListArray of length-m lists (no per-row Python loop)."""
    arr = np.ascontiguousarray(values)
    if arr.ndim != 2:
        raise CatalogError(f"a list column needs a 2-D array, got shape {arr.shape}")
    flat = pa.array(arr.reshape(-1).astype(value_type.to_pandas_dtype(), copy=False),
                    type=value_type)
    return pa.FixedSizeListArray.from_arrays(flat, arr.shape[1])


def list_column_to_numpy(column: pa.Array | pa.ChunkedArray, dtype=np.float32) -> np.ndarray:
    """A fixed-size list column -> (n, m) numpy array (zero-copy for one chunk, no nulls)."""
    if isinstance(column, pa.ChunkedArray):
        chunks = [list_column_to_numpy(c, dtype) for c in column.chunks]
        if not chunks:
            size = column.type.list_size if pa.types.is_fixed_size_list(column.type) else 0
            return np.zeros((0, size), dtype=dtype)
        return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    if not pa.types.is_fixed_size_list(column.type):
        raise CatalogError(f"expected a fixed-size list column, got type {column.type}")
    size = column.type.list_size
    if column.null_count:
        raise CatalogError(f"list column has {column.null_count} null rows; expected none")
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), size).astype(dtype, copy=False)


def columns_to_table(columns: Mapping[str, Any] | pa.Table | pa.RecordBatch,
                     schema: pa.Schema) -> pa.Table:
    """Build a table that conforms to ``schema`` from a dict of columns or a table.

    Required fields of ``schema`` must be present; list fields accept 2-D numpy arrays;
    columns not in ``schema`` are kept with their inferred types (appended after).
    """
    if isinstance(columns, pa.RecordBatch):
        columns = pa.Table.from_batches([columns])
    if isinstance(columns, pa.Table):
        columns = {name: columns.column(name) for name in columns.column_names}
    n_rows = {k: len(v) for k, v in columns.items()}
    if len(set(n_rows.values())) > 1:
        raise CatalogError(f"columns have different lengths: {n_rows}")
    n = next(iter(n_rows.values()), 0)
    arrays, fields = [], []
    for f in schema:
        if f.name not in columns:
            if f.nullable:
                arrays.append(pa.nulls(n, type=f.type))
                fields.append(f)
                continue
            raise CatalogError(f"missing required column {f.name!r} ({f.type})")
        arrays.append(_to_arrow(columns[f.name], f))
        fields.append(f)
    for name, values in columns.items():
        if schema.get_field_index(name) >= 0:
            continue
        arr = _to_arrow(values, None)
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema.metadata))


def _to_arrow(values: Any, f: pa.Field | None) -> pa.Array:
    name = f.name if f is not None else "column"
    try:
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if isinstance(values, pa.Array):
            return values if f is None or values.type == f.type else values.cast(f.type)
        if isinstance(values, np.ndarray) and values.ndim == 2:
            value_type = f.type.value_type if f is not None else pa.from_numpy_dtype(values.dtype)
            arr = array_to_fixed_list(values, value_type)
            if f is not None and arr.type != f.type:
                raise CatalogError(
                    f"column {name!r}: expected {f.type}, got a {values.shape} array")
            return arr
        return pa.array(values, type=None if f is None else f.type, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        expected = f.type if f is not None else "an Arrow-convertible array"
        raise CatalogError(f"column {name!r}: cannot convert to {expected}: {exc}") from exc


# --------------------------------------------------------------------------- datasets

@dataclass
class DatasetWriter:
    """Buffer rows of one modality and write them as atomic Parquet parts.

    Parts are numbered after the ones already in the folder, so several runs (or several
    writers with distinct ``file_prefix``) can add to one dataset without clobbering.
    """

    folder: Path
    schema: pa.Schema
    rows_per_file: int = 50_000
    file_prefix: str = "part"
    written: list[Path] = field(default_factory=list)
    rows_written: int = 0
    _buffer: list[pa.Table] = field(default_factory=list)
    _buffered: int = 0

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.rows_per_file < 1:
            raise CatalogError(f"rows_per_file must be >= 1, got {self.rows_per_file}")
        existing = [int(m["num"]) for p in self.folder.glob(f"{self.file_prefix}-*.parquet")
                    if (m := _PART_RE.match(p.name)) and m["prefix"] == self.file_prefix]
        self._next = max(existing, default=-1) + 1

    def write(self, columns: Mapping[str, Any] | pa.Table | pa.RecordBatch) -> None:
        table = columns_to_table(columns, self.schema)
        if table.num_rows == 0:
            return
        self._buffer.append(table)
        self._buffered += table.num_rows
        while self._buffered >= self.rows_per_file:
            self._flush(self.rows_per_file)

    def _flush(self, n: int) -> None:
        table = pa.concat_tables(self._buffer, promote_options="permissive")
        head, rest = table.slice(0, n), table.slice(n)
        path = self.folder / f"{self.file_prefix}-{self._next:05d}.parquet"
        write_table_atomic(head.combine_chunks(), path)
        self._next += 1
        self.written.append(path)
        self.rows_written += head.num_rows
        self._buffer = [rest] if rest.num_rows else []
        self._buffered = rest.num_rows

    def close(self) -> list[Path]:
        if self._buffered:
            self._flush(self._buffered)
        return list(self.written)


class ModalityWriter:
    """Base of the catalog and embeddings writers: one modality, atomic parts, a context
    manager whose exit flushes what was written (every finished row is kept, even when
    the body raised)."""

    _writer: DatasetWriter

    @property
    def rows_written(self) -> int:
        return self._writer.rows_written

    def write(self, columns: Mapping[str, Any] | pa.Table | pa.RecordBatch) -> None:
        self._writer.write(columns)

    def close(self) -> list[Path]:
        return self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


class PartitionedDataset:
    """Read access to a partitioned dataset (catalog or embeddings)."""

    kind = "dataset"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        manifest = self.root / f"{self.kind}.json"
        if not self.root.is_dir():
            raise CatalogError(f"{self.root}: no such {self.kind} directory")
        if not manifest.is_file():
            raise CatalogError(
                f"{self.root}: not a specsearch {self.kind}: {manifest.name} is missing "
                f"(create one with the specsearch writer for this kind of dataset)")
        try:
            self.manifest: dict[str, Any] = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CatalogError(f"{manifest}: unreadable manifest: {exc}") from exc
        version = self.manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise CatalogError(
                f"{manifest}: format_version {version!r} is not supported "
                f"(this specsearch reads version {FORMAT_VERSION}); rebuild the {self.kind}")

    @property
    def modalities(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and any(p.glob("*.parquet")))

    def files(self, modality: str) -> list[Path]:
        files = sorted((self.root / modality).glob("*.parquet"))
        if not files:
            raise CatalogError(
                f"{self.root}: no {modality!r} data (modalities present: {self.modalities})")
        return files

    def schema(self, modality: str) -> pa.Schema:
        return pq.read_schema(self.files(modality)[0])

    def count(self, modality: str) -> int:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.files(modality))

    def iter_batches(self, modality: str, columns: list[str] | None = None,
                     batch_size: int = 8192) -> Iterator[pa.RecordBatch]:
        """Stream record batches of one modality, file by file (bounded memory)."""
        for path in self.files(modality):
            yield from iter_file_batches(path, columns=columns, batch_size=batch_size)

    def read_column(self, modality: str, column: str) -> pa.ChunkedArray:
        """One (small) column of a modality, e.g. source_id, for joins and lookups."""
        tables = [pq.read_table(p, columns=[column]) for p in self.files(modality)]
        return pa.concat_tables(tables).column(column)


def iter_file_batches(path: Path, columns: list[str] | None = None,
                      batch_size: int = 8192) -> Iterator[pa.RecordBatch]:
    """Stream the record batches of one Parquet file, with errors that name the file."""
    try:
        pf = open_parquet(path)
        missing = [c for c in (columns or []) if c not in pf.schema_arrow.names]
        if missing:
            raise CatalogError(f"{path}: missing column(s) {missing}; "
                               f"present: {pf.schema_arrow.names}")
        yield from pf.iter_batches(batch_size=batch_size, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise CatalogError(f"{path}: unreadable Parquet file: {exc}") from exc
