"""Load test of the HTTP service against a large index, compared with in-process queries.

One run:
1. builds (or reuses, ``--cache``) an index of ``--n`` clustered unit vectors
   (:func:`specsearch.index.synthetic.clustered_unit_vectors`, the index benchmark's data)
   with per-row metadata (ra, dec, snr, head predictions), tied to the served model's hash;
2. measures the in-process rate of ``SearchEngine.search(vec, k=10)`` (the exact call the
   service makes), single-threaded and with the server's worker-thread count;
3. starts ``specsearch serve`` in its own process, records its RSS, and runs a separate
   client process on loopback: ``wrk`` (Debian package; a C client whose own CPU use stays
   small) when installed, else httpx async (``--httpx``; at most ``--requests`` requests),
   each phase bounded by ``--duration`` seconds: ``POST /v1/search/embedding`` with k=10,
   first with one connection (latency of a single query), then ``--clients`` connections;
4. measures the in-process rate with ``worker_threads`` threads again, after the HTTP phases
   (on a shared machine the load moves; the ratio is taken against the best in-process rate);
5. prints a table (requests/s, p50/p95/p99 latency, errors, CPU milliseconds a request:
   the server process's and, in process, the calling threads', server memory before/after,
   HTTP / in-process throughput) and writes ``benchmarks/results/service.json``.

The server micro-batches concurrent searches (``SPECSEARCH_SEARCH_BATCHING``, on by
default); ``--compare-unbatched`` loads a second server with it off in the same run. The
in-process rates are single-query calls (what one request asks); the batched in-process
rate (``search_many``, 16 queries a call) is printed for reference.

Goals: p99 <= 20 ms for a single k=10 query; HTTP >= 0.6x the in-process throughput at 64
clients (issue 17; 0.5x in issue 8). The client shares the machine's cores with the server:
on a 2-core machine its CPU use is part of what is measured (httpx costs far more than wrk:
~1 ms of client CPU a request).

    python benchmarks/bench_service.py                 # 1M vectors (build ~2-4 min)
    python benchmarks/bench_service.py --n 100000 --requests 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
K = 10
BATCH = 16


def rss_mib(pid: int) -> float:
    """Resident memory of a process (Linux /proc), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(lat_s: list[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(lat_s) * 1e3
    if a.size == 0:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2),
            "p99_ms": round(float(p99), 2)}


# ----------------------------------------------------------------------------- index


