"""Open an index directory: verify manifests and checksums, load shards, search as one.

:class:`ModalityIndex` is the search primitive over one modality's shards: fan-out to every
shard and an exact merge of the per-shard top-k (FAISS ``ResultHeap``). Because each shard
returns its own exact-or-approximate top-k of *its* rows, the merged top-k equals what one
index over all rows would return (tested). The public query API (filters, metadata,
pagination, cross-modal, encoders) is :class:`specsearch.query.SearchEngine`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from specsearch.errors import QueryError, SearchIndexError
from specsearch.index.atomic import recover
from specsearch.index.config import SearchKnobs
from specsearch.index.hashing import shard_of
from specsearch.index.manifest import (IndexManifest, ModalityManifest, read_index_manifest,
                                       read_modality_manifest)
from specsearch.index.shard import Shard, topk_rows


ROW_BITS = 40
"""A global row id is ``shard << ROW_BITS | row`` (shards up to 2^40 rows each)."""


def global_ids(shard: int, rows: np.ndarray) -> np.ndarray:
    return np.where(rows >= 0, (np.int64(shard) << ROW_BITS) | rows, -1)


def split_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shard, row) of global ids (both -1 where the id is -1)."""
    ids = np.asarray(ids, dtype=np.int64)
    shard = np.where(ids >= 0, ids >> ROW_BITS, -1)
    row = np.where(ids >= 0, ids & ((np.int64(1) << ROW_BITS) - 1), -1)
    return shard, row


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """Exact merge of per-shard (sims, global ids) lists into the global top-k."""
    if len(parts) == 1:
        return parts[0]
    import faiss
    nq = parts[0][0].shape[0]
    heap = faiss.ResultHeap(nq, k, keep_max=True)
    for sims, ids in parts:
        sims = np.where(ids >= 0, sims, -np.inf).astype(np.float32)
        heap.add_result(np.ascontiguousarray(sims), np.ascontiguousarray(ids, dtype=np.int64))
    heap.finalize()
    return heap.D.astype(np.float32), heap.I.astype(np.int64)


def stored_rows(shard: Callable[[int], Any], ids: np.ndarray):
    """The stored rows (pyarrow Table) of non-empty global ``ids``, in their order;
    ``shard(number)`` gives a loaded shard. A few rows from several shards are sliced one by
    one; more (a re-rank window) are taken once per shard and put back in the order asked
    for (500 rows over 4 shards: 0.4 ms instead of 5.5)."""
    import pyarrow as pa
    number, row = split_ids(ids)
    if np.all(number == number[0]):
        return shard(int(number[0])).rows.take(pa.array(row))
    if number.size <= 32:
        return pa.concat_tables([shard(int(s)).rows.slice(int(r), 1)
                                 for s, r in zip(number, row)])
    order = np.argsort(number, kind="stable")           # grouped by shard, stable within
    bounds = np.flatnonzero(np.diff(number[order])) + 1
    parts = [shard(int(number[g[0]])).rows.take(pa.array(row[g]))
             for g in np.split(order, bounds)]
    back = np.empty_like(order)
    back[order] = np.arange(order.size)
    return pa.concat_tables(parts).take(pa.array(back))


def stored_columns(shard: Callable[[int], Any], ids: np.ndarray, names: list[str]
                   ) -> dict[str, np.ndarray]:
    """Numeric rows-table columns ``names`` of non-empty global ``ids``, in their order:
    indexed out of each shard's numpy copy of the column (:meth:`Shard.column`, made once),
    not taken as a table of every column (a re-rank that needs a few columns of its
    window)."""
    number, row = split_ids(ids)
    out: dict[str, np.ndarray] = {}
    groups = [(int(number[0]), slice(None))] if np.all(number == number[0]) else \
        [(int(s), number == s) for s in np.unique(number)]
    for s, sel in groups:
        sh, r = shard(s), row[sel]
        for name in names:
            col = sh.column(name)[r]
            if name not in out:
                out[name] = np.empty(len(ids), col.dtype)
            out[name][sel] = col
    return out


def highest_snr(snr: np.ndarray) -> int:
    """Position of the highest S/N (NaN counts as lowest): the row a source's several rows
    are represented by."""
    return int(np.argmax(np.nan_to_num(np.asarray(snr, float), nan=-np.inf)))


def preferred_position(shard: Any, rows: np.ndarray) -> int:
    """The row of ``shard`` a source's (non-empty) ``rows`` stand for: the highest S/N one
    when there are several, else the first."""
    if len(rows) > 1 and "snr" in shard.rows.column_names:
        return int(rows[highest_snr(shard.column("snr")[rows])])
    return int(rows[0])


