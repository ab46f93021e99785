"""What the index builder reads: the :class:`EmbeddingSource` protocol (an embeddings
dataset, :class:`specsearch.io.embeddings.Embeddings`) and :class:`ArrayEmbeddings`, the same
columns from in-memory arrays (benchmarks, tests, notebooks)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from specsearch.errors import ConfigError


class EmbeddingSource(Protocol):
    """What the builder reads: :class:`specsearch.io.embeddings.Embeddings` or
    :class:`ArrayEmbeddings`."""

    model_hash: str
    embedding_dim: int
    label_names: list[str]
    modalities: list[str]

    def count(self, modality: str) -> int: ...
    def schema(self, modality: str) -> pa.Schema: ...
    def iter_batches(self, modality: str, columns: list[str] | None = None,
                     batch_size: int = 8192) -> Iterator[pa.RecordBatch]: ...


class ArrayEmbeddings:
    """An in-memory embeddings source with the embeddings dataset's columns (benchmarks,
    tests, notebooks): ``{modality: columns}`` where columns hold ``embedding`` (n, D),
    ``source_id`` (n,) int64, optional ``spectrum_id`` and any metadata columns."""

    def __init__(self, data: Mapping[str, Mapping[str, Any] | pa.Table], *, model_hash: str,
                 label_names: list[str] | None = None, class_names: list[str] | None = None
                 ) -> None:
        self.model_hash = model_hash
        self.label_names = list(label_names or [])
        self.class_names = list(class_names or [])
        self.tables: dict[str, pa.Table] = {}
        dims = set()
        for modality, cols in data.items():
            table = cols if isinstance(cols, pa.Table) else _columns_table(cols, modality)
            dims.add(table.schema.field("embedding").type.list_size)
            self.tables[modality] = table
        if len(dims) != 1:
            raise ConfigError(f"all modalities need one embedding dimension; got {dims}")
        self.embedding_dim = dims.pop()
        self.modalities = sorted(self.tables)
        self.manifest = {"class_names": self.class_names}

    def count(self, modality: str) -> int:
        return self.tables[modality].num_rows

    def schema(self, modality: str) -> pa.Schema:
        return self.tables[modality].schema

    def iter_batches(self, modality: str, columns: list[str] | None = None,
                     batch_size: int = 8192) -> Iterator[pa.RecordBatch]:
        table = self.tables[modality]
        if columns is not None:
            table = table.select(columns)
        yield from table.to_batches(max_chunksize=batch_size)


def _columns_table(cols: Mapping[str, Any], modality: str) -> pa.Table:
    vectors = np.ascontiguousarray(cols["embedding"], dtype=np.float32)
    n, dim = vectors.shape
    arrays: dict[str, pa.Array] = {
        "spectrum_id": pa.array(cols.get("spectrum_id",
                                         [f"{modality}-{i}" for i in range(n)]), pa.string()),
        "source_id": pa.array(np.asarray(cols["source_id"], dtype=np.int64)),
        "modality": pa.array([modality] * n, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
    }
    for name, values in cols.items():
        if name not in arrays:
            arrays[name] = pa.array(values)
    return pa.table(arrays)