def served_model(cache: Path) -> tuple[Path | None, str, int]:
    """(model dir or None for the shipped default, model hash, embedding dim)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from service_support import model_dir  # the tests' stand-in while no default ships

    from specsearch.model import load_model

    path = model_dir(cache)
    model = load_model(path)
    return path, model.model_hash, model.embedding_dim


def build(out: Path, n: int, model_hash: str, dim: int, kind: str,
          shards: int | None = None) -> float | None:
    """Build the benchmark index unless ``out`` holds one of ``n`` rows (and ``shards``
    shards, when given); build seconds (None when reused)."""
    from specsearch.index import ArrayEmbeddings, BuildOptions, build_index
    from specsearch.index.manifest import read_index_manifest, read_modality_manifest
    from specsearch.index.synthetic import clustered_unit_vectors

    try:
        top = read_index_manifest(out)
        m = read_modality_manifest(out, "lamost", top)
        if top.model_hash == model_hash and m.count == n and \
                (shards is None or m.n_shards == shards):
            return None
    except Exception:
        pass
    t = time.perf_counter()
    x = clustered_unit_vectors(n, dim, seed=0)
    rng = np.random.default_rng(3)
    cols = {"embedding": x, "source_id": 10 ** 15 + np.arange(n, dtype=np.int64),
            "ra": rng.uniform(0, 360, n), "dec": np.degrees(np.arcsin(rng.uniform(-1, 1, n))),
            "snr": rng.gamma(3.0, 15.0, n).astype(np.float32)}
    for label, (mu, sd) in {"teff": (5500, 900), "logg": (3.8, 0.8), "feh": (-0.4, 0.5)}.items():
        cols[f"{label}_pred"] = rng.normal(mu, sd, n).astype(np.float32)
        cols[f"{label}_err"] = np.abs(rng.normal(0.05 * abs(mu) + 0.05, 0.01, n)
                                      ).astype(np.float32)
    source = ArrayEmbeddings({"lamost": cols}, model_hash=model_hash,
                             label_names=["teff", "logg", "feh"])
    options = BuildOptions(kind=kind, target_recall=0.95, tune_queries=300) if shards is None \
        else BuildOptions(kind=kind, shards=shards, target_recall=0.95, tune_queries=300,
                          threads=2)
    build_index(source, out, options)
    return time.perf_counter() - t


def prepare_index(cache: str | None, n: int, kind: str
                  ) -> tuple[Path, Path | None, int, Path, float | None]:
    """(cache dir, model dir, embedding dim, index dir, build seconds or None if reused) of
    the benchmark index of ``n`` vectors, built under ``cache`` when missing."""
    root = Path(cache or Path(tempfile.gettempdir()) / "specsearch-bench-service")
    root.mkdir(parents=True, exist_ok=True)
    model, model_hash, dim = served_model(root)
    index = root / f"index-{kind}-{n}"
    build_s = build(index, n, model_hash, dim, kind)
    print(f"index {index}: n={n} dim={dim} kind={kind} "
          f"build {'reused' if build_s is None else f'{build_s:.0f} s'}", flush=True)
    return root, model, dim, index, build_s


def queries_for(n: int, dim: int, count: int) -> np.ndarray:
    from specsearch.index.synthetic import clustered_unit_vectors, held_out_queries

    # Regenerating the data for the queries costs seconds; a 200k prefix has the same mix.
    x = clustered_unit_vectors(min(n, 200_000), dim, seed=0)
    return held_out_queries(x, count, seed=11)


# ----------------------------------------------------------------------------- in-process


def open_engine(index: Path):
    """The index as the server opens it (memory-mapped, one FAISS thread a search)."""
    from specsearch.index import ThreadPolicy
    from specsearch.query import SearchEngine

    return SearchEngine.open(index, verify=False, threads=ThreadPolicy(single=1, batch=1))


def in_process(engine, queries: np.ndarray, threads: int, budget_s: float) -> dict:
    """What one HTTP search does inside the server, called directly: ``engine.search(vec,
    k=10)`` plus its rows' metadata (the response carries it). One thread, then
    ``threads`` threads; the search alone (ids + similarities), and batches of 16
    (``search_many``), for reference."""
    def query(i: int, with_metadata: bool = True) -> None:
        result = engine.search(queries[i % len(queries)], modality="lamost", k=K)
        if with_metadata:
            result.to_dicts()

    for i in range(200):
        query(i)

    def timed(with_metadata: bool) -> dict:
        lat, t0, c0, i = [], time.perf_counter(), time.thread_time(), 0
        while time.perf_counter() - t0 < budget_s:
            s = time.perf_counter()
            query(i, with_metadata)
            lat.append(time.perf_counter() - s)
            i += 1
        return {"qps": round(len(lat) / (time.perf_counter() - t0), 1),
                "cpu_ms": round((time.thread_time() - c0) * 1e3 / len(lat), 3),
                **percentiles(lat)}

    single, search_only = timed(True), timed(False)
    multi = threaded(engine, queries, threads, budget_s)
    done, t0, c0 = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - t0 < budget_s:
        start = done % (len(queries) - BATCH)
        for result in engine.search_many(list(queries[start:start + BATCH]),
                                         modality="lamost", k=K):
            result.to_dicts()
        done += BATCH
    batched = {"qps": round(done / (time.perf_counter() - t0), 1), "batch": BATCH,
               "cpu_ms": round((time.thread_time() - c0) * 1e3 / done, 3)}
    return {"single_thread": single, "threaded": multi, "search_only": search_only,
            "batched_single_thread": batched}


def threaded(engine, queries: np.ndarray, threads: int, budget_s: float) -> dict:
    """Queries/s of ``threads`` threads each calling ``engine.search`` + metadata."""
    def query(i: int) -> None:
        engine.search(queries[i % len(queries)], modality="lamost", k=K).to_dicts()

    def worker(offset: int) -> int:
        done, end = 0, time.perf_counter() + budget_s
        while time.perf_counter() < end:
            query(offset + done)
            done += 1
        return done

    t0, c0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(worker, range(0, threads * 997, 997)))
    return {"qps": round(total / (time.perf_counter() - t0), 1), "threads": threads,
            "cpu_ms": round((time.process_time() - c0) * 1e3 / total, 3)}


# ----------------------------------------------------------------------------- HTTP client


async def _load(url: str, bodies: list[bytes], clients: int, requests: int,
                duration_s: float) -> dict:
    import httpx

    lat: list[float] = []
    codes: dict[int, int] = {}
    errors = 0
    sent = 0
    deadline = time.perf_counter() + duration_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        async def one_client(cid: int) -> None:
            nonlocal sent, errors
            while sent < requests and time.perf_counter() < deadline:
                body = bodies[(sent * 7 + cid) % len(bodies)]
                sent += 1
                s = time.perf_counter()
                try:
                    r = await client.post("/v1/search/embedding", content=body,
                                          headers={"content-type": "application/json"})
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
                    if r.status_code == 200:
                        lat.append(time.perf_counter() - s)
                    else:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in range(clients)))
        wall = time.perf_counter() - t0
    return {"clients": clients, "requests": sent, "ok": len(lat), "errors": errors,
            "codes": codes, "wall_s": round(wall, 2), "rps": round(len(lat) / wall, 1),
            **percentiles(lat)}


WRK_SCRIPT = """
local bodies = {%s}
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "/v1/search/embedding", {["Content-Type"] = "application/json"},
                    bodies[(i %% #bodies) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %%d, "duration_us": %%d, "status_errors": %%d, ' ..
    '"socket_errors": %%d, "p50_us": %%f, "p95_us": %%f, "p99_us": %%f}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk_load(url: str, bodies: list[bytes], connections: int, duration_s: float,
             script: Path, server_pid: int) -> dict:
    """One load phase with wrk (a C client: its own CPU use stays small), time-bounded;
    with the server's and wrk's CPU milliseconds a request."""
    script.write_text(WRK_SCRIPT % ", ".join(f"[[{b.decode()}]]" for b in bodies))
    server0, client0 = cpu_s(server_pid), resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{int(duration_s)}s",
                          "--timeout", "30s", "-s", str(script), url],
                         capture_output=True, text=True, check=True,
                         timeout=duration_s + 60).stdout
    server_s, client = cpu_s(server_pid) - server0, resource.getrusage(resource.RUSAGE_CHILDREN)
    client_s = client.ru_utime + client.ru_stime - client0.ru_utime - client0.ru_stime
    r = json.loads(out.strip().splitlines()[-1])
    wall = r["duration_us"] / 1e6
    errors = r["status_errors"] + r["socket_errors"]
    return {"client": "wrk", "clients": connections, "requests": r["requests"],
            "ok": r["requests"] - r["status_errors"], "errors": errors,
            "wall_s": round(wall, 2), "rps": round((r["requests"] - errors) / wall, 1),
            "p50_ms": round(r["p50_us"] / 1e3, 2), "p95_ms": round(r["p95_us"] / 1e3, 2),
            "p99_ms": round(r["p99_us"] / 1e3, 2),
            "cpu_ms": round(server_s * 1e3 / max(r["requests"], 1), 3),
            "client_cpu_ms": round(client_s * 1e3 / max(r["requests"], 1), 3)}


