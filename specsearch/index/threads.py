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
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def faiss_threads(n: int | None) -> Iterator[None]:
    """Run the block with FAISS/OpenMP using ``n`` threads (None: all cores)."""
    import faiss
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n or os.cpu_count() or 1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)
