"""What the parameter-agreement re-rank costs a cross-modal search (issue 14).

A cross-modal search by source_id re-ranks the other instrument's top max(50, 5k) by
cosine + weight x the log probability that the candidates' predicted Teff, log g and [Fe/H]
agree with the query's (:mod:`specsearch.query.agreement`): it reads the window's stored
``{label}_pred`` / ``{label}_err`` and leaves the single-query fast path. This builds one
index of ``--n`` stars with clustered 128-d embeddings in two modalities
(:mod:`specsearch.index.synthetic`) and predicted parameters with uncertainties, and times
``SearchEngine.search_source(..., target_modality="xp")`` one query at a time (1 thread,
warm) with and without the re-rank, for each ``--k``. The baseline is the same engine,
same queries, ``agreement=False``.

Usage:
  python benchmarks/bench_agreement_search.py --n 200000 --queries 300
Prints a table and writes ``benchmarks/results/agreement_search.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rerank_cost import cost_rows, print_rows  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="stars (rows per modality)")
    ap.add_argument("--queries", type=int, default=300, help="by-source queries timed")
    ap.add_argument("--k", default="10,100", help="result windows")
    ap.add_argument("--kind", default="auto", help="index kind (auto: the builder's choice)")
    ap.add_argument("--shards", type=int, default=1, help="shards per modality")
    ap.add_argument("--threads", type=int, default=2, help="build threads")
    ap.add_argument("--out", type=Path, default=RESULTS / "agreement_search.json")
    return ap.parse_args(argv)


def _columns(emb: np.ndarray, sid: np.ndarray, rng: np.random.Generator,
             truth: dict[str, np.ndarray], err_scale: float) -> dict[str, np.ndarray]:
    """Rows of one modality: the embedding, ids, S/N, and each label's prediction (truth
    plus its error) and uncertainty."""
    cols = {"embedding": emb, "source_id": sid,
            "snr": rng.uniform(5, 150, len(sid)).astype(np.float32)}
    for name, value in truth.items():
        err = (rng.uniform(0.3, 3.0, len(sid)) * err_scale * {"teff": 50.0, "logg": 0.08,
                                                              "feh": 0.05}[name])
        cols[f"{name}_pred"] = (value + rng.normal(size=len(sid)) * err).astype(np.float32)
        cols[f"{name}_err"] = err.astype(np.float32)
    return cols


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from specsearch.fsutil import write_json_atomic
    from specsearch.index import BuildOptions, build_index
    from specsearch.index.embedding_sources import ArrayEmbeddings
    from specsearch.index.synthetic import clustered_unit_vectors
    from specsearch.index.threads import ThreadPolicy
    from specsearch.query import SearchEngine

    n = args.n
    rng = np.random.default_rng(0)
    sid = np.arange(n, dtype=np.int64) * 3 + 7
    truth = {"teff": rng.uniform(4000, 7000, n), "logg": rng.uniform(1, 5, n),
             "feh": rng.uniform(-2.5, 0.5, n)}
    source = ArrayEmbeddings(
        {"lamost": _columns(clustered_unit_vectors(n, 128, seed=1), sid, rng, truth, 1.0),
         "xp": _columns(clustered_unit_vectors(n, 128, seed=2), sid, rng, truth, 2.5)},
        model_hash="bench-agreement-search")
    ks = [int(k) for k in args.k.split(",")]
    queries = rng.choice(sid, size=args.queries, replace=False)
    result: dict = {"n": n, "queries": args.queries, "kind": args.kind, "shards": args.shards,
                    "machine": platform.machine(), "cpus": os.cpu_count(),
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_index(source, Path(tmp) / "index",
                    BuildOptions(kind=args.kind, threads=args.threads, tune_queries=200,
                                 shards=args.shards))
        result["build_s"] = time.perf_counter() - t0
        engine = SearchEngine.open(Path(tmp) / "index",
                                   threads=ThreadPolicy(single=1, batch=args.threads))
        result["backend"] = engine.index["xp"].manifest.backend.to_dict().get("kind")

        result["rows"] = cost_rows(
            lambda s, k, rerank: engine.search_source(s, modality="lamost",
                                                      target_modality="xp", k=k,
                                                      agreement=rerank),
            queries, ks, "embedding+parameters")
    print(f"parameter-agreement re-rank: {n:,} stars x 2 modalities ({result['backend']}, "
          f"{args.shards} shard(s)), "
          f"{args.queries} cross-modal by-source queries one at a time, 1 thread; build "
          f"{result['build_s']:.0f} s")
    print_rows(result["rows"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
