"""Soak test of the upload routes with hostile files (issue 15), against a separate server.

Cases come from ``tests/hostile_inputs.py`` (FITS header bombs, gzip bombs, row bombs,
broken text/VOTable/Parquet/XP tables, seeded mutations of real files), as in
``benchmarks/soak_inputs.py``; here the server runs in its own process (``specsearch
serve`` over the tests' 300-star index, default settings: parse workers, limits), so its
memory is measured apart from the client's. Two valid uploads start the parse workers
before the cases are timed.

Each case is one ``POST /v1/search/upload`` or ``/v1/predict/upload`` (alternating; the
``modality`` and ``row`` parameters vary) over one keep-alive connection. Recorded per
case: status, seconds, growth of the server's RSS (the server process and its parse
workers, sampled every 20 ms) during the case. Failures: HTTP 500 (any 5xx but 504), a
transport error (connection dropped: the server died or hung), a server path in an
answer, a case over ``--hang-s`` seconds, RSS growth over ``--max-growth-mb``.

    python benchmarks/soak_uploads.py --cases 3000       # prints a table, writes JSON
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import hostile_inputs as hi  # noqa: E402
from bench_service import serve  # noqa: E402

ROUTES = ("/v1/search/upload", "/v1/predict/upload")
PARAMS = ({}, {"modality": "lamost"}, {"modality": "xp"}, {"row": 1}, {"air": "true"})


PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root: int) -> int:
    """RSS bytes of process ``root`` and all its descendants (from /proc)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            parents[int(entry)], rss[int(entry)] = int(fields[1]), int(fields[21]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += [c for c, p in parents.items() if p == pid]
    return total


class ServerSampler(threading.Thread):
    """Peak RSS of the server's process tree since the last :meth:`reset` (every 20 ms)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.halt = threading.Event()
        self.reset()

    def run(self) -> None:
        while not self.halt.wait(0.02):
            self.now = tree_rss(self.pid)
            self.peak = max(self.peak, self.now)

    def reset(self) -> int:
        self.now = self.peak = tree_rss(self.pid)
        return self.now


@dataclass
class Stats:
    """Outcomes of the cases (status code or ``transport_error``) and the worst of them."""

    cases: int = 0
    http_500: int = 0
    over_hang: int = 0
    max_seconds: float = 0.0
    max_rss_growth_mb: float = 0.0
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def record(self, outcome: str, seconds: float, growth_mb: float, hang_s: float,
               bad: str | None) -> None:
        self.cases += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.max_seconds = max(self.max_seconds, seconds)
        self.over_hang += seconds > hang_s
        self.max_rss_growth_mb = max(self.max_rss_growth_mb, growth_mb)
        if bad and len(self.examples) < 20:
            self.examples.append(bad)


def verdict(name: str, status: int, text: str, seconds: float, growth_mb: float,
            args: argparse.Namespace) -> str | None:
    """What is wrong with one answer (None: nothing)."""
    if status >= 500 and status != 504:
        return f"{name}: HTTP {status} {text[:200]}"
    if "specsearch-upload-" in text or tempfile.gettempdir() + "/" in text:
        return f"{name}: server path in the answer: {text[:200]}"
    if seconds > args.hang_s:
        return f"{name}: {seconds:.1f} s (status {status})"
    if growth_mb > args.max_growth_mb:
        return f"{name}: server RSS grew {growth_mb:.0f} MB"
    return None


def warm_up(url: str, workers: int = 2) -> None:
    """Start the server's parse workers (the first uploads after start also pay for the
    workers' start-up, which is not what this soak measures): ``workers`` valid uploads
    at once."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    name, data = hi.seeds()[0]
    with ThreadPoolExecutor(workers) as pool:
        codes = list(pool.map(lambda _: httpx.post(
            f"{url}/v1/predict/upload", files={"file": (name, data)}, timeout=300
        ).status_code, range(workers)))
    if codes != [200] * workers:
        raise RuntimeError(f"warm-up uploads of {name} answered {codes}")


def run(cases: list[hi.Case], url: str, sampler: ServerSampler,
        args: argparse.Namespace) -> tuple[Stats, int]:
    """Send every case; (statistics, failures)."""
    import httpx

    st = Stats()
    failures = 0
    with httpx.Client(base_url=url, timeout=args.client_timeout_s) as client:
        st.rss_start_mb = sampler.reset() / 2 ** 20
        for i, (name, filename, data) in enumerate(cases):
            route, params = ROUTES[i % 2], PARAMS[(i // 2) % len(PARAMS)]
            before = sampler.reset()
            start = time.perf_counter()
            try:
                r = client.post(route, params=params, files={"file": (filename, data)})
                outcome, status, text = str(r.status_code), r.status_code, r.text
            except httpx.HTTPError as exc:
                outcome, status, text = "transport_error", 599, f"{type(exc).__name__}: {exc}"
            seconds = time.perf_counter() - start
            growth_mb = (sampler.peak - before) / 2 ** 20
            bad = verdict(name, status, text, seconds, growth_mb, args)
            failures += bad is not None
            st.http_500 += 500 <= status < 599 and status != 504
            st.record(outcome, seconds, growth_mb, args.hang_s, bad)
            if (i + 1) % 500 == 0:
                print(f"  {i + 1} cases: {dict(sorted(st.outcomes.items()))}", flush=True)
        st.rss_end_mb = sampler.reset() / 2 ** 20
    return st, failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=3000)
    ap.add_argument("--bomb-mb", type=int, default=1024,
                    help="decompressed size of the gzip bombs")
    ap.add_argument("--bomb-rows", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--hang-s", type=float, default=10.0)
    ap.add_argument("--max-growth-mb", type=float, default=512.0)
    ap.add_argument("--client-timeout-s", type=float, default=120.0)
    ap.add_argument("--cache", default=None, help="where the 300-star index is kept")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                         "soak_uploads.json"))
    args = ap.parse_args()
    from service_support import free_port, small_index

    cache = Path(args.cache or Path(tempfile.gettempdir()) / "specsearch-soak-uploads")
    index, model, _ = small_index(cache / "index")
    cases = list(hi.cases(random.Random(f"{args.seed}-uploads"), args.cases,
                          bomb_bytes=args.bomb_mb * 2 ** 20, bomb_rows=args.bomb_rows))
    print(f"{len(cases)} cases", flush=True)
    port = free_port()
    proc = serve(index, model, port, 2)
    sampler = ServerSampler(proc.pid)
    sampler.start()
    t0 = time.perf_counter()
    try:
        warm_up(f"http://127.0.0.1:{port}")
        st, failures = run(cases, f"http://127.0.0.1:{port}", sampler, args)
        alive = proc.poll() is None
    finally:
        sampler.halt.set()
        proc.terminate()
        proc.wait(timeout=30)
    seconds = time.perf_counter() - t0
    print(f"\n| cases | HTTP 500 | transport errors | > {args.hang_s:g} s | max s/case | "
          f"max server RSS growth in a case (MB) | server RSS start -> end (MB) | failures |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {st.cases:,} | {st.http_500} | {st.outcomes.get('transport_error', 0)} | "
          f"{st.over_hang} | {st.max_seconds:.2f} | {st.max_rss_growth_mb:.0f} | "
          f"{st.rss_start_mb:.0f} -> {st.rss_end_mb:.0f} | {failures} |")
    print(f"outcomes: {dict(sorted(st.outcomes.items()))}; server alive at the end: {alive}; "
          f"{seconds:.0f} s")
    for ex in st.examples:
        print(f"  {ex}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "args": vars(args), "seconds": round(seconds, 1),
                               "failures": failures, "server_alive": alive,
                               "result": asdict(st)}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if failures == 0 and alive else 1


if __name__ == "__main__":
    sys.exit(main())
