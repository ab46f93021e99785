"""Index growth curve (issue 17): the indexes a user would pick under a memory budget, at
one size per run, on the shipped model's XP embeddings (``--case clustered``: the seeded
clustered vectors).

For each index (``ivf_pq``: IVF-PQ 32 B codes + exact re-ranking; ``hnsw_fp16``: FAISS
HNSW over fp16 codes + exact re-ranking; both over 32 uncentred principal components for
model embeddings; ``auto``: what ``--kind auto`` builds; ``hnsw_sq8``: HNSW over SQ8
codes of all dimensions, auto's choice above 200k rows before it measured the variance),
built through ``build_index`` in a child
process, its knobs tuned to recall@10 >= 0.95 on 1000 held-out rows (left out of training and
masked out of the search, so they meet the index as new spectra do; see
``specsearch.index.tuning``):

* build seconds (tuning included) and the child's peak RSS (``VmHWM``);
* resident bytes/vector (index file minus the float32 re-ranking vectors, which stay
  memory-mapped on disk), disk bytes/vector (the whole index directory);
* recall@10 against exact search, single-query QPS through ``SearchEngine.search``
  (1 thread) with the index files in the page cache (read once before timing: a server
  that has been up a while) and, for the other half of the queries, straight after
  opening (``qps_single_cold``: each re-ranking read may go to the disk), and batch QPS
  (``--threads``).

Rows are merged by (case, n, index) into ``benchmarks/results/scale.json``, so runs at
100k, 1M and 10M build one table. The built index is deleted after measuring (``--keep``).

Usage:
  python benchmarks/bench_scale.py --n 100000
  python benchmarks/bench_scale.py --n 1000000 --indexes ivf_pq
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index_data import benchmark_vectors  # noqa: E402

from specsearch.fsutil import write_json_atomic  # noqa: E402

K = 10
RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"


def config_of(name: str, n: int, case: str = "model"):
    """The index config a user would pick at ``n`` vectors under a memory budget: codes on
    32 uncentred principal components for model embeddings (99.6% of their variance), on
    all dimensions for the isotropic clustered vectors."""
    from specsearch.index import HNSWConfig, IVFPQConfig
    if name == "auto":
        return None  # BuildOptions(kind="auto"): the builder's own choice
    if name == "hnsw_sq8":
        return HNSWConfig(storage="sq8")  # what --kind auto chose above 200k before issue 17
    pca = 32 if case == "model" else None
    if name == "ivf_pq":
        return IVFPQConfig(nlist=int(4 * np.sqrt(n)), pq_m=32, refine_factor=4.0, pca_dim=pca)
    if name == "hnsw_fp16":
        return HNSWConfig(m=32, ef_construction=200, storage="fp16", pca_dim=pca,
                          refine_factor=4.0)
    raise SystemExit(f"unknown index {name!r}; use ivf_pq, hnsw_fp16, hnsw_sq8 or auto")


def build_child(args: argparse.Namespace) -> int:
    """(child process) Build one index; print its build seconds and peak RSS as JSON."""
    import faiss

    from specsearch.index import ArrayEmbeddings, BuildOptions, build_index
    faiss.omp_set_num_threads(args.threads)
    vectors, _ = benchmark_vectors(args.case, args.n + args.queries)
    x = np.ascontiguousarray(vectors[:args.n])
    src = ArrayEmbeddings({"xp": {"embedding": x, "source_id": np.arange(args.n)}},
                          model_hash="bench")
    t0 = time.perf_counter()
    config = config_of(args.build_child, args.n, args.case)
    build_index(src, args.workdir, BuildOptions(kind="auto", config=config, target_recall=0.95,
                                                tune_queries=1000, threads=args.threads))
    seconds = time.perf_counter() - t0
    hwm = [line.split()[1] for line in open("/proc/self/status")
           if line.startswith("VmHWM")]
    print("BUILD", json.dumps({"build_s": seconds, "peak_rss_mb": int(hwm[0]) / 1024}))
    return 0


def _build(name: str, folder: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--build-child", name, "--n", str(args.n),
           "--case", args.case, "--queries", str(args.queries),
           "--threads", str(args.threads), "--workdir", str(folder)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("BUILD ")][-1]
    return json.loads(line[6:])


def _disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _single_qps(engine, queries: np.ndarray, knobs=None) -> float:
    t0 = time.perf_counter()
    for v in queries:
        engine.search(v, k=K, knobs=knobs)
    return len(queries) / (time.perf_counter() - t0)


def _read_files(folder: Path) -> float:
    """Read every file of ``folder`` once (into the page cache, as a server does at start:
    :func:`specsearch.index.warm.warm_files`); seconds taken."""
    from specsearch.index.warm import warm_files
    return warm_files(folder, budget_bytes=2 ** 62).seconds


def measure(name: str, folder: Path, q: np.ndarray, truth: np.ndarray, n: int,
            threads: int) -> dict:
    """recall@10, single / batch QPS and bytes of one built index."""
    from specsearch.index.threads import faiss_threads
    from specsearch.query import SearchEngine
    engine = SearchEngine.open(folder, verify=False)
    mi = engine.index["xp"]
    half = min(len(q), 1000) // 2
    # cold: straight after opening (re-ranking reads hit the disk); warm: after reading the
    # index files once, as a server that has been up a while (or warmed itself) runs
    qps_cold = _single_qps(engine, q[:half])
    warm_s = _read_files(folder)
    qps_single = _single_qps(engine, q[half:2 * half])
    with faiss_threads(threads):
        t0 = time.perf_counter()
        _, ids = mi.knn(q, K, threads=threads)
        qps_batch = len(q) / (time.perf_counter() - t0)
    found = mi.source_ids(ids)
    recall = float(np.mean([len(np.intersect1d(f, t)) / K for f, t in zip(found, truth)]))
    index_bytes = sum(s.entry.index.bytes for s in mi.shards)
    refine = 4 * mi.dim * n if mi.shards[0].backend.quantised else 0
    return {"recall_at_10": round(recall, 4), "qps_single": round(qps_single, 1),
            "qps_single_cold": round(qps_cold, 1), "page_cache_warm_s": round(warm_s, 1),
            "qps_batch": round(qps_batch, 1), "knobs": mi.knobs.to_dict(),
            "backend": mi.manifest.backend.to_dict(),
            "resident_B_per_vec": round((index_bytes - refine) / n, 1),
            "disk_B_per_vec": round(_disk_bytes(folder) / n, 1)}


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--case", choices=("model", "clustered"), default="model")
    ap.add_argument("--indexes", default="ivf_pq,hnsw_fp16")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the built indexes")
    ap.add_argument("--build-child", default=None, help=argparse.SUPPRESS)
    return ap.parse_args()


def main() -> int:
    args = _parse()
    if args.build_child:
        return build_child(args)
    import faiss
    load = os.getloadavg()[0]
    vectors, described = benchmark_vectors(args.case, args.n + args.queries)
    x, q = np.ascontiguousarray(vectors[:args.n]), np.ascontiguousarray(vectors[args.n:])
    from specsearch.index.tuning import AUTO_SAMPLE_ROWS, concentrated_variance
    rng = np.random.default_rng(0)
    top32 = concentrated_variance(x[rng.choice(args.n, min(args.n, AUTO_SAMPLE_ROWS),
                                               replace=False)])
    faiss.omp_set_num_threads(args.threads)
    _, truth = faiss.knn(q, x, K, metric=faiss.METRIC_INNER_PRODUCT)
    del x, vectors
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-scale-"))
    rows = []
    for name in [s for s in args.indexes.split(",") if s]:
        folder = work / f"{args.case}-{args.n}-{name}"
        shutil.rmtree(folder, ignore_errors=True)
        built = _build(name, folder, args)
        row = {"case": args.case, "vectors": described, "n": args.n, "index": name,
               "top32_uncentred_variance": round(top32, 5),
               **{k: round(v, 1) for k, v in built.items()},
               **measure(name, folder, q, truth, args.n, args.threads)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    _record(rows, args, load)
    return 0


def _record(rows: list[dict], args: argparse.Namespace, load_start: float) -> None:
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": []}
    keys = {(r["case"], r["n"], r["index"]) for r in rows}
    kept = [r for r in old["rows"] if (r["case"], r["n"], r["index"]) not in keys]
    stamp = {"date": time.strftime("%Y-%m-%d %H:%M"),
             "command": " ".join(["python", *sys.argv]),
             "machine": f"{platform.machine()}, {os.cpu_count()} cores",
             "load_average_start_end": [round(load_start, 1),
                                        round(os.getloadavg()[0], 1)]}
    rows = [{**r, **stamp} for r in rows]
    merged = sorted(kept + rows, key=lambda r: (r["case"], r["index"], r["n"]))
    write_json_atomic(RESULTS, {"benchmark": "index_scale", "rows": merged}, sort_keys=False)
    print(f"\n{'case':9s} {'index':10s} {'n':>10s} {'build s':>8s} {'peak MB':>8s} "
          f"{'res B/v':>8s} {'disk B/v':>8s} {'recall':>7s} {'QPS 1':>8s} {'1 cold':>8s} "
          f"{'QPS batch':>9s}")
    for r in merged:
        print(f"{r['case']:9s} {r['index']:10s} {r['n']:10,d} {r['build_s']:8.0f} "
              f"{r['peak_rss_mb']:8.0f} {r['resident_B_per_vec']:8.1f} "
              f"{r['disk_B_per_vec']:8.1f} {r['recall_at_10']:7.4f} {r['qps_single']:8,.0f} "
              f"{r.get('qps_single_cold', float('nan')):8,.0f} {r['qps_batch']:9,.0f}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    raise SystemExit(main())
