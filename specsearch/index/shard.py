"""One shard at query time: ANN backend + stored vectors + rows table + tombstones.

Every shard answers k-NN the same way, whatever its backend:

1. rows allowed = filter mask AND not deleted (None when everything is allowed: fast path);
2. if few rows are allowed (selective filters), an exact scan over exactly those rows'
   stored vectors: the true top-k among passing rows, at a cost proportional to the rows
   that pass (this is how a 1% filter keeps recall 1.0);
3. otherwise the backend searches with an ID selector (FAISS ``IDSelectorBitmap`` / hnswlib
   filter callable), with ``ef_search``/``nprobe`` raised by the inverse pass fraction so the
   graph/cells still yield k passing candidates;
4. quantised backends re-rank ``refine_factor * k`` candidates with exact float32 inner
   products inside FAISS (``IndexRefineFlat``, see :mod:`specsearch.index.backends`).
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from specsearch.errors import QueryError, SearchIndexError
from specsearch.index.backends import Backend, load_backend
from specsearch.index.config import SearchKnobs
from specsearch.index.manifest import ModalityManifest, ShardEntry
from specsearch.io.embeddings import IDENTITY_COLUMN, identity_vectors

EXACT_SCAN_ROWS = 2_000
"""A filtered shard query scans exactly when at most this many rows pass, or at most
:data:`EXACT_SCAN_FRACTION` of the shard: then a scan of the passing rows is cheaper than a
graph walk / list scan that rejects most candidates, and it is exact. Above that, the ANN
search with an ID selector (and boosted ef/nprobe) is much cheaper than scanning (at 50%
selectivity: ~2x an unfiltered query vs a scan of half the shard)."""
EXACT_SCAN_FRACTION = 0.02
MAX_FILTER_BOOST = 16.0
"""Cap on the ef_search/nprobe multiplier for filtered ANN search. IVF lists hold the pass
fraction f of their rows, so nprobe grows by 1/f; a filtered HNSW walk already continues
until it holds ef passing candidates, so ef grows more slowly, by (1/f)^0.75 (at 50%: 1.7x;
at 10%: 5.6x; very selective filters take the exact scan instead)."""
SCAN_CACHE_BYTES = 64 << 20
"""Gathered vectors of a selective filter are kept (per shard, last few filters) up to this
size, so repeated queries with one filter do not re-read scattered rows."""


def topk_rows(sims: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of each query row of (nq, m) ``sims``/``rows`` sorted by similarity, padded
    with -inf / -1 when m < k."""
    nq, m = sims.shape
    out_s = np.full((nq, k), -np.inf, dtype=np.float32)
    out_r = np.full((nq, k), -1, dtype=np.int64)
    take = min(k, m)
    if take == 0:
        return out_s, out_r
    sims = np.where(rows >= 0, sims, -np.inf)
    if take < m:
        part = np.argpartition(-sims, take - 1, axis=1)[:, :take]
        sims_p = np.take_along_axis(sims, part, axis=1)
        rows_p = np.take_along_axis(rows, part, axis=1)
    else:
        sims_p, rows_p = sims, rows
    order = np.argsort(-sims_p, axis=1, kind="stable")
    out_s[:, :take] = np.take_along_axis(sims_p, order, axis=1)
    out_r[:, :take] = np.take_along_axis(rows_p, order, axis=1)
    out_r[~np.isfinite(out_s)] = -1
    return out_s, out_r


