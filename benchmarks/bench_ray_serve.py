"""Overhead of distributed serving: the HTTP API on Ray Serve (shard groups as deployments)
vs the single-process service, same sharded index, same client, same run.

One run:
1. builds (or reuses, ``--cache``) an index of ``--n`` clustered unit vectors in
   ``--shards`` shards with the service benchmark's metadata columns, tied to the served
   model's hash (:mod:`bench_service`'s data);
2. starts ``specsearch serve INDEX`` (one process), loads it with :mod:`bench_service`'s
   client in a separate process (httpx async: ``POST /v1/search/embedding``, k=10; first
   one client for the latency of a single query, then ``--clients`` clients), stops it;
3. starts ``specsearch serve INDEX --engine ray --shard-groups G`` (a local Ray instance:
   ingress + G shard-group deployments, one replica each) and runs the same client;
4. checks that both answered the same neighbours for a sample of queries, prints a table
   (requests/s, p50/p95/p99, errors) with the Ray / single-process ratios, and writes
   ``benchmarks/results/ray_serve.json``.

    python benchmarks/bench_ray_serve.py                       # 1M vectors, 4 shards, 2 groups
    python benchmarks/bench_ray_serve.py --n 100000 --duration 10

On one small machine the distributed path can only cost (each query crosses processes
twice more: proxy -> ingress -> shard groups); it is what a cluster pays per query for
holding an index no single machine can.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_service import K, queries_for, served_model  # noqa: E402
from bench_service import build as build_service_index, wait_ready  # noqa: E402


def build(out: Path, n: int, shards: int, model_hash: str, dim: int, kind: str) -> float | None:
    """The service benchmark's index (same vectors and columns) in ``shards`` shards;
    build seconds, None when reused."""
    return build_service_index(out, n, model_hash, dim, kind, shards=shards)


def start(cmd: list[str], port: int, timeout_s: float = 300) -> subprocess.Popen:
    """Start a server command and wait until ``/v1/health/ready`` answers 200."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        wait_ready(proc, port, timeout_s)
    except RuntimeError as exc:
        stop(proc)
        raise RuntimeError(f"{exc}: {cmd}") from None
    return proc


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM: the server exits, and with it the local Ray instance it started."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def answers(url: str, queries: np.ndarray) -> list[list[tuple[int, float]]]:
    import httpx

    out = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for q in queries:
            r = c.post("/v1/search/embedding", json={"embedding": q.tolist(),
                                                     "modality": "lamost", "k": K})
            r.raise_for_status()
            out.append([(n["source_id"], n["similarity"]) for n in r.json()["neighbours"]])
    return out


def load(url: str, qfile: Path, args: argparse.Namespace) -> dict:
    """bench_service's client, in its own process (its CPU is part of the machine's)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_service.py"), "--client-queries",
         str(qfile), "--url", url, "--clients", str(args.clients), "--requests",
         str(args.requests), "--single-requests", str(args.single_requests), "--duration",
         str(args.duration)], capture_output=True, text=True, check=True,
        timeout=4 * args.duration + 180)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors in the index")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--shard-groups", type=int, default=2)
    ap.add_argument("--kind", default="ivf_flat")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=5000, help="max requests (concurrent)")
    ap.add_argument("--single-requests", type=int, default=400)
    ap.add_argument("--duration", type=float, default=20.0, help="max seconds a phase")
    ap.add_argument("--worker-threads", type=int, default=2)
    ap.add_argument("--cache", default=None, help="where the index is built and kept")
    ap.add_argument("--out", default=str(RESULTS / "ray_serve.json"))
    args = ap.parse_args()

    from service_support import free_port

    t_run = time.perf_counter()
    load_start = os.getloadavg()
    cache = Path(args.cache or Path(tempfile.gettempdir()) / "specsearch-bench-ray-serve")
    cache.mkdir(parents=True, exist_ok=True)
    model, model_hash, dim = served_model(cache)
    index = cache / f"index-{args.kind}-{args.n}-{args.shards}sh"
    build_s = build(index, args.n, args.shards, model_hash, dim, args.kind)
    print(f"index {index}: n={args.n} dim={dim} kind={args.kind} shards={args.shards} "
          f"build {'reused' if build_s is None else f'{build_s:.0f} s'}", flush=True)
    queries = queries_for(args.n, dim, 1000)
    qfile = cache / "queries.npy"
    np.save(qfile, queries)

    base = [sys.executable, "-m", "specsearch", "serve", str(index), "--log-level",
            "warning", "--worker-threads", str(args.worker_threads)]
    if model is not None:
        base += ["--model", str(model)]
    engines = {"single process": [],
               f"Ray Serve, {args.shard_groups} shard groups":
                   ["--engine", "ray", "--shard-groups", str(args.shard_groups)]}
    http, sample, startup = {}, {}, {}
    for name, extra in engines.items():
        port = free_port()
        t = time.perf_counter()
        proc = start(base + ["--port", str(port)] + extra, port)
        startup[name] = round(time.perf_counter() - t, 1)
        try:
            url = f"http://127.0.0.1:{port}"
            sample[name] = answers(url, queries[:50])
            http[name] = load(url, qfile, args)
        finally:
            stop(proc)
        print(f"{name}: ready in {startup[name]} s; {http[name]}", flush=True)

    (local, ray) = engines
    identical = sample[local] == sample[ray]
    ratio = {phase: round(http[ray][phase]["rps"] / max(http[local][phase]["rps"], 1e-9), 3)
             for phase in ("single", "concurrent")}
    print(f"\n{'k=10 search, ' + str(args.n) + ' vectors':<34} {'req/s':>8} {'p50 ms':>8} "
          f"{'p95 ms':>8} {'p99 ms':>8} {'errors':>7} {'ok':>7}")
    for name in engines:
        for phase, label in (("single", "1 client"), ("concurrent", f"{args.clients} clients")):
            p = http[name][phase]
            print(f"{name + ', ' + label:<34} {p['rps']:>8.1f} {p['p50_ms']:>8.2f} "
                  f"{p['p95_ms']:>8.2f} {p['p99_ms']:>8.2f} {p['errors']:>7} {p['ok']:>7}")
    print(f"Ray / single process requests/s: 1 client {ratio['single']:.2f}, "
          f"{args.clients} clients {ratio['concurrent']:.2f}; identical answers on 50 "
          f"queries: {identical}; startup {startup}; load {load_start[0]:.1f} -> "
          f"{os.getloadavg()[0]:.1f}; run {time.perf_counter() - t_run:.0f} s")
    summary = {"n": args.n, "dim": dim, "kind": args.kind, "shards": args.shards,
               "shard_groups": args.shard_groups, "replicas": 1, "k": K,
               "worker_threads": args.worker_threads, "clients": args.clients,
               "build_s": build_s, "cpus": os.cpu_count(), "load_at_start": load_start,
               "load_at_end": os.getloadavg(), "startup_s": startup, "http": http,
               "ray_over_single_process": ratio, "identical_answers_50_queries": identical}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1, default=float))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
