"""Micro-batching of k-NN requests: concurrent searches share one engine call.

While every worker thread is busy, ``POST /v1/search/embedding`` requests queue here. When a
thread slot frees, up to ``search_batch_max`` queued requests that search with the same
modality, ``k`` and filters run as one :meth:`SearchEngine.search_many` (one FAISS call, one
metadata gather, one thread hop instead of one per request); each request's response is
then built from its own result in the same thread. There is no timer: with a free slot a
request runs at once (a batch of one), so a lone client never waits for batch-mates.

Results are those of the unbatched path (``search_many`` answers each query as a single
search does). Errors stay per request: a bad vector or page fails only its own request; a
problem shared by the whole group (a bad filter, k above max_k) is what each request would
have got alone.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio
import anyio.to_thread
import numpy as np

from service.metrics import ServiceMetrics
from service.worker import Worker, quiet_numpy
from specsearch.query import Neighbours

T = TypeVar("T")


@dataclass(frozen=True)
class BatchKey:
    """What the requests of one batch share (the arguments of one engine call)."""

    modality: str
    k: int
    filters: tuple[str, ...]


@dataclass(eq=False)
class SearchJob(Generic[T]):
    """One request's search: its query vector and page, and ``finish``, which turns its
    :class:`Neighbours` into the response (run in the worker thread)."""

    key: BatchKey
    vector: np.ndarray
    finish: Callable[[Neighbours], T]
    offset: int = 0
    limit: int | None = None
    future: asyncio.Future = field(default=None, repr=False)  # type: ignore[assignment]


class SearchBatcher:
    """Queues :class:`SearchJob`\\ s and runs them in batches on the worker's threads.

    A batch holds one slot of ``worker.limiter`` (the service's worker-thread budget, shared
    with uploads and model calls) while it runs, so batching adds no threads.
    """

    def __init__(self, engine: Any, worker: Worker, *, max_batch: int,
                 metrics: ServiceMetrics, stage: str = "search_embedding") -> None:
        self.engine = engine
        self.worker = worker
        self.max_batch = max_batch
        self.metrics = metrics
        self.stage = stage
        self._pending: OrderedDict[BatchKey, deque[SearchJob]] = OrderedDict()
        self._waiting = 0            # dispatchers waiting for a worker slot
        self._tasks: set[asyncio.Task] = set()
        # Threads only start while their dispatcher holds a worker slot; this limiter just
        # keeps them off anyio's default pool (40 threads, shared with FastAPI).
        self._threads = anyio.CapacityLimiter(worker.limiter.total_tokens)

    async def run(self, job: SearchJob[T]) -> T:
        """``job.finish(result)`` of the job's search; 504 after the request timeout
        (counted from the moment it is queued)."""
        job.future = asyncio.get_running_loop().create_future()
        self._pending.setdefault(job.key, deque()).append(job)
        self._dispatch_soon()
        start = time.perf_counter()
        try:
            with anyio.fail_after(self.worker.timeout_s):
                return await job.future
        except TimeoutError:
            raise self.worker.timeout_error(self.stage) from None
        finally:
            self.metrics.stage_latency.labels(self.stage).observe(time.perf_counter() - start)

    def _dispatch_soon(self) -> None:
        """Keep one dispatcher waiting for a slot while requests are queued."""
        if self._waiting or not self._pending:
            return
        self._waiting += 1
        task = asyncio.get_running_loop().create_task(self._dispatch())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self) -> None:
        limiter = self.worker.limiter
        try:
            await limiter.acquire()
        finally:
            self._waiting -= 1
        try:
            jobs = self._take()
            self._dispatch_soon()
            if jobs:
                await self._run(jobs)
        finally:
            limiter.release()

    def _take(self) -> list[SearchJob]:
        """Up to ``max_batch`` live jobs of the longest-waiting key (requests that timed
        out or whose client left are dropped); that key then queues behind the others."""
        while self._pending:
            key, queue = next(iter(self._pending.items()))
            jobs: list[SearchJob] = []
            while queue and len(jobs) < self.max_batch:
                job = queue.popleft()
                if not job.future.done():
                    jobs.append(job)
            if queue:
                self._pending.move_to_end(key)
            else:
                del self._pending[key]
            if jobs:
                return jobs
        return []

    async def _run(self, jobs: list[SearchJob]) -> None:
        self.metrics.batch_size.observe(len(jobs))
        try:
            outcomes = await anyio.to_thread.run_sync(
                functools.partial(quiet_numpy, functools.partial(self._search, jobs)),
                limiter=self._threads)
        except Exception as exc:  # a bug in _search itself: every request gets its 500
            outcomes = [(False, exc)] * len(jobs)
        except BaseException:     # cancelled (shutdown): so are the requests
            for job in jobs:
                job.future.cancel()
            raise
        for job, (ok, value) in zip(jobs, outcomes):
            if job.future.done():     # timed out or the client left meanwhile
                continue
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)

    def _search(self, jobs: list[SearchJob]) -> list[tuple[bool, Any]]:
        """One engine call for ``jobs`` (worker thread), then each job's response."""
        key = jobs[0].key
        try:
            results = self.engine.search_many(
                [job.vector for job in jobs], modality=key.modality, k=key.k,
                filter=list(key.filters), pages=[(job.offset, job.limit) for job in jobs])
        except Exception as exc:  # shared by the group: each request alone would get it
            return [(False, exc)] * len(jobs)
        outcomes: list[tuple[bool, Any]] = []
        for job, result in zip(jobs, results):
            if isinstance(result, Exception):
                outcomes.append((False, result))
                continue
            try:
                outcomes.append((True, job.finish(result)))
            except Exception as exc:
                outcomes.append((False, exc))
        return outcomes
