"""Index backend configurations: one documented dataclass per backend.

Every knob is keyword-only and its trade-off is stated where it is defined. Build-time knobs
(``nlist``, ``m``, ``ef_construction``...) are fixed when a shard is written; query-time knobs
(:class:`SearchKnobs`: ``nprobe``, ``ef_search``, ``refine_factor``) are stored in the
manifest after tuning and may be overridden per query.

Similarity is always cosine, computed as the inner product of L2-normalised float32 vectors
(the embeddings dataset stores them normalised; the builder re-normalises defensively).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from specsearch.errors import ConfigError

METRIC = "cosine"
"""The only metric: inner product of L2-normalised vectors (1 = identical direction)."""


@dataclass(frozen=True, kw_only=True)
class SearchKnobs:
    """Query-time parameters (tuned by :mod:`specsearch.index.tuning`, stored in the manifest).

    Attributes:
        nprobe: IVF lists visited per query. Recall and latency grow roughly linearly with it;
            ignored by non-IVF backends.
        ef_search: HNSW candidate-list size (``efSearch`` / hnswlib ``ef``). Larger = higher
            recall, slower; always raised to at least ``k``. Ignored by non-graph backends.
        refine_factor: for quantised backends (IVF-PQ, HNSW over SQ8/fp16 codes), fetch
            ``ceil(refine_factor * k)`` candidates by approximate distance and re-rank them
            with exact float32 similarities. 1 disables re-ranking. Costs one exact dot
            product per candidate; repairs most of the ranking error of the codes.
    """

    nprobe: int = 16
    ef_search: int = 64
    refine_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.nprobe < 1 or self.ef_search < 1 or not self.refine_factor >= 1.0:
            raise ConfigError(
                f"search knobs need nprobe >= 1, ef_search >= 1, refine_factor >= 1; got {self}")

    def replace(self, **changes: Any) -> "SearchKnobs":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchKnobs":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclass(frozen=True, kw_only=True)
class IndexConfig:
    """Base of the backend configs. ``kind`` names the backend in manifests and on the CLI."""

    kind: ClassVar[str] = ""

    def search_defaults(self) -> SearchKnobs:
        """The knobs used before tuning."""
        return SearchKnobs()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}

    def resolved(self, n_vectors: int) -> "IndexConfig":
        """A copy with data-dependent defaults (``None`` fields) filled in for ``n_vectors``."""
        return self


@dataclass(frozen=True, kw_only=True)
class FlatConfig(IndexConfig):
    """Exact search (FAISS ``IndexFlatIP``): 4*D bytes a vector, cost linear in rows.

    The reference every approximate backend is tested against; the right choice below a few
    hundred thousand vectors, where a scan costs well under a millisecond per query batch.
    """

    kind: ClassVar[str] = "flat"


MIN_TRAIN_PER_CELL = 39
"""Training vectors a k-means cell needs (FAISS warns below 39)."""


@dataclass(frozen=True, kw_only=True)
class IVFFlatConfig(IndexConfig):
    """Inverted file over exact vectors (FAISS ``IVF{nlist},Flat``).

    Attributes:
        nlist: number of k-means cells; None = 4*sqrt(n) (clipped to [1, n/39]), the usual
            balance between coarse-quantiser cost and cell size.
        nprobe: cells visited per query before tuning (see :class:`SearchKnobs`).
        train_size: vectors sampled for k-means; more = better cells, slower build.
            None = ``MIN_TRAIN_PER_CELL`` a cell, at least 100,000 (a 10M-vector index has
            12,649 cells and samples 493,311 vectors; a fixed 100k would leave 8 a cell).
    """

    kind: ClassVar[str] = "ivf_flat"
    nlist: int | None = None
    nprobe: int = 16
    train_size: int | None = None

    def resolved(self, n_vectors: int) -> "IVFFlatConfig":
        nlist = self.nlist
        if nlist is None:
            nlist = int(4 * math.sqrt(max(n_vectors, 1)))
            # FAISS wants >= 39 training points a centroid for stable k-means.
            nlist = max(1, min(nlist, max(n_vectors, 1) // MIN_TRAIN_PER_CELL, 65536))
        train_size = self.train_size
        if train_size is None:
            train_size = max(100_000, MIN_TRAIN_PER_CELL * nlist)
        return dataclasses.replace(self, nlist=nlist, train_size=train_size)

    def search_defaults(self) -> SearchKnobs:
        return SearchKnobs(nprobe=self.nprobe)


@dataclass(frozen=True, kw_only=True)
class IVFPQConfig(IVFFlatConfig):
    """Inverted file over product-quantised codes, re-ranked exactly (FAISS ``IVF,PQ``).

    The backend for indexes that do not fit in RAM: ``pq_m * pq_nbits / 8`` bytes of code a
    vector (+ 8 B of id). Approximate code distances rank poorly on their own, so the top
    ``refine_factor * k`` candidates are re-ranked with exact float32 vectors held in the
    same FAISS file (``IndexRefineFlat``; memory-mapped, so only candidates' pages are read).

    Attributes:
        pq_m: sub-quantisers; must divide the dimension (``pca_dim`` if set). More = more
            bytes, better ranking.
        pq_nbits: bits a sub-quantiser code (8 is the fast, standard choice).
        refine_factor: default re-ranking depth (see :class:`SearchKnobs`).
        pca_dim: cells and codes on the first ``pca_dim`` uncentred principal components
            (as for :class:`HNSWConfig`), None = all D. With the variance of model
            embeddings in few directions, ``pca_dim=32, pq_m=32`` spends the code's bytes
            where the variance is: on 1M model embeddings, held-out recall@10 0.966 at
            nprobe 8 and re-ranking x4, where the same 32 B codes over all 128 dimensions
            reached 0.875 with every list probed and re-ranking x32 (bench_scale.py).
    """

    kind: ClassVar[str] = "ivf_pq"
    pq_m: int = 32
    pq_nbits: int = 8
    refine_factor: float = 4.0
    pca_dim: int | None = None

    def __post_init__(self) -> None:
        _check_pca_dim(self)

    def search_defaults(self) -> SearchKnobs:
        return SearchKnobs(nprobe=self.nprobe, refine_factor=self.refine_factor)


def _check_pca_dim(config: IndexConfig) -> None:
    pca_dim = getattr(config, "pca_dim", None)
    if pca_dim is not None and pca_dim < 1:
        raise ConfigError(f"{config.kind} pca_dim must be >= 1 (or None for all dimensions); "
                          f"got {pca_dim}")


HNSW_STORAGES = ("flat", "sq8", "fp16")


@dataclass(frozen=True, kw_only=True)
class HNSWConfig(IndexConfig):
    """FAISS HNSW graph, optionally over scalar-quantised codes with exact re-ranking.

    Attributes:
        m: graph degree (2*m links on level 0, 4 B each). Higher = better recall at a given
            ``ef_search`` and more memory / slower build; 16-48 is typical.
        ef_construction: candidate list while building; higher = better graph, slower build.
            Measured on 1M clustered 128-d vectors (M=32, SQ8 + refine): 80 -> recall@10
            0.84 at ef_search 16 (0.956 needs ef 96); 200 -> 0.96 at ef 16, for ~3x the
            build time. The default favours query speed: an index is built once.
        ef_search: default query candidate list (see :class:`SearchKnobs`).
        storage: how vectors are held for graph traversal: ``flat`` (float32, 4*D B),
            ``fp16`` (2*D B, near-lossless) or ``sq8`` (D B, 8-bit per dimension: 4x less
            memory traffic, the fastest traversal; ranking error repaired by re-ranking).
        pca_dim: build the graph and its codes on the first ``pca_dim`` uncentred
            principal components (the directions of largest mean square, so inner products
            keep their dominant part; FAISS ``PCA{d},HNSW``) instead of all D; None = all.
            Each distance then costs pca_dim/D as much and the codes shrink alike; the
            exact float32 vectors re-rank the candidates, so only neighbours lost in the
            graph walk cost recall. Pays off when the vectors' variance sits in few
            directions (model embeddings), not on isotropic data.
        refine_factor: default re-ranking depth for ``sq8``/``fp16`` storage or a PCA graph.
    """

    kind: ClassVar[str] = "hnsw"
    m: int = 32
    ef_construction: int = 200
    ef_search: int = 48
    storage: str = "sq8"
    pca_dim: int | None = None
    refine_factor: float = 2.0

    def __post_init__(self) -> None:
        if self.storage not in HNSW_STORAGES:
            raise ConfigError(
                f"HNSW storage {self.storage!r} is not one of {HNSW_STORAGES}")
        _check_pca_dim(self)

    @property
    def refined(self) -> bool:
        """True when candidates are re-ranked with the exact vectors (lossy graph codes)."""
        return self.storage != "flat" or self.pca_dim is not None

    def search_defaults(self) -> SearchKnobs:
        return SearchKnobs(ef_search=self.ef_search,
                           refine_factor=self.refine_factor if self.refined else 1.0)


@dataclass(frozen=True, kw_only=True)
class HnswlibConfig(IndexConfig):
    """hnswlib HNSW graph over float32 vectors (its own file format).

    Attributes:
        m: graph degree; hnswlib's default is 16.
        ef_construction: build-time candidate list (hnswlib default 200).
        ef_search: default query candidate list (hnswlib's own default of 10 gives ~0.9
            recall@10 on clustered data; tuning raises it to the target recall).
    """

    kind: ClassVar[str] = "hnswlib"
    m: int = 16
    ef_construction: int = 200
    ef_search: int = 48

    def search_defaults(self) -> SearchKnobs:
        return SearchKnobs(ef_search=self.ef_search)


CONFIG_CLASSES: dict[str, type[IndexConfig]] = {
    c.kind: c for c in (FlatConfig, IVFFlatConfig, IVFPQConfig, HNSWConfig, HnswlibConfig)}
KINDS: tuple[str, ...] = tuple(CONFIG_CLASSES)


def config_from_dict(data: dict[str, Any]) -> IndexConfig:
    """Rebuild a config from its manifest form (``{"kind": ..., knobs...}``)."""
    kind = data.get("kind")
    cls = CONFIG_CLASSES.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ConfigError(f"unknown index kind {kind!r}; expected one of {list(KINDS)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names - {"kind"}
    if unknown:
        raise ConfigError(f"index kind {kind!r} has no option(s) {sorted(unknown)}; "
                          f"valid: {sorted(names)}")
    return cls(**{k: v for k, v in data.items() if k != "kind"})


def make_config(kind: str, **options: Any) -> IndexConfig:
    """A config of ``kind`` with ``options`` (None values mean "use the default")."""
    return config_from_dict({"kind": kind, **{k: v for k, v in options.items() if v is not None}})