def preferred_vector(shard: Any, rows: np.ndarray) -> np.ndarray:
    """(D,) stored vector of a source's preferred row among its (non-empty) ``rows`` of
    ``shard`` (:func:`preferred_position`)."""
    return np.asarray(shard.vectors[preferred_position(shard, rows)], dtype=np.float32)


def preferred_identity(shard: Any, rows: np.ndarray) -> np.ndarray | None:
    """(d,) identity vector of a source's preferred row (:func:`preferred_position`), or
    None (the shard has none, or that row's is missing)."""
    if shard.identity is None:
        return None
    vec = np.asarray(shard.identity[preferred_position(shard, rows)], dtype=np.float32)
    return vec if np.isfinite(vec).all() else None


def stored_identity(shard: Callable[[int], Any], ids: np.ndarray) -> np.ndarray | None:
    """(n, d) float32 identity vectors of non-empty global ``ids`` in their order (NaN rows:
    none), or None when their shards hold none; ``shard(number)`` gives a loaded shard."""
    number, row = split_ids(ids)
    out = None
    for s in np.unique(number):
        held = shard(int(s)).identity
        if held is None:
            continue
        sel = number == s
        if out is None:
            out = np.full((len(ids), held.shape[1]), np.nan, np.float32)
        order = np.argsort(row[sel], kind="stable")   # ascending reads of the memory map
        got = np.asarray(held[row[sel][order]], dtype=np.float32)
        out[np.flatnonzero(sel)[order]] = got
    return out