class Shard:
    """A loaded shard. ``mmap=True`` maps the FAISS index, vectors and rows table read-only."""

    def __init__(self, folder: Path, entry: ShardEntry, manifest: ModalityManifest, *,
                 mmap: bool = True, backend: Backend | None = None) -> None:
        self.folder = Path(folder)
        self.entry = entry
        self.manifest = manifest
        self.number = entry.shard
        self.count = entry.count
        self.backend = backend or load_backend(folder / entry.index.name, manifest.backend,
                                               manifest.embedding_dim, mmap=mmap,
                                               count=entry.count)
        if self.backend.ntotal != entry.count:
            raise SearchIndexError(f"{folder / entry.index.name}: index holds "
                                   f"{self.backend.ntotal} rows, manifest says {entry.count}")
        self.backend.set_default_knobs(manifest.search)
        self.vectors = np.load(folder / entry.vectors.name, mmap_mode="r" if mmap else None)
        if self.vectors.shape != (entry.count, manifest.embedding_dim):
            raise SearchIndexError(f"{folder / entry.vectors.name}: shape {self.vectors.shape},"
                                   f" expected ({entry.count}, {manifest.embedding_dim})")
        # One chunk per column: taking a few result rows from a many-chunk table costs ~8 ms
        # at 1M rows (a per-chunk search), from one chunk ~0.05 ms.
        self.rows: pa.Table = pq.read_table(folder / entry.rows.name,
                                            memory_map=mmap).combine_chunks()
        if self.rows.num_rows != entry.count:
            raise SearchIndexError(f"{folder / entry.rows.name}: {self.rows.num_rows} rows, "
                                   f"manifest says {entry.count}")
        self.identity: np.ndarray | None = None
        """(count, identity_dim) identity vectors (NaN rows: none), or None."""
        if entry.identity is not None:
            self.identity = np.load(folder / entry.identity.name,
                                    mmap_mode="r" if mmap else None)
            if self.identity.shape != (entry.count, manifest.identity_dim):
                raise SearchIndexError(f"{folder / entry.identity.name}: shape "
                                       f"{self.identity.shape}, expected ({entry.count}, "
                                       f"{manifest.identity_dim})")
        elif IDENTITY_COLUMN in self.rows.column_names:
            # the previous layout kept them in the rows table
            self.identity = identity_vectors(self.rows)
            self.rows = self.rows.drop_columns([IDENTITY_COLUMN])
        self.deleted: np.ndarray | None = None
        if entry.tombstones is not None:
            self.deleted = np.load(folder / entry.tombstones.name).astype(bool)
        self._columns: dict[str, np.ndarray] = {}
        self._plans: dict = {}

    # ----------------------------------------------------------------- rows / metadata

    def column(self, name: str) -> np.ndarray:
        """A rows-table column as numpy (nulls -> NaN for numbers, None for strings)."""
        if name not in self._columns:
            if name not in self.rows.column_names:
                raise QueryError(f"no column {name!r} in the index of modality "
                                 f"{self.manifest.modality!r}; columns: {self.rows.column_names}")
            col = self.rows.column(name)
            if pa.types.is_integer(col.type) and col.null_count:
                col = col.cast(pa.float64())
            self._columns[name] = col.to_numpy(zero_copy_only=False)
        return self._columns[name]

    @cached_property
    def _source_order(self) -> tuple[np.ndarray, np.ndarray]:
        ids = self.column("source_id").astype(np.int64)
        order = np.argsort(ids, kind="stable")
        return ids[order], order

    def rows_of_source(self, source_id: int) -> np.ndarray:
        """Live row numbers of ``source_id`` in this shard (empty if none)."""
        ids, order = self._source_order
        lo, hi = np.searchsorted(ids, [source_id, source_id + 1])
        rows = order[lo:hi]
        if self.deleted is not None:
            rows = rows[~self.deleted[rows]]
        return np.sort(rows)

    def live_mask(self) -> np.ndarray | None:
        return None if self.deleted is None else ~self.deleted

    def allowed(self, filter_mask: np.ndarray | None) -> np.ndarray | None:
        live = self.live_mask()
        if filter_mask is None:
            return live
        return filter_mask if live is None else filter_mask & live

    def _plan(self, filter_mask: np.ndarray | None) -> tuple:
        """(allowed mask, passing count, rows, gathered vectors) for a filter mask, cached
        for the last few mask objects (the engine caches masks per filter, so a repeated
        filter is the same object; the entry holds a reference, so ids cannot be reused)."""
        key = None if filter_mask is None else id(filter_mask)
        hit = self._plans.get(key)
        if hit is not None and hit[0] is filter_mask:
            return hit[1:]
        allowed = self.allowed(filter_mask)
        n_allowed = self.count if allowed is None else int(np.count_nonzero(allowed))
        rows = vecs = None
        if allowed is not None and n_allowed <= max(EXACT_SCAN_ROWS,
                                                    EXACT_SCAN_FRACTION * self.count):
            rows = np.flatnonzero(allowed)
            if n_allowed * self.vectors.shape[1] * 4 <= SCAN_CACHE_BYTES:
                vecs = np.ascontiguousarray(self.vectors[rows], dtype=np.float32)
        self._plans[key] = (filter_mask, allowed, n_allowed, rows, vecs)
        while len(self._plans) > 4:
            self._plans.pop(next(iter(self._plans)))
        return allowed, n_allowed, rows, vecs

    # ----------------------------------------------------------------- search

    def exact_scan(self, queries: np.ndarray, k: int, rows: np.ndarray | None,
                   vecs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over ``rows`` (all rows if None) from the stored vectors (``vecs``:
        the rows' vectors if already gathered)."""
        import faiss
        if rows is None:
            rows = np.arange(self.count)
        if vecs is None:
            vecs = np.ascontiguousarray(self.vectors[rows], dtype=np.float32)
        take = min(k, len(rows))
        sims = np.full((len(queries), k), -np.inf, np.float32)
        out = np.full((len(queries), k), -1, np.int64)
        if take:
            # faiss.knn follows the OpenMP thread policy (numpy's BLAS threads do not, and
            # spin-wait badly on a loaded machine).
            d, i = faiss.knn(np.ascontiguousarray(queries, dtype=np.float32), vecs, take,
                             metric=faiss.METRIC_INNER_PRODUCT)
            sims[:, :take] = d
            out[:, :take] = np.where(i >= 0, rows[np.maximum(i, 0)], -1)
        return sims, out

    def knn(self, queries: np.ndarray, k: int, knobs: SearchKnobs, *,
            filter_mask: np.ndarray | None = None,
            threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` live (and filter-passing) rows of this shard for (nq, D) queries."""
        if filter_mask is None and self.deleted is None and k <= self.count:
            return self.backend.search(queries, k, knobs, None, threads)  # hot path
        allowed, n_allowed, rows, vecs = self._plan(filter_mask)
        if rows is not None:
            return self.exact_scan(queries, k, rows, vecs)
        if allowed is not None and n_allowed < 0.95 * self.count:
            boost = min(MAX_FILTER_BOOST, self.count / max(n_allowed, 1))
            knobs = knobs.replace(
                nprobe=int(math.ceil(knobs.nprobe * boost)),
                ef_search=int(math.ceil(knobs.ef_search * boost ** 0.75)))
        if k > self.count:
            sims, rows = self.backend.search(queries, self.count, knobs, allowed, threads)
            return topk_rows(sims, rows, k)
        return self.backend.search(queries, k, knobs, allowed, threads)

    def range(self, queries: np.ndarray, threshold: float, knobs: SearchKnobs, *,
              filter_mask: np.ndarray | None = None,
              max_results: int = 10_000) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every row with cosine similarity >= ``threshold`` (at most ``max_results``).

        Flat and IVF-Flat use FAISS's native range search (exact similarities; IVF only sees
        the probed cells). Other backends have none: the fallback runs k-NN with k doubling
        from 64 until the k-th similarity falls below the threshold (or ``max_results`` is
        reached), then keeps candidates by their exact similarity. Its recall is the k-NN
        recall at that k.
        """
        allowed = self.allowed(filter_mask)
        out: list[tuple[np.ndarray, np.ndarray]] = []
        if self.backend.supports_range and not (allowed is not None and
                                                allowed.sum() <= EXACT_SCAN_ROWS):
            # FAISS keeps sims strictly above the radius; nudge it so ">=" holds.
            radius = np.nextafter(np.float32(threshold), np.float32(-np.inf))
            for sims, rows in self.backend.range_search(queries, float(radius), knobs,
                                                        allowed):
                keep = sims >= threshold
                out.append(_sorted(sims[keep], rows[keep], max_results))
            return out
        for q in queries:
            q = q[None]
            k = min(64, self.count)
            while True:
                sims, rows = self.knn(q, k, knobs, filter_mask=filter_mask)
                valid = rows[0] >= 0
                done = (k >= min(max_results, self.count) or valid.sum() < k
                        or sims[0, valid][-1] < threshold)
                if done:
                    break
                k = min(2 * k, max_results, self.count)
            keep = valid & (sims[0] >= threshold)
            out.append(_sorted(sims[0, keep], rows[0, keep], max_results))
        return out


def _sorted(sims: np.ndarray, rows: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-sims, kind="stable")[:limit]
    return sims[order].astype(np.float32), rows[order].astype(np.int64)
