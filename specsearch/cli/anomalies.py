"""``specsearch anomalies``, ``more-like-this``, ``hunt`` and ``hunt-calibrate``: ranked,
explained lists of the rare and the strange, and of metal-poor stars."""

from __future__ import annotations

import argparse

ANOMALIES_EPILOG = """\
Example:
  specsearch anomalies indexes/survey --top 100 --out anomalies.fits
  specsearch anomalies indexes/survey --top 500 --out top.parquet --modality lamost \\
      --filter "snr>=20" --artefacts-out artefacts.csv --catalog data/catalog
  specsearch anomalies indexes/survey --top 100 --out all.vot --include-artefacts

Every object is scored (k-NN density, local outlier factor, reconstruction and translation
residuals, LAMOST-vs-XP disagreement; robust z within S/N bins); the combined score is the
strongest component, named in anomaly_driver. Objects with artefact flags (spikes, sky
residuals, dead segments, arm-join steps, flux-calibration tilt, masked/low S/N) are left
out of the list unless --include-artefacts; --artefacts-out writes them as their own list.
Output format from the suffix: .parquet .csv .fits .vot (TOPCAT opens them all).
"""

LIKE_EPILOG = """\
Example:
  specsearch more-like-this indexes/survey --source-id 1234 --source-id 5678 --k 50 \\
      --out like.csv
  specsearch more-like-this indexes/survey --spectrum odd1.fits --spectrum odd2.fits \\
      --mode union --target-modality xp --out like.fits
"""

HUNT_EPILOG = """\
Example:
  specsearch hunt indexes/survey --feh-max -2.0 --out vmp.fits
  specsearch hunt indexes/survey --feh-max -2.5 --top 200 --mode both --out emp.csv \\
      --calibration feh_calibration.json --filter "mag_g<16"
  specsearch hunt indexes/survey --feh-max -2 --seed-spectra hd122563.fits --out vmp.parquet

Ranks stars by the calibrated probability that [Fe/H] < --feh-max (both modalities
combined for stars that have both) and prints the expected purity and completeness of the
list at several sizes, so you can pick a follow-up list size (--top, or --min-prob).
"""

CALIBRATE_EPILOG = """\
Example:
  specsearch hunt-calibrate indexes/validation --out feh_calibration.json

Fits the calibration of the [Fe/H] heads on labelled stars (a held-out validation set with
a true 'feh' column, never the stars you hunt in): per modality, the isotonic map from true
to predicted [Fe/H] and the uncertainty scale and floor; and the [Fe/H] prior. Prints the
cross-fitted reliability (expected vs observed counts below -1.5 ... -3, ECE).
"""