class ModalityIndex:
    """All shards of one modality, searched as one index."""

    def __init__(self, root: Path, manifest: ModalityManifest, shards: list[Shard]) -> None:
        self.root = root
        self.manifest = manifest
        self.modality = manifest.modality
        self.shards = shards
        self.knobs = manifest.search
        self.count = manifest.count
        """Live rows (fixed for an opened index: updates write a new generation)."""

    @property
    def dim(self) -> int:
        return self.manifest.embedding_dim

    def knn(self, queries: np.ndarray, k: int, *, knobs: SearchKnobs | None = None,
            filter_masks: list[np.ndarray | None] | None = None,
            threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (similarity, global id) for (nq, D) float32 unit queries."""
        knobs = knobs or self.knobs
        if len(self.shards) == 1 and self.shards[0].number == 0 and self.shards[0].count:
            # One shard: its rows are the global ids (shard 0), nothing to merge.
            mask = None if filter_masks is None else filter_masks[0]
            return self.shards[0].knn(queries, k, knobs, filter_mask=mask, threads=threads)
        parts = []
        for s, shard in enumerate(self.shards):
            mask = None if filter_masks is None else filter_masks[s]
            if shard.count == 0 or (mask is not None and not mask.any()):
                continue
            sims, rows = shard.knn(queries, k, knobs, filter_mask=mask, threads=threads)
            parts.append((sims, global_ids(shard.number, rows)))
        if not parts:
            return (np.full((len(queries), k), -np.inf, np.float32),
                    np.full((len(queries), k), -1, np.int64))
        return merge_topk(parts, k)

    def range(self, queries: np.ndarray, threshold: float, *, knobs: SearchKnobs | None = None,
              filter_masks: list[np.ndarray | None] | None = None,
              max_results: int = 10_000) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query: (similarities, global ids) of every row with similarity >= threshold,
        sorted by decreasing similarity, at most ``max_results``."""
        knobs = knobs or self.knobs
        per_query: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in queries]
        for s, shard in enumerate(self.shards):
            mask = None if filter_masks is None else filter_masks[s]
            if shard.count == 0 or (mask is not None and not mask.any()):
                continue
            for i, (sims, rows) in enumerate(shard.range(queries, threshold, knobs,
                                                         filter_mask=mask,
                                                         max_results=max_results)):
                per_query[i].append((sims, global_ids(shard.number, rows)))
        out = []
        for parts in per_query:
            if not parts:
                out.append((np.zeros(0, np.float32), np.zeros(0, np.int64)))
                continue
            sims = np.concatenate([p[0] for p in parts])
            ids = np.concatenate([p[1] for p in parts])
            order = np.argsort(-sims, kind="stable")[:max_results]
            out.append((sims[order], ids[order]))
        return out

    def exact_knn(self, queries: np.ndarray, k: int, *,
                  exclude_ids: np.ndarray | None = None,
                  masks: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over all live rows from the stored vectors (ground truth, tuning);
        ``masks``: per shard, bool masks of the rows to search (with the live ones)."""
        parts = []
        for s, shard in enumerate(self.shards):
            if shard.count == 0:
                continue
            keep = shard.live_mask() if masks is None else shard.allowed(masks[s])
            rows = np.flatnonzero(keep) if keep is not None else None
            n_rows = shard.count if rows is None else len(rows)
            if n_rows == 0:
                continue
            sims, r = [], []
            for start in range(0, n_rows, 100_000):
                sub = (np.arange(start, min(shard.count, start + 100_000)) if rows is None
                       else rows[start:start + 100_000])
                s_, r_ = shard.exact_scan(queries, k + 1, sub)
                sims.append(s_)
                r.append(r_)
            s_all, r_all = topk_rows(np.concatenate(sims, 1), np.concatenate(r, 1), k + 1)
            parts.append((s_all, global_ids(shard.number, r_all)))
        if not parts:
            return (np.full((len(queries), k), -np.inf, np.float32),
                    np.full((len(queries), k), -1, np.int64))
        sims, ids = merge_topk(parts, k + 1)
        if exclude_ids is None:
            return sims[:, :k], ids[:, :k]
        keep = ids != np.asarray(exclude_ids)[:, None]
        return topk_rows(np.where(keep, sims, -np.inf), np.where(keep, ids, -1), k)

    def source_ids(self, ids: np.ndarray) -> np.ndarray:
        """source_id of each global id (any shape; -1 where the id is -1)."""
        if len(self.shards) == 1 and self.shards[0].number == 0:  # global id == row
            column = self.shards[0].column("source_id")
            return np.where(ids >= 0, column[ids], -1)
        shard, row = split_ids(ids.ravel())
        out = np.full(ids.size, -1, np.int64)
        for s in np.unique(shard[shard >= 0]):
            sel = shard == s
            out[sel] = self.shards[s].column("source_id")[row[sel]]
        return out.reshape(ids.shape)

    def locate(self, source_id: int) -> tuple[int, np.ndarray]:
        """(shard index in ``shards``, live rows) of a source_id; rows empty if absent."""
        s = int(shard_of(np.array([source_id]), self.manifest.n_shards)[0])
        return s, self.shards[s].rows_of_source(int(source_id))

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """Stored float32 vectors of global ids (exact copies of the indexed vectors)."""
        shard, row = split_ids(ids)
        if np.any(shard < 0):
            raise QueryError("cannot fetch the vector of a missing result (id -1)")
        return np.stack([np.asarray(self.shards[s].vectors[r], dtype=np.float32)
                         for s, r in zip(shard, row)]) if len(ids) else np.zeros(
                             (0, self.dim), np.float32)


@dataclass
class IndexDirectory:
    """An opened index directory: its top manifest and one :class:`ModalityIndex` each."""

    root: Path
    manifest: IndexManifest
    modalities: dict[str, ModalityIndex]

    def __getitem__(self, modality: str) -> ModalityIndex:
        try:
            return self.modalities[modality]
        except KeyError:
            raise QueryError(f"{self.root}: no index for modality {modality!r}; this index "
                             f"has {sorted(self.modalities)}") from None


def read_manifests(root: Path, *, knobs: SearchKnobs | None = None
                   ) -> tuple[IndexManifest, dict[str, ModalityManifest]]:
    """(top manifest, {modality: manifest}) of an index directory, after finishing or
    rolling back an interrupted update; ``knobs`` replace every modality's tuned knobs."""
    recover(root)
    top = read_index_manifest(root)
    manifests = {}
    for modality in top.modalities:
        m = read_modality_manifest(root, modality, top)
        if knobs is not None:
            m.search = knobs
        manifests[modality] = m
    return top, manifests


def open_index(root: str | Path, *, mmap: bool = True, verify: bool = True,
               knobs: SearchKnobs | None = None) -> IndexDirectory:
    """Open ``root`` read-only.

    Args:
        mmap: memory-map FAISS shards (``IO_FLAG_MMAP | IO_FLAG_READ_ONLY``), stored vectors
            and rows tables; hnswlib shards are always read into RAM.
        verify: check every shard file's sha256 against the manifest (reads every byte once;
            sizes are always checked). Pass False to open huge indexes faster.
        knobs: override the manifest's tuned query knobs (e.g. a larger ``ef_search``).
    Raises:
        SearchIndexError: missing/corrupt manifest or shard, checksum mismatch, modalities
            from different models.
    """
    root = Path(root)
    top, manifests = read_manifests(root, knobs=knobs)
    modalities: dict[str, ModalityIndex] = {}
    for modality, m in manifests.items():
        folder = root / modality
        for entry in m.shards:
            for f in entry.files():
                f.verify(folder, checksum=verify)
        shards = [Shard(folder, entry, m, mmap=mmap) for entry in m.shards]
        modalities[modality] = ModalityIndex(folder, m, shards)
    if not modalities:
        raise SearchIndexError(f"{root}: the manifest lists no modality")
    return IndexDirectory(root=root, manifest=top, modalities=modalities)
