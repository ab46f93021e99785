"""``specsearch demo``: the whole engine end to end on the embedded default."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
Example:
  specsearch demo                       # ~50k synthetic stars + the real samples
  specsearch demo --n 5000 --out /tmp/demo-small
  specsearch demo --fresh               # rebuild every stage

Stages already built are reused on a rerun. Ends by printing how to serve the result.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from specsearch.cli import HelpFormatter

    p = sub.add_parser("demo", help="run the whole engine on the embedded default",
                       description="Synthesise a paired survey, ingest the real samples, "
                                   "embed, index, query, list anomalies and metal-poor "
                                   "candidates, and write a report with UMAP maps.",
                       formatter_class=HelpFormatter, epilog=EPILOG)
    p.add_argument("--n", type=int, default=50_000, help="synthetic stars")
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--shards", type=int, default=2, help="index shards per modality")
    p.add_argument("--real-data", type=Path, default=None,
                   help="folder of real sample spectra (default: $SPECSEARCH_REAL_DATA or "
                        "../shared/data/real beside the checkout)")
    p.add_argument("--umap-points", type=int, default=12_000)
    p.add_argument("--workers", type=int, default=1, help="processes for the synthesis")
    p.add_argument("--model", type=Path, default=None,
                   help="model directory (default: the shipped default model)")
    p.add_argument("--fresh", action="store_true", help="rebuild every stage")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from specsearch.demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(out=args.out, n=args.n, seed=args.seed, shards=args.shards,
                                 real_data=args.real_data, umap_points=args.umap_points,
                                 fresh=args.fresh, workers=args.workers, model=args.model,
                                 progress=not args.no_progress))
    total = sum(result.stage_seconds.values())
    print(f"\nReport: {result.report}  (built in {total:.0f} s"
          + (f"; reused: {', '.join(result.reused)}" if result.reused else "") + ")")
    print("Serve what was just built (HTTP API + web page):\n"
          f"  specsearch serve {result.out / 'index'}\n"
          "  then open http://127.0.0.1:8000/  (API docs: http://127.0.0.1:8000/docs)")
    return 0
