"""``specsearch finetune`` and ``train-identity``: the stages that start from a trained model."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from specsearch.cli.train import apply_threads

FINETUNE_EPILOG = """\
Example:
  specsearch finetune --model models/small --catalog catalogs/synth100k \\
      --real-data ../shared/data/real --out models/small-real --threads 2

Starts from a trained model; adds the real spectra of --real-data (split by star: train for
fine-tuning, cal for the real-data uncertainty floor, test never read) and the identity
objective (two views of each star must find each other). OUT receives config.json +
model.safetensors and finetune_log.json. A fine-tuned model can be fine-tuned again (its
config keeps every stage's record); the shipped default has three stages:
--noise-blind 40; --clean-anchor 20 --anchor-modalities lamost --head-distill 100;
--heads-only --steps 3000 --lr 5e-4 (specsearch/model/README.md).
"""

IDENTITY_EPILOG = """\
Example:
  specsearch synth --n 200000 --seed 21 --metal-poor-boost 3 --repeat-fraction 1 \\
      --shard-size 25000 --workers 2 --out runs/synth200k-rep   # every star seen twice
  specsearch train-identity --model runs/model-heads --catalog runs/synth200k-rep \\
      --out runs/model-id --cache runs/id-cache-200k --threads 2   # the shipped stage 4

Then SpecModel.identity_numpy("lamost", flux, ivar) gives the identity vectors, and
benchmarks/bench_identity.py scores them beside the embedding.
"""


def _shares(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def _label_values(text: str) -> tuple[tuple[str, float], ...]:
    """``logg=0.3,feh=0.2`` -> (("logg", 0.3), ("feh", 0.2))."""
    out = []
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            sigma = float(value)
        except ValueError:
            sigma = float("nan")
        if not (name.strip() and 0 < sigma < float("inf")):     # NaN fails too
            raise argparse.ArgumentTypeError(f"expected LABEL=SIGMA pairs with SIGMA > 0, "
                                             f"comma-separated; got {text!r}")
        out.append((name.strip(), sigma))
    return tuple(out)


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {value:g}")
    return value


def _bands(text: str) -> tuple[tuple[float, float], ...]:
    """``telluric`` or ``LO-HI[,LO-HI...]`` (Angstrom) -> wavelength ranges."""
    if text.strip().lower() == "telluric":
        from specsearch.preprocess import TELLURIC_BANDS

        return TELLURIC_BANDS
    bands = []
    for part in text.split(","):
        try:
            lo, hi = (float(v) for v in part.split("-"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected 'telluric' or LO-HI[,LO-HI...] in Angstrom, got {part!r}")
        if not (0 < lo < hi):
            raise argparse.ArgumentTypeError(f"band {part!r}: expected 0 < LO < HI")
        bands.append((lo, hi))
    return tuple(bands)



def register(sub: argparse._SubParsersAction) -> None:
    from specsearch.cli import HelpFormatter
    from specsearch.model.training.configs import FinetuneConfig

    ft = FinetuneConfig()

    f = sub.add_parser("finetune", help="adapt a trained model to real spectra and identity",
                       description="Fine-tune a trained model on its synthetic catalog plus "
                                   "the real spectra of a real-data folder (heads on real "
                                   "labels, self-supervised views of real LAMOST and XP), "
                                   "then calibrate uncertainties on held-out real stars.",
                       formatter_class=HelpFormatter, epilog=FINETUNE_EPILOG)
    f.add_argument("--model", required=True, help="trained model directory (the start)")
    f.add_argument("--catalog", required=True, help="the paired synthetic catalog")
    f.add_argument("--real-data", required=True, help="real-data folder (../shared/data/real)")
    f.add_argument("--out", required=True, help="model directory to write")
    f.add_argument("--steps", type=int, default=ft.steps)
    f.add_argument("--lr", type=float, default=ft.lr)
    f.add_argument("--identity", type=float, default=ft.identity,
                   help="weight of the same-star view objective (0 disables it)")
    f.add_argument("--snr-slope", type=float, default=ft.snr_slope,
                   help="weight of the penalty on embeddings that move with S/N")
    f.add_argument("--real-views", type=float, default=ft.real_views,
                   help="weight of the views term on real spectra (0: off)")
    f.add_argument("--real-labels", type=float, default=ft.real_labels,
                   help="weight of the real-label likelihood (0: no real labels)")
    f.add_argument("--clean-anchor", type=float, default=ft.clean_anchor,
                   help="weight of the noise-invariance term: spectra made noisier must "
                        "embed where they embed clean (0: off)")
    f.add_argument("--noise-blind", type=float, default=ft.noise_blind, metavar="SNR",
                   help="make the encoders blind to the noise level first (input shrinkage "
                        "off, FiLM at this fixed S/N per pixel), then fine-tune")
    f.add_argument("--anchor-modalities", nargs="+", choices=("lamost", "xp"),
                   default=list(ft.anchor_modalities),
                   help="the spectra the clean-anchor term applies to")
    f.add_argument("--anchor-real", action=argparse.BooleanOptionalAction,
                   default=ft.anchor_real,
                   help="apply the clean-anchor term to the real LAMOST batch too")
    f.add_argument("--anchor-snr-floor", type=float, default=ft.anchor_snr_floor,
                   help="lowest S/N the clean-anchor term degrades a spectrum to")
    f.add_argument("--head-distill", type=float, default=ft.head_distill,
                   help="weight of keeping the head predictions on real spectra where the "
                        "starting model puts them (0: off)")
    f.add_argument("--teacher", metavar="MODEL", default=None,
                   help="the model whose head predictions --head-distill holds this one to "
                        "(default: the starting model); it must come from the same base")
    f.add_argument("--distill-synthetic", action="store_true",
                   help="apply --head-distill to the synthetic spectra too")
    f.add_argument("--real-set-weights", type=_shares, default=ft.real_set_weights,
                   metavar="DR10,DR1,MILES",
                   help="share of LAMOST DR10, LAMOST DR1 and MILES in each real batch")
    f.add_argument("--sed-inputs", action="store_true",
                   help="give the LAMOST encoder the SED its continuum normalisation divides "
                        "out (new zero-initialised inputs), then fine-tune")
    f.add_argument("--sed-lr-factor", type=float, default=ft.sed_lr_factor,
                   help="learning rate of the SED inputs / --lr")
    f.add_argument("--red-cut", type=_probability, default=ft.augment.p_red_cut, metavar="P",
                   help="share of LAMOST training views that lose everything redward of a "
                        "random 6800-8200 A (spectra without a red arm: MILES, libraries, "
                        "failed red arms)")
    f.add_argument("--red-cut-real", type=_probability, default=ft.real_red_cut, metavar="P",
                   help="the same for the real LAMOST views only (the synthetic views keep "
                        "their red end unless --red-cut)")
    f.add_argument("--coverage-inputs", type=int, default=ft.coverage_bins, metavar="K",
                   help="give the heads the good-pixel fraction in K stretches of the grid "
                        "(new zero-initialised inputs), so that they read spectra without a "
                        "red arm with their own calibration (0: as the model has it)")
    f.add_argument("--head-fill", type=float, default=ft.head_fill_a, metavar="ANGSTROM",
                   help="the LAMOST heads read spectra that lack the grid beyond ANGSTROM "
                        "(a tenth or more of it masked: libraries, slit spectra, failed red "
                        "arms) with the missing pixels filled by the model's own "
                        "reconstruction; the embedding does not change (0: off)")
    f.add_argument("--head-fill-rounds", type=int, default=ft.head_fill_rounds, metavar="N",
                   help="decode-fill-encode rounds of --head-fill")
    f.add_argument("--catalogue-offsets", type=lambda s: tuple(x for x in s.split(",") if x),
                   default=ft.catalogue_offsets, metavar="SETS",
                   help="comma-separated real sets (e.g. miles) whose catalogue labels get a "
                        "learnt per-label offset from the heads' scale (the LAMOST pipeline's "
                        "and the synthetic truth's)")
    f.add_argument("--new-classes", action="store_true",
                   help="the catalog may hold population classes the model lacks (e.g. a "
                        "survey made with --fractions ultracool=0.01): the heads grow an "
                        "output for each, starting from a logit of -10")
    f.add_argument("--hot-label-noise", type=_label_values, default=ft.hot_label_noise,
                   metavar="LABEL=SIGMA,...",
                   help="LAMOST pipeline labels of stars with a catalogue Teff >= 7000 K count "
                        "with at least this uncertainty, e.g. logg=0.3,feh=0.2 (LASP is least "
                        "reliable for A stars)")
    f.add_argument("--heads-only", action="store_true",
                   help="train only the parameter heads, on the frozen encoders (the "
                        "embedding stays the starting model's), on the synthetic and real "
                        "labels")
    f.add_argument("--snr-adversary", type=float, default=ft.snr_adversary,
                   help="strength of the reversed gradient of a critic that tells which of "
                        "two visits of a star is the noisier from their embeddings (0: off)")
    f.add_argument("--hard-negatives", type=float, default=ft.hard_negatives,
                   help="share of each synthetic batch made of groups of look-alike stars")
    f.add_argument("--hard-group", type=int, default=ft.hard_group,
                   help="stars in one look-alike group")
    f.add_argument("--seed", type=int, default=ft.seed)
    f.add_argument("--device", default=ft.device, choices=["auto", "cpu", "cuda"])
    f.add_argument("--threads", type=int, help="torch CPU threads")
    f.add_argument("--cache", help="keep the prepared synthetic pairs here for later runs")
    f.add_argument("--real-cache", help="an .npz to keep the read real sets in (reused)")
    f.add_argument("--overwrite", action="store_true", help="replace a model in OUT")
    f.add_argument("--no-progress", action="store_true", help="no progress bars")
    f.set_defaults(run=run_finetune)

    from specsearch.model.training.identity_config import IdentityTrainConfig
    it = IdentityTrainConfig()
    i = sub.add_parser("train-identity", help="add identity vectors (which star) to a model",
                       description="Give a trained model an identity encoder of its own "
                                   "(ModelConfig.identity_encoders) and train it on the "
                                   "catalog's repeat visits: two visits of a star must find "
                                   "each other among look-alike stars. The rest of the model "
                                   "is frozen: embeddings and predictions do not change. "
                                   "Prints the validation stars' other-visit top-1 of the "
                                   "identity vectors and of the embedding.",
                       formatter_class=HelpFormatter, epilog=IDENTITY_EPILOG)
    i.add_argument("--model", help="model directory (default: the shipped default model)")
    i.add_argument("--catalog", required=True,
                   help="the paired catalog the model was trained on, with repeat visits "
                        "(specsearch synth --repeat-fraction)")
    i.add_argument("--out", required=True, help="output model directory")
    i.add_argument("--modality", default=it.modality, choices=("lamost", "xp"))
    i.add_argument("--hidden", type=int, default=it.hidden, help="encoder width")
    i.add_argument("--depth", type=int, default=it.depth, help="residual blocks")
    i.add_argument("--dim", type=int, default=it.dim, help="identity vector dimension")
    i.add_argument("--steps", type=int, default=it.steps)
    i.add_argument("--batch", type=int, default=it.batch, help="stars per batch")
    i.add_argument("--lr", type=float, default=it.lr)
    i.add_argument("--temperature", type=float, default=it.temperature)
    i.add_argument("--hard-negatives", type=float, default=it.hard_fraction,
                   help="share of each batch made of look-alike groups")
    i.add_argument("--hard-group", type=int, default=it.hard_group, help="stars per group")
    i.add_argument("--min-snr", type=float, default=it.min_snr,
                   help="train on stars whose visits both reach this S/N")
    i.add_argument("--resample-snr", action=argparse.BooleanOptionalAction,
                   default=it.resample_snr,
                   help="lower each visit's S/N to its own log-uniform draw between "
                        "--min-snr and its S/N, so that the two visits' noise levels say "
                        "little about each other (without it the vectors learn the noise "
                        "level as a clue, and their neighbours follow the query's S/N)")
    i.add_argument("--red-cut", type=float, default=it.augment.p_red_cut,
                   help="probability that a view loses everything redward of a wavelength "
                        "drawn in %g-%g A (the augmentation of the same name): the two "
                        "visits must still find each other when one lacks its red arm"
                        % it.augment.red_cut_a)
    i.add_argument("--memory", type=int, default=it.memory, metavar="N",
                   help="a cross-batch memory: the last N stars' vectors join each "
                        "batch's negatives (0: off)")
    i.add_argument("--memory-start", type=int, default=it.memory_start, metavar="STEP",
                   help="the step from which the memory's vectors are used")
    i.add_argument("--own-noise", action="store_true",
                   help="the identity encoder reads each visit's own per-pixel noise and "
                        "S/N (not the embedding encoder's noise-blind input)")
    i.add_argument("--ignore-bands", type=_bands, default=it.ignore_bands,
                   metavar="BANDS",
                   help="wavelength ranges the encoder never reads, in training and at "
                        "inference: 'telluric' (the O2 and water bands, and beyond 8900 A) "
                        "or LO-HI[,LO-HI...] in Angstrom")
    i.add_argument("--resume", action="store_true",
                   help="go on training the identity encoder the model already has (its "
                        "width, depth and dimension; a second cosine schedule from its "
                        "weights) instead of a fresh one")
    i.add_argument("--seed", type=int, default=it.seed)
    i.add_argument("--device", default=it.device, choices=("auto", "cpu", "cuda"))
    i.add_argument("--threads", type=int, help="torch CPU threads")
    i.add_argument("--cache", help="keep the prepared pairs here (a fine-tuning --cache of "
                                   "the same catalog is reused)")
    i.add_argument("--overwrite", action="store_true", help="replace a model in OUT")
    i.add_argument("--no-progress", action="store_true", help="no progress bars")
    i.set_defaults(run=run_train_identity)


def run_train_identity(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from specsearch.errors import ConfigError
    from specsearch.model.api import default_model_path
    from specsearch.model.training.identity_config import IdentityTrainConfig
    from specsearch.model.training.identity_encoder import train_identity

    apply_threads(args)
    if not 0.0 <= args.red_cut <= 1.0:
        raise ConfigError(f"--red-cut must be a probability in [0, 1]; got {args.red_cut}")
    augment = dataclasses.replace(IdentityTrainConfig().augment, p_red_cut=args.red_cut)
    cfg = IdentityTrainConfig(modality=args.modality, augment=augment, hidden=args.hidden,
                              depth=args.depth, dim=args.dim, steps=args.steps,
                              batch=args.batch, lr=args.lr,
                              temperature=args.temperature, hard_fraction=args.hard_negatives,
                              hard_group=args.hard_group, min_snr=args.min_snr,
                              resample_snr=args.resample_snr, resume=args.resume,
                              memory=args.memory, memory_start=args.memory_start,
                              own_noise=args.own_noise, ignore_bands=args.ignore_bands,
                              seed=args.seed, device=args.device)
    res = train_identity(args.model or default_model_path(), args.catalog, args.out, cfg,
                         cache_dir=args.cache, progress=not args.no_progress,
                         overwrite=args.overwrite,
                         command=shlex.join(["specsearch", *sys.argv[1:]]))
    v = res.val
    print(f"model {res.model_hash[:12]} -> {res.out} ({res.steps} steps, {res.seconds:.0f} s, "
          f"{res.n_stars} training visits with another visit)")
    print(f"validation, other visit top-1 among {int(v['n'])}: identity vectors "
          f"{v['identity_top1']:.3f}, embedding {v['embedding_top1']:.3f}")
    if res.fit:
        print(f"training stars, the same score among {int(res.fit['n'])}: identity vectors "
              f"{res.fit['identity_top1']:.3f} (above validation by "
              f"{res.fit['identity_top1'] - v['identity_top1']:+.3f}: learnt of the training "
              f"stars themselves)")
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    from specsearch.model.training.finetune import FinetuneConfig, finetune

    apply_threads(args)
    cfg = FinetuneConfig(steps=args.steps, lr=args.lr, identity=args.identity,
                         snr_slope=args.snr_slope, real_views=args.real_views,
                         real_labels=args.real_labels, clean_anchor=args.clean_anchor,
                         noise_blind=args.noise_blind, snr_adversary=args.snr_adversary,
                         anchor_modalities=tuple(args.anchor_modalities),
                         anchor_real=args.anchor_real, anchor_snr_floor=args.anchor_snr_floor,
                         head_distill=args.head_distill,
                         distill_synthetic=args.distill_synthetic,
                         heads_only=args.heads_only, sed_inputs=args.sed_inputs,
                         sed_lr_factor=args.sed_lr_factor,
                         real_set_weights=args.real_set_weights, hard_negatives=args.hard_negatives,
                         hard_group=args.hard_group, seed=args.seed, device=args.device,
                         augment=dataclasses.replace(FinetuneConfig().augment,
                                                     p_red_cut=args.red_cut),
                         real_red_cut=args.red_cut_real, coverage_bins=args.coverage_inputs,
                         new_classes=args.new_classes, hot_label_noise=args.hot_label_noise,
                         head_fill_a=args.head_fill, head_fill_rounds=args.head_fill_rounds,
                         catalogue_offsets=args.catalogue_offsets)
    result = finetune(args.model, args.catalog, args.real_data, args.out, cfg,
                      progress=not args.no_progress, overwrite=args.overwrite,
                      command=shlex.join(["specsearch", *sys.argv[1:]]),
                      real_cache=args.real_cache, cache_dir=args.cache,
                      teacher_model=args.teacher)
    print(f"fine-tuned -> {result.out} (hash {result.model_hash[:12]}): {result.steps} steps, "
          f"{result.seconds / 60:.1f} min; real training spectra {result.n_real_train}")
    print("  real-data uncertainty floor (lamost): "
          + ", ".join(f"{k} {v:.3g}" for k, v in result.sigma_floor["lamost"].items()))
    print("  z-width on the real calibration stars: "
          + ", ".join(f"{k} {v:.2f}" for k, v in result.real_z_width_cal.items()))
    return 0
