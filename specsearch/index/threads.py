"""Explicit thread policy for FAISS (OpenMP) and hnswlib searches.

FAISS parallelises with OpenMP. For one query, starting a parallel region costs more than
it saves (and fights other requests for the cores), so single queries run on 1 thread;
batches use every core. The policy is explicit and configurable rather than left to
OpenMP's default of "all cores, always".

``omp_set_num_threads`` sets the calling thread's OpenMP ICV (libgomp keeps it per thread),
so concurrent searches from a thread pool each get their own setting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class ThreadPolicy:
    """How many threads a search uses.

    Attributes:
        single: threads for a batch of fewer than ``batch_min`` queries (1 is fastest for
            interactive queries and keeps concurrent requests from oversubscribing cores).
        batch: threads for larger batches (None: all cores, ``os.cpu_count()``).
        batch_min: batch size from which ``batch`` threads are used.
    """

    single: int = 1
    batch: int | None = None
    batch_min: int = 16

    def threads_for(self, n_queries: int) -> int:
        if n_queries < self.batch_min:
            return max(1, self.single)
        return max(1, self.batch or os.cpu_count() or 1)


class faiss_threads:  # noqa: N801 - used like a function: ``with faiss_threads(1):``
    """Run the block with FAISS/OpenMP using ``n`` threads (None: all cores); restores the
    calling thread's previous setting. A plain class, not a generator: it sits on the
    single-query hot path."""

    __slots__ = ("n", "old", "faiss")
    _faiss = None   # the module, imported on first use (no OpenMP start-up at import)

    def __init__(self, n: int | None) -> None:
        if faiss_threads._faiss is None:
            import faiss
            faiss_threads._faiss = faiss
        self.faiss = faiss_threads._faiss
        self.n = n or os.cpu_count() or 1

    def __enter__(self) -> None:
        self.old = self.faiss.omp_get_max_threads()
        if self.old != self.n:
            self.faiss.omp_set_num_threads(self.n)

    def __exit__(self, *exc) -> None:
        if self.old != self.n:
            self.faiss.omp_set_num_threads(self.old)
