"""Outlier lists and the metal-poor hunt on the synthetic survey and real spectra (issue 7).

One run, end to end, with the trained default model (or ``--model``):

1. a synthetic evaluation survey (``--n`` stars, seed ``--seed``, default rare-population
   fractions, 1% LAMOST artefacts; never seen in training) and a labelled calibration survey
   (``--n-cal``, another seed) are generated if missing, embedded (with residuals) and the
   evaluation survey indexed (``specsearch index build``, kind auto);
2. **scoring throughput**: every object scored through the index, against the baseline of
   an exact in-memory FAISS flat self-join (same scores up to ANN recall; rank agreement);
3. **artefact screening**: detection rate per injected artefact kind, false-flag rate per
   population, spectra/s;
4. **anomaly lists** (LAMOST, XP, both merged): precision@100/@1000 for the astrophysical
   anomaly classes (carbon, white_dwarf, wd_md, emission, hot_ob; also counting vmp/emp as
   rare), recall per class in the top 1000, artefacts reaching the astrophysical list (with
   and without screening), and an ablation of the score components;
5. **metal-poor hunt**: calibration fitted on the calibration survey; realised purity and
   completeness curves for [Fe/H] < -2 and < -2.5 per modality (lamost, xp, both combined),
   against the expected ones;
6. **real stars**: every MILES star (on the LAMOST grid, masked outside 3540-7410 A) mixed
   into the LAMOST side: the ranks of the 18 with [Fe/H] < -2; the 2000 real Gaia XP
   sky-patch sources plus the 4 emission-line objects scored as one catalog: their ranks;
7. a figure: score distributions with the rare classes marked, and the top-12 spectra.

Usage:
  python benchmarks/bench_anomaly.py                      # n=50000, n-cal=30000
  python benchmarks/bench_anomaly.py --n 5000 --n-cal 4000 --data /tmp/anom  # smoke run
Writes benchmarks/results/anomaly.json and anomaly_*.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ANOMALY_CLASSES = ("carbon", "white_dwarf", "wd_md", "emission", "hot_ob")
RARE_CLASSES = ANOMALY_CLASSES + ("vmp", "emp")
REAL = ROOT.parent / "shared" / "data" / "real"


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50_000, help="stars in the evaluation survey")
    p.add_argument("--n-cal", type=int, default=30_000, help="stars in the calibration set")
    p.add_argument("--seed", type=int, default=7071)
    p.add_argument("--model", default=None, help="model directory (default: shipped)")
    p.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "results"
                   / "anomaly_data", help="where catalogs/embeddings/index are kept")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results"
                   / "anomaly.json")
    p.add_argument("--workers", type=int, default=2, help="synth workers")
    p.add_argument("--k", type=int, default=None, help="density k (default: automatic)")
    return p.parse_args()


def step(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- data

def ensure_data(args, model) -> dict[str, Path]:
    from specsearch.embed.builder import EmbedConfig, build_embeddings
    from specsearch.index import BuildOptions, build_index
    from specsearch.synth import generate_survey

    paths = {}
    for name, n, seed in (("eval", args.n, args.seed), ("cal", args.n_cal, args.seed + 1)):
        cat = args.data / f"{name}_catalog"
        if not (cat / "catalog.json").is_file() or not list((cat / "lamost").glob("*.parquet")):
            step(f"generating the {name} survey ({n} stars, seed {seed})")
            generate_survey(cat, n=n, seed=seed, workers=args.workers, progress=False)
        emb = args.data / f"{name}_emb_{model.model_hash[:12]}"
        step(f"embedding {name} (resumes if done)")
        rep = build_embeddings(cat, model, emb, EmbedConfig(with_residual=True,
                                                            progress=False))
        step("  " + rep.summary())
        paths[f"{name}_catalog"], paths[f"{name}_emb"] = cat, emb
    idx = args.data / f"eval_index_{model.model_hash[:12]}"
    if not (idx / "manifest.json").is_file():
        step("building the evaluation index")
        build_index(paths["eval_emb"], idx, BuildOptions(kind="auto"))
    paths["eval_index"] = idx
    return paths


# ----------------------------------------------------------------------------- scoring

def bench_scoring(loaded, k: int) -> tuple[dict, dict]:
    """Score every object with the default self-join; baselines in the same run: the exact
    FAISS flat self-join (one query per object, O(N^2)) and, when the index is
    approximate, one query per object through the index."""
    from specsearch.anomaly import NeighbourConfig, ScoreConfig, score_tables

    n = sum(len(t) for t in loaded.tables.values())
    # Warm-up, untimed: one call on 3000 rows of each modality pays the one-time costs of a
    # process (lazy imports of scipy/threadpoolctl, ~0.7 s; BLAS and FAISS thread pools).
    small = {m: dataclasses.replace(t, vectors=t.vectors[:3000], meta=t.meta.slice(0, 3000))
             for m, t in loaded.tables.items()}
    score_tables(small, config=ScoreConfig(k=None if k is None else min(k, 50)))
    runs = {}
    t0 = time.perf_counter()
    scores = score_tables(loaded.tables, config=ScoreConfig(k=k), searchers=loaded.searchers)
    runs["selfjoin"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = score_tables(loaded.tables, config=ScoreConfig(
        k=k, neighbour_method="faiss", neighbours=NeighbourConfig(kind="flat")))
    runs["exact_flat"] = time.perf_counter() - t0
    backend = {m: loaded.index[m].manifest.backend.kind for m in scores}
    if any(b != "flat" for b in backend.values()):
        t0 = time.perf_counter()
        score_tables(loaded.tables, config=ScoreConfig(k=k, neighbour_method="index"),
                     searchers=loaded.searchers)
        runs["index_queries"] = time.perf_counter() - t0
    agree = {}
    for m in scores:
        a, b = scores[m].score, exact[m].score
        ra, rb = np.argsort(np.argsort(-a)), np.argsort(np.argsort(-b))
        top_a, top_b = set(scores[m].rank()[:100]), set(exact[m].rank()[:100])
        kk = scores[m].knn.rows.shape[1]
        rec = np.mean([len(set(x) & set(y)) / kk for x, y in
                       zip(scores[m].knn.rows[:5000], exact[m].knn.rows[:5000])])
        agree[m] = {"k": kk, "spearman_vs_exact": float(np.corrcoef(ra, rb)[0, 1]),
                    "top100_overlap_vs_exact": len(top_a & top_b) / 100,
                    "neighbour_recall": float(rec)}
    return scores, {"objects": n, "index_backend": backend,
                    "seconds": runs, "per_s": {r: n / t for r, t in runs.items()},
                    "speedup_selfjoin_vs_exact": runs["exact_flat"] / runs["selfjoin"],
                    "agreement": agree}


def truth(table, name: str, default=""):
    return table.column(name) if table.has(name) else np.full(len(table), default,
                                                              dtype=object)


def bench_screening(paths, tables, scores) -> tuple[dict, dict]:
    from specsearch.anomaly.pipeline import screen_tables

    t0 = time.perf_counter()
    flags = screen_tables(paths["eval_catalog"], tables, scores=scores)
    dt = time.perf_counter() - t0
    out = {"seconds": dt, "spectra_per_s": sum(len(f.table) for f in flags.values()) / dt}
    if "lamost" in flags:
        f = flags["lamost"]
        t = tables["lamost"]
        lookup = dict(zip(t.spectrum_id.astype(str), range(len(t))))
        rows = np.asarray([lookup[s] for s in f.table.spectrum_id.astype(str)])
        kind = np.asarray(truth(t, "artefact_kind"), dtype=object)[rows].astype(str)
        pop = np.asarray(truth(t, "population"), dtype=object)[rows].astype(str)
        any_ = f.any
        out["detected_per_kind"] = {str(k): float(any_[kind == k].mean())
                                    for k in sorted(set(kind) - {"", "None"})}
        clean = (kind == "") | (kind == "None")
        out["false_flag_rate_per_population"] = {str(p): float(any_[clean & (pop == p)].mean())
                                                 for p in sorted(set(pop))}
        out["false_flag_reasons"] = dict(zip(*np.unique(f.reasons()[clean & any_],
                                                        return_counts=True)))
        out["false_flag_reasons"] = {str(k): int(v) for k, v in
                                     out["false_flag_reasons"].items()}
    return flags, out


def list_metrics(table, pop_of, art_of, n_class) -> dict:
    """Precision of the anomaly classes, recall per class, true artefacts in the list (a
    spectrum with an injected artefact; XP spectra never have one)."""
    sid = table.column("source_id").to_numpy()
    pops = np.asarray([pop_of.get(int(s), "") for s in sid])
    arts = np.asarray([art_of.get(str(s), False) for s in
                       table.column("spectrum_id").to_pylist()])
    res = {}
    for n in (100, 1000):
        top = pops[:n]
        res[f"precision@{n}"] = float(np.isin(top, ANOMALY_CLASSES).mean()) if top.size else 0
        res[f"rare_precision@{n}"] = float(np.isin(top, RARE_CLASSES).mean()) if top.size else 0
        res[f"artefacts_in_top{n}"] = int(arts[:n].sum())
    res["recall@1000"] = {c: float((pops[:1000] == c).sum() / n_class[c])
                          for c in RARE_CLASSES if n_class.get(c)}
    return res


def population_maps(tables) -> tuple[dict, dict, dict]:
    pop_of, art_of = {}, {}
    for t in tables.values():
        for s, sp, p, a in zip(t.source_id, t.spectrum_id, truth(t, "population"),
                               truth(t, "is_artefact", False)):
            pop_of.setdefault(int(s), str(p))
            art_of[str(sp)] = bool(a)
    pops = np.asarray(list(pop_of.values()))
    return pop_of, art_of, {c: int((pops == c).sum()) for c in RARE_CLASSES}


def bench_lists(scores, flags, tables) -> dict:
    from specsearch.anomaly import CandidateConfig, candidate_list

    pop_of, art_of, n_class = population_maps(tables)
    out = {"class_counts": n_class}
    for name, mods in (("lamost", ["lamost"]), ("xp", ["xp"]), ("both", list(scores))):
        sub = {m: scores[m] for m in mods if m in scores}
        for kind in ("astrophysical", "all"):
            top = candidate_list(sub, flags, config=CandidateConfig(top=1000, kind=kind,
                                                                    n_neighbours=0))
            out[f"{name}/{kind}"] = list_metrics(top, pop_of, art_of, n_class)
    return out


COMPONENT_SETS = {"density": ("knn", "lof"), "density+crossmodal": ("knn", "lof", "crossmodal"),
                  "all": ("knn", "lof", "recon", "translation", "crossmodal")}


def rescore(s, components, reference: str, method: str) -> None:
    """Recombine one modality's stored components in place (no new neighbour search)."""
    from specsearch.anomaly.robust import combine_scores, local_residual, robust_z

    snr = s.table.column("snr") if s.table.has("snr") else None
    z = dict(s.z)
    for c in ("recon", "translation"):
        if c in s.raw:
            x = np.log(np.maximum(s.raw[c], 1e-6))
            if reference == "neighbours":
                x = local_residual(x, s.knn.rows)
            z[c] = robust_z(x, by=snr)
    s.score, s.driver = combine_scores({c: z[c] for c in components if c in z},
                                       method=method)


