"""Index benchmark: recall@10 vs single-query and batched QPS per backend and setting.

Run (the issue's configuration, ~50-60 min on 2 shared cores):
    .venv/bin/python benchmarks/bench_index.py --n 1000000
Quick run (default, ~5-10 min): 100k vectors.
    .venv/bin/python benchmarks/bench_index.py

Vectors (``--case``): ``model`` = the shipped (or ``--model``) model's XP embeddings, see
bench_index_data.py, with held-out embeddings as queries; ``clustered`` (default) =
``specsearch.index.synthetic.clustered_unit_vectors`` (seeded Gaussian mixture on the
unit sphere, 128-d; with its defaults hnswlib M=16 behaves as on the issue's reference
embeddings). Queries: perturbed stored vectors (never identical to a row). Ground truth:
exact FAISS ``IndexFlatIP``.

Rows of the table:
* ``specclip-baseline``: the SpecCLIP retrieval recipe: sklearn ``cosine_similarity`` of the
  query against the whole array + a full ``argsort`` (numpy if sklearn is missing).
* ``raw-hnswlib``: hnswlib's own API with its defaults (M=16, ef_construction=200; ef=10 is
  its default query setting) on the graph file our build wrote (same algorithm and params).
* ``raw-faiss``: FAISS's own ``index.search`` on our shard files (mmapped) -- for overhead.
* every specsearch backend through :class:`ModalityIndex` (``wrapper``) and, at the tuned
  setting, through the full :class:`SearchEngine` (metadata rows attached).
* filtered search at 50/10/1% selectivity; bytes/vector; build time; 220M extrapolation.
QPS: single = one query per call, 1 thread (the engine's policy for single queries);
batch = all queries in one call, all cores. Results: benchmarks/results/index.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from specsearch.index import (ArrayEmbeddings, BuildOptions, HNSWConfig, HnswlibConfig,
                              IVFFlatConfig, IVFPQConfig, SearchKnobs, build_index)
from specsearch.index.synthetic import clustered_unit_vectors, held_out_queries
from specsearch.index.threads import faiss_threads
from specsearch.index.tuning import set_knobs
from specsearch.query import SearchEngine

K = 10
ROWS: list[dict] = []


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f[f >= 0], t)) / len(t)
                          for f, t in zip(found, truth)]))


def timed_single(fn, queries: np.ndarray, budget_s: float = 3.0) -> tuple[np.ndarray, float]:
    """Run fn(q[None]) per query (at most budget_s seconds); (ids of run queries, QPS)."""
    out, t0 = [], time.perf_counter()
    for i in range(len(queries)):
        out.append(fn(queries[i:i + 1]))
        if time.perf_counter() - t0 > budget_s and i >= 50:
            break
    dt = time.perf_counter() - t0
    return np.vstack(out), len(out) / dt


def timed_batch(fn, queries: np.ndarray) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    ids = fn(queries)
    return ids, len(queries) / (time.perf_counter() - t0)


def row(name: str, setting: str, rec: float, qps1: float | None, qpsb: float | None,
        **extra) -> dict:
    r = {"backend": name, "setting": setting, "recall_at_10": round(rec, 4),
         "qps_single": None if qps1 is None else round(qps1, 1),
         "qps_batch": None if qpsb is None else round(qpsb, 1), **extra}
    ROWS.append(r)
    print(f"{name:18s} {setting:28s} recall@10={rec:.4f}  single={_f(qps1)}  "
          f"batch={_f(qpsb)}  {extra if extra else ''}", flush=True)
    return r


def _f(v):
    return "-" if v is None else f"{v:9.0f}"


def to_input_ids(mi, gids: np.ndarray) -> np.ndarray:
    """Global ids -> original row numbers (the build stored them as source_id)."""
    return mi.source_ids(gids)


def baseline(x, queries, truth, n_q):
    try:
        from sklearn.metrics.pairwise import cosine_similarity
        impl = "sklearn cosine_similarity + full argsort"

        def one(q):
            return np.argsort(-cosine_similarity(q, x)[0])[:K][None]
    except ImportError:
        impl = "numpy dot + full argsort (sklearn missing)"

        def one(q):
            return np.argsort(-(x @ q[0]))[:K][None]
    ids, qps = timed_single(one, queries[:n_q], budget_s=10.0)
    row("specclip-baseline", impl, recall(ids, truth[:len(ids)]), qps, None)


def sweep(name, mi, queries, truth, knob_list, threads):
    """recall / single / batch QPS of one built backend over knob settings."""
    results = []
    for knobs in knob_list:
        set_knobs(mi, knobs)
        with faiss_threads(1):
            ids, qps1 = timed_single(lambda q: mi.knn(q, K, threads=1)[1], queries)
        with faiss_threads(threads):
            bids, qpsb = timed_batch(lambda q: mi.knn(q, K, threads=threads)[1], queries)
        rec = recall(to_input_ids(mi, bids), truth)
        setting = ", ".join(f"{k}={v}" for k, v in knobs.to_dict().items()
                            if _relevant(mi, k))
        results.append((knobs, row(name, setting, rec, qps1, qpsb)))
    return results


def _relevant(mi, knob: str) -> bool:
    kind = mi.manifest.backend.kind
    if knob == "nprobe":
        return kind.startswith("ivf")
    if knob == "ef_search":
        return kind in ("hnsw", "hnswlib")
    return mi.shards[0].backend.quantised


def footprint(mi, n: int, dim: int) -> dict:
    s = mi.shards[0]
    index_bytes = sum(sh.entry.index.bytes for sh in mi.shards)
    refine = 4 * dim * n if s.backend.quantised else 0
    return {"index_file_B_per_vec": round(index_bytes / n, 1),
            "resident_B_per_vec": round((index_bytes - refine) / n, 1),
            "stored_vectors_B_per_vec": round(sum(sh.entry.vectors.bytes
                                                  for sh in mi.shards) / n, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="vectors (issue: 1000000)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--backends", default="hnsw,hnswlib,ivf_pq,ivf_flat,flat")
    ap.add_argument("--workdir", help="where to build (default: a temp dir)")
    ap.add_argument("--hnsw-m", type=int, default=32, help="FAISS HNSW degree")
    ap.add_argument("--hnsw-efc", type=int, default=200, help="FAISS HNSW efConstruction")
    ap.add_argument("--hnsw-pca-dim", type=int, default=0,
                    help="FAISS HNSW graph on this many PCA components (0: all)")
    ap.add_argument("--case", choices=("clustered", "model"), default="clustered",
                    help="vectors: clustered unit vectors or model XP embeddings "
                         "(bench_index_data.py)")
    ap.add_argument("--model", default=None, help="model directory for --case model")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "index.json"))
    args = ap.parse_args()
    n, dim, threads = args.n, args.dim, args.threads
    load = os.getloadavg()
    print(f"n={n} dim={dim} queries={args.queries} threads={threads} "
          f"load={load[0]:.1f},{load[1]:.1f},{load[2]:.1f}", flush=True)
    t0 = time.perf_counter()
    if args.case == "model":
        from bench_index_data import benchmark_vectors
        vectors, described = benchmark_vectors("model", n + args.queries, model=args.model)
        x, queries = (np.ascontiguousarray(vectors[:n]),
                      np.ascontiguousarray(vectors[n:]))   # held-out embeddings as queries
        dim = x.shape[1]
        print(described, flush=True)
    else:
        x = clustered_unit_vectors(n, dim, seed=0)
        queries = held_out_queries(x, args.queries, seed=1)
    import faiss
    with faiss_threads(threads):
        flat = faiss.IndexFlatIP(dim)
        flat.add(x)
        _, truth = flat.search(queries, K)
    print(f"data + ground truth {time.perf_counter() - t0:.1f}s", flush=True)
    baseline(x, queries, truth, 20 if n >= 500_000 else 100)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_index_"))
    work.mkdir(parents=True, exist_ok=True)
    source = ArrayEmbeddings({"xp": {"embedding": x, "source_id": np.arange(n),
                                     "sel": np.random.default_rng(2).random(n)}},
                             model_hash="bench")
    nlist = int(4 * np.sqrt(n))
    plans = {
        "hnsw": (HNSWConfig(m=args.hnsw_m, ef_construction=args.hnsw_efc, storage="sq8",
                            refine_factor=2.0, pca_dim=args.hnsw_pca_dim or None),
                 [SearchKnobs(ef_search=e, refine_factor=2.0) for e in (16, 24, 32, 48, 64, 96, 128)]),
        "hnswlib": (HnswlibConfig(m=16, ef_construction=200),
                    [SearchKnobs(ef_search=e) for e in (10, 16, 24, 32, 48, 64, 96)]),
        "ivf_pq": (IVFPQConfig(nlist=nlist, pq_m=32, refine_factor=4.0),
                   [SearchKnobs(nprobe=p, refine_factor=4.0) for p in (16, 32, 64, 128, 256)]),
        "ivf_flat": (IVFFlatConfig(nlist=nlist),
                     [SearchKnobs(nprobe=p) for p in (16, 64, 256)]),
        "flat": (None, [SearchKnobs()]),
    }
    summary: dict = {"n": n, "dim": dim, "queries": args.queries, "threads": threads,
                     "load_at_start": load, "cpu": platform.processor() or platform.machine(),
                     "builds": {}}
    for name in [b for b in args.backends.split(",") if b]:
        config, knob_list = plans[name]
        out = work / name
        t = time.perf_counter()
        build_index(source, out, BuildOptions(kind=name, config=config,
                                              target_recall=0.95 if name != "flat" else None,
                                              tune_queries=300, threads=threads))
        build_s = time.perf_counter() - t
        engine = SearchEngine.open(out, verify=False)
        mi = engine.index["xp"]
        tuned = mi.knobs
        fp = footprint(mi, n, dim)
        summary["builds"][name] = {"build_s": round(build_s, 1), **fp,
                                   "tuned": tuned.to_dict(),
                                   "tuned_recall": mi.manifest.tuning.measured_recall}
        print(f"== {name}: build {build_s:.1f}s {fp} tuned {tuned} "
              f"(held-out recall {mi.manifest.tuning.measured_recall:.4f})", flush=True)
        results = sweep(name, mi, queries, truth, knob_list, threads)
        set_knobs(mi, tuned)
        overhead(name, engine, mi, out, queries, truth, tuned)
        if name == "hnsw":
            filtered(engine, mi, x, queries, source.tables["xp"].column("sel").to_numpy())
        del engine, mi, results
        shutil.rmtree(out, ignore_errors=True)
    if "ivf_pq" in summary["builds"]:
        b = summary["builds"]["ivf_pq"]
        # On paper: IVF-PQ add time and memory are linear in n (k-means training is a fixed
        # cost on a sample); refine vectors live on disk (memory-mapped, fp32 or fp16).
        summary["extrapolation_220M"] = {
            "resident_GB": round(220e6 * b["resident_B_per_vec"] / 1e9, 1),
            "disk_index_GB": round(220e6 * b["index_file_B_per_vec"] / 1e9, 1),
            "disk_stored_vectors_GB_fp32": round(220e6 * 4 * dim / 1e9, 1),
            "build_hours_linear": round(b["build_s"] * 220e6 / n / 3600, 1),
            "basis": f"measured at n={n} on this machine"}
    summary["rows"] = ROWS
    summary["total_s"] = round(time.perf_counter() - t0, 1)
    summary["load_at_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1, default=float))
    print(json.dumps(summary["builds"], indent=1))
    print(f"wrote {args.out} ({summary['total_s']}s, load at end {summary['load_at_end']})")


def paired(fn_a, fn_b, queries: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Alternate fn_a and fn_b query by query (so machine load hits both alike), swapping
    which goes first (the second call of a query finds its graph nodes in cache); returns
    fn_b's ids and both single-query QPS."""
    ta = tb = 0.0
    ids = []
    for i in range(len(queries)):
        q = queries[i:i + 1]
        if i % 2:
            t0 = time.perf_counter()
            fn_a(q)
            t1 = time.perf_counter()
            ids.append(fn_b(q))
            t2 = time.perf_counter()
            ta, tb = ta + t1 - t0, tb + t2 - t1
        else:
            t0 = time.perf_counter()
            ids.append(fn_b(q))
            t1 = time.perf_counter()
            fn_a(q)
            t2 = time.perf_counter()
            tb, ta = tb + t1 - t0, ta + t2 - t1
    return np.vstack(ids), len(queries) / ta, len(queries) / tb


