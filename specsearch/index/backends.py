"""ANN backends behind one small interface: FAISS (flat, IVF, IVF-PQ, HNSW) and hnswlib.

A :class:`Backend` holds one shard's approximate index. Labels are the shard's row numbers
(0..ntotal-1, in insertion order): the rows table and stored vectors of the shard use the
same numbering, so no id map lives inside the index. Exact re-ranking, tombstones, filters
and the merge across shards are done one level up (:mod:`specsearch.index.shard`), the same
way for every backend. The FAISS adapter lives here; the hnswlib one in
:mod:`specsearch.index.backends_hnswlib`.

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
    """True when the index searches compressed codes (and re-ranks candidates exactly)."""
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

    def search_one(self, query: np.ndarray, k: int, threads: int = 1) -> SearchOutput:
        """Top-``k`` of one (1, dim) C-contiguous float32 query with the default knobs, no
        filter, ``k`` <= ntotal: the single-query hot path (same answer as :meth:`search`)."""
        return self.search(query, k, self.default_knobs, None, threads)


# --------------------------------------------------------------------------- FAISS

class FaissBackend(Backend):
    """FAISS index built from a factory string (:func:`faiss_factory`).

    Quantised configs (IVF-PQ, HNSW over SQ8/fp16) are wrapped in ``IndexRefineFlat``: the
    codes drive the graph/list search and the exact float32 vectors inside the same file
    re-rank ``refine_factor * k`` candidates in C++ (no Python round trip). Loaded with
    ``IO_FLAG_MMAP``, those vectors stay in the page cache and only candidates' pages are
    touched, so resident memory is the codes + graph.
    """

    file_suffix = ".faiss"

    def __init__(self, config: IndexConfig, dim: int, index=None) -> None:
        super().__init__(config, dim)
        faiss = _faiss()
        self.is_ivf = isinstance(config, IVFFlatConfig)
        self.is_hnsw = isinstance(config, HNSWConfig)
        self.quantised = isinstance(config, IVFPQConfig) or (self.is_hnsw and config.refined)
        self.pretransform = getattr(config, "pca_dim", None) is not None
        if self.pretransform and config.pca_dim >= dim:
            raise SearchIndexError(f"{config.kind} pca_dim {config.pca_dim} must be below the "
                                   f"embedding dimension {dim}")
        self.supports_range = isinstance(config, FlatConfig) or type(config) is IVFFlatConfig
        if index is None:
            base = faiss.index_factory(dim, faiss_factory(config), faiss.METRIC_INNER_PRODUCT)
            if self.is_hnsw:
                _graph_index(base).hnsw.efConstruction = config.ef_construction
            if isinstance(config, IVFPQConfig):
                # Polysemous codes only help Hamming-filtered search, which we do not use,
                # and their training dominates build time.
                faiss.downcast_index(faiss.extract_index_ivf(base)).do_polysemous_training = \
                    False
            index = faiss.IndexRefineFlat(base) if self.quantised else base
            self._keep = base  # the Python wrapper of base must outlive the refine index
        self.index = index
        self.base = faiss.downcast_index(index.base_index) if self.quantised else index
        self.graph = _graph_index(self.base) if self.is_hnsw else None
        self.ivf = faiss.extract_index_ivf(self.base) if self.is_ivf else None
        self.default_knobs = config.search_defaults()
        self._selectors: dict = {}
        self._swig_ptr = faiss.swig_ptr
        self._apply_defaults()

    def _apply_defaults(self) -> None:
        d = self.default_knobs
        # Largest k the defaults serve as they are (HNSW needs efSearch >= candidates).
        self._fast_k = (int(d.ef_search / (d.refine_factor if self.quantised else 1.0))
                        if self.is_hnsw else 1 << 30)
        if self.ivf is not None:
            self.ivf.nprobe = d.nprobe
        if self.is_hnsw:
            self.graph.hnsw.efSearch = d.ef_search
        if self.quantised:
            self.index.k_factor = float(d.refine_factor)

    def set_default_knobs(self, knobs: SearchKnobs) -> None:
        self.default_knobs = knobs
        self._apply_defaults()

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def train(self, sample: np.ndarray) -> None:
        if self.index.is_trained:
            return
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        if not self.pretransform:
            self.index.train(sample)
            return
        # FAISS's PCA centres the data, which changes inner-product rankings (embeddings
        # share a large mean direction). Trained on {x, -x} its mean is 0 and its axes are
        # those of the uncentred second moment, so <Px, Pq> keeps the dominant part of
        # <x, q>. The graph's codes (or the cells and PQ codebooks) are then trained on
        # the projected sample.
        faiss = _faiss()
        pca = faiss.downcast_VectorTransform(self.base.chain.at(0))
        pca.train(np.concatenate([sample, -sample]))
        faiss.downcast_index(self.base.index).train(pca.apply(sample))
        self.base.is_trained = True
        self.index.is_trained = True

    def add(self, vectors: np.ndarray, *, threads: int | None = None) -> None:
        if not self.index.is_trained:
            raise SearchIndexError(f"{self.config.kind} index must be trained before add")
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def _params(self, k: int, knobs: SearchKnobs, allowed: np.ndarray | None, keep: list):
        """Per-call SearchParameters, or None when the index defaults apply (fast path).

        FAISS's HNSW does not raise efSearch to the number of results asked for (it returns
        fewer than k when k > efSearch), so ef is raised here to the candidates needed.
        """
        faiss = _faiss()
        sel = None
        if allowed is not None:
            cached = self._selectors.get(id(allowed))
            if cached is None or cached[0] is not allowed:
                bits = np.packbits(allowed, bitorder="little")
                cached = (allowed, bits, faiss.IDSelectorBitmap(len(allowed),
                                                                faiss.swig_ptr(bits)))
                self._selectors[id(allowed)] = cached  # the selector points into bits
                while len(self._selectors) > 4:
                    self._selectors.pop(next(iter(self._selectors)))
            sel = cached[2]
            keep.append(cached)
        d = self.default_knobs
        kf = float(knobs.refine_factor) if self.quantised else 1.0
        n_base = int(math.ceil(k * kf))  # an efSearch above ntotal is harmless
        base = None
        if self.ivf is not None:
            if sel is not None or knobs.nprobe != d.nprobe:
                base = faiss.SearchParametersIVF(nprobe=knobs.nprobe)
        elif self.is_hnsw:
            ef = max(knobs.ef_search, n_base)
            if sel is not None or ef != d.ef_search:
                base = faiss.SearchParametersHNSW(efSearch=ef)
        elif sel is not None:
            base = faiss.SearchParameters()
        if base is not None and sel is not None:
            base.sel = sel
        if base is not None:
            keep.append(base)
            if self.pretransform:  # the PCA wrapper hands the graph its own parameters
                base = faiss.SearchParametersPreTransform(index_params=base)
                keep.append(base)
        if not self.quantised or (base is None and kf == d.refine_factor):
            return base
        params = faiss.IndexRefineSearchParameters(k_factor=kf)
        if base is not None:
            params.base_index_params = base
        keep.append(params)
        return params

    def search_one(self, query: np.ndarray, k: int, threads: int = 1) -> SearchOutput:
        if k > self._fast_k:
            return self.search(query, k, self.default_knobs, None, threads)
        # FAISS's own Python wrapper re-checks shapes and dtypes (~10 us on a slow core);
        # the caller guarantees them, so call the C++ search directly.
        ptr = self._swig_ptr
        sims = np.empty((1, k), np.float32)
        rows = np.empty((1, k), np.int64)
        self.index.search_c(1, ptr(query), k, ptr(sims), ptr(rows))
        return sims, rows

    def search(self, queries: np.ndarray, k: int, knobs: SearchKnobs,
               allowed: np.ndarray | None = None, threads: int = 1) -> SearchOutput:
        if allowed is None and k <= self._fast_k and (knobs is self.default_knobs
                                                      or knobs == self.default_knobs):
            return self.index.search(queries, k)  # hot path: the index's own defaults
        keep: list = []
        params = self._params(k, knobs, allowed, keep)
        if params is None:
            return self.index.search(queries, k)
        return self.index.search(queries, k, params=params)

    def range_search(self, queries: np.ndarray, threshold: float, knobs: SearchKnobs,
                     allowed: np.ndarray | None = None) -> list[SearchOutput]:
        keep: list = []
        params = self._params(1, knobs, allowed, keep)
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
        # IO_FLAG_MMAP_IFC maps the whole file and points the index's arrays into it
        # (zero-copy); the older IO_FLAG_MMAP makes IVF list scans ~20x slower (measured).
        flags = faiss.IO_FLAG_MMAP_IFC if mmap else 0
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
        if self.is_ivf:  # keep the trained cells and codebooks
            clone = faiss.clone_index(self.index)
            clone.reset()
            return FaissBackend(self.config, self.dim, clone)
        return FaissBackend(self.config, self.dim)  # flat/HNSW: cheap to (re)train


def faiss_factory(config: IndexConfig) -> str:
    """The FAISS ``index_factory`` string of a config."""
    if isinstance(config, IVFPQConfig):
        pca = "" if config.pca_dim is None else f"PCA{config.pca_dim},"
        return f"{pca}IVF{config.nlist},PQ{config.pq_m}x{config.pq_nbits}"
    if isinstance(config, IVFFlatConfig):
        return f"IVF{config.nlist},Flat"
    if isinstance(config, HNSWConfig):
        pca = "" if config.pca_dim is None else f"PCA{config.pca_dim},"
        return pca + {"flat": f"HNSW{config.m},Flat", "sq8": f"HNSW{config.m}_SQ8",
                      "fp16": f"HNSW{config.m}_SQfp16"}[config.storage]
    if isinstance(config, FlatConfig):
        return "Flat"
    raise SearchIndexError(f"no FAISS backend for index kind {config.kind!r}")


def _graph_index(index):
    """The FAISS ``IndexHNSW`` inside ``index`` (itself, or under a PCA pre-transform)."""
    faiss = _faiss()
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index


def make_backend(config: IndexConfig, dim: int) -> Backend:
    """A new, empty backend for ``config`` (dimension ``dim``)."""
    if isinstance(config, HnswlibConfig):
        from specsearch.index.backends_hnswlib import HnswlibBackend  # builds on Backend
        return HnswlibBackend(config, dim)
    return FaissBackend(config, dim)


def load_backend(path: Path, config: IndexConfig, dim: int, *, mmap: bool,
                 count: int | None = None) -> Backend:
    if isinstance(config, HnswlibConfig):
        from specsearch.index.backends_hnswlib import HnswlibBackend  # builds on Backend
        return HnswlibBackend.load(path, config, dim, mmap=mmap, count=count)
    return FaissBackend.load(path, config, dim, mmap=mmap)
