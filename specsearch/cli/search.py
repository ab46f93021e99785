"""``specsearch search``: nearest neighbours of a star, an embedding or a spectrum file."""

from __future__ import annotations

import argparse
import io
import json
import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from specsearch.spectrum import Spectrum

EPILOG = """\
Example:
  specsearch search indexes/survey --source-id 1234567890 --k 20
  specsearch search indexes/survey --source-id 1234567890 --target-modality xp --k 5
  specsearch search indexes/survey --spectrum spec-55859-F5902_sp01-001.fits.gz \\
      --filter "feh_pred<-2" --filter "snr>=20" --format json
  specsearch search indexes/survey --embedding queries.npy --modality xp --k 100 \\
      --offset 50 --limit 50 --format csv
  specsearch search indexes/survey --source-id 1234567890 --range 0.9
  specsearch search indexes/survey --spectrum my_star.csv --modality lamost --medium air

Filters (ANDed): COLUMN OP VALUE with OP one of < <= > >= = != (e.g. snr>=20,
feh_pred<-2, population=halo|thick), cone=RA,DEC,RADIUS_DEG, modality=xp.
"""

TABLE_COLUMNS = ("rank", "similarity", "source_id", "spectrum_id", "ra", "dec", "snr",
                 "mag_g", "teff_pred", "logg_pred", "feh_pred", "class_pred")