def ablation(scores, flags, tables) -> dict:
    """precision@100/@1000 of the astrophysical list per scoring variant and modality."""
    from specsearch.anomaly import CandidateConfig, candidate_list

    pop_of, art_of, n_class = population_maps(tables)
    saved = {m: (s.score, s.driver) for m, s in scores.items()}
    out = {}
    for set_name, comps in COMPONENT_SETS.items():
        for reference in ("global", "neighbours"):
            if reference == "neighbours" and set_name != "all":
                continue
            for method in ("max", "rms", "rank_max", "rank_fisher"):
                key = f"{set_name}|{reference}|{method}"
                out[key] = {}
                for m, s in scores.items():
                    rescore(s, comps, reference, method)
                    top = candidate_list({m: s}, flags, config=CandidateConfig(
                        top=1000, n_neighbours=0))
                    met = list_metrics(top, pop_of, art_of, n_class)
                    out[key][m] = [met["precision@100"], met["precision@1000"]]
    for m, (score, driver) in saved.items():
        scores[m].score, scores[m].driver = score, driver
    return out


def tune_on_calibration_survey(paths, k) -> tuple[dict, str]:
    """The ablation on the calibration survey (a separate synthetic survey): the variant
    with the best mean precision@100 over the modalities is the one applied to the
    evaluation survey (no tuning on the numbers that are reported)."""
    from specsearch.anomaly import ScoreConfig, score_tables
    from specsearch.anomaly.pipeline import screen_tables
    from specsearch.rows import load_source

    tables = load_source(paths["cal_emb"]).tables
    scores = score_tables(tables, config=ScoreConfig(k=k))
    flags = screen_tables(paths["cal_catalog"], tables, scores=scores)
    table = ablation(scores, flags, tables)
    best = max(table, key=lambda key: np.mean([v[0] for v in table[key].values()]))
    return table, best