def client_main(args: argparse.Namespace) -> None:
    """The separate client process: reads queries, runs the load, prints JSON."""
    queries = np.load(args.client_queries)
    bodies = [json.dumps({"embedding": q.tolist(), "modality": "lamost", "k": K}).encode()
              for q in queries]
    t_cpu = time.process_time()
    asyncio.run(_load(args.url, bodies, 4, 100, 10))  # warm-up (connections, caches)
    out = {"single": asyncio.run(_load(args.url, bodies, 1, args.single_requests,
                                       args.duration)),
           "concurrent": asyncio.run(_load(args.url, bodies, args.clients, args.requests,
                                           args.duration))}
    out["client_cpu_s"] = round(time.process_time() - t_cpu, 1)
    print(json.dumps(out))


# ----------------------------------------------------------------------------- main


def serve(index: Path, model: Path | None, port: int, worker_threads: int, *,
          batching: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "specsearch", "serve", str(index), "--port", str(port),
           "--log-level", "warning", "--worker-threads", str(worker_threads)]
    if model is not None:
        cmd += ["--model", str(model)]
    env = {**os.environ, "SPECSEARCH_SEARCH_BATCHING": str(batching).lower()}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        wait_ready(proc, port, 180)
    except RuntimeError:
        proc.kill()
        raise
    return proc