def register(sub: argparse._SubParsersAction) -> None:
    from specsearch.cli import HelpFormatter, add_medium_option

    p = sub.add_parser("anomalies", help="ranked outlier / anomaly candidate list",
                       description="Score every object for outlierness and write the top "
                                   "candidates with scores, drivers, artefact flags, nearest "
                                   "normal neighbours and head predictions.",
                       formatter_class=HelpFormatter, epilog=ANOMALIES_EPILOG)
    _source_args(p)
    p.add_argument("--top", type=int, default=100, help="rows in the list")
    p.add_argument("--out", required=True, help="output file (.parquet .csv .fits .vot)")
    p.add_argument("--modality", action="append", choices=("lamost", "xp"),
                   help="modality to score (repeatable; default: all in the index)")
    p.add_argument("--include-artefacts", action="store_true",
                   help="keep artefact-flagged objects in the list")
    p.add_argument("--artefacts-out", help="also write the artefact list to this file")
    p.add_argument("--catalog", help="catalog for the artefact screening (default: the one "
                                     "recorded with the embeddings)")
    p.add_argument("--k", type=int, help="neighbours per object for density (default: "
                                         "0.2%% of the rows, 20..200)")
    p.add_argument("--components", default=None,
                   help="score components, comma-separated, from knn lof recon translation "
                        "crossmodal ('density' = knn,lof; default: the model's choice, "
                        "anomaly_defaults.json beside it, else all)")
    p.add_argument("--combine", choices=("max", "rms", "rank_max", "rank_fisher"),
                   help="how components make the combined score (default: the model's "
                        "choice, else rank_fisher)")
    p.add_argument("--residual-reference", choices=("global", "neighbours"),
                   help="compare residuals with all stars of similar S/N or with the "
                        "star's embedding neighbours (default: the model's choice, else "
                        "global)")
    p.add_argument("--knn", choices=("auto", "selfjoin", "index", "exact"), default="auto",
                   help="how every object's neighbours are found: a cell-blocked BLAS "
                        "self-join (fast, ~98%% recall), one query per object through the "
                        "index, or exact (O(N^2)); auto: exact below 20000 rows, else "
                        "the self-join")
    p.add_argument("--neighbours", type=int, default=5,
                   help="nearest normal neighbours reported per candidate")
    p.set_defaults(run=run_anomalies)

    p = sub.add_parser("more-like-this", help="objects similar to a few examples",
                       description="Find objects similar to example stars (source_ids) or "
                                   "spectra, searching with their centroid or their union.",
                       formatter_class=HelpFormatter, epilog=LIKE_EPILOG)
    p.add_argument("index_dir", help="index directory (specsearch index build)")
    p.add_argument("--source-id", type=int, action="append", default=[],
                   help="an example star (repeatable)")
    p.add_argument("--spectrum", action="append", default=[],
                   help="an example spectrum file (repeatable; needs the model)")
    p.add_argument("--mode", choices=("centroid", "union"), default="centroid")
    p.add_argument("--target-modality", choices=("lamost", "xp"),
                   help="modality searched (default: the examples')")
    p.add_argument("--k", type=int, default=100, help="rows in the list")
    p.add_argument("--filter", action="append", default=[], help="metadata filter")
    p.add_argument("--model", help="model directory for --spectrum (default: shipped)")
    add_medium_option(p, "the generic --spectrum files (FITS, text); LAMOST and Gaia XP "
                         "files state their own and refuse it")
    p.add_argument("--out", required=True, help="output file (.parquet .csv .fits .vot)")
    p.set_defaults(run=run_like)

    p = sub.add_parser("hunt", help="metal-poor star hunt with expected purity",
                       description="Rank stars by the calibrated probability that [Fe/H] is "
                                   "below a threshold.",
                       formatter_class=HelpFormatter, epilog=HUNT_EPILOG)
    _source_args(p)
    p.add_argument("--feh-max", type=float, default=-2.0, help="[Fe/H] threshold (dex)")
    p.add_argument("--out", required=True, help="output file (.parquet .csv .fits .vot)")
    p.add_argument("--mode", choices=("any", "lamost", "xp", "both"), default="any",
                   help="which predictions: any star (combined where both), one modality, "
                        "or only stars with both")
    p.add_argument("--top", type=int, help="list size (default: every star with p >= "
                                           "--min-prob)")
    p.add_argument("--min-prob", type=float, default=0.5, help="lowest p without --top")
    p.add_argument("--calibration", help="calibration JSON (specsearch hunt-calibrate); "
                                         "default: the one shipped with the model")
    p.add_argument("--seed-spectra", nargs="+", default=[],
                   help="spectra of known metal-poor stars: re-rank by similarity")
    p.add_argument("--seed-source-id", type=int, action="append", default=[],
                   help="a known metal-poor star in the index (repeatable)")
    p.add_argument("--seed-weight", type=float, default=0.3,
                   help="weight of seed similarity in the ranking (0..1)")
    p.add_argument("--model", help="model directory for --seed-spectra")
    add_medium_option(p, "the generic --seed-spectra files (FITS, text); LAMOST and Gaia XP "
                         "files state their own and refuse it")
    p.add_argument("--adapt-prior", action="store_true",
                   help="refit the fraction of stars below --feh-max to this pool (a "
                        "pre-selected sample unlike the survey the calibration describes); "
                        "the ranking stays, p and the expected numbers change")
    p.set_defaults(run=run_hunt)

    p = sub.add_parser("hunt-calibrate", help="fit the [Fe/H] probability calibration",
                       description="Fit the hunt's calibration on labelled held-out stars.",
                       formatter_class=HelpFormatter, epilog=CALIBRATE_EPILOG)
    _source_args(p)
    p.add_argument("--out", required=True, help="calibration JSON to write")
    p.add_argument("--label", default="feh", help="true label column")
    p.add_argument("--real-data", help="real-data folder: refit the LAMOST noise model on its "
                                       "held-out (cal split) labelled real stars")
    p.add_argument("--model", help="the model that made the embeddings (with --real-data; "
                                   "default: the shipped model)")
    p.set_defaults(run=run_calibrate)


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("index_dir", help="index directory (specsearch index build) or an "
                                     "embeddings dataset (specsearch embed)")
    p.add_argument("--embeddings", help="read rows from this embeddings dataset instead of "
                                        "the index's stored rows")
    p.add_argument("--filter", action="append", default=[],
                   help="metadata filter, e.g. snr>=20, mag_g<16, cone=RA,DEC,R (repeatable)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip shard sha256 checks when opening the index (sizes still "
                        "checked)")


def _components(text: str | None) -> tuple[str, ...] | None:
    """``--components`` -> component names (``density`` stands for knn and lof)."""
    if not text:
        return None
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        for name in (("knn", "lof") if part == "density" else (part,)):
            if name and name not in names:
                names.append(name)
    return tuple(names)


