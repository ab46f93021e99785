"""ANN backends behind one small interface: FAISS (flat, IVF, IVF-PQ, HNSW) and hnswlib.

A :class:`Backend` holds one shard's approximate index. Labels are the shard's row numbers
(0..ntotal-1, in insertion order): the rows table and stored vectors of the shard use the
same numbering, so no id map lives inside the index. Exact re-ranking, tombstones, filters
and the merge across shards are done one level up (:mod:`specsearch.index.shard`), the same
way for every backend.

Thread safety: query-time knobs that differ from the index's defaults travel in per-call
FAISS ``SearchParameters`` objects (never by mutating the shared index), so concurrent
searches with different knobs are safe. hnswlib only has a global ``ef``: it is set once at
load (hnswlib itself raises it to ``k`` per query).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from specsearch.errors import SearchIndexError
from specsearch.index.config import (FlatConfig, HNSWConfig, HnswlibConfig, IndexConfig,
                                     IVFFlatConfig, IVFPQConfig, SearchKnobs)

SearchOutput = tuple[np.ndarray, np.ndarray]
"""(similarities float32 (nq, k), rows int64 (nq, k)); missing results are row -1."""


def _faiss():
    import faiss  # imported lazily: no work (or OpenMP start-up) at import time
    return faiss


class Backend(ABC):
    """One shard's approximate nearest-neighbour index over L2-normalised vectors."""

    file_suffix: str = ""
    quantised: bool = False
    """True when similarities are approximate and results need exact re-ranking."""
    supports_range: bool = False

    def __init__(self, config: IndexConfig, dim: int) -> None:
        self.config = config
        self.dim = dim

    @property
    @abstractmethod
    def ntotal(self) -> int: ...

    def train(self, sample: np.ndarray) -> None:
        """Learn codebooks/cells from a representative (m, dim) float32 sample."""

    @abstractmethod
    def add(self, vectors: np.ndarray, *, threads: int | None = None) -> None:
        """Append (n, dim) float32 rows; they get labels ntotal..ntotal+n-1."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, knobs: SearchKnobs,
               allowed: np.ndarray | None = None, threads: int = 1) -> SearchOutput:
        """Approximate top-``k`` by inner product; ``allowed`` is a bool mask over labels."""

    def range_search(self, queries: np.ndarray, threshold: float, knobs: SearchKnobs,
                     allowed: np.ndarray | None = None) -> list[SearchOutput]:
        raise NotImplementedError(f"{type(self).__name__} has no native range search")

    @abstractmethod
    def save(self, path: Path) -> None: ...

    @abstractmethod
    def empty_like(self) -> "Backend":
        """A trained but empty copy (compaction re-adds live rows without re-training)."""

    def set_default_knobs(self, knobs: SearchKnobs) -> None:
        """Make ``knobs`` the index's own defaults (call before sharing across threads)."""
        self.default_knobs = knobs


# --------------------------------------------------------------------------- FAISS