def wait_ready(proc: subprocess.Popen, port: int, timeout_s: float) -> None:
    """Wait until the server on ``port`` answers ``/v1/health/ready`` with 200.

    Raises:
        RuntimeError: the process exited, or was not ready within ``timeout_s``.
    """
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.3)
    raise RuntimeError(f"server did not become ready in {timeout_s:.0f} s")


def measure_http(args: argparse.Namespace, index: Path, model: Path | None, cache: Path,
                 queries: np.ndarray, *, batching: bool = True) -> tuple[dict, float, float]:
    """Serve ``index`` in its own process and load it (wrk, else the httpx client process);
    (results, server RSS before, after) in MiB."""
    from service_support import free_port

    port = free_port()
    proc = serve(index, model, port, args.worker_threads, batching=batching)
    try:
        rss_before = rss_mib(proc.pid)
        qfile = cache / "queries.npy"
        np.save(qfile, queries)
        if shutil.which("wrk") and not args.httpx:
            bodies = [json.dumps({"embedding": [round(float(v), 6) for v in q],
                                  "modality": "lamost", "k": K}).encode()
                      for q in queries[:500]]
            url, script = f"http://127.0.0.1:{port}", cache / "load.lua"
            wrk_load(url, bodies, 4, 3, script, proc.pid)  # warm-up
            http = {"single": wrk_load(url, bodies, 1, args.duration, script, proc.pid),
                    "concurrent": wrk_load(url, bodies, args.clients, args.duration, script,
                                           proc.pid),
                    "client_cpu_s": "n/a (wrk)"}
        else:
            client = subprocess.run(
                [sys.executable, __file__, "--client-queries", str(qfile),
                 "--url", f"http://127.0.0.1:{port}", "--clients", str(args.clients),
                 "--requests", str(args.requests), "--single-requests",
                 str(args.single_requests), "--duration", str(args.duration)],
                capture_output=True, text=True, check=True, timeout=4 * args.duration + 120)
            http = json.loads(client.stdout.strip().splitlines()[-1])
        rss_after = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"batching": batching, **http}, rss_before, rss_after


