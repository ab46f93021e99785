"""``specsearch train`` and ``train-heads``: train a model on a paired catalog.

The stages that start from a trained model are in :mod:`specsearch.cli.finetune`;
``domain-fit`` and ``evaluate`` in :mod:`specsearch.cli.evaluate`.
"""

from __future__ import annotations

import argparse
import shlex
import sys

TRAIN_EPILOG = """\
Example:
  specsearch synth --n 100000 --seed 1 --out catalogs/synth100k
  specsearch train --catalog catalogs/synth100k --config small --out models/small
  specsearch train --catalog catalogs/synth100k --out models/small --resume   # after a kill

OUT receives config.json + model.safetensors (the best model, calibrated at the end),
checkpoint-last/ (for --resume), train_log.csv and train_log.json.
"""

HEADS_EPILOG = """\
Example:
  specsearch train-heads --model models/small --catalog catalogs/synth100k \\
      --labels teff,logg,feh,alpha_fe,ebv --out models/small-ebv
"""


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU threads from ``--threads`` where given (every model command has it)."""
    if getattr(args, "threads", None):
        import torch
        torch.set_num_threads(args.threads)


def register(sub: argparse._SubParsersAction) -> None:
    from specsearch.cli import HelpFormatter
    from specsearch.model.config import list_models
    from specsearch.model.training.configs import HeadsConfig, TrainConfig

    t, hd = TrainConfig(), HeadsConfig()

    p = sub.add_parser("train", help="train the aligned LAMOST/XP model on a paired catalog",
                       description="Contrastive LAMOST<->XP encoders with reconstruction, "
                                   "translation and parameter heads, trained on a paired "
                                   "catalog (joined on source_id).",
                       formatter_class=HelpFormatter, epilog=TRAIN_EPILOG)
    p.add_argument("--catalog", required=True, help="paired catalog directory")
    p.add_argument("--config", default=t.arch,
                   help=f"architecture: {', '.join(list_models())}")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--epochs", type=int, default=t.epochs)
    p.add_argument("--batch-size", type=int, default=t.batch_size)
    p.add_argument("--lr", type=float, default=t.lr)
    p.add_argument("--seed", type=int, default=t.seed)
    p.add_argument("--device", default=t.device, choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp", default=t.amp, choices=["auto", "bf16", "off"],
                   help="bf16 autocast (auto: on CUDA only)")
    p.add_argument("--embedding-dim", type=int, help="override the architecture's dimension")
    p.add_argument("--labels", help="comma-separated label columns (default: known ones "
                                    "present for most stars)")
    p.add_argument("--patience", type=int, default=t.patience,
                   help="early-stopping patience (epochs)")
    p.add_argument("--identity", type=float, default=t.identity,
                   help="weight of the identity term (two views of each star; 0: off)")
    p.add_argument("--snr-slope", type=float, default=t.snr_slope,
                   help="weight of the penalty on embeddings that move with S/N")
    p.add_argument("--noise-blind", type=float, default=t.noise_blind, metavar="SNR",
                   help="noise-blind encoders: no input shrinkage, FiLM at this fixed S/N "
                        "per pixel (neighbours then do not follow the query's S/N)")
    p.add_argument("--sed-inputs", action="store_true",
                   help="the LAMOST encoder also reads the SED its continuum normalisation "
                        "divides out (with the SED flux-calibration augmentation)")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget for the run")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--resume", action="store_true", help="continue OUT/checkpoint-last")
    p.add_argument("--overwrite", action="store_true", help="start again in an existing OUT")
    p.add_argument("--keep-cache", action="store_true", help="keep OUT/cache afterwards")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run_train)

    h = sub.add_parser("train-heads", help="(re)train the parameter heads on frozen encoders",
                       description="Fit new parameter heads (Gaussian NLL, calibrated on "
                                   "validation) and the population classifier on the frozen "
                                   "embeddings of a trained model.",
                       formatter_class=HelpFormatter, epilog=HEADS_EPILOG)
    h.add_argument("--model", required=True, help="trained model directory")
    h.add_argument("--catalog", required=True, help="paired catalog with labels")
    h.add_argument("--out", required=True, help="model directory to write (may equal --model)")
    h.add_argument("--labels", help="comma-separated label columns (default: as for train)")
    h.add_argument("--epochs", type=int, default=hd.epochs)
    h.add_argument("--seed", type=int, default=hd.seed)
    h.add_argument("--device", default=hd.device, choices=["auto", "cpu", "cuda"])
    h.add_argument("--threads", type=int, help="torch CPU threads")
    h.add_argument("--no-progress", action="store_true", help="no progress bars")
    h.set_defaults(run=run_train_heads)


def _labels(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


def run_train(args: argparse.Namespace) -> int:
    from specsearch.model.training.configs import AugmentConfig
    from specsearch.model.training.train import TrainConfig, train

    apply_threads(args)
    cfg = TrainConfig(arch=args.config, embedding_dim=args.embedding_dim, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      device=args.device, amp=args.amp, labels=_labels(args.labels),
                      patience=args.patience, max_minutes=args.max_minutes,
                      keep_cache=args.keep_cache, identity=args.identity,
                      snr_slope=args.snr_slope, noise_blind=args.noise_blind,
                      sed_inputs=args.sed_inputs,
                      augment=AugmentConfig(p_sed_tilt=0.8) if args.sed_inputs
                      else AugmentConfig())
    result = train(args.catalog, args.out, cfg, resume=args.resume, overwrite=args.overwrite,
                   progress=not args.no_progress,
                   command=shlex.join(["specsearch", *sys.argv[1:]]))
    cal = result.calibration
    print(f"trained {cfg.arch} -> {result.out} (hash {result.model_hash[:12]}): "
          f"{result.epochs_run} epochs ({result.stopped}), best epoch {result.best_epoch}, "
          f"val loss {result.best_val_loss:.4f}, {result.seconds / 60:.1f} min, "
          f"{result.n_train} train / {result.n_val} val pairs")
    for m, widths in cal.z_width_before.items():
        print(f"  {m} z-score width before calibration: "
              + ", ".join(f"{k} {v:.2f}" for k, v in widths.items()))
    return 0


def run_train_heads(args: argparse.Namespace) -> int:
    from specsearch.model.training.heads_train import HeadsConfig, train_heads

    apply_threads(args)
    cfg = HeadsConfig(labels=_labels(args.labels), epochs=args.epochs, seed=args.seed,
                      device=args.device)
    result = train_heads(args.model, args.catalog, args.out, cfg, progress=not args.no_progress)
    print(f"heads trained -> {args.out} (hash {result.model_hash[:12]}), labels "
          f"{result.label_names}, classes {result.class_names}")
    for m, widths in result.calibration.z_width_before.items():
        print(f"  {m} z-score width before calibration: "
              + ", ".join(f"{k} {v:.2f}" for k, v in widths.items()))
    return 0
