"""``specsearch domain-fit`` and ``evaluate``: measure a trained model on data."""

from __future__ import annotations

import argparse

from specsearch.cli.train import apply_threads

DOMAIN_EPILOG = """\
Example:
  specsearch domain-fit --real-data ../shared/data/real        # the shipped default model
  specsearch domain-fit --model models/mine --real-data ../shared/data/real

Embedding with residuals (specsearch embed --with-residual), the service and the hunt then
flag spectra whose relative reconstruction error passes the threshold (out_of_domain).
"""

EVAL_EPILOG = """\
Example:
  specsearch evaluate --model models/small --catalog catalogs/synth100k --out reports/small \\
      --real-data ../shared/data/real

Writes REPORT_DIR/report.json, report.txt (also printed) and figures/*.png.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from specsearch.cli import HelpFormatter
    from specsearch.model.evaluation.evaluate import EvalConfig

    ev = EvalConfig()

    d = sub.add_parser("domain-fit", help="fit a model's domain check on real spectra",
                       description="Fit the thresholds that flag spectra unlike anything the "
                                   "model knows (its reconstruction misses them: parameters "
                                   "unreliable) on real spectra, and write domain_check.json "
                                   "(for the model's hash) beside the model or to --out.",
                       formatter_class=HelpFormatter, epilog=DOMAIN_EPILOG)
    d.add_argument("--model", help="model directory (default: the shipped default model)")
    d.add_argument("--real-data", required=True, help="the real-data folder (../shared/data/real)")
    d.add_argument("--real-cache", help="an .npz to keep the read real sets in (reused)")
    d.add_argument("--out", help="file to write (default: MODEL/domain_check.json)")
    d.add_argument("--quantile", type=float, default=0.999,
                   help="quantile of the real reference spectra's relative residual")
    d.add_argument("--margin", type=float, default=2.0, help="threshold = margin x quantile")
    d.add_argument("--threads", type=int, help="torch CPU threads")
    d.set_defaults(run=run_domain_fit)

    e = sub.add_parser("evaluate", help="evaluate a model: retrieval, parameters, real data",
                       description="Cross-modal retrieval, parameter accuracy in S/N bins, "
                                   "translation error, real-data rows and encoder speed.",
                       formatter_class=HelpFormatter, epilog=EVAL_EPILOG)
    e.add_argument("--model", help="model directory (default: the shipped default model)")
    e.add_argument("--catalog", help="paired catalog (omit with --real-data: real rows only)")
    e.add_argument("--out", required=True, help="report directory")
    e.add_argument("--split", default=ev.split, choices=["auto", "test", "all"],
                   help="auto: the test split if the model was trained on this catalog")
    e.add_argument("--max-pairs", type=int, default=ev.max_pairs)
    e.add_argument("--real-data", help="folder of real samples (../shared/data/real)")
    e.add_argument("--real-cache", help="an .npz to keep the read real sets in (reused)")
    e.add_argument("--no-speed", action="store_true", help="skip the speed comparison")
    e.add_argument("--no-figures", action="store_true")
    e.add_argument("--device", default=ev.device, choices=["auto", "cpu", "cuda"])
    e.add_argument("--threads", type=int, help="torch CPU threads")
    e.set_defaults(run=run_evaluate)


def run_domain_fit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from specsearch.model.api import default_model_path, load_model
    from specsearch.model.domain import DOMAIN_FILE, fit_domain_check

    apply_threads(args)
    model = load_model(args.model)
    check, report = fit_domain_check(model, Path(args.real_data), cache=args.real_cache,
                                     quantile=args.quantile, margin=args.margin)
    out = Path(args.out) if args.out else \
        Path(args.model or default_model_path()) / DOMAIN_FILE
    check.save(out)
    print(f"domain check for model {model.model_hash[:12]} -> {out}")
    for m, thr in check.thresholds.items():
        ref = check.reference[m]
        print(f"  {m}: threshold {thr:.3f} ({ref['margin']:g} x q{ref['quantile']:g} "
              f"{ref['value']:.3f} of {ref['n']} real spectra, median {ref['median']:.3f})")
        if (rule := check.coverage.get(m)) is not None:
            lo, hi = rule["window_A"]
            print(f"  {m}: coverage at least {rule['min_fraction']:g} of {lo:g}-{hi:g} A")
    for name, r in report.items():
        print(f"  held-out {name}: {r['flagged']} of {r['n_test']} flagged")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from specsearch.errors import ConfigError
    from specsearch.model.evaluation.evaluate import EvalConfig, evaluate, evaluate_real_only

    apply_threads(args)
    cfg = EvalConfig(split=args.split, max_pairs=args.max_pairs, real_data=args.real_data,
                     speed=not args.no_speed, figures=not args.no_figures, device=args.device)
    if args.catalog is None:
        if not args.real_data:
            raise ConfigError("evaluate needs --catalog, --real-data or both")
        evaluate_real_only(args.model, args.real_data, args.out, cfg, cache=args.real_cache)
        return 0
    evaluate(args.model, args.catalog, args.out, cfg)
    return 0
