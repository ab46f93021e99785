"""Soak test of hostile input (issue 15): >= 10,000 malformed files through the readers,
``ingest`` and the upload routes.

Cases come from ``tests/hostile_inputs.py`` (built on the fly: FITS header bombs, gzip
bombs, row bombs, broken text/VOTable/Parquet/XP tables, seeded mutations of real files).

* readers: ``read_spectra`` under the service's upload limits, in this process;
* ingest: ``specsearch.io.ingest.ingest`` over folders of ``--ingest-batch`` cases;
* uploads: ``POST /v1/search/upload`` / ``/v1/predict/upload`` to a live uvicorn server
  (same process, real HTTP) over a 300-star index, parse workers as configured by default.

Reported per target: cases, raw (non-library) exceptions, HTTP 5xx, cases over 10 s, max
seconds per case, max RSS growth of this process and its children (parse workers) during
one case (sampled every 20 ms) and over the run. Prints a table and writes
``benchmarks/results/soak_inputs.json``.

    python benchmarks/soak_inputs.py --readers 6000 --uploads 3000 --ingest 1000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import hostile_inputs as hi  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root: int) -> int:
    """RSS bytes of process ``root`` and all its descendants (from /proc)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += [c for c, p in parents.items() if p == pid]
    return total


class Sampler(threading.Thread):
    """Peak tree RSS since the last :meth:`reset`, sampled every 20 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = self.now = tree_rss(os.getpid())
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.now = tree_rss(os.getpid())
            self.peak = max(self.peak, self.now)

    def reset(self) -> int:
        self.now = self.peak = tree_rss(os.getpid())
        return self.now


@dataclass
class Stats:
    target: str
    cases: int = 0
    raw_exceptions: int = 0
    http_5xx: int = 0
    over_10s: int = 0
    max_seconds: float = 0.0
    max_rss_growth_mb: float = 0.0
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def record(self, outcome: str, seconds: float, growth: int, bad: str | None) -> None:
        self.cases += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.max_seconds = max(self.max_seconds, seconds)
        self.over_10s += seconds > 10
        self.max_rss_growth_mb = max(self.max_rss_growth_mb, growth / 2 ** 20)
        if bad and len(self.examples) < 20:
            self.examples.append(bad)


def run_readers(cases: list[hi.Case], sampler: Sampler, tmp: Path, limits) -> Stats:
    import numpy as np

    from specsearch.errors import SpecsearchError
    from specsearch.io.limits import use_limits
    from specsearch.io.registry import read_spectra

    st = Stats("readers", rss_start_mb=sampler.reset() / 2 ** 20)
    for i, (name, filename, data) in enumerate(cases):
        path = tmp / f"r{i}-{filename}"
        path.write_bytes(data)
        before = sampler.reset()
        start = time.perf_counter()
        bad = None
        try:
            with use_limits(limits), np.errstate(all="ignore"):
                spectra = list(read_spectra(path))
            outcome = "ok"
            if any(np.any((s.ivar > 0) & ~np.isfinite(s.flux)) for s in spectra):
                bad, outcome = f"{name}: non-finite flux with ivar > 0", "nonfinite"
                st.raw_exceptions += 1
        except SpecsearchError as exc:
            outcome = type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - counting them is the point
            st.raw_exceptions += 1
            outcome, bad = "RAW", f"{name}: {type(exc).__name__}: {exc}"[:300]
        st.record(outcome, time.perf_counter() - start, sampler.peak - before, bad)
        path.unlink()
    st.rss_end_mb = sampler.reset() / 2 ** 20
    return st


def run_ingest(cases: list[hi.Case], sampler: Sampler, tmp: Path, batch: int) -> Stats:
    from specsearch.io.ingest import ingest

    st = Stats("ingest", rss_start_mb=sampler.reset() / 2 ** 20)
    for b in range(0, len(cases), batch):
        folder = tmp / f"ingest-{b}"
        folder.mkdir()
        group = cases[b:b + batch]
        for i, (name, filename, data) in enumerate(group):
            (folder / f"{i}-{filename}").write_bytes(data)
        before = sampler.reset()
        start = time.perf_counter()
        bad, outcome = None, "ok"
        try:
            ingest([folder], tmp / f"cat-{b}", modality="lamost", progress=False)
        except Exception as exc:  # noqa: BLE001 - ingest must never raise on bad files
            st.raw_exceptions += 1
            outcome, bad = "RAW", f"batch {b}: {type(exc).__name__}: {exc}"[:300]
        took = time.perf_counter() - start
        for _ in group:   # per-file time: the batch's time shared out
            st.record(outcome, took / len(group), sampler.peak - before, bad)
            bad = None
        for p in folder.iterdir():
            p.unlink()
    st.rss_end_mb = sampler.reset() / 2 ** 20
    return st


def run_uploads(cases: list[hi.Case], sampler: Sampler, tmp: Path) -> Stats:
    import httpx

    from service.app import create_app
    from service.settings import Settings
    from service_support import LiveServer, small_index

    index, model, _ = small_index(tmp / "index")
    app = create_app(Settings(index_dir=index, model_dir=model, request_timeout_s=30))
    st = Stats("uploads")
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        client.get("/v1/health/ready")
        st.rss_start_mb = sampler.reset() / 2 ** 20
        for i, (name, filename, data) in enumerate(cases):
            url = "/v1/search/upload" if i % 2 else "/v1/predict/upload"
            before = sampler.reset()
            start = time.perf_counter()
            bad = None
            try:
                r = client.post(url, files={"file": (filename, data)})
                outcome = str(r.status_code)
                if r.status_code >= 500 and r.status_code != 504:
                    st.http_5xx += 1
                    bad = f"{name}: {r.status_code} {r.text[:200]}"
                elif "specsearch-upload-" in r.text or tempfile.gettempdir() in r.text:
                    st.raw_exceptions += 1
                    bad = f"{name}: server path in the answer: {r.text[:200]}"
            except httpx.HTTPError as exc:
                st.raw_exceptions += 1
                outcome, bad = "RAW", f"{name}: {type(exc).__name__}: {exc}"
            st.record(outcome, time.perf_counter() - start, sampler.peak - before, bad)
        st.rss_end_mb = sampler.reset() / 2 ** 20
    return st


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=6000)
    parser.add_argument("--uploads", type=int, default=3000)
    parser.add_argument("--ingest", type=int, default=1000)
    parser.add_argument("--ingest-batch", type=int, default=50)
    parser.add_argument("--bomb-mb", type=int, default=1024,
                        help="decompressed size of the gzip bombs")
    parser.add_argument("--bomb-rows", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" /
                                             "soak_inputs.json"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from service.settings import Settings
    from service.uploads import upload_limits

    limits = upload_limits(Settings(index_dir=Path(".")))
    t0 = time.perf_counter()
    sampler = Sampler()
    sampler.start()
    results = []
    with tempfile.TemporaryDirectory(prefix="soak-") as tmpdir:
        tmp = Path(tmpdir)
        for target, n in (("readers", args.readers), ("ingest", args.ingest),
                          ("uploads", args.uploads)):
            if n <= 0:
                continue
            rng = random.Random(f"{args.seed}-{target}")
            cases = list(hi.cases(rng, n, bomb_bytes=args.bomb_mb * 2 ** 20,
                                  bomb_rows=args.bomb_rows))
            print(f"{target}: {len(cases)} cases ...", flush=True)
            if target == "readers":
                st = run_readers(cases, sampler, tmp, limits)
            elif target == "ingest":
                st = run_ingest(cases, sampler, tmp, args.ingest_batch)
            else:
                st = run_uploads(cases, sampler, tmp)
            results.append(st)
            print(f"  done: {st.outcomes}", flush=True)
    sampler.stop.set()
    total = sum(s.cases for s in results)
    print(f"\n{total} malformed inputs in {time.perf_counter() - t0:.0f} s\n")
    print("| target | cases | raw exceptions | HTTP 5xx (not 504) | > 10 s | max s/case | "
          "max RSS growth in a case (MB) | RSS start -> end (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for s in results:
        print(f"| {s.target} | {s.cases:,} | {s.raw_exceptions} | {s.http_5xx} | "
              f"{s.over_10s} | {s.max_seconds:.2f} | {s.max_rss_growth_mb:.0f} | "
              f"{s.rss_start_mb:.0f} -> {s.rss_end_mb:.0f} |")
    for s in results:
        print(f"{s.target} outcomes: {dict(sorted(s.outcomes.items()))}")
        for ex in s.examples:
            print(f"  {ex}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "total_cases": total,
                               "seconds": time.perf_counter() - t0,
                               "results": [asdict(s) for s in results]}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