# ----------------------------------------------------------------------------- hunt

def realised_curve(result_table, true_of, threshold, n_true) -> dict:
    sid = result_table.column("source_id").to_numpy()
    y = np.asarray([true_of.get(int(s), np.nan) < threshold for s in sid])
    p = result_table.column("p_metal_poor").to_numpy()
    tp = np.cumsum(y)
    n = np.arange(1, y.size + 1)
    purity, completeness = tp / n, tp / max(n_true, 1)
    sizes = [s for s in (10, 30, 100, 200, 300, 500, 1000, 2000) if s <= y.size]
    ok = completeness >= 0.8
    return {"n_true": int(n_true),
            "curve": [{"n": s, "purity": float(purity[s - 1]),
                       "completeness": float(completeness[s - 1]),
                       "expected_purity": float(p[:s].mean()),
                       "expected_completeness": float(p[:s].sum() / max(p.sum(), 1e-9))}
                      for s in sizes],
            "purity_at_completeness_0.8": float(purity[ok].max()) if ok.any() else None,
            "p>=0.5": {"n": int((p >= 0.5).sum()),
                       "purity": float(y[p >= 0.5].mean()) if (p >= 0.5).any() else None,
                       "completeness": float(y[p >= 0.5].sum() / max(n_true, 1)),
                       "expected_purity": float(p[p >= 0.5].mean()) if (p >= 0.5).any()
                       else None}}


