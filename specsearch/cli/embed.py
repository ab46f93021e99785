"""``specsearch embed``: catalog -> embeddings dataset (local or Ray engine)."""

from __future__ import annotations

import argparse

EPILOG = """\
Example:
  specsearch embed --catalog catalogs/survey --out embeddings/survey
  specsearch embed --catalog catalogs/survey --out embeddings/survey --modality xp \\
      --engine ray --ray-address auto --concurrency 4 --num-gpus 1 --device cuda

A rerun skips finished files (resume after a crash); a different model refuses to mix with an
existing dataset unless --overwrite.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from specsearch.cli import HelpFormatter

    p = sub.add_parser("embed", help="encode a catalog into an embeddings dataset",
                       description="Stream a catalog through the model: preprocess, encode, "
                                   "parameter heads; write Parquet embeddings.",
                       formatter_class=HelpFormatter, epilog=EPILOG)
    p.add_argument("--catalog", required=True, help="catalog directory")
    p.add_argument("--model", default=None,
                   help="model directory (default: the shipped default model)")
    p.add_argument("--out", required=True, help="embeddings directory")
    p.add_argument("--modality", action="append", choices=["lamost", "xp"],
                   help="embed only this modality (repeatable; default: all present)")
    p.add_argument("--engine", choices=["local", "ray"], default="local")
    p.add_argument("--batch-size", type=int, default=None,
                   help="spectra per forward pass (default: ~4M pixels, i.e. 1024 LAMOST "
                        "or 12032 XP spectra on a CPU; 8x the pixels on a GPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for preprocessing and the model (default: all cores; "
                        "ray engine: per actor, default --cpus-per-actor)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="the network's precision (auto: bf16 autocast on a GPU, fp32 on a "
                        "CPU)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="storage type of the embedding column")
    p.add_argument("--with-residual", action="store_true",
                   help="store reconstruction/translation residuals (for outlier scores)")
    p.add_argument("--check-telluric", action="store_true",
                   help="look for telluric absorption left in each LAMOST-grid spectrum "
                        "(one more model pass, ~0.2 ms a spectrum) and embed those where "
                        "the model finds it with the telluric bands masked; stores "
                        "telluric_depth and telluric_masked (for catalogs from reductions "
                        "that may not correct it)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace embeddings made by another model")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (ray engine)")
    p.add_argument("--concurrency", type=int, default=1, help="model actors (ray engine)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0,
                   help="CPUs reserved by each model actor (ray engine)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor (ray engine)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from specsearch.embed import EmbedConfig, build_embeddings
    from specsearch.embed.process import configure_process

    configure_process(args.threads)
    config = EmbedConfig(modalities=args.modality, batch_size=args.batch_size,
                         dtype=args.dtype, with_residual=args.with_residual,
                         precision=args.precision, check_telluric=args.check_telluric,
                         overwrite=args.overwrite, progress=not args.no_progress)
    if args.engine == "ray":
        from specsearch.embed.ray_engine import build_embeddings_ray

        device = "cuda" if args.num_gpus > 0 and args.device == "auto" else args.device
        report = build_embeddings_ray(args.catalog, args.model, args.out, config,
                                      address=args.ray_address, concurrency=args.concurrency,
                                      cpus_per_actor=args.cpus_per_actor,
                                      threads_per_actor=args.threads,
                                      num_gpus=args.num_gpus,
                                      device="cpu" if device == "auto" else device)
    else:
        from specsearch.model import load_model

        model = load_model(args.model, device=args.device)
        report = build_embeddings(args.catalog, model, args.out, config)
    print(report.summary())
    return 0 if report.rows_written else 1