def register(sub: argparse._SubParsersAction) -> None:
    from specsearch.cli import HelpFormatter, add_medium_option

    p = sub.add_parser("search", help="nearest neighbours in an index",
                       description="k-NN (or range) search by source_id, embedding or "
                                   "spectrum file, in-modality or cross-modal, with filters.",
                       formatter_class=HelpFormatter, epilog=EPILOG)
    p.add_argument("index_dir", help="index directory (specsearch index build)")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--source-id", type=int, help="query by a star's stored embedding")
    q.add_argument("--embedding", help=".npy file with a (D,) or (n, D) float array")
    q.add_argument("--spectrum", help="a spectrum file in any readable format (needs a model)")
    p.add_argument("--modality", help="modality of the query (spectrum/source_id) or of the "
                                      "index searched for --embedding")
    p.add_argument("--target-modality", help="modality searched (default: the query's); "
                                             "the other one for cross-modal search")
    p.add_argument("--k", type=int, default=10, help="result window (max 10000)")
    p.add_argument("--offset", type=int, default=0, help="first rank returned")
    p.add_argument("--limit", type=int, help="results returned (default: k - offset)")
    p.add_argument("--filter", action="append", default=[], help="filter (repeatable)")
    p.add_argument("--range", type=float, metavar="COSINE",
                   help="instead of k-NN: every neighbour with similarity >= COSINE")
    p.add_argument("--model", help="model directory for --spectrum (default: shipped model)")
    p.add_argument("--resolving-power", type=float, metavar="R",
                   help="R = lambda / FWHM of a --spectrum file that states none: a spectrum "
                        "much sharper than LAMOST is broadened to R = 1800 first")
    add_medium_option(p, "a generic --spectrum file (FITS, text); LAMOST and Gaia XP files "
                         "state their own and refuse it")
    p.add_argument("--telluric-uncorrected", action="store_true",
                   help="the --spectrum file was not corrected for telluric absorption: "
                        "its telluric bands are masked rather than read as the star")
    p.add_argument("--format", default="table", choices=("table", "json", "csv"))
    p.add_argument("--ef-search", type=int, help="override the tuned HNSW ef_search")
    p.add_argument("--nprobe", type=int, help="override the tuned IVF nprobe")
    p.add_argument("--refine-factor", type=float, help="override the re-ranking depth")
    p.add_argument("--no-identity", action="store_true",
                   help="same-instrument --source-id/--spectrum queries: rank by the "
                        "embedding only (default: re-rank by identity vectors where the "
                        "index has them)")
    p.add_argument("--no-agreement", action="store_true",
                   help="cross-modal --source-id/--spectrum queries: rank by the embedding "
                        "only (default: re-rank by how well the neighbours' predicted "
                        "parameters agree with the query's)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip shard sha256 checks at open (sizes are still checked)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from specsearch.errors import QueryError
    from specsearch.query import SearchEngine

    for option, value in (("--medium", args.medium),
                          ("--resolving-power", args.resolving_power),
                          ("--telluric-uncorrected", args.telluric_uncorrected or None)):
        if value is not None and args.spectrum is None:
            raise QueryError(f"{option} describes a --spectrum file; this search has none "
                             f"(drop {option})")
    spectra = _read_query_spectra(args) if args.spectrum is not None else []
    engine = SearchEngine.open(args.index_dir, verify=not args.no_verify)
    knobs = None
    if args.ef_search or args.nprobe or args.refine_factor:
        first = engine.index[args.target_modality or args.modality or engine.modalities[0]]
        knobs = first.knobs.replace(ef_search=args.ef_search, nprobe=args.nprobe,
                                    refine_factor=args.refine_factor)
        # hnswlib takes ef only at open: reopen with the knobs as defaults.
        engine = SearchEngine.open(args.index_dir, verify=False, knobs=knobs)
    page = dict(k=args.k, offset=args.offset, limit=args.limit, filter=args.filter,
                knobs=knobs)
    results = []
    if args.source_id is not None:
        if args.range is not None:
            modality, vec = engine.vector_of(args.source_id, args.modality)
            results.append(engine.range_search(vec, args.range, filter=args.filter,
                                               modality=args.target_modality or modality))
        else:
            results.append(engine.search_source(args.source_id, modality=args.modality,
                                                target_modality=args.target_modality,
                                                identity=not args.no_identity,
                                                agreement=not args.no_agreement, **page))
    elif args.embedding is not None:
        vectors = np.load(args.embedding, allow_pickle=False)
        if vectors.ndim not in (1, 2):
            raise QueryError(f"{args.embedding}: expected a (D,) or (n, D) array, got "
                             f"shape {vectors.shape}")
        target = args.target_modality or args.modality
        if args.range is not None:
            results += [engine.range_search(v, args.range, modality=target,
                                            filter=args.filter)
                        for v in np.atleast_2d(vectors)]
        else:
            got = engine.search(np.atleast_2d(vectors), modality=target, **page)
            results += got
    else:
        from specsearch.model.api import load_model
        engine.attach_encoder(load_model(args.model))
        for spectrum in spectra:
            results.append(engine.search_spectrum(
                spectrum, modality=args.modality, target_modality=args.target_modality,
                identity=not args.no_identity, agreement=not args.no_agreement, **page))
    _print(results, args.format)
    return 0


def _read_query_spectra(args: argparse.Namespace) -> list[Spectrum]:
    """The spectra of ``--spectrum``, read before the index and the model are opened: a
    file or option that does not fit fails at once (a large index takes a while to open)."""
    from specsearch.cli import medium_air
    from specsearch.io.registry import read_spectra
    from specsearch.preprocess import state_telluric
    from specsearch.preprocess.lsf import state_resolution

    spectra = list(read_spectra(args.spectrum, modality=args.modality, air=medium_air(args)))
    for spectrum in spectra:
        state_resolution(spectrum, args.resolving_power, "search --resolving-power")
        state_telluric(spectrum, args.telluric_uncorrected, "search --telluric-uncorrected")
    return spectra


def _print(results, fmt: str) -> None:
    import pyarrow as pa
    tables = []
    for i, res in enumerate(results):
        t = res.to_arrow()
        tables.append(t.add_column(0, "query", pa.array([i] * t.num_rows, pa.int64())))
    if fmt == "json":
        out = [{"query": r.query, "modality": r.modality, "total": r.total,
                "neighbours": r.to_dicts()} for r in results]
        json.dump(out, sys.stdout, indent=1, default=_json_default)
        print()
        return
    table = pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
    if fmt == "csv":
        import pyarrow.csv as pcsv
        buf = io.BytesIO()
        pcsv.write_csv(table, buf)
        sys.stdout.write(buf.getvalue().decode())
        return
    for res, t in zip(results, tables):
        q = res.query
        print(f"# query {q.get('kind')} {q.get('source_id', q.get('spectrum_id', ''))} -> "
              f"{res.modality}: {len(res)} of {res.total} neighbours"
              + (f", ranked by {q['ranked_by']}" if q.get("ranked_by") else "")
              + (f"; predictions {q['predictions']}" if q.get("predictions") else ""))
        tel = q.get("telluric") or {}
        if tel.get("source") == "detected":
            print(f"# telluric absorption left in (O2 A band {tel['depth']:.2f} below the "
                  f"model's redrawing of the star): its bands masked before reading")
        if q.get("spikes_masked"):
            print(f"# {q['spikes_masked']} pixels narrower than any line (cosmic rays, hot "
                  f"pixels) masked before reading")
        d = q.get("domain") or {}
        if d.get("out_of_domain"):
            print(f"# WARNING: {_domain_reason(d)}: its predictions are unreliable")
        cols = [c for c in TABLE_COLUMNS if c in t.column_names]
        rows = [[_fmt(v) for v in row.values()] for row in t.select(cols).to_pylist()]
        widths = [max([len(c)] + [len(r[j]) for r in rows]) for j, c in enumerate(cols)]
        print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
        for r in rows:
            print("  ".join(v.rjust(w) for v, w in zip(r, widths)))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.1f}"
    return "" if value is None else str(value)


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _domain_reason(d: dict) -> str:
    """Why a query spectrum is out of the model's domain (``query['domain']``)."""
    if (b := d.get("broader_than_model")) is not None:
        return (f"the spectrum is broader than the model reads (FWHM {b['input_fwhm_A']:.1f} A "
                f"against {b['model_fwhm_A']:.1f} A; its [Fe/H] reads low)")
    threshold = d.get("threshold") or 0.0
    if "window_coverage" in d and d["window_coverage"] < d["min_coverage"]:
        lo, hi = d["coverage_window_A"]
        return (f"the spectrum lacks most of {lo:g}-{hi:g} A (data in "
                f"{d['window_coverage']:.0%} of it, {d['min_coverage']:.0%} needed)")
    return (f"the model does not know stars like this one (reconstruction off by "
            f"{d['recon_relative']:.0%}, threshold {threshold:.0%})")