def bench_hunt(paths, tables, extra_lamost=None):
    from specsearch.rows import load_source
    from specsearch.hunt import HuntConfig, fit_hunt_calibration, hunt

    cal_tables = load_source(paths["cal_emb"]).tables
    cal = fit_hunt_calibration(cal_tables, source=str(paths["cal_emb"]))
    cal.save(paths["results"] / "anomaly_feh_calibration.json")
    out = {"calibration": {m: {"scale": c.scale, "floor": c.floor, "n": c.n,
                               "checks": c.checks} for m, c in cal.modalities.items()}}
    true_of = {}
    for t in tables.values():
        for s, f in zip(t.source_id, truth(t, "feh", np.nan)):
            true_of.setdefault(int(s), float(f) if f is not None else np.nan)
    for thr in (-2.0, -2.5):
        n_true = sum(1 for v in true_of.values() if v < thr)
        for mode in ("lamost", "xp", "any"):
            res = hunt(tables, cal, config=HuntConfig(feh_max=thr, mode=mode, top=3000))
            out[f"feh<{thr}/{mode}"] = realised_curve(res.table, true_of, thr, n_true)
    return cal, out


def embed_files(model, files, modality):
    from specsearch.io.registry import read_spectra
    from specsearch.preprocess import resample

    specs, flux, ivar = [], [], []
    for f in files:
        for s in read_spectra(f, modality=modality):
            fl, iv = resample(s, modality)
            specs.append(s)
            flux.append(fl)
            ivar.append(iv)
    batch = model.embed_numpy(modality, np.stack(flux), np.stack(ivar), with_residual=True)
    return specs, batch


def batch_table(modality, ids, names, batch, label_names, extra=None):
    import pyarrow as pa

    from specsearch.rows import EmbeddingTable

    cols = {"spectrum_id": pa.array(names), "source_id": pa.array(ids, pa.int64()),
            "recon_residual": pa.array(batch.recon_residual.astype(np.float32)),
            "translation_residual": pa.array(batch.translation_residual.astype(np.float32))}
    for j, name in enumerate(batch.label_names):
        cols[f"{name}_pred"] = pa.array(batch.predictions[:, j].astype(np.float32))
        cols[f"{name}_err"] = pa.array(batch.uncertainties[:, j].astype(np.float32))
    cols.update(extra or {})
    return EmbeddingTable(modality, batch.embedding.astype(np.float32), pa.table(cols),
                          tuple(label_names))


