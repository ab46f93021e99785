"""Approximate k-NN of *every* object at once: a cell-blocked self-join with BLAS.

Scoring a catalog needs the neighbours of every row among all rows. Asking an index one
query at a time costs what the index costs per query (an exact flat index: O(N) each, so
O(N^2) in all; a graph: a few thousand random memory reads each). A self-join can do much
better, because the queries *are* the database: k-means cells (FAISS k-means, seeded)
group nearby rows, and all the rows of one cell are compared with all the candidates of
the cells nearest to it in one matrix product (BLAS at full speed), followed by a
top-k selection (``faiss.knn``). Each row is also stored in its ``spill`` nearest cells so
that rows near a cell border still meet their neighbours across it.

Cost ~ N * probes * spill * cell_size * D multiply-adds; recall of the k-th neighbour is
measured against exact search in the tests and the benchmark. A missed neighbour only
makes the k-th distance slightly larger, for every object alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specsearch.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class SelfJoinConfig:
    """Knobs of :class:`CellSelfJoin`.

    Attributes:
        cell_size: mean rows per k-means cell (the matrix-product block size).
        probes: cells whose rows are candidates for the rows of a cell (the cell itself
            and its nearest ``probes - 1`` by centroid similarity). Recall and cost grow
            with it.
        spill: cells each row is stored in (1: its nearest only; 2 also catches
            neighbours just across a cell border, at ~1.5x the cost). On real
            embeddings probes=8, spill=1 finds ~98% of the 20 nearest neighbours.
        train_size: rows used to train the centroids (seeded sample).
        niter: k-means iterations.
        seed: k-means and sampling seed (results are deterministic for a given seed and
            thread count).
    """

    cell_size: int = 512
    probes: int = 8
    spill: int = 1
    train_size: int = 100_000
    niter: int = 10
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.cell_size < 16 or self.probes < 1 or self.spill < 1:
            raise ConfigError(f"need cell_size >= 16, probes >= 1, spill >= 1; got {self}")


def _single_threaded_blas():
    """Context: numpy's BLAS on one thread (threadpoolctl when installed, else a no-op)."""
    try:
        from threadpoolctl import threadpool_limits
        return threadpool_limits(1, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib
        return contextlib.nullcontext()


class CellSelfJoin:
    """k-NN of all rows of ``vectors`` among themselves (see the module docstring).

    Also answers ordinary queries (:meth:`search`, e.g. for candidates' extra neighbours)
    by probing the cells nearest to each query.
    """

    def __init__(self, vectors: np.ndarray, config: SelfJoinConfig | None = None) -> None:
        import faiss

        self.config = cfg = config or SelfJoinConfig()
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ConfigError(f"need a non-empty (n, D) array of vectors, got {x.shape}")
        self.x = x
        n, d = x.shape
        self.n_cells = n_cells = max(1, int(round(n / cfg.cell_size)))
        if n_cells > 1:
            rng = np.random.default_rng(cfg.seed)
            sample = x if n <= cfg.train_size else \
                x[np.sort(rng.choice(n, cfg.train_size, replace=False))]
            # 64 training rows per centroid is plenty for cells (they only need to
            # partition the space, not to be good clusters).
            km = faiss.Kmeans(d, n_cells, niter=cfg.niter, seed=cfg.seed, spherical=True,
                              verbose=False, max_points_per_centroid=64)
            km.train(sample)
            self.centroids = km.centroids.astype(np.float32)
        else:
            self.centroids = x.mean(axis=0, keepdims=True).astype(np.float32)
        self._centroid_index = faiss.IndexFlatIP(d)
        self._centroid_index.add(self.centroids)
        spill = min(cfg.spill, n_cells)
        _, assign = self._centroid_index.search(x, spill)          # (n, spill)
        self.home = assign[:, 0].astype(np.int64)
        cells = assign.ravel().astype(np.int64)
        rows = np.repeat(np.arange(n, dtype=np.int64), spill)
        order = np.argsort(cells, kind="stable")
        self._members = rows[order]                                  # rows, cell by cell
        self._start = np.searchsorted(cells[order], np.arange(n_cells + 1))
        probes = min(cfg.probes, n_cells)
        _, self._probe = self._centroid_index.search(self.centroids, probes)

    def _candidates(self, cell_list: np.ndarray) -> np.ndarray:
        parts = [self._members[self._start[c]:self._start[c + 1]] for c in cell_list]
        cand = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return np.unique(cand)            # a spilled row appears once

    def all_neighbours(self, k: int, *, threads: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
        """(similarity (n, k) float32, row (n, k) int64) of every row, itself included
        (the caller drops it), nearest first; -1 / -inf where fewer than k candidates.

        Cells are processed by ``threads`` Python threads (None: all cores), each running
        single-threaded BLAS/FAISS: whole cells per core scale better than splitting one
        small matrix product over cores, and FAISS releases the GIL.
        """
        import os
        from concurrent.futures import ThreadPoolExecutor

        from specsearch.index.threads import faiss_threads

        n = self.x.shape[0]
        sims = np.full((n, k), -np.inf, dtype=np.float32)
        rows = np.full((n, k), -1, dtype=np.int64)
        home_order = np.argsort(self.home, kind="stable")
        home_start = np.searchsorted(self.home[home_order], np.arange(self.n_cells + 1))

        def work(c: int) -> None:
            import faiss

            q_rows = home_order[home_start[c]:home_start[c + 1]]
            if q_rows.size == 0:
                return
            cand = self._candidates(self._probe[c])
            kk = min(k, cand.size)
            with faiss_threads(1):
                d, i = faiss.knn(self.x[q_rows], self.x[cand], kk,
                                 metric=faiss.METRIC_INNER_PRODUCT)
            sims[q_rows, :kk] = d
            rows[q_rows, :kk] = np.where(i >= 0, cand[np.clip(i, 0, None)], -1)

        n_threads = max(1, threads or os.cpu_count() or 1)
        with _single_threaded_blas(), ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(work, range(self.n_cells)))
        return sims, rows

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k-NN of arbitrary (m, D) queries among the rows (probing each query's own
        nearest cells)."""
        import faiss

        q = np.ascontiguousarray(queries, dtype=np.float32)
        probes = min(self.config.probes, self.n_cells)
        _, qcells = self._centroid_index.search(q, probes)
        sims = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        rows = np.full((q.shape[0], k), -1, dtype=np.int64)
        for j in range(q.shape[0]):
            cand = self._candidates(qcells[j])
            kk = min(k, cand.size)
            d, i = faiss.knn(q[j:j + 1], self.x[cand], kk, metric=faiss.METRIC_INNER_PRODUCT)
            sims[j, :kk] = d[0]
            rows[j, :kk] = np.where(i[0] >= 0, cand[np.clip(i[0], 0, None)], -1)
        return sims, rows
