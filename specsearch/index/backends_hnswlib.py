"""The hnswlib backend: HNSW over float32 vectors with exact inner products.

One :class:`~specsearch.index.backends.Backend` adapter, made and loaded by
:func:`~specsearch.index.backends.make_backend` and
:func:`~specsearch.index.backends.load_backend`. hnswlib only has a global ``ef``: it is
set once at load (hnswlib itself raises it to ``k`` per query); a larger per-call ``ef`` is
emulated by asking for more results.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from specsearch.errors import SearchIndexError
from specsearch.index.backends import Backend, SearchOutput
from specsearch.index.config import HnswlibConfig, SearchKnobs


class HnswlibBackend(Backend):
    """hnswlib HNSW over float32 vectors (space ``ip``; exact similarities, no re-ranking)."""

    file_suffix = ".hnsw"

    def __init__(self, config: HnswlibConfig, dim: int, index=None) -> None:
        super().__init__(config, dim)
        import hnswlib
        if index is None:
            index = hnswlib.Index(space="ip", dim=dim)
            index.init_index(max_elements=1024, M=config.m,
                             ef_construction=config.ef_construction, allow_replace_deleted=False)
        self.index = index
        self.default_knobs = config.search_defaults()
        self.index.set_ef(self.default_knobs.ef_search)

    def set_default_knobs(self, knobs: SearchKnobs) -> None:
        self.default_knobs = knobs
        self.index.set_ef(knobs.ef_search)

    @property
    def ntotal(self) -> int:
        return int(self.index.get_current_count())

    def add(self, vectors: np.ndarray, *, threads: int | None = None) -> None:
        n0, n = self.ntotal, len(vectors)
        if n0 + n > self.index.get_max_elements():
            self.index.resize_index(max(n0 + n, int(1.25 * self.index.get_max_elements())))
        self.index.add_items(np.ascontiguousarray(vectors, dtype=np.float32),
                             np.arange(n0, n0 + n), num_threads=threads or -1)

    def search(self, queries: np.ndarray, k: int, knobs: SearchKnobs,
               allowed: np.ndarray | None = None, threads: int = 1) -> SearchOutput:
        nq = len(queries)
        k_eff = min(k, self.ntotal)
        sims = np.full((nq, k), -np.inf, dtype=np.float32)
        rows = np.full((nq, k), -1, dtype=np.int64)
        if k_eff == 0:
            return sims, rows
        filt = None
        if allowed is not None:
            n_allowed = int(allowed.sum())
            k_eff = min(k_eff, n_allowed)
            if k_eff == 0:
                return sims, rows
            filt = _Allowed(allowed)
            threads = 1  # a Python filter holds the GIL anyway
        # hnswlib's ef is global state, so a larger per-query ef is emulated by asking for
        # ef results (hnswlib searches with max(ef, k)) and keeping the first k: the same
        # answer as ef = ef_search. An ef below the opened default cannot be applied.
        k_ask = min(max(k_eff, knobs.ef_search if knobs.ef_search > self.default_knobs.ef_search
                        else 0), self.ntotal if filt is None else n_allowed)
        labels, dist = self.index.knn_query(queries, k=k_ask, num_threads=threads, filter=filt)
        sims[:, :k_eff] = 1.0 - dist[:, :k_eff]  # hnswlib's ip "distance" is 1 - <q, x>
        rows[:, :k_eff] = labels[:, :k_eff]
        return sims, rows

    def save(self, path: Path) -> None:
        self.index.save_index(str(path))

    @classmethod
    def load(cls, path: Path, config: HnswlibConfig, dim: int, *, mmap: bool,
             count: int | None = None) -> "HnswlibBackend":
        import hnswlib
        index = hnswlib.Index(space="ip", dim=dim)
        try:
            # hnswlib has no memory-mapped load: the graph and vectors are read into RAM.
            index.load_index(str(path), max_elements=count or 0)
        except RuntimeError as exc:
            raise SearchIndexError(f"{path}: hnswlib could not read the shard ({exc}); "
                                   f"rebuild the index") from None
        return cls(config, dim, index)

    def empty_like(self) -> "HnswlibBackend":
        return HnswlibBackend(self.config, self.dim)


class _Allowed:
    """hnswlib filter callable over a bool mask (returns a Python bool, as hnswlib needs)."""

    __slots__ = ("mask",)

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask

    def __call__(self, label: int) -> bool:
        return bool(self.mask[label])
