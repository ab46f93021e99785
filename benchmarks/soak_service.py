"""Sustained load on the HTTP service: many clients, a fixed number of requests, memory watched.

One run:
1. builds (or reuses, ``--cache``) the service benchmark's index of ``--n`` clustered unit
   vectors (:func:`bench_service.build`, the same data and metadata);
2. starts ``specsearch serve`` in its own process and warms it up;
3. runs a separate client process (httpx async): ``--clients`` connections, each sending
   ``--per-client`` ``POST /v1/search/embedding`` requests (k=10) back to back;
4. samples the server's RSS every ``--sample-s`` seconds during the run;
5. prints a table (requests, errors, status codes, req/s, p50/p95/p99/max latency, server
   RSS before / after / peak, growth over the second half of the run) and writes
   ``benchmarks/results/soak_service.json``.

Pass criteria (issue 15): 0 errors; memory flat (no growth over the second half of the run
beyond the allocator's noise, ``--flat-mib``).

    python benchmarks/soak_service.py --per-client 10000          # 64 x 10k on 1M vectors
    python benchmarks/soak_service.py --n 100000 --per-client 200  # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_service import (K, percentiles, prepare_index, queries_for,  # noqa: E402
                           rss_mib, serve)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
KEEPALIVE_EXPIRY_S = 2.0
"""Client keep-alive expiry, below the server's keep-alive timeout (uvicorn's 5 s)."""


async def _client_load(url: str, bodies: list[bytes], clients: int, per_client: int) -> dict:
    import httpx

    lat = np.zeros(clients * per_client, np.float64)
    done = np.zeros(clients * per_client, bool)
    codes: dict[str, int] = {}
    failures: dict[str, int] = {}
    # Idle connections are dropped before the server's keep-alive timeout (uvicorn: 5 s),
    # so a request never races the server closing its connection (httpx's default expiry
    # equals uvicorn's; a starved client then sees ReadError on a connection the server
    # had already closed).
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients,
                          keepalive_expiry=KEEPALIVE_EXPIRY_S)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def one(cid: int) -> None:
            for j in range(per_client):
                slot = cid * per_client + j
                body = bodies[(slot * 7 + cid) % len(bodies)]
                start = time.perf_counter()
                try:
                    r = await client.post("/v1/search/embedding", content=body,
                                          headers={"content-type": "application/json"})
                    codes[str(r.status_code)] = codes.get(str(r.status_code), 0) + 1
                    done[slot] = r.status_code == 200
                except httpx.HTTPError as exc:
                    failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                lat[slot] = time.perf_counter() - start

        t0 = time.perf_counter()
        await asyncio.gather(*(one(c) for c in range(clients)))
        wall = time.perf_counter() - t0
    ok = lat[done]
    return {"clients": clients, "requests": int(lat.size), "ok": int(done.sum()),
            "errors": int(lat.size - done.sum()), "codes": codes, "failures": failures,
            "wall_s": round(wall, 1), "rps": round(float(done.sum()) / wall, 1),
            **percentiles(ok), "max_ms": round(float(ok.max()) * 1e3, 1) if ok.size else None}


def client_main(args: argparse.Namespace) -> None:
    """The separate client process: warm-up, then the measured load; prints JSON."""
    queries = np.load(args.client_queries)
    bodies = [json.dumps({"embedding": [round(float(v), 6) for v in q], "modality": "lamost",
                          "k": K}).encode() for q in queries]
    asyncio.run(_client_load(args.url, bodies, 4, 50))
    print("warm", flush=True)
    sys.stdin.readline()  # the parent records the RSS after warm-up, then says go
    t_cpu = time.process_time()
    out = asyncio.run(_client_load(args.url, bodies, args.clients, args.per_client))
    out["client_cpu_s"] = round(time.process_time() - t_cpu, 1)
    print(json.dumps(out), flush=True)


class RssSampler(threading.Thread):
    """Samples a process's RSS (MiB) every ``interval_s`` until stopped."""

    def __init__(self, pid: int, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, float]] = []
        self._halt = threading.Event()
        self._t0 = time.perf_counter()

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            self.samples.append((round(time.perf_counter() - self._t0, 1),
                                 round(rss_mib(self.pid), 1)))

    def stop(self) -> None:
        self._halt.set()
        self.join()


