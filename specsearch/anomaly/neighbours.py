"""k-nearest-neighbour search over one modality's embeddings, for outlier scoring.

The outlier scores need the k nearest neighbours of *every* object (a self-join), so what
matters is batched throughput, not single-query latency. Two ways to get them:

* :class:`FaissNeighbours`: a FAISS index over the vectors in memory (exact ``IndexFlatIP``
  for small sets, ``IndexIVFFlat`` above ``exact_below`` rows), searched in batches;
* any object with the same ``search(queries, k) -> (similarity, row)`` method, e.g. an
  adapter over a built index directory (:class:`specsearch.rows.IndexNeighbours`).

Rows are positions in the vector table the searcher was built from; -1 marks a missing
neighbour (FAISS's convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from specsearch.errors import ConfigError
from specsearch.rows.sources import NeighbourSearch

__all__ = ["FaissNeighbours", "KnnResult", "NeighbourConfig", "NeighbourSearch", "self_knn"]


@dataclass(frozen=True, kw_only=True)
class NeighbourConfig:
    """How :class:`FaissNeighbours` indexes the vectors.

    Attributes:
        kind: ``auto`` (exact below ``exact_below`` vectors, else ``hnsw``), ``flat``
            (exact ``IndexFlatIP``: one BLAS product per batch, cost linear in n per
            query), ``hnsw`` (``IndexHNSWFlat``: ~log n per query, the choice for a
            self-join of a large catalog) or ``ivf`` (``IndexIVFFlat``).
        exact_below: the ``auto`` switch point.
        hnsw_m: HNSW graph degree (memory 8*M B a vector; recall vs build time).
        ef_search: HNSW candidate list; raised to at least 2k. Recall of the k-th
            neighbour vs speed; a missed neighbour only makes the k-th distance slightly
            larger, never smaller, and does so for every object alike.
        nlist, nprobe: IVF lists (None: ~2 sqrt(n)) and lists visited per query.
        train_size: vectors used to train IVF centroids (seeded sample).
        seed: seed of the IVF k-means and the HNSW level draw (deterministic results).
    """

    kind: str = "auto"
    exact_below: int = 20_000
    hnsw_m: int = 16
    ef_search: int = 64
    nlist: int | None = None
    nprobe: int = 16
    train_size: int = 100_000
    seed: int = 1234


class FaissNeighbours:
    """A FAISS cosine index over an in-memory (n, D) array of unit vectors."""

    def __init__(self, vectors: np.ndarray, config: NeighbourConfig | None = None) -> None:
        import faiss  # imported here: importing specsearch must not load FAISS

        self.config = cfg = config or NeighbourConfig()
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ConfigError(f"need a non-empty (n, D) array of vectors, got shape {x.shape}")
        n, dim = x.shape
        self.n = n
        kind = cfg.kind
        if kind == "auto":
            kind = "flat" if n < cfg.exact_below else "hnsw"
        if kind == "flat":
            self.index = faiss.IndexFlatIP(dim)
            self.kind = "flat"
        elif kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = 40
            self.kind = f"hnsw{cfg.hnsw_m}"
        elif kind == "ivf":
            nlist = cfg.nlist or int(np.clip(2 * math.sqrt(n), 1, max(1, n // 39)))
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(cfg.seed)
            sample = x if n <= cfg.train_size else \
                x[np.sort(rng.choice(n, cfg.train_size, replace=False))]
            index.cp.seed = cfg.seed
            index.train(sample)
            index.nprobe = min(cfg.nprobe, nlist)
            self.index = index
            self.kind = f"ivf{nlist},nprobe{index.nprobe}"
        else:
            raise ConfigError(f"unknown neighbour index kind {cfg.kind!r}; expected auto, "
                              f"flat, hnsw or ivf")
        self.index.add(x)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.kind.startswith("hnsw"):
            self.index.hnsw.efSearch = max(self.config.ef_search, 2 * k)
        sims, rows = self.index.search(q, min(k, self.n))
        if sims.shape[1] < k:  # fewer vectors than k: pad like FAISS does
            pad = k - sims.shape[1]
            sims = np.pad(sims, ((0, 0), (0, pad)), constant_values=-np.inf)
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        return sims, rows.astype(np.int64, copy=False)


@dataclass
class KnnResult:
    """The k nearest *other* objects of every object of one modality.

    Attributes:
        kdist: (n,) cosine distance (1 - similarity) to the k-th neighbour; NaN when fewer
            than k neighbours were found.
        rows: (n, k) int32 neighbour rows (-1 where missing), nearest first (int32 halves
            the memory of large k; tables hold < 2^31 rows).
        similarity: (n, k) float32 cosine similarities (-inf where missing).
    """

    kdist: np.ndarray
    rows: np.ndarray
    similarity: np.ndarray

    def lof_ratio(self) -> np.ndarray:
        """(n,) k-distance over the median k-distance of the object's own neighbours.

        ~1 inside a cluster of any density; >> 1 for an object that is far from its
        neighbours *relative to how far they are from theirs* (local outlier factor idea).
        """
        kd = np.where(np.isfinite(self.kdist), self.kdist, np.nan)
        nb = np.where(self.rows >= 0, kd[np.clip(self.rows, 0, None)], np.nan)
        with np.errstate(all="ignore"):
            ref = np.nanmedian(nb, axis=1) if nb.size else np.full(kd.shape, np.nan)
            return kd / np.maximum(ref, 1e-9)


def compact_neighbours(sims: np.ndarray, rows: np.ndarray, first_row: int, k: int,
                       source_id: np.ndarray | None) -> tuple[np.ndarray, np.ndarray,
                                                             np.ndarray]:
    """Drop each query's own row (query i is row ``first_row + i``) and rows of the same
    star from candidate lists (nearest first); keep the first ``k``.

    Returns (kdist (m,), rows (m, k), similarity (m, k)) as in :class:`KnnResult`.
    """
    me = np.arange(first_row, first_row + rows.shape[0])[:, None]
    keep = (rows >= 0) & (rows != me)
    if source_id is not None:
        keep &= source_id[np.clip(rows, 0, None)] != source_id[me[:, 0], None]
    # Stable compaction of the kept neighbours to the left, nearest first.
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    got_rows = np.take_along_axis(rows, order, axis=1)
    got_sims = np.take_along_axis(sims, order, axis=1)
    got_keep = np.take_along_axis(keep, order, axis=1)
    if got_rows.shape[1] < k:  # fewer candidates than k
        pad = k - got_rows.shape[1]
        got_rows = np.pad(got_rows, ((0, 0), (0, pad)), constant_values=-1)
        got_sims = np.pad(got_sims, ((0, 0), (0, pad)), constant_values=-np.inf)
        got_keep = np.pad(got_keep, ((0, 0), (0, pad)), constant_values=False)
    full = got_keep[:, -1]
    kdist = np.where(full, 1.0 - got_sims[:, -1].astype(np.float64), np.nan)
    return (kdist, np.where(got_keep, got_rows, -1).astype(np.int32),
            np.where(got_keep, got_sims, -np.inf).astype(np.float32))


def self_knn(vectors: np.ndarray, searcher: NeighbourSearch, *, k: int = 20,
             source_id: np.ndarray | None = None, batch_size: int = 8192,
             extra: int = 4) -> KnnResult:
    """k nearest neighbours of every row of ``vectors`` among the others.

    The object itself and, if ``source_id`` is given, other spectra of the same star
    (repeat visits are no evidence that an object is normal) are dropped; ``extra`` more
    neighbours than ``k`` are fetched to make room for them. A searcher with an
    ``all_neighbours(k)`` method (:class:`specsearch.anomaly.selfjoin.CellSelfJoin`) is
    asked once for every row; any other is queried in batches of ``batch_size``.

    Args:
        vectors: (n, D) unit vectors; row i must be row i of the searcher's table.
        searcher: see :class:`NeighbourSearch`.
        k: neighbours kept per object.
        source_id: (n,) star ids, or None.
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    n = vectors.shape[0]
    fetch = k + 1 + max(extra, 0)
    sid = None if source_id is None else np.asarray(source_id)
    if hasattr(searcher, "all_neighbours"):
        sims, rows = searcher.all_neighbours(fetch)
        kdist, rows_out, sims_out = compact_neighbours(sims, rows, 0, k, sid)
        return KnnResult(kdist=kdist, rows=rows_out, similarity=sims_out)
    kdist = np.full(n, np.nan)
    rows_out = np.full((n, k), -1, dtype=np.int32)
    sims_out = np.full((n, k), -np.inf, dtype=np.float32)
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        sims, rows = searcher.search(vectors[start:stop], fetch)
        kdist[start:stop], rows_out[start:stop], sims_out[start:stop] = \
            compact_neighbours(sims, rows, start, k, sid)
    return KnnResult(kdist=kdist, rows=rows_out, similarity=sims_out)
