"""``specsearch index build|info|add|delete|compact``: build and maintain index directories."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EPILOG = """\
Example:
  specsearch index build --embeddings embeddings/survey --out indexes/survey
  specsearch index build --embeddings EMB --out IDX --kind hnsw --option storage=sq8 \\
      --option m=32 --shards 4 --target-recall 0.95
  specsearch index build --embeddings EMB --out IDX --kind auto --memory-budget 4G
  specsearch index info indexes/survey
  specsearch index add indexes/survey --embeddings embeddings/new_night
  specsearch index delete indexes/survey --source-id 1234567890 987654321
  specsearch index compact indexes/survey
"""

KIND_HELP = ("backend: auto (exact when small, HNSW over SQ8 codes + re-ranking when it fits "
             "--memory-budget, else IVF-PQ + re-ranking; codes on 32 principal components "
             "when they hold >= 99%% of the variance), flat (exact), ivf_flat, ivf_pq, "
             "hnsw (FAISS), hnswlib")


def _sub(sub, name: str, help_: str, example: str):
    from specsearch.cli import HelpFormatter
    return sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter,
                          epilog=f"Example:\n  {example}\n")


def register(sub: argparse._SubParsersAction) -> None:
    from specsearch.cli import HelpFormatter
    from specsearch.index.config import KINDS

    p = sub.add_parser("index", help="build and maintain vector indexes",
                       description="Build, inspect and update index directories (FAISS / "
                                   "hnswlib shards + manifest).",
                       formatter_class=HelpFormatter, epilog=EPILOG)
    verbs = p.add_subparsers(dest="index_command", metavar="VERB")

    b = _sub(verbs, "build", "build an index directory from an embeddings dataset",
             "specsearch index build --embeddings embeddings/survey --out indexes/survey")
    b.add_argument("--embeddings", required=True, help="embeddings dataset directory")
    b.add_argument("--out", required=True, help="index directory (replaced atomically)")
    b.add_argument("--kind", default="auto", choices=("auto",) + KINDS, help=KIND_HELP)
    b.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="backend knob, e.g. m=32, storage=fp16, nlist=4096, pq_m=32 "
                        "(repeatable; see specsearch.index.config)")
    b.add_argument("--shards", type=int, default=1, help="shards a modality (by source_id)")
    b.add_argument("--memory-budget", help="RAM the index may use, e.g. 8G (auto kind); "
                                           "default: half the machine's RAM")
    b.add_argument("--target-recall", type=float, default=0.95,
                   help="tune nprobe/ef_search (and re-ranking) to this recall@10 on "
                        "held-out rows, plus one standard error (0 = do not tune)")
    b.add_argument("--tune-queries", type=int, default=500,
                   help="held-out rows used to measure recall")
    b.add_argument("--vector-dtype", default="float32", choices=("float32", "float16"),
                   help="stored vectors for exact re-ranking and lookup")
    b.add_argument("--modality", action="append", help="only these modalities")
    b.add_argument("--threads", type=int, help="build threads (default: all cores)")
    b.set_defaults(run=run_build)

    i = _sub(verbs, "info", "show an index's modalities, backends, sizes and recall",
             "specsearch index info indexes/survey --json")
    i.add_argument("index_dir")
    i.add_argument("--verify", action="store_true", help="also check every sha256")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(run=run_info)

    a = _sub(verbs, "add", "add (or replace, by spectrum_id) embeddings without a rebuild",
             "specsearch index add indexes/survey --embeddings embeddings/new_night")
    a.add_argument("index_dir")
    a.add_argument("--embeddings", required=True)
    a.add_argument("--threads", type=int)
    a.set_defaults(run=run_add)

    d = _sub(verbs, "delete", "delete every row of some source_ids (tombstones)",
             "specsearch index delete indexes/survey --source-id 1234567890")
    d.add_argument("index_dir")
    d.add_argument("--source-id", type=int, nargs="+", default=[], help="source ids")
    d.add_argument("--source-ids-file", help="text file, one source_id a line")
    d.add_argument("--modality", action="append", help="only these modalities")
    d.set_defaults(run=run_delete)

    c = _sub(verbs, "compact", "rebuild shards with deleted rows from their live rows",
             "specsearch index compact indexes/survey --min-deleted-fraction 0.1")
    c.add_argument("index_dir")
    c.add_argument("--min-deleted-fraction", type=float, default=0.0)
    c.add_argument("--threads", type=int)
    c.set_defaults(run=run_compact)
    p.set_defaults(run=lambda args: (p.print_help(), 1)[1])


def _parse_options(items: list[str]) -> dict:
    from specsearch.errors import ConfigError
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE, e.g. m=32")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value  # a bare string such as storage=sq8
    return out


def run_build(args: argparse.Namespace) -> int:
    from specsearch.index import BuildOptions, build_index
    from specsearch.index.tuning import parse_bytes

    options = BuildOptions(
        kind=args.kind, backend_options=_parse_options(args.option), shards=args.shards,
        memory_budget=parse_bytes(args.memory_budget) if args.memory_budget else None,
        target_recall=args.target_recall or None, tune_queries=args.tune_queries,
        vector_dtype=args.vector_dtype, threads=args.threads,
        modalities=tuple(args.modality) if args.modality else None)
    build_index(args.embeddings, args.out, options)
    return run_info(argparse.Namespace(index_dir=args.out, verify=False, json=False))


def run_info(args: argparse.Namespace) -> int:
    from specsearch.query import SearchEngine

    info = SearchEngine.open(args.index_dir, verify=args.verify).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['root']}  model {info['model_hash'][:16]}  dim {info['embedding_dim']}  "
          f"generation {info['generation']}")
    for name, m in info["modalities"].items():
        recall = m["measured_recall"]
        print(f"  {name:7s} {m['count']:>11,d} rows ({m['deleted']} deleted) in {m['shards']} "
              f"shard(s), {m['bytes'] / 2**20:,.1f} MiB  backend {m['backend']}  "
              f"search {m['search']}  recall@10 "
              f"{'n/a' if recall is None else f'{recall:.4f}'}"
              + (f"  identity vectors ({m['identity_dim'] or '?'}-d: same-star re-rank)"
                 if m["identity"] else ""))
    return 0


def run_add(args: argparse.Namespace) -> int:
    from specsearch.index import add_embeddings

    report = add_embeddings(args.index_dir, args.embeddings, threads=args.threads)
    print(f"added {report.added} (replacing {report.replaced}); generation "
          f"{report.generation}")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    from specsearch.errors import ConfigError
    from specsearch.index import delete_sources

    ids = list(args.source_id)
    if args.source_ids_file:
        ids += [int(line) for line in Path(args.source_ids_file).read_text().split()
                if line.strip()]
    if not ids:
        raise ConfigError("give --source-id ID... or --source-ids-file FILE")
    report = delete_sources(args.index_dir, ids, modalities=args.modality)
    print(f"deleted rows {report.deleted}; source_ids not found {report.not_found}; "
          f"generation {report.generation}")
    return 0


def run_compact(args: argparse.Namespace) -> int:
    from specsearch.index import compact

    report = compact(args.index_dir, min_deleted_fraction=args.min_deleted_fraction,
                     threads=args.threads)
    print(f"compacted shards {report.compacted_shards}; generation {report.generation}")
    return 0