def memory_summary(before: float, after: float, samples: list[tuple[float, float]]) -> dict:
    """Before/after/peak and the growth over the second half of the run (leak indicator)."""
    values = [v for _, v in samples] or [after]
    half = values[len(values) // 2:]
    return {"before_mib": round(before, 1), "after_mib": round(after, 1),
            "peak_mib": round(max(values + [after]), 1),
            "second_half_growth_mib": round(half[-1] - half[0], 1),
            "samples": samples[:: max(1, len(samples) // 60)]}


def run_load(args: argparse.Namespace, index: Path, model: Path | None,
             queries: np.ndarray, qfile: Path) -> tuple[dict, dict]:
    """Start the server, run the client process against it; (http, memory)."""
    from service_support import free_port

    port = free_port()
    proc = serve(index, model, port, args.worker_threads)
    try:
        np.save(qfile, queries)
        client = subprocess.Popen(
            [sys.executable, __file__, "--client-queries", str(qfile), "--url",
             f"http://127.0.0.1:{port}", "--clients", str(args.clients), "--per-client",
             str(args.per_client)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None and client.stdin is not None
        if client.stdout.readline().strip() != "warm":
            raise RuntimeError("the client process failed during warm-up")
        before = rss_mib(proc.pid)
        sampler = RssSampler(proc.pid, args.sample_s)
        sampler.start()
        client.stdin.write("go\n")
        client.stdin.flush()
        out, _ = client.communicate()
        sampler.stop()
        if client.returncode != 0:
            raise RuntimeError(f"client exited with {client.returncode}")
        http = json.loads(out.strip().splitlines()[-1])
        after = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return http, memory_summary(before, after, sampler.samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors in the index")
    ap.add_argument("--kind", default="ivf_flat", help="index backend")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--per-client", type=int, default=10_000, help="requests each client")
    ap.add_argument("--worker-threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--sample-s", type=float, default=2.0, help="RSS sampling interval")
    ap.add_argument("--flat-mib", type=float, default=64.0,
                    help="largest RSS growth over the second half still called flat")
    ap.add_argument("--cache", default=None, help="where the index is built and kept")
    ap.add_argument("--out", default=str(RESULTS / "soak_service.json"))
    ap.add_argument("--client-queries", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client_queries:
        client_main(args)
        return
    sys.path.insert(0, str(ROOT / "tests"))
    load = os.getloadavg()
    cache, model, dim, index, _ = prepare_index(args.cache, args.n, args.kind)
    queries = queries_for(args.n, dim, 500)
    http, memory = run_load(args, index, model, queries, cache / "soak-queries.npy")
    flat = abs(memory["second_half_growth_mib"]) <= args.flat_mib
    summary = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "n": args.n,
               "dim": dim, "kind": args.kind, "k": K, "worker_threads": args.worker_threads,
               "cpus": os.cpu_count(), "load_at_start": load, "load_at_end": os.getloadavg(),
               "http": http, "server_rss": memory,
               "pass": {"zero_errors": http["errors"] == 0, "memory_flat": flat}}
    print(f"\n{'clients':>7} {'requests':>9} {'errors':>6} {'req/s':>7} {'p50 ms':>7} "
          f"{'p95 ms':>7} {'p99 ms':>7} {'max ms':>7} {'RSS before':>10} {'after':>6} "
          f"{'peak':>6} {'2nd-half growth':>15}")
    print(f"{http['clients']:>7} {http['requests']:>9} {http['errors']:>6} "
          f"{http['rps']:>7.1f} {http['p50_ms']:>7.2f} {http['p95_ms']:>7.2f} "
          f"{http['p99_ms']:>7.2f} {http['max_ms']!s:>7} {memory['before_mib']:>10.0f} "
          f"{memory['after_mib']:>6.0f} {memory['peak_mib']:>6.0f} "
          f"{memory['second_half_growth_mib']:>15.1f}")
    print(f"codes {http['codes']}; transport failures {http['failures'] or 'none'}; client "
          f"CPU {http['client_cpu_s']} s; load {load[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"pass: {summary['pass']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