def run_anomalies(args: argparse.Namespace) -> int:
    from specsearch.anomaly.neighbours import NeighbourConfig
    from specsearch.anomaly.pipeline import run_anomalies as run
    from specsearch.anomaly.scoring import ScoreConfig

    res = run(args.index_dir, out=args.out, top=args.top, modalities=args.modality,
              filters=args.filter, include_artefacts=args.include_artefacts,
              artefacts_out=args.artefacts_out, catalog=args.catalog,
              embeddings=args.embeddings, n_neighbours=args.neighbours,
              verify=not args.no_verify,
              score_config=ScoreConfig(
                  k=args.k, **{k: v for k, v in (
                      ("combine", args.combine),
                      ("components", _components(args.components)),
                      ("residual_reference", args.residual_reference)) if v is not None},
                  neighbour_method="faiss" if args.knn == "exact" else args.knn,
                  neighbours=NeighbourConfig(kind="flat" if args.knn == "exact"
                                             else "auto")))
    scored = ", ".join(f"{n} {m}" for m, n in res.n_scored.items())
    print(f"scored {scored} in {res.seconds_scoring:.1f} s; artefact screening "
          f"{'%.1f s' % res.seconds_screening if res.screened else 'skipped (no catalog)'}")
    for row in res.top_rows:
        print("  " + "  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in row.items()))
    print(f"wrote {res.rows} candidates to {res.out}")
    if res.artefacts_out is not None:
        print(f"wrote {res.artefact_rows} artefact candidates to {res.artefacts_out}")
    return 0


def run_like(args: argparse.Namespace) -> int:
    import numpy as np

    from specsearch.cli import medium_air
    from specsearch.query.similar import embed_spectrum_files, more_like_this_engine
    from specsearch.rows import write_table
    from specsearch.errors import QueryError
    from specsearch.query import SearchEngine

    if not args.source_id and not args.spectrum:
        raise QueryError("give at least one --source-id or --spectrum example")
    if args.medium is not None and not args.spectrum:
        raise QueryError("--medium states the wavelength medium of --spectrum files; "
                         "this search has none (drop --medium)")
    engine = SearchEngine.open(args.index_dir)
    vectors, modality = [], None
    for s in args.source_id:
        modality, vec = engine.vector_of(s, None)
        vectors.append(vec)
    if args.spectrum:
        from specsearch.model import load_model

        model = load_model(args.model)
        modality = modality or ("lamost" if "lamost" in engine.modalities
                                else engine.modalities[0])
        vectors.extend(embed_spectrum_files(args.spectrum, modality, model,
                                            air=medium_air(args)))
    table = more_like_this_engine(engine, np.asarray(vectors), modality=args.target_modality
                                  or modality, k=args.k, mode=args.mode, filter=args.filter,
                                  exclude_source_ids=args.source_id)
    path = write_table(table, args.out, meta={"mode": args.mode,
                                              "examples": len(vectors)})
    print(f"wrote {table.num_rows} similar objects to {path}")
    return 0


def run_hunt(args: argparse.Namespace) -> int:
    from specsearch.cli import medium_air
    from specsearch.errors import QueryError
    from specsearch.hunt.pipeline import run_hunt as run

    if args.medium is not None and not args.seed_spectra:
        raise QueryError("--medium states the wavelength medium of --seed-spectra files; "
                         "this hunt has none (drop --medium)")
    res = run(args.index_dir, out=args.out, feh_max=args.feh_max, mode=args.mode,
              top=args.top, min_prob=args.min_prob, filters=args.filter,
              calibration=args.calibration, seed_spectra=args.seed_spectra,
              seed_source_ids=args.seed_source_id, seed_weight=args.seed_weight,
              model_dir=args.model, embeddings=args.embeddings, verify=not args.no_verify,
              adapt_prior=args.adapt_prior, seed_air=medium_air(args))
    r = res.result
    print(f"{r.n_stars} stars searched; expected {r.expected_total:.1f} with "
          f"[Fe/H] < {args.feh_max} ({'calibrated' if r.calibrated else 'UNCALIBRATED'})")
    if r.n_out_of_domain:
        print(f"{r.n_out_of_domain} measurements left out: the model's domain check flags "
              f"them (out_of_domain: stars unlike any it was trained on)")
    print("\n".join(r.summary_lines()))
    print(f"wrote {r.chosen.n} stars to {res.out}")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from specsearch.hunt.pipeline import run_calibrate as run

    cal = run(args.index_dir, out=args.out, label=args.label, filters=args.filter,
              embeddings=args.embeddings, verify=not args.no_verify,
              real_data=args.real_data, model=args.model)
    for m, c in cal.modalities.items():
        checks = {k: v for k, v in c.checks.items() if k.startswith("feh<")}
        print(f"{m}: n={c.n} scale={c.scale:.3f} floor={c.floor:.3f} dex "
              f"z-width={c.checks.get('z_robust_width')}")
        for k, v in checks.items():
            print(f"  {k}: expected {v['expected']:.1f} observed {v['observed']} "
                  f"ECE {v['ece']:.4f}")
    print(f"prior from {cal.source or 'the labelled rows'}; wrote {args.out}")
    return 0
