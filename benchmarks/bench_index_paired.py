"""specsearch single-query search vs raw hnswlib, query by query, in one run (issues 6, 17).

Sequential sweeps on a shared machine compare two backends measured minutes apart, under
whatever load the machine had then. Here every setting of every path answers the same
single queries, all calls in one seeded random order, so all see the same load (and no
call finds its query's graph region warm from another path's call on the same query):

* ``engine``: the full specsearch path, ``SearchEngine.search(vector, k=10)`` (result
  object with source_ids and similarities) on a built index directory;
* ``index``: ``ModalityIndex.knn`` (the index layer: shards, knobs, direct path);
* ``faiss``: the shard's own FAISS index, ``index.search`` (for the wrapper overhead);
* ``hnswlib``: raw hnswlib (M=16, ef_construction=200, the usual setting), its own API.

All single-threaded, k=10, recall@10 against exact inner-product search. Vectors
(``--case``): ``model``, the shipped model's XP embeddings (``--model`` for another; see
bench_index_data.py), or ``clustered`` unit vectors. Queries are held-out vectors of the
same kind. Built indexes are cached under ``--workdir`` (keyed by case, size, data and
build settings), so a rerun only times queries; ``--build-only`` stops after building.

Usage:
  python benchmarks/bench_index_paired.py --n 1000000 --case model
  python benchmarks/bench_index_paired.py --n 1000000 --case clustered
  python benchmarks/bench_index_paired.py --n 300000 --pca-dim 0 --ours-ef 20,32
  python benchmarks/bench_index_paired.py --n 1000000 --model models/retrained
Writes benchmarks/results/index_paired_<case>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index_data import DEFAULT_CACHE, benchmark_vectors  # noqa: E402

from specsearch.fsutil import write_json_atomic  # noqa: E402


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--case", choices=("model", "clustered"), default="model")
    ap.add_argument("--model", default=None, help="model directory (case model)")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--m", type=int, default=32, help="our HNSW degree")
    ap.add_argument("--storage", default=None,
                    help="our HNSW code storage (default: fp16 for model, sq8 for clustered)")
    ap.add_argument("--pca-dim", type=int, default=None,
                    help="our graph's PCA dimension, 0: none (default: 32 for model "
                         "embeddings, whose variance is 99.6%% in 32 directions; 0 for "
                         "clustered vectors, which are isotropic around their centres)")
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--refine", type=float, default=2.0, help="our refine_factor")
    ap.add_argument("--ours-ef", type=_ints, default=[20, 24, 32, 48])
    ap.add_argument("--hnswlib-ef", type=_ints, default=[32, 48, 64, 96])
    ap.add_argument("--threads", type=int, default=2, help="build threads")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_CACHE / "paired")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    model_case = args.case == "model"
    if args.storage is None:
        args.storage = "fp16" if model_case else "sq8"
    if args.pca_dim is None:
        args.pca_dim = 32 if model_case else 0
    return args


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1]
                          for f, t in zip(found, truth)]))


def build_ours(x: np.ndarray, path: Path, config) -> float:
    """Build (or reuse) our index directory; seconds spent building (0 if cached)."""
    from specsearch.index import ArrayEmbeddings, BuildOptions, build_index
    if (path / "manifest.json").is_file():
        return 0.0
    src = ArrayEmbeddings({"xp": {"embedding": x, "source_id": np.arange(len(x))}},
                          model_hash="bench")
    t0 = time.perf_counter()
    build_index(src, path, BuildOptions(config=config, target_recall=None))
    return time.perf_counter() - t0


def build_hnswlib(x: np.ndarray, path: Path, threads: int):
    """(raw hnswlib M=16 index, build seconds or 0 if loaded from ``path``)."""
    import hnswlib
    raw = hnswlib.Index(space="ip", dim=x.shape[1])
    if path.is_file():
        raw.load_index(str(path))
        return raw, 0.0
    t0 = time.perf_counter()
    raw.init_index(len(x), M=16, ef_construction=200)
    raw.add_items(x, num_threads=threads)
    seconds = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    raw.save_index(str(path) + ".tmp")
    os.replace(str(path) + ".tmp", path)
    return raw, seconds


def main() -> int:
    args = _parse()
    import faiss

    from specsearch.index import HNSWConfig, SearchKnobs
    from specsearch.index.reader import open_index
    from specsearch.index.tuning import set_knobs
    from specsearch.query import SearchEngine

    faiss.omp_set_num_threads(args.threads)
    load_start = os.getloadavg()
    vectors, described = benchmark_vectors(args.case, args.n + args.queries, model=args.model)
    x, q = np.ascontiguousarray(vectors[:args.n]), np.ascontiguousarray(vectors[args.n:])
    digest = hashlib.sha256(x[:: max(1, len(x) // 1000)].tobytes()).hexdigest()[:12]
    options = {"pca_dim": args.pca_dim} if args.pca_dim else {}
    config = HNSWConfig(m=args.m, ef_construction=args.ef_construction, storage=args.storage,
                        refine_factor=args.refine, **options)
    key = (f"{args.case}-{args.n}-{digest}-hnsw{config.m}-{config.storage}-"
           f"pca{config.pca_dim}-efc{config.ef_construction}")
    work = args.workdir / key
    build_s = {"ours": build_ours(x, work / "index", config)}
    raw, build_s["hnswlib"] = build_hnswlib(x, args.workdir / f"hnswlib-{args.case}-{args.n}-"
                                            f"{digest}.bin", args.threads)
    print(f"{described}: {args.n:,} x {x.shape[1]}; builds (0 = cached): "
          f"ours {build_s['ours']:.0f} s, hnswlib {build_s['hnswlib']:.0f} s", flush=True)
    if args.build_only:
        return 0
    _, truth = faiss.knn(q, x, args.k, metric=faiss.METRIC_INNER_PRODUCT)
    directory = open_index(work / "index")
    engine = SearchEngine(directory)
    mi = directory["xp"]
    raw_faiss = mi.shards[0].backend.index
    faiss.omp_set_num_threads(1)

    knobs = {ef: SearchKnobs(ef_search=ef, refine_factor=args.refine) for ef in args.ours_ef}

    def ours(ef: int) -> None:
        if mi.knobs is not knobs[ef]:
            set_knobs(mi, knobs[ef])

    paths = {
        "engine": lambda v: engine.search(v[0], k=args.k).source_id,
        "index": lambda v: mi.knn(v, args.k)[1][0],
        "faiss": lambda v: raw_faiss.search(v, args.k)[1][0],
        "hnswlib": lambda v: raw.knn_query(v, args.k, num_threads=1)[0][0],
    }
    combos = [(p, ef) for ef in args.ours_ef for p in ("engine", "index", "faiss")]
    combos += [("hnswlib", ef) for ef in args.hnswlib_ef]
    wall = dict.fromkeys(combos, 0.0)
    cpu = dict.fromkeys(combos, 0.0)
    found: dict = {c: [] for c in combos}
    # Every (path, setting, query) call in one seeded random order: consecutive calls ask
    # different queries, so no path finds the graph region of its query warm in the cache
    # because another path has just searched the same query (a query-by-query rotation
    # did that: the later paths on a query ran up to 2x faster than the first).
    calls = [(c, i) for c in range(len(combos)) for i in range(len(q))]
    np.random.default_rng(0).shuffle(calls)
    for c, i in calls:
        name, ef = combos[c]
        if name == "hnswlib":
            raw.set_ef(ef)
        else:
            ours(ef)
        v = q[i:i + 1]
        w0, c0 = time.perf_counter(), time.thread_time()
        ids = paths[name](v)
        cpu[name, ef] += time.thread_time() - c0
        wall[name, ef] += time.perf_counter() - w0
        found[name, ef].append((i, ids))
    found = {c: [ids for _, ids in sorted(hits, key=lambda h: h[0])]
             for c, hits in found.items()}
    rows = [{"path": name, "ef": ef, "recall_at_10": round(recall_at(np.array(found[name, ef]),
                                                                     truth), 4),
             "qps": round(len(q) / wall[name, ef], 1),
             "qps_cpu": round(len(q) / cpu[name, ef], 1)} for name, ef in combos]
    summary = _summarise(rows)
    result = {"benchmark": "index_paired", "date": time.strftime("%Y-%m-%d %H:%M"),
              "command": " ".join(["python", *sys.argv]), "case": args.case,
              "vectors": described, "n": args.n, "dim": int(x.shape[1]),
              "queries": len(q), "k": args.k, "ours": config.to_dict(),
              "refine_factor": args.refine, "build_s": build_s,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "load_average_start_end": [load_start[0], os.getloadavg()[0]],
              "rows": rows, **summary}
    _print(result)
    out = args.out or Path(__file__).parent / "results" / f"index_paired_{args.case}.json"
    write_json_atomic(out, result, sort_keys=False)
    print(f"wrote {out}")
    return 0


def _summarise(rows: list[dict]) -> dict:
    """Ratios at matched recall (our cheapest engine setting at least as accurate as each
    hnswlib setting with recall >= 0.95) and wrapper overheads at each of our settings."""
    by = {(r["path"], r["ef"]): r for r in rows}
    engine = sorted((r for r in rows if r["path"] == "engine"), key=lambda r: -r["qps"])
    matched = []
    for h in (r for r in rows if r["path"] == "hnswlib" and r["recall_at_10"] >= 0.95):
        ok = [r for r in engine if r["recall_at_10"] >= h["recall_at_10"]]
        if ok:
            e = ok[0]
            matched.append({"hnswlib_ef": h["ef"], "hnswlib_recall": h["recall_at_10"],
                            "hnswlib_qps": h["qps"], "ours_ef": e["ef"],
                            "ours_recall": e["recall_at_10"], "ours_qps": e["qps"],
                            "ratio": round(e["qps"] / h["qps"], 2),
                            "ratio_cpu": round(e["qps_cpu"] / h["qps_cpu"], 2)})
    overhead = [{"ef": e["ef"],
                 "engine_vs_faiss": round(by["faiss", e["ef"]]["qps"] / e["qps"] - 1, 3),
                 "index_vs_faiss": round(by["faiss", e["ef"]]["qps"]
                                         / by["index", e["ef"]]["qps"] - 1, 3)}
                for e in sorted(engine, key=lambda r: r["ef"])]
    return {"matched_recall": matched, "wrapper_overhead": overhead}


def _print(result: dict) -> None:
    print(f"\n{result['vectors']}, {result['n']:,} vectors, {result['queries']} single "
          f"queries interleaved, 1 thread, load {result['load_average_start_end']}")
    print(f"{'path':8s} {'ef':>4s} {'recall@10':>9s} {'QPS':>8s} {'QPS(cpu)':>9s}")
    for r in result["rows"]:
        print(f"{r['path']:8s} {r['ef']:4d} {r['recall_at_10']:9.4f} {r['qps']:8,.0f} "
              f"{r['qps_cpu']:9,.0f}")
    print("\nmatched recall (engine vs raw hnswlib M16):")
    for m in result["matched_recall"]:
        print(f"  hnswlib ef={m['hnswlib_ef']} recall {m['hnswlib_recall']:.4f} "
              f"{m['hnswlib_qps']:,.0f} QPS | ours ef={m['ours_ef']} recall "
              f"{m['ours_recall']:.4f} {m['ours_qps']:,.0f} QPS | ratio {m['ratio']:.2f} "
              f"(cpu {m['ratio_cpu']:.2f})")
    print("wrapper overhead over raw FAISS:", ", ".join(
        f"ef={o['ef']}: engine {100 * o['engine_vs_faiss']:+.0f}%, index "
        f"{100 * o['index_vs_faiss']:+.0f}%" for o in result["wrapper_overhead"]))


if __name__ == "__main__":
    raise SystemExit(main())
