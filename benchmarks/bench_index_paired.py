"""FAISS HNSW (through specsearch's index layer) vs raw hnswlib, query by query (issue 6).

Sequential sweeps on a shared machine compare two backends measured minutes apart, under
whatever load the machine had then. Here both answer the same single queries interleaved
(alternating which goes first), so both see the same load; wall and thread-CPU time are
summed per backend. The FAISS side is the full specsearch path (``ModalityIndex.knn`` on a
built index: HNSW32 + SQ8 codes + exact refine), the hnswlib side the bare library (M=16,
the usual setting), both single-threaded, at several ef settings so that the ratio can be
read at matched recall@10 (against exact inner-product search).

Usage:
  python benchmarks/bench_index_paired.py --n 1000000      # ~20 min of HNSW builds here
  python benchmarks/bench_index_paired.py --n 20000 --queries 500   # smoke run
Writes benchmarks/results/index_paired.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import faiss
import hnswlib
import numpy as np

from specsearch.index import ArrayEmbeddings, BuildOptions, HNSWConfig, SearchKnobs, build_index
from specsearch.index.reader import open_index
from specsearch.index.synthetic import clustered_unit_vectors, held_out_queries
from specsearch.index.tuning import set_knobs

SETTINGS = ((16, 32), (16, 48), (16, 64), (24, 48), (24, 64))
"""(FAISS efSearch, hnswlib ef) pairs; FAISS refines 2x candidates with exact vectors."""


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1]
                          for f, t in zip(found, truth)]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).parent / "results" / "index_paired.json")
    args = ap.parse_args()
    x = clustered_unit_vectors(args.n, args.dim, seed=0)
    q = held_out_queries(x, args.queries, seed=1)
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(x)
    _, truth = flat.search(q, args.k)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-paired-"))
    src = ArrayEmbeddings({"xp": {"embedding": x, "source_id": np.arange(args.n)}},
                          model_hash="bench")
    t0 = time.perf_counter()
    build_index(src, work / "hnsw", BuildOptions(config=HNSWConfig(m=32, ef_construction=200),
                                                 target_recall=None))
    build_faiss = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw = hnswlib.Index("ip", args.dim)
    raw.init_index(args.n, M=16, ef_construction=200)
    raw.add_items(x, num_threads=2)
    build_hnswlib = time.perf_counter() - t0
    print(f"built: specsearch FAISS HNSW32-SQ8 {build_faiss:.0f} s, raw hnswlib M16 "
          f"{build_hnswlib:.0f} s", flush=True)
    mi = open_index(work / "hnsw")["xp"]
    faiss.omp_set_num_threads(1)
    rows = []
    for ef_f, ef_h in SETTINGS:
        set_knobs(mi, SearchKnobs(ef_search=ef_f, refine_factor=2.0))
        raw.set_ef(ef_h)
        fns = {"faiss": lambda v: mi.knn(v, args.k)[1][0],
               "hnswlib": lambda v: raw.knn_query(v, args.k, num_threads=1)[0][0]}
        wall = dict.fromkeys(fns, 0.0)
        cpu = dict.fromkeys(fns, 0.0)
        found: dict[str, list] = {name: [] for name in fns}
        for i in range(args.queries):
            v = q[i:i + 1]
            for name in (("faiss", "hnswlib") if i % 2 else ("hnswlib", "faiss")):
                w0, c0 = time.perf_counter(), time.thread_time()
                found[name].append(fns[name](v))
                cpu[name] += time.thread_time() - c0
                wall[name] += time.perf_counter() - w0
        row = {"faiss_ef_search": ef_f, "hnswlib_ef": ef_h,
               "faiss_recall": recall_at(np.array(found["faiss"]), truth),
               "hnswlib_recall": recall_at(np.array(found["hnswlib"]), truth),
               "faiss_qps_wall": args.queries / wall["faiss"],
               "hnswlib_qps_wall": args.queries / wall["hnswlib"],
               "ratio_wall": wall["hnswlib"] / wall["faiss"],
               "ratio_cpu": cpu["hnswlib"] / cpu["faiss"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nFAISS HNSW32-SQ8 + refine (specsearch) vs raw hnswlib M16, {args.n:,} x "
          f"{args.dim}, {args.queries} single queries interleaved, 1 thread")
    head = (f"{'faiss ef':>8} {'recall':>7} {'QPS':>7} | {'hnswlib ef':>10} {'recall':>7} "
            f"{'QPS':>7} | {'ratio wall':>10} {'ratio cpu':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['faiss_ef_search']:8d} {r['faiss_recall']:7.4f} {r['faiss_qps_wall']:7,.0f} | "
              f"{r['hnswlib_ef']:10d} {r['hnswlib_recall']:7.4f} {r['hnswlib_qps_wall']:7,.0f} | "
              f"{r['ratio_wall']:10.2f} {r['ratio_cpu']:9.2f}")
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(), "n": args.n,
        "dim": args.dim, "queries": args.queries, "build_s": {"faiss": build_faiss,
                                                              "hnswlib": build_hnswlib},
        "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