def bench_real(model, tables, cal, k) -> dict:
    import csv

    import pyarrow as pa

    from specsearch.anomaly import ScoreConfig, score_modality
    from specsearch.rows import EmbeddingTable
    from specsearch.hunt import HuntConfig, hunt

    out = {}
    labels = {r["miles_id"]: r for r in csv.DictReader(open(REAL / "miles" / "labels.csv"))}
    files = sorted((REAL / "miles" / "spectra").glob("*.fits"))
    specs, batch = embed_files(model, files, "lamost")
    good = np.asarray(batch.good)
    mid = [s.meta.get("miles_id", s.spectrum_id) for s in specs]
    feh = np.asarray([float(labels[m]["feh"]) if m in labels and labels[m]["feh"] else np.nan
                      for m in mid])
    ids = 9_000_000_000_000_000 + np.arange(len(specs))
    miles = batch_table("lamost", ids[good], np.asarray(mid)[good].tolist(),
                        _subset(batch, good), batch.label_names,
                        {"feh": pa.array(feh[good].astype(np.float32))})
    lam = tables["lamost"]
    common = [c for c in miles.meta.column_names if c in lam.meta.column_names]
    mixed = EmbeddingTable("lamost", np.concatenate([lam.vectors, miles.vectors]),
                           pa.concat_tables([lam.meta.select(common),
                                             miles.meta.select(common)],
                                            promote_options="permissive"),
                           lam.label_names)
    for mode, tabs in (("lamost", {"lamost": mixed}), ("any", {**tables, "lamost": mixed})):
        res = hunt(tabs, cal, config=HuntConfig(feh_max=-2.0, mode=mode, top=len(mixed)))
        sid = res.table.column("source_id").to_numpy()
        rank = {int(s): i + 1 for i, s in enumerate(sid)}
        p = res.table.column("p_metal_poor").to_numpy()
        mp = [(m, float(f), rank[int(i)], float(p[rank[int(i)] - 1]))
              for m, f, i, g in zip(mid, feh, ids, good) if g and f < -2.0]
        n_p05 = int((p >= 0.5).sum())
        out[f"miles_vmp_in_hunt/{mode}"] = {
            "n_stars": int(len(sid)), "list_size_p>=0.5": n_p05,
            "n_miles_vmp": len(mp), "in_p>=0.5_list": int(sum(r <= n_p05 for _, _, r, _ in mp)),
            "median_rank": float(np.median([r for _, _, r, _ in mp])) if mp else None,
            "stars": [{"miles_id": m, "feh": f, "rank": r, "p": pp} for m, f, r, pp in mp]}
    out["miles_not_encoded"] = int((~good).sum())
    # Real XP: 2000 sky-patch sources + 4 emission-line objects, scored as one catalog.
    xp_files = [REAL / "gaia_xp" / "xp_continuous_combined_chunk0.fits",
                REAL / "gaia_xp" / "xp_continuous_combined_weiler2023_examples.vot"]
    specs, batch = embed_files(model, xp_files, "xp")
    good = np.asarray(batch.good)
    sid = np.asarray([int(s.source_id) for s in specs])
    special = {int(s.source_id) for s in specs[-4:]}
    xp = batch_table("xp", sid[good], [f"gaia-{s}" for s in sid[good]], _subset(batch, good),
                     batch.label_names)
    sc = score_modality(xp, config=ScoreConfig(k=k, snr_bins=0))
    order = sc.rank()
    rank = {int(xp.source_id[r]): i + 1 for i, r in enumerate(order)}
    out["real_xp_emission_ranks"] = {
        "n_sources": len(xp), "not_encoded": int((~good).sum()),
        "objects": [{"source_id": s, "rank": rank.get(s), "driver": str(sc.driver[
            np.flatnonzero(xp.source_id == s)[0]]) if s in rank else None} for s in special]}
    return out


def _subset(batch, good):
    from dataclasses import replace

    return replace(batch, embedding=batch.embedding[good], good=batch.good[good],
                   predictions=batch.predictions[good], uncertainties=batch.uncertainties[good],
                   recon_residual=batch.recon_residual[good],
                   translation_residual=batch.translation_residual[good],
                   class_prob=None if batch.class_prob is None else batch.class_prob[good])


# ----------------------------------------------------------------------------- figure

