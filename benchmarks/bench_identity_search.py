"""What the identity re-rank costs a same-star search (issue 14).

An index with identity vectors (the embeddings' ``identity`` column, kept per shard in a
memory-mapped ``.identity.npy``) answers same-instrument
by-source queries by re-ranking the embedding's top max(50, 5k) by the mean of the two
cosines (:mod:`specsearch.query.engine`). This builds one index of ``--n`` clustered
128-d embeddings (:mod:`specsearch.index.synthetic`) with 128-d identity vectors, and times
``SearchEngine.search_source`` one query at a time (1 thread, warm) with and without the
re-rank, for each ``--k``; and it reports the bytes a row takes in the rows table a shard
holds in memory and in the identity file it maps. The baseline is the same engine, same queries, ``identity=False``.

Usage:
  python benchmarks/bench_identity_search.py --n 200000 --queries 300
Prints a table and writes ``benchmarks/results/identity_search.json``.
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
    ap.add_argument("--n", type=int, default=200_000, help="rows in the index")
    ap.add_argument("--queries", type=int, default=300, help="by-source queries timed")
    ap.add_argument("--k", default="10,100", help="result windows")
    ap.add_argument("--kind", default="auto", help="index kind (auto: the builder's choice)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                    help="identity vectors' storage")
    ap.add_argument("--threads", type=int, default=2, help="build threads")
    ap.add_argument("--out", type=Path, default=RESULTS / "identity_search.json")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import pyarrow as pa

    from specsearch.fsutil import write_json_atomic
    from specsearch.index import BuildOptions, build_index
    from specsearch.index.embedding_sources import ArrayEmbeddings
    from specsearch.index.synthetic import clustered_unit_vectors
    from specsearch.index.threads import ThreadPolicy
    from specsearch.query import SearchEngine

    n = args.n
    emb = clustered_unit_vectors(n, 128, seed=1)
    ident = clustered_unit_vectors(n, 128, seed=2)
    sid = np.arange(n, dtype=np.int64) * 3 + 7
    rng = np.random.default_rng(0)
    dtype = pa.float16() if args.dtype == "float16" else pa.float32()
    identity = pa.FixedSizeListArray.from_arrays(
        pa.array(ident.astype(args.dtype).ravel(), dtype), 128)
    snr = rng.uniform(5, 150, n).astype(np.float32)
    cols = {"embedding": emb, "source_id": sid, "snr": snr, "identity": identity}
    source = ArrayEmbeddings({"lamost": cols}, model_hash="bench-identity-search")
    ks = [int(k) for k in args.k.split(",")]
    queries = rng.choice(sid, size=args.queries, replace=False)
    result: dict = {"n": n, "queries": args.queries, "kind": args.kind,
                    "identity_dtype": args.dtype, "machine": platform.machine(),
                    "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_index(source, Path(tmp) / "index",
                    BuildOptions(kind=args.kind, threads=args.threads, tune_queries=200))
        result["build_s"] = time.perf_counter() - t0
        engine = SearchEngine.open(Path(tmp) / "index",
                                   threads=ThreadPolicy(single=1, batch=args.threads))
        shard = engine.index["lamost"].shards[0]
        rows = shard.rows
        result["backend"] = engine.index["lamost"].manifest.backend.to_dict().get("kind")
        result["rows_bytes_per_row"] = rows.nbytes / rows.num_rows
        assert "identity" not in rows.column_names and isinstance(shard.identity, np.memmap)
        result["identity_bytes_per_row"] = shard.identity.nbytes / shard.count
        result["identity_storage"] = "memory-mapped .identity.npy"
        result["rows"] = cost_rows(
            lambda s, k, rerank: engine.search_source(s, k=k, identity=rerank), queries, ks,
            "embedding+identity")
    print(f"identity re-rank: {n:,} rows ({result['backend']}), {args.queries} by-source "
          f"queries one at a time, 1 thread; build {result['build_s']:.0f} s")
    print(f"rows table in memory: {result['rows_bytes_per_row']:.0f} B/row; identity vectors "
          f"memory-mapped: {result['identity_bytes_per_row']:.0f} B/row ({args.dtype})")
    print_rows(result["rows"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
