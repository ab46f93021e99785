"""Where the outlier scorer, the hunt and "more like this" read rows from.

Two sources hold the same columns (the embeddings dataset's):

* an **index directory** (``specsearch index build``): per modality, shards with stored
  vectors and a rows table (every embeddings column but the vector). Neighbour search then
  uses the index itself (:class:`IndexNeighbours`);
* an **embeddings dataset** (``specsearch embed``): the scorer builds a FAISS index in memory
  (:class:`specsearch.anomaly.neighbours.FaissNeighbours`).

Either way one modality becomes an :class:`EmbeddingTable`: the live rows in a fixed order,
their vectors as one (n, D) float32 array and the other columns as an Arrow table. Any
:class:`NeighbourSearch` returns positions in such a table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa

from specsearch.errors import CatalogError, QueryError
from specsearch.io.embeddings import VECTOR_COLUMNS
from specsearch.io.parquet import list_column_to_numpy


class NeighbourSearch(Protocol):
    """Cosine top-k by batch over one :class:`EmbeddingTable`'s rows (an index directory's
    shards, an in-memory FAISS index...). Rows are positions in the table; -1 marks a missing
    neighbour (FAISS's convention)."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, D) float32 unit queries -> (similarity (n, k) float32, row (n, k) int64)."""
        ...


@dataclass
class EmbeddingTable:
    """One modality's rows: vectors plus every other column.

    Attributes:
        modality: ``lamost`` or ``xp``.
        vectors: (n, D) float32 unit vectors.
        meta: n-row Arrow table (``spectrum_id``, ``source_id``, head predictions
            ``<label>_pred``/``_err``, residuals, metadata...).
        label_names: the model's regression labels (for ``<label>_pred`` columns).
        model_hash: the model that made the vectors.
    """

    modality: str
    vectors: np.ndarray
    meta: pa.Table
    label_names: tuple[str, ...] = ()
    model_hash: str = ""

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def has(self, name: str) -> bool:
        return name in self.meta.column_names

    def column(self, name: str, *, default: float | None = None) -> np.ndarray:
        """A column as numpy (numeric nulls -> NaN; strings -> object array, nulls None).

        Raises:
            QueryError: no such column and no ``default``.
        """
        if name not in self.meta.column_names:
            if default is not None:
                return np.full(len(self), default, dtype=np.float64)
            raise QueryError(f"{self.modality}: no column {name!r}; columns present: "
                             f"{self.meta.column_names}")
        col = self.meta.column(name)
        if pa.types.is_integer(col.type) and col.null_count == 0:
            return col.to_numpy()
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
            return col.cast(pa.float64()).to_numpy(zero_copy_only=False)
        if pa.types.is_boolean(col.type):
            return col.fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
        return np.asarray(col.to_pylist(), dtype=object)

    @property
    def source_id(self) -> np.ndarray:
        return self.column("source_id").astype(np.int64)

    @property
    def spectrum_id(self) -> np.ndarray:
        if self.has("spectrum_id"):
            return self.column("spectrum_id")
        return np.asarray([f"{self.modality}-{s}" for s in self.source_id], dtype=object)

    def rows_of_sources(self, source_ids: Sequence[int]) -> np.ndarray:
        """Row positions of the given source_ids (all visits of each); QueryError if one is
        absent."""
        sid = self.source_id
        order = np.argsort(sid, kind="stable")
        sorted_ids = sid[order]
        out = []
        for s in source_ids:
            lo, hi = np.searchsorted(sorted_ids, [int(s), int(s) + 1])
            if lo == hi:
                raise QueryError(f"source_id {int(s)} is not in the {self.modality} data "
                                 f"({len(sid)} rows)")
            out.append(order[lo:hi])
        return np.concatenate(out) if out else np.zeros(0, np.int64)


def table_from_embeddings(root: str | Path, modality: str, *,
                          batch_size: int = 65_536) -> EmbeddingTable:
    """Read one modality of an embeddings dataset (streamed, then concatenated)."""
    from specsearch.io.embeddings import open_embeddings

    emb = open_embeddings(root)
    if modality not in emb.modalities:
        raise CatalogError(f"{emb.root}: no {modality!r} embeddings (present: "
                           f"{emb.modalities})")
    vecs, metas = [], []
    for batch in emb.iter_batches(modality, batch_size=batch_size):
        vecs.append(list_column_to_numpy(batch.column("embedding"), np.float32))
        table = pa.Table.from_batches([batch])
        metas.append(table.drop_columns([c for c in VECTOR_COLUMNS
                                         if c in table.column_names]))
    vectors = np.concatenate(vecs) if vecs else np.zeros((0, emb.embedding_dim), np.float32)
    meta = pa.concat_tables(metas, promote_options="permissive") if metas else pa.table({})
    return EmbeddingTable(modality=modality, vectors=_unit(vectors), meta=meta,
                          label_names=tuple(emb.label_names), model_hash=emb.model_hash)


def _unit(v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.where(norms > 0, norms, 1.0)).astype(np.float32, copy=False)


class IndexNeighbours:
    """Neighbour search through a built index (:class:`specsearch.index.ModalityIndex`),
    returning row positions of the :class:`EmbeddingTable` made by :func:`table_from_index`.

    The index's own backend and tuned knobs are used (FAISS HNSW/IVF/flat or hnswlib,
    fanned out over its shards and merged exactly).
    """

    def __init__(self, modality_index, position_of_global: np.ndarray,
                 shard_base: np.ndarray, *, threads: int | None = None) -> None:
        self.index = modality_index
        self._pos = position_of_global
        self._base = shard_base
        self.threads = threads

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import os

        from specsearch.index.reader import split_ids

        threads = self.threads or os.cpu_count() or 1
        sims, ids = self.index.knn(np.ascontiguousarray(queries, dtype=np.float32), k,
                                   threads=threads)
        shard, row = split_ids(ids)
        pos = np.where(ids >= 0, self._pos[np.where(ids >= 0, self._base[shard] + row, 0)], -1)
        return sims, pos.astype(np.int64)


def table_from_index(index_dir, modality: str, *, threads: int | None = None
                     ) -> tuple[EmbeddingTable, IndexNeighbours]:
    """One modality of an opened index directory (``specsearch.index.open_index``) as an
    :class:`EmbeddingTable` (live rows, shard by shard) plus a searcher over the index."""
    mindex = index_dir[modality]
    vecs, metas, pos_parts = [], [], []
    base = np.zeros(len(mindex.shards) + 1, dtype=np.int64)
    n_live = 0
    for i, shard in enumerate(mindex.shards):
        live = shard.live_mask()
        rows = np.arange(shard.count) if live is None else np.flatnonzero(live)
        pos = np.full(shard.count, -1, dtype=np.int64)
        pos[rows] = n_live + np.arange(rows.size)
        n_live += rows.size
        pos_parts.append(pos)
        base[i + 1] = base[i] + shard.count
        vecs.append(np.asarray(shard.vectors[rows], dtype=np.float32))
        metas.append(shard.rows.take(pa.array(rows)))
    # Shards are searched by their number; map numbers to our order of shards.
    shard_base = np.zeros(max([s.number for s in mindex.shards], default=0) + 1, np.int64)
    for i, shard in enumerate(mindex.shards):
        shard_base[shard.number] = base[i]
    vectors = np.concatenate(vecs) if vecs else np.zeros((0, mindex.dim), np.float32)
    meta = pa.concat_tables(metas, promote_options="permissive") if metas else pa.table({})
    table = EmbeddingTable(modality=modality, vectors=_unit(vectors), meta=meta,
                           label_names=tuple(index_dir.manifest.label_names),
                           model_hash=index_dir.manifest.model_hash)
    searcher = IndexNeighbours(mindex, np.concatenate(pos_parts) if pos_parts
                               else np.zeros(0, np.int64), shard_base, threads=threads)
    return table, searcher
