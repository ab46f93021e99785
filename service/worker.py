"""Blocking work (FAISS searches, file parsing, the model) off the event loop, with a deadline.

FAISS, hnswlib, numpy and torch release the GIL in their kernels, so a small pool of worker
threads gives real parallelism while the event loop keeps accepting connections. The
thread policy is explicit: ``worker_threads`` concurrent calls, each allowed
``faiss_threads`` OpenMP threads and ``torch_threads`` intra-op threads (both 1 by default:
for single-vector queries one thread a call is fastest, and threads times calls should not
exceed the cores).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import numpy as np
import anyio.to_thread
from fastapi import HTTPException

from service.metrics import ServiceMetrics

log = logging.getLogger("specsearch.service")
T = TypeVar("T")


def apply_thread_policy(*, faiss_threads: int, torch_threads: int) -> dict[str, int]:
    """Set torch's process-wide intra-op threads; FAISS threads are set per search call.

    libgomp keeps ``omp_set_num_threads`` per calling thread, so setting it here (the event
    loop's thread) would not reach the worker threads: the engine applies ``faiss_threads``
    inside each search (:class:`specsearch.index.ThreadPolicy`).

    FAISS's Python interrupt check is switched off: it takes the GIL every few queries to
    look for Ctrl-C, but searches run in worker threads, where Python never delivers a
    signal, so the check found nothing and stalled the search while another thread held
    the GIL (measured: ~12% of FAISS's time under load).
    """
    import faiss
    import torch

    faiss.InterruptCallback.clear_instance()
    torch.set_num_threads(torch_threads)
    return {"faiss_threads_per_search": faiss_threads, "torch_threads": torch.get_num_threads()}


def quiet_numpy(call: Callable[[], T]) -> T:
    # Hostile input (1e300 fluxes, NaN blocks) overflows inside preprocessing by design; the
    # results are validated afterwards, so numpy's floating-point warnings are noise here.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        return call()


class Worker:
    """Runs blocking callables in a bounded thread pool, timed and with a deadline."""

    def __init__(self, *, threads: int, timeout_s: float, metrics: ServiceMetrics) -> None:
        self.limiter = anyio.CapacityLimiter(threads)
        self.timeout_s = timeout_s
        self.metrics = metrics

    async def run(self, stage: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a worker thread; 504 after ``timeout_s``.

        On timeout the thread is abandoned (it finishes its call in the background and
        still holds its slot, so abandoned work stays bounded by ``threads``).
        """
        call = functools.partial(quiet_numpy, functools.partial(fn, *args, **kwargs))
        start = time.perf_counter()
        try:
            with anyio.fail_after(self.timeout_s):
                result = await anyio.to_thread.run_sync(call, limiter=self.limiter,
                                                        abandon_on_cancel=True)
        except TimeoutError:
            raise self.timeout_error(stage) from None
        finally:
            self.metrics.stage_latency.labels(stage).observe(time.perf_counter() - start)
        return result

    def timeout_error(self, stage: str) -> HTTPException:
        """The 504 of a ``stage`` that ran past ``timeout_s`` (logged)."""
        log.warning("%s exceeded the request timeout of %.1f s", stage, self.timeout_s)
        return HTTPException(504, f"{stage} took longer than the server's request timeout "
                                  f"of {self.timeout_s:g} s (SPECSEARCH_REQUEST_TIMEOUT_S); "
                                  f"try a smaller k or a smaller file")
