"""Read an index directory's files once, so its memory-mapped pages sit in the page cache.

A freshly opened index answers from memory maps: every re-ranking of a query touches rows
of the float32 vectors (and IVF lists) for the first time, and each first touch waits for
the disk. Measured at 10M model embeddings (BENCHMARKS.md, issue 17): 315 single
queries/s straight after opening, 3,008/s once the files had been read. A server reads its
index at start-up, in the background, up to a memory budget: shard index files first (codes,
graph, re-ranking vectors), then the stored vectors, then the rows.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

CHUNK = 16 * 2 ** 20
_ORDER = (".vectors.npy", ".rows.parquet")


@dataclass
class WarmReport:
    """What :func:`warm_files` read: files and bytes, seconds, and files left unread (over
    the budget or stopped)."""

    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    skipped: int = 0


def available_memory() -> int | None:
    """``MemAvailable`` from /proc/meminfo in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _rank(path: Path) -> int:
    """Shard index files first, then stored vectors, then rows and the rest."""
    for i, suffix in enumerate(_ORDER, start=1):
        if path.name.endswith(suffix):
            return i
    return 0 if path.name.startswith("shard-") else len(_ORDER) + 1


def warm_files(root: str | Path, *, budget_bytes: int | None = None,
               stop: threading.Event | None = None) -> WarmReport:
    """Read every file under ``root`` once, most useful first, until ``budget_bytes``
    (default: half the available memory; a file that would pass it is skipped) or until
    ``stop`` is set. A missing ``root`` reads nothing."""
    t0 = time.perf_counter()
    report = WarmReport()
    root = Path(root)
    if not root.is_dir():
        return report
    if budget_bytes is None:
        avail = available_memory()
        budget_bytes = avail // 2 if avail is not None else 2 ** 62
    paths = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: (_rank(p), p))
    buffer = bytearray(CHUNK)
    for path in paths:
        stopped = stop is not None and stop.is_set()
        try:        # a file may vanish meanwhile (an index swapped by compaction)
            if stopped or report.bytes + path.stat().st_size > budget_bytes:
                report.skipped += 1
                continue
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(buffer):
                    report.bytes += n
                    if stop is not None and stop.is_set():
                        break
        except OSError:
            report.skipped += 1
            continue
        if stop is not None and stop.is_set():
            report.skipped += 1         # stopped part-way through this file
        else:
            report.files += 1
    report.seconds = time.perf_counter() - t0
    return report


def warm_in_background(root: str | Path, *, budget_bytes: int | None = None,
                       on_done=None) -> tuple[threading.Thread, threading.Event]:
    """Run :func:`warm_files` in a daemon thread; returns (thread, stop event).
    ``on_done(report)`` is called when it finishes. The reads are sequential and release
    the GIL, so queries are served meanwhile."""
    stop = threading.Event()

    def run() -> None:
        report = warm_files(root, budget_bytes=budget_bytes, stop=stop)
        if on_done is not None:
            on_done(report)

    thread = threading.Thread(target=run, name="specsearch-warm-index", daemon=True)
    thread.start()
    return thread, stop