def overhead(name, engine, mi, out, queries, truth, tuned):
    """Same parameters, interleaved: raw library call vs ModalityIndex.knn vs the full
    SearchEngine.search (which also builds the result object with source ids)."""
    path = out / "xp" / mi.shards[0].entry.index.name
    if name == "hnswlib":
        import hnswlib
        raw = hnswlib.Index(space="ip", dim=mi.dim)
        raw.load_index(str(path))
        for ef in sorted({10, 16, 24, 32, 48, 64, tuned.ef_search}):
            raw.set_ef(ef)
            ids, qps = timed_single(lambda q: raw.knn_query(q, K, num_threads=1)[0], queries)
            bids, qpsb = timed_batch(lambda q: raw.knn_query(q, K, num_threads=-1)[0],
                                     queries)
            row("raw-hnswlib", f"M=16, efC=200, ef={ef}" + (" (default)" if ef == 10 else ""),
                recall(bids, truth), qps, qpsb)
        raw.set_ef(tuned.ef_search)

        def raw_call(q):
            return raw.knn_query(q, K, num_threads=1)[0]
    else:
        import faiss
        raw = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)  # as the engine loads it
        backend = type(mi.shards[0].backend)(mi.shards[0].backend.config, mi.dim, raw)
        backend.set_default_knobs(tuned)  # same efSearch / nprobe / k_factor on the raw index

        def raw_call(q):
            return raw.search(q, K)[1]
    with faiss_threads(1):
        ids, qps_raw, qps_wrap = paired(raw_call, lambda q: mi.knn(q, K)[1], queries)
        _, qps_raw2, qps_eng = paired(
            raw_call, lambda q: engine.search(q[0], modality="xp", k=K).source_id[None],
            queries)
    rec = recall(to_input_ids(mi, ids), truth)
    row("overhead", f"{name} raw {name == 'hnswlib' and 'hnswlib' or 'faiss'}", rec,
        qps_raw, None)
    row("overhead", f"{name} ModalityIndex.knn", rec, qps_wrap, None,
        overhead_pct=round(100 * (qps_raw / qps_wrap - 1), 1))
    row("overhead", f"{name} SearchEngine.search", rec, qps_eng, None,
        overhead_pct=round(100 * (qps_raw2 / qps_eng - 1), 1))


def filtered(engine, mi, x, queries, sel):
    """Filtered recall (vs exact top-10 among passing rows) and single-query QPS."""
    for frac in (0.5, 0.1, 0.01):
        passing = np.flatnonzero(sel < frac)
        truth = np.array([passing[np.argsort(-(x[passing] @ q))[:K]] for q in queries[:200]])
        flt = f"sel<{frac}"
        engine.search(queries[0], modality="xp", k=K, filter=flt)  # warm the mask cache
        ids, qps = timed_single(
            lambda q: engine.search(q[0], modality="xp", k=K, filter=flt).source_id[None],
            queries[:200])
        row("filtered", f"hnsw {flt} ({len(passing)} rows)", recall(ids, truth[:len(ids)]),
            qps, None)
    plain = timed_single(
        lambda q: engine.search(q[0], modality="xp", k=K).source_id[None], queries[:200])[1]
    row("filtered", "hnsw no filter (reference)", float("nan"), plain, None)


if __name__ == "__main__":
    main()