def print_table(n: int, rows: list[tuple[str, dict]]) -> None:
    print(f"\n{'k=10 search, ' + str(n) + ' vectors':<34} {'req/s':>8} {'p50 ms':>7} "
          f"{'p95 ms':>7} {'p99 ms':>7} {'CPU ms':>7} {'errors':>7} {'ok':>7}")
    for name, r in rows:
        rate = r.get("rps", r.get("qps"))
        print(f"{name:<34} {rate:>8.1f} " + " ".join(
            f"{r.get(c, float('nan')):>7.2f}" for c in ("p50_ms", "p95_ms", "p99_ms", "cpu_ms"))
            + f" {r.get('errors', '-')!s:>7} {r.get('ok', '-')!s:>7}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors in the index")
    ap.add_argument("--kind", default="ivf_flat",
                    help="index backend (ivf_flat builds 1M in ~1-2 min on 2 cores)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=20_000, help="max requests (concurrent)")
    ap.add_argument("--single-requests", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=30.0, help="max seconds a phase")
    ap.add_argument("--worker-threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--cache", default=None, help="where the index is built and kept")
    ap.add_argument("--out", default=str(RESULTS / "service.json"))
    ap.add_argument("--httpx", action="store_true",
                    help="use the Python httpx client even when wrk is installed")
    ap.add_argument("--compare-unbatched", action="store_true",
                    help="also load a server with SPECSEARCH_SEARCH_BATCHING=false")
    ap.add_argument("--client-queries", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client_queries:
        client_main(args)
        return

    sys.path.insert(0, str(ROOT / "tests"))
    load = os.getloadavg()
    cache, model, dim, index, build_s = prepare_index(args.cache, args.n, args.kind)
    queries = queries_for(args.n, dim, 2000)
    engine = open_engine(index)
    inproc = in_process(engine, queries, args.worker_threads, budget_s=5.0)
    print(f"in-process: {inproc}", flush=True)

    http, rss_before, rss_after = measure_http(args, index, model, cache, queries)
    unbatched = measure_http(args, index, model, cache, queries, batching=False)[0] \
        if args.compare_unbatched else None
    inproc["threaded_after_http"] = threaded(engine, queries, args.worker_threads, 5.0)

    best_inproc = max(inproc["single_thread"]["qps"], inproc["threaded"]["qps"],
                      inproc["threaded_after_http"]["qps"])
    ratio = http["concurrent"]["rps"] / best_inproc
    summary = {
        "n": args.n, "dim": dim, "kind": args.kind, "k": K, "build_s": build_s,
        "worker_threads": args.worker_threads, "cpus": os.cpu_count(),
        "load_at_start": load, "load_at_end": os.getloadavg(), "in_process": inproc,
        "http": http, "http_unbatched": unbatched,
        "server_rss_mib": {"before": round(rss_before, 1), "after": round(rss_after, 1)},
        "best_in_process_qps": best_inproc, "http_over_in_process": round(ratio, 3),
        "goals": {"single_query_p99_ms<=20": http["single"]["p99_ms"] <= 20.0,
                  "http>=0.6*in_process": ratio >= 0.6},
    }
    t = args.worker_threads
    rows = [("in-process search only", inproc["search_only"]),
            ("in-process +metadata, 1 thr", inproc["single_thread"]),
            (f"in-process +metadata, {t} thr", inproc["threaded"]),
            (f"in-process +metadata, {t} thr, after", inproc["threaded_after_http"]),
            (f"in-process search_many({BATCH}), 1 thr", inproc["batched_single_thread"]),
            ("HTTP, 1 client", http["single"]),
            (f"HTTP, {args.clients} clients", http["concurrent"])]
    if unbatched:
        rows += [("HTTP unbatched, 1 client", unbatched["single"]),
                 (f"HTTP unbatched, {args.clients} clients", unbatched["concurrent"])]
    print_table(args.n, rows)
    print(f"server RSS {rss_before:.0f} MiB before, {rss_after:.0f} MiB after; HTTP/in-process "
          f"throughput {ratio:.3f} (best in-process {best_inproc:.1f}/s); client CPU "
          f"{http['client_cpu_s']} s; load {load[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"goals: {summary['goals']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