def figure(scores, flags, paths, out_dir: Path, variant: str = "") -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from specsearch.anomaly import CandidateConfig, candidate_list
    from specsearch.io.catalog import open_catalog
    from specsearch.io.parquet import list_column_to_numpy
    from specsearch.preprocess import LAMOST_GRID

    s = scores["lamost"]
    pop = np.asarray(truth(s.table, "population"), dtype=object).astype(str)
    art = np.asarray(truth(s.table, "is_artefact", False), dtype=bool)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bins = np.linspace(0, max(np.nanpercentile(s.score, 99.9), 12), 60)
    base = np.isin(pop, ("normal", "binary")) & ~art
    ax.hist(s.score[base], bins=bins, color="0.7", label="normal + binary", log=True)
    for c in RARE_CLASSES:
        sel = (pop == c) & ~art
        if sel.any():
            ax.hist(s.score[sel], bins=bins, histtype="step", lw=1.5, log=True,
                    label=f"{c} ({sel.sum()})")
    ax.hist(s.score[art], bins=bins, histtype="step", ls="--", color="k", log=True,
            label=f"artefacts ({art.sum()})")
    ax.set_xlabel("anomaly score (" + ("-log10 tail probability" if "rank" in variant
                                       else "robust z") + f" of the driving component; "
                  f"variant {variant})")
    ax.set_ylabel("spectra")
    ax.set_title("LAMOST-like synthetic survey: anomaly scores by true population")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    p1 = out_dir / "anomaly_scores.png"
    fig.savefig(p1, dpi=120)
    plt.close(fig)
    top = candidate_list({"lamost": s}, flags, config=CandidateConfig(top=12, n_neighbours=0))
    want = top.column("spectrum_id").to_pylist()
    flux = {}
    for batch in open_catalog(paths["eval_catalog"]).iter_batches(
            "lamost", ["spectrum_id", "flux"]):
        ids = batch.column("spectrum_id").to_pylist()
        hit = [i for i, x in enumerate(ids) if x in want]
        if hit:
            f = list_column_to_numpy(batch.column("flux"))
            flux.update({ids[i]: f[i] for i in hit})
    fig, axes = plt.subplots(4, 3, figsize=(13, 9), sharex=True)
    rows = top.to_pylist()
    for ax, row in zip(axes.ravel(), rows):
        f = flux.get(row["spectrum_id"])
        if f is not None:
            ax.plot(LAMOST_GRID.wavelength, f / np.nanmedian(np.abs(f[f != 0])), lw=0.5)
        ax.set_title(f"#{row['rank']} {row.get('population', '?')} | {row['anomaly_driver']}"
                     f" {row['anomaly_score']:.1f}", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("wavelength (A)")
    fig.suptitle("Top 12 astrophysical anomaly candidates (LAMOST-like, synthetic)")
    fig.tight_layout()
    p2 = out_dir / "anomaly_top12.png"
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return [str(p1), str(p2)]


# ----------------------------------------------------------------------------- main

def main() -> int:
    args = _parse()
    args.data.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from specsearch.anomaly.defaults import DEFAULTS_FILE, save_choice
    from specsearch.rows import load_source
    from specsearch.model import load_model

    model = load_model(args.model)
    step(f"model {model.model_hash}")
    paths = ensure_data(args, model)
    paths["results"] = args.out.parent
    loaded = load_source(paths["eval_index"])
    result: dict = {"machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg(),
                                "python": platform.python_version()},
                    "model_hash": model.model_hash, "n_eval": args.n, "n_cal": args.n_cal,
                    "seed": args.seed, "k": args.k}
    step("scoring (index) and the exact-flat baseline")
    scores, result["scoring"] = bench_scoring(loaded, args.k)
    step("artefact screening")
    flags, result["screening"] = bench_screening(paths, loaded.tables, scores)
    step("anomaly lists (library defaults)")
    result["lists_default"] = bench_lists(scores, flags, loaded.tables)
    step("scoring variants: tuned on the calibration survey, applied to the evaluation one")
    result["ablation_calibration_survey"], best = tune_on_calibration_survey(paths, args.k)
    result["ablation_evaluation_survey"] = ablation(scores, flags, loaded.tables)
    set_name, reference, method = best.split("|")
    for s in scores.values():
        rescore(s, COMPONENT_SETS[set_name], reference, method)
    result["tuned_variant"] = best
    # the model's own scoring choice: copy it beside the model to make it the default
    # of `specsearch anomalies` and the service for this model's embeddings
    choice = save_choice(args.out.parent / DEFAULTS_FILE, model_hash=model.model_hash,
                         components=COMPONENT_SETS[set_name], combine=method,
                         residual_reference=reference,
                         source=f"bench_anomaly.py calibration survey ({args.n_cal} stars, "
                                f"seed {args.seed + 1}): best of {len(COMPONENT_SETS)} "
                                f"component sets x references x combinations")
    step(f"scoring choice for this model: {best} -> {choice}")
    result["lists"] = bench_lists(scores, flags, loaded.tables)
    step("metal-poor hunt")
    cal, result["hunt"] = bench_hunt(paths, loaded.tables)
    step("real spectra (MILES, Gaia XP)")
    if REAL.is_dir():
        result["real"] = bench_real(model, loaded.tables, cal, args.k)
    step("figures")
    result["figures"] = figure(scores, flags, paths, args.out.parent, best)
    result["machine"]["load_avg_end"] = os.getloadavg()
    args.out.write_text(json.dumps(result, indent=1, default=float))
    print_table(result)
    print(f"wrote {args.out}")
    return 0


