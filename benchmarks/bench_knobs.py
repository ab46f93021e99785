"""Recall and speed of one built index across its search knobs (issue 17).

``bench_scale.py --keep`` leaves an index built on the benchmark vectors; this walks a grid
of ``nprobe`` (IVF) or ``ef_search`` (HNSW) x ``refine_factor`` on it, with the same
held-out queries and exact truth as ``bench_scale.py`` (the ``--queries`` vectors after the
first ``--n``): recall@10 over all queries (batch search, ``--threads``) and single-query
QPS through ``SearchEngine.search`` (1 thread) over ``--single`` of them, after reading the
index files once (warm page cache). Prints a table and writes
``benchmarks/results/knobs_<index dir name>.json``.

Usage:
  python benchmarks/bench_scale.py --n 10000000 --indexes ivf_pq --workdir /tmp/s --keep
  python benchmarks/bench_knobs.py /tmp/s/model-10000000-ivf_pq --n 10000000 \\
      --search 4,8,16,32 --refine 16,32,64
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index_data import benchmark_vectors  # noqa: E402
from bench_scale import K, _read_files, _single_qps  # noqa: E402

from specsearch.fsutil import write_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index", type=Path, help="index directory (bench_scale.py --keep)")
    ap.add_argument("--n", type=int, required=True, help="vectors in the index")
    ap.add_argument("--case", choices=("model", "clustered"), default="model")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single", type=int, default=300, help="queries timed one by one")
    ap.add_argument("--search", default="4,8,16,32",
                    help="nprobe (IVF) or ef_search (HNSW) values")
    ap.add_argument("--refine", default="4,16,32", help="refine_factor values")
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import faiss

    from specsearch.index import SearchKnobs
    from specsearch.index.threads import faiss_threads
    from specsearch.query import SearchEngine

    load = os.getloadavg()[0]
    vectors, described = benchmark_vectors(args.case, args.n + args.queries)
    q = np.ascontiguousarray(vectors[args.n:args.n + args.queries])
    faiss.omp_set_num_threads(args.threads)
    _, truth = faiss.knn(q, np.asarray(vectors[:args.n]), K, metric=faiss.METRIC_INNER_PRODUCT)
    del vectors
    engine = SearchEngine.open(args.index, verify=False)
    modality, mi = next(iter(engine.index.modalities.items()))
    ivf = mi.manifest.backend.kind.startswith("ivf")
    warm_s = _read_files(args.index)
    rows = []
    for s, r in itertools.product([int(v) for v in args.search.split(",")],
                                  [float(v) for v in args.refine.split(",")]):
        knobs = SearchKnobs(**({"nprobe": s} if ivf else {"ef_search": s}), refine_factor=r)
        with faiss_threads(args.threads):
            t0 = time.perf_counter()
            _, ids = mi.knn(q, K, knobs=knobs, threads=args.threads)
            batch_qps = len(q) / (time.perf_counter() - t0)
        found = mi.source_ids(ids)
        recall = float(np.mean([len(np.intersect1d(f, t)) / K for f, t in zip(found, truth)]))
        single = _single_qps(engine, q[:args.single], knobs)
        rows.append({"nprobe" if ivf else "ef_search": s, "refine_factor": r,
                     "recall_at_10": round(recall, 4), "qps_single": round(single, 1),
                     "qps_batch": round(batch_qps, 1)})
        print(json.dumps(rows[-1]), flush=True)
    key = "nprobe" if ivf else "ef_search"
    print(f"\n{described}, n = {args.n:,}, {modality} {mi.manifest.backend.kind}; "
          f"index files read in {warm_s:.1f} s")
    print(f"| {key} | refine | recall@10 | single QPS | batch QPS |\n|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[key]} | {r['refine_factor']:g} | {r['recall_at_10']:.4f} | "
              f"{r['qps_single']:,.0f} | {r['qps_batch']:,.0f} |")
    out = RESULTS / f"knobs_{args.index.name}.json"
    write_json_atomic(out, {"benchmark": "index_knobs", "index": str(args.index),
                            "n": args.n, "vectors": described,
                            "backend": mi.manifest.backend.to_dict(),
                            "date": time.strftime("%Y-%m-%d %H:%M"),
                            "command": " ".join(["python", *sys.argv]),
                            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                            "load_average_start_end": [round(load, 1),
                                                       round(os.getloadavg()[0], 1)],
                            "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
