"""Process-level settings for a long batch job on CPUs (the embedding builder's CLI and Ray
actors call :func:`configure_process`; a library caller may too).

glibc returns freed memory above 128 kB to the kernel at once and maps each large block
afresh, so a loop that allocates and frees the same few tens of MB of tensors per batch
pays page faults on every one of them: measured here, 25-30% of the builder's time on
LAMOST batches. Keeping freed memory in the heap (the usual advice for PyTorch CPU inference,
which otherwise reaches for jemalloc or tcmalloc) removes that cost; the process's peak
memory is unchanged, it is just not handed back between batches.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024
"""Blocks below this come from the heap (32 MiB is glibc's maximum)."""
TRIM_THRESHOLD = 1 << 30
"""Free heap memory kept for reuse before any is returned to the kernel."""

_configured = False


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to reuse freed large blocks instead of unmapping them.

    Returns True when the setting was applied (Linux with glibc), False elsewhere; never
    raises. Set ``SPECSEARCH_MALLOC_TUNING=0`` to leave the allocator alone.
    """
    if os.environ.get("SPECSEARCH_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith(
            "linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # musl and others: nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        log.debug("mallopt refused the batch-job settings; allocator left as it is")
    return ok


def configure_process(threads: int | None = None) -> None:
    """Settings for a process that runs the builder: torch intra-op threads (None: leave
    torch's default, all cores) and :func:`keep_freed_memory` (once per process)."""
    global _configured
    if threads is not None:
        import torch

        torch.set_num_threads(max(1, int(threads)))
    if not _configured:
        keep_freed_memory()
        _configured = True