def print_table(r: dict) -> None:
    s = r["scoring"]
    rates = ", ".join(f"{m} {v:,.0f}/s" for m, v in s["per_s"].items())
    print(f"\nscoring {s['objects']} objects (index backend {s['index_backend']}): {rates} "
          f"(self-join x{s['speedup_selfjoin_vs_exact']:.1f} vs exact); {s['agreement']}")
    sc = r["screening"]
    print(f"screening {sc['spectra_per_s']:,.0f} spectra/s; detected per kind "
          f"{ {k: round(v, 3) for k, v in sc.get('detected_per_kind', {}).items()} }")
    rates = sc.get("false_flag_rate_per_population", {})
    print(f"  false-flag rate { {k: round(v, 4) for k, v in rates.items()} }")
    print(f"\nlists with the tuned variant {r['tuned_variant']}:")
    print(f"{'list':26s} {'P@100':>6} {'P@1000':>7} {'rareP@100':>9} {'art@100':>7} "
          f"{'art@1000':>8}")
    for key, m in r["lists"].items():
        if "/" in key:
            print(f"{key:26s} {m['precision@100']:>6.2f} {m['precision@1000']:>7.3f} "
                  f"{m['rare_precision@100']:>9.2f} {m['artefacts_in_top100']:>7d} "
                  f"{m['artefacts_in_top1000']:>8d}")
    for key, m in r["lists"].items():
        if "/" in key and "astrophysical" in key:
            rec = {c: round(v, 2) for c, v in m["recall@1000"].items()}
            print(f"  recall@1000 {key}: {rec}")
    print(f"\nvariant chosen on the calibration survey: {r['tuned_variant']} (table above); "
          f"P@100/P@1000 per variant on the evaluation survey:")
    for key, v in r["ablation_evaluation_survey"].items():
        cal = r["ablation_calibration_survey"][key]
        print(f"  {key:38s} " + "  ".join(f"{m} {a:.2f}/{b:.3f} (cal {cal[m][0]:.2f})"
                                          for m, (a, b) in v.items()))
    d = r["lists_default"]
    print("library defaults: " + ", ".join(f"{k} P@100 {m['precision@100']:.2f}"
                                           for k, m in d.items() if "/astro" in k))
    print(f"\n{'hunt':18s} {'n_true':>6} {'P@C0.8':>7} {'p>=.5 n':>8} {'purity':>7} "
          f"{'E[pur]':>7} {'compl':>6}")
    for key, h in r["hunt"].items():
        if key.startswith("feh<"):
            q = h["p>=0.5"]
            pc = h["purity_at_completeness_0.8"]
            print(f"{key:18s} {h['n_true']:>6d} {pc if pc is None else round(pc, 3)!s:>7} "
                  f"{q['n']:>8d} {q['purity'] or 0:>7.3f} {q['expected_purity'] or 0:>7.3f} "
                  f"{q['completeness']:>6.3f}")
    for key, v in r.get("real", {}).items():
        if key.startswith("miles_vmp"):
            print(f"{key}: {v['n_miles_vmp']} MILES [Fe/H]<-2 stars, {v['in_p>=0.5_list']} in "
                  f"the p>=0.5 list of {v['list_size_p>=0.5']} (of {v['n_stars']} stars), "
                  f"median rank {v['median_rank']}")
    if "real" in r:
        xp = r["real"]["real_xp_emission_ranks"]
        print(f"real XP emission-line objects among {xp['n_sources']}: {xp['objects']}")


if __name__ == "__main__":
    sys.exit(main())