class FaissBackend(Backend):
    """FAISS index built from a factory string; see :func:`faiss_factory`."""

    file_suffix = ".faiss"

    def __init__(self, config: IndexConfig, dim: int, index=None) -> None:
        super().__init__(config, dim)
        faiss = _faiss()
        self.index = index if index is not None else faiss.index_factory(
            dim, faiss_factory(config), faiss.METRIC_INNER_PRODUCT)
        self.is_ivf = isinstance(config, IVFFlatConfig)
        self.is_hnsw = isinstance(config, HNSWConfig)
        self.quantised = isinstance(config, IVFPQConfig) or (
            self.is_hnsw and config.storage != "flat")
        self.supports_range = isinstance(config, FlatConfig) or type(config) is IVFFlatConfig
        if self.is_hnsw and index is None:
            self.index.hnsw.efConstruction = config.ef_construction
        self.default_knobs = config.search_defaults()
        self._apply_defaults()

    def _apply_defaults(self) -> None:
        faiss = _faiss()
        if self.is_ivf:
            faiss.extract_index_ivf(self.index).nprobe = self.default_knobs.nprobe
        elif self.is_hnsw:
            faiss.downcast_index(self.index).hnsw.efSearch = self.default_knobs.ef_search

    def set_default_knobs(self, knobs: SearchKnobs) -> None:
        self.default_knobs = knobs
        self._apply_defaults()

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def train(self, sample: np.ndarray) -> None:
        if not self.index.is_trained:
            self.index.train(np.ascontiguousarray(sample, dtype=np.float32))

    def add(self, vectors: np.ndarray, *, threads: int | None = None) -> None:
        if not self.index.is_trained:
            raise SearchIndexError(f"{self.config.kind} index must be trained before add")
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def _params(self, knobs: SearchKnobs, allowed: np.ndarray | None):
        """Per-call SearchParameters, or None when the index defaults apply (fast path)."""
        faiss = _faiss()
        sel = None
        if allowed is not None:
            bits = np.packbits(allowed, bitorder="little")
            sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
            sel.keep_alive = bits  # the selector points into this buffer
        d = self.default_knobs
        if self.is_ivf:
            if sel is None and knobs.nprobe == d.nprobe:
                return None
            params = faiss.SearchParametersIVF(nprobe=knobs.nprobe)
        elif self.is_hnsw:
            if sel is None and knobs.ef_search == d.ef_search:
                return None
            params = faiss.SearchParametersHNSW(efSearch=knobs.ef_search)
        else:
            if sel is None:
                return None
            params = faiss.SearchParameters()
        if sel is not None:
            params.sel = sel
            params.keep_alive = sel
        return params

    def search(self, queries: np.ndarray, k: int, knobs: SearchKnobs,
               allowed: np.ndarray | None = None, threads: int = 1) -> SearchOutput:
        params = self._params(knobs, allowed)
        if params is None:
            return self.index.search(queries, k)
        return self.index.search(queries, k, params=params)

    def range_search(self, queries: np.ndarray, threshold: float, knobs: SearchKnobs,
                     allowed: np.ndarray | None = None) -> list[SearchOutput]:
        params = self._params(knobs, allowed)
        kwargs = {} if params is None else {"params": params}
        # FAISS keeps inner products strictly above the radius.
        lims, sims, rows = self.index.range_search(queries, float(threshold), **kwargs)
        return [(sims[lims[i]:lims[i + 1]], rows[lims[i]:lims[i + 1]])
                for i in range(len(queries))]

    def save(self, path: Path) -> None:
        _faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, config: IndexConfig, dim: int, *, mmap: bool) -> "FaissBackend":
        faiss = _faiss()
        # Memory-mapped, read-only: pages come from the page cache on demand and are shared
        # between processes serving the same index. Updates load a private copy instead.
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as exc:
            raise SearchIndexError(
                f"{path}: FAISS could not read the shard ({str(exc).splitlines()[0]}); the "
                f"file is corrupt or from another FAISS version: rebuild the index") from None
        if index.d != dim:
            raise SearchIndexError(f"{path}: shard dimension {index.d}, manifest says {dim}")
        return cls(config, dim, index)

    def empty_like(self) -> "FaissBackend":
        faiss = _faiss()
        if self.is_ivf:
            clone = faiss.clone_index(self.index)
            clone.reset()
            return FaissBackend(self.config, self.dim, clone)
        return FaissBackend(self.config, self.dim)  # flat/HNSW: training-free (SQ re-trains)


def faiss_factory(config: IndexConfig) -> str:
    """The FAISS ``index_factory`` string of a config."""
    if isinstance(config, IVFPQConfig):
        return f"IVF{config.nlist},PQ{config.pq_m}x{config.pq_nbits}"
    if isinstance(config, IVFFlatConfig):
        return f"IVF{config.nlist},Flat"
    if isinstance(config, HNSWConfig):
        return {"flat": f"HNSW{config.m},Flat", "sq8": f"HNSW{config.m}_SQ8",
                "fp16": f"HNSW{config.m}_SQfp16"}[config.storage]
    if isinstance(config, FlatConfig):
        return "Flat"
    raise SearchIndexError(f"no FAISS backend for index kind {config.kind!r}")


# --------------------------------------------------------------------------- hnswlib

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
        if knobs.ef_search != self.default_knobs.ef_search:
            # hnswlib's ef is global state: a per-query value cannot be passed safely.
            raise SearchIndexError(
                "hnswlib takes ef_search only at load (it is global in hnswlib); open the "
                "index with SearchKnobs(ef_search=...) instead of passing it per query")
        filt = None
        if allowed is not None:
            n_allowed = int(allowed.sum())
            k_eff = min(k_eff, n_allowed)
            if k_eff == 0:
                return sims, rows
            filt = allowed.__getitem__  # hnswlib calls it with each candidate label
            threads = 1  # a Python filter holds the GIL anyway
        labels, dist = self.index.knn_query(queries, k=k_eff, num_threads=threads, filter=filt)
        sims[:, :k_eff] = 1.0 - dist  # hnswlib's ip "distance" is 1 - <q, x>
        rows[:, :k_eff] = labels
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


def make_backend(config: IndexConfig, dim: int) -> Backend:
    """A new, empty backend for ``config`` (dimension ``dim``)."""
    if isinstance(config, HnswlibConfig):
        return HnswlibBackend(config, dim)
    return FaissBackend(config, dim)


def load_backend(path: Path, config: IndexConfig, dim: int, *, mmap: bool,
                 count: int | None = None) -> Backend:
    if isinstance(config, HnswlibConfig):
        return HnswlibBackend.load(path, config, dim, mmap=mmap, count=count)
    return FaissBackend.load(path, config, dim, mmap=mmap)


def candidate_count(k: int, refine_factor: float, ntotal: int) -> int:
    """How many approximate candidates to fetch for an exact re-rank to top-``k``."""
    return min(ntotal, max(k, int(math.ceil(refine_factor * k))))
