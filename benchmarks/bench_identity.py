"""Identity retrieval (issue 14): does the embedding tell a star from similar stars?

One run measures the embedding and a baseline of the same run on every same-star task:

1. **synthetic repeat visits**: ``--n-synth`` held-out stars (own seed, natural population
   mix) made with the survey's building blocks (labels, model spectra, extinction, XP),
   each observed twice by the LAMOST-like instrument with independent draws (S/N uniform
   in 10-100, noise, RV residual, telluric residual, flux calibration) and twice by Gaia
   XP (independent coefficient noise). Query = visit A, gallery = every visit B: rank of
   the star's own other visit (1 = top). Baseline: raw pixels (cosine of
   continuum-normalised pixels 4000-5600 A,
   :func:`specsearch.model.evaluation.real_identity.raw_pixels`); for XP, cosine of the
   sampled spectrum divided by its median (SED shape).
2. **noise invariance**: all LAMOST visits pooled, exact cosine k-NN; Spearman rho between
   a query's S/N and the median S/N of its 10 nearest neighbours (itself and its other
   visit excluded).
3. **synthetic cross-modal**: LAMOST visit A vs the same star's XP visit A; partner top-1 /
   top-10 both ways, and the fraction of the top-10 within 150 K, 0.3 dex logg, 0.15 dex
   [Fe/H] of the query's true labels. Baseline: nearest neighbours by the heads' predicted
   (teff, logg, feh), each scaled by its tolerance.
4. **ceilings** (:mod:`identity_ceiling`, ``--ceiling-n`` stars of their own): LAMOST->XP
   partner top-1 of idealised searchers that know the star's noiseless XP spectrum exactly,
   up to an SED slope/curvature known to the synthetic or to the real LAMOST calibration
   scatter, or up to a free one, next to the embedding on the same stars. And on task 1's
   own stars (``--no-visit-ceiling`` skips it), the LAMOST other-visit ceiling
   (:func:`identity_ceiling.visit_ceiling`): searchers that know every star's noiseless
   spectrum, on a noise-only query, on two noisy visits, and on the observed query with its
   systematics modelled.
5. **real**: :func:`specsearch.model.evaluation.real_identity.identity` (DR10 and DR8
   repeat visits among every real LAMOST spectrum, embedding vs raw pixels) and
   :func:`specsearch.model.evaluation.real_identity.cross_modal` (each real LAMOST visit's
   own Gaia XP among the real XP sky patch).

Usage:
  python benchmarks/bench_identity.py                        # shipped model, n = 10000
  python benchmarks/bench_identity.py --model models/new --real-cache /tmp/real.npz
Writes benchmarks/results/identity.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from identity_ceiling import visit_ceiling, xp_partner_ceilings  # noqa: E402
from identity_tasks import (  # noqa: E402
    K_NEIGHBOURS, SNR_RANGE, VISITS, agreement_ceiling, agreement_reranked, cross_modal_synth,
    iter_visit_batches, label_vectors, partner_ranks, rank_summary, reranked_partner_ranks,
    snr_neighbour_rho, unit, xp_raw)

from specsearch.query.identity import RERANK_MIN, rerank_window  # noqa: E402


# ----------------------------------------------------------------------------- the run

SNR_BINS = ((10.0, 20.0), (20.0, 40.0), (40.0, 100.0))
"""Query S/N bins of the per-S/N rows of the synthetic LAMOST visit task."""

@dataclass
class Row:
    """One table row: the embedding, the baseline of the same run, and the goal."""

    task: str
    embedding: float | str
    baseline: float | str = "—"
    goal: str = "—"
    met: bool | None = None
    kind: str = "fraction"
    """``fraction`` (higher is better: the ratio is shown), ``rank``, ``rho`` or ``snr``."""

    @property
    def ratio(self) -> float | None:
        if self.kind == "fraction" and isinstance(self.embedding, float) \
                and isinstance(self.baseline, float) and self.baseline > 0:
            return self.embedding / self.baseline
        return None

    def fmt(self, v: float | str) -> str:
        if isinstance(v, str):
            return v
        return {"fraction": "{:.3f}", "rank": "{:g}", "rho": "{:+.3f}",
                "snr": "{:.1f}"}[self.kind].format(v)


def format_table(rows: list[Row]) -> str:
    """Markdown table: task | embedding | baseline | ratio | goal."""
    lines = ["| task | embedding | baseline | ratio | goal |", "|---|---:|---:|---:|---|"]
    for r in rows:
        met = "" if r.met is None else (" (met)" if r.met else " (**not met**)")
        ratio = "—" if r.ratio is None else f"{r.ratio:.2f}x"
        lines.append(f"| {r.task} | {r.fmt(r.embedding)} | {r.fmt(r.baseline)} | {ratio} | "
                     f"{r.goal}{met} |")
    return "\n".join(lines)


def step(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Stopwatch:
    """Wall and CPU seconds (all threads of the process) per stage, summed over entries:
    on a shared machine the CPU seconds are the stable part."""

    wall_s: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall_s[name] = self.wall_s.get(name, 0.0) + time.perf_counter() - w
            self.cpu_s[name] = self.cpu_s.get(name, 0.0) + time.process_time() - c

    def summary(self) -> str:
        return ", ".join(f"{k} {v:.0f}/{self.cpu_s[k]:.0f}" for k, v in self.wall_s.items())


def synthetic_tasks(model, n: int, seed: int, clock: Stopwatch, *,
                    visit_ceiling_on: bool = True) -> dict[str, Any]:
    """Generate, embed and score the synthetic tasks (1-3 of the module doc), and with
    ``visit_ceiling_on`` the other-visit ceiling on the same stars (4)."""
    from specsearch.model.evaluation.real_identity import raw_pixels
    from specsearch.preprocess import grid_for

    keep: dict[str, list[np.ndarray]] = {}

    def add(key: str, value: np.ndarray) -> None:
        keep.setdefault(key, []).append(value)

    batches = iter_visit_batches(n, seed, with_truth=visit_ceiling_on)
    while True:
        with clock.stage("synth_generation"):
            vb = next(batches, None)
        if vb is None:
            break
        with clock.stage("synth_embedding"):
            for v, tag in enumerate(VISITS):
                bl = model.embed_numpy("lamost", vb.lamost_flux[v], vb.lamost_ivar[v])
                bx = model.embed_numpy("xp", vb.xp_flux[v], vb.xp_ivar[v])
                add(f"emb_lamost_{tag}", bl.embedding)
                if model.has_identity("lamost"):
                    iv = model.identity_numpy("lamost", vb.lamost_flux[v], vb.lamost_ivar[v])
                    add(f"id_lamost_{tag}", iv)
                    add(f"embid_lamost_{tag}", np.c_[unit(bl.embedding), iv])
                add(f"emb_xp_{tag}", bx.embedding)
                add(f"good_lamost_{tag}", bl.good)
                add(f"good_xp_{tag}", bx.good)
                add(f"snr_{tag}", vb.lamost_snr[v])
                if v == 0:
                    add("pred_lamost", bl.predictions)
                    add("pred_xp", bx.predictions)
                    add("err_lamost", bl.uncertainties)
                    add("err_xp", bx.uncertainties)
        with clock.stage("synth_raw_pixels"):
            for v, tag in enumerate(VISITS):
                add(f"raw_lamost_{tag}", raw_pixels(vb.lamost_flux[v], vb.lamost_ivar[v]))
                add(f"raw_xp_{tag}", xp_raw(vb.xp_flux[v]))
        if vb.lamost_truth is not None:
            add("truth", vb.lamost_truth)
            add("flux_a", vb.lamost_flux[0])
            add("ivar_a", vb.lamost_ivar[0])
            add("ivar_b", vb.lamost_ivar[1])
        for k, val in vb.labels.items():
            add(f"label_{k}", val)
        step(f"synthetic stars: {sum(len(x) for x in keep['snr_a'])}/{n}")
    a = {k: np.concatenate(v) for k, v in keep.items()}
    lab = {k[6:]: v for k, v in a.items() if k.startswith("label_")}

    with clock.stage("synth_visit_retrieval"):
        e = {k: unit(a[k]) for k in a if k.startswith(("emb_", "raw_", "id_", "embid_"))}
        lamost_kinds = [("embedding", "emb"), ("raw_pixels", "raw")]
        if "id_lamost_a" in e:      # the model's identity vectors, alone and with the embedding
            lamost_kinds += [("identity", "id"), ("embedding+identity", "embid")]
        out: dict[str, Any] = {"n_stars": n, "seed": seed, "snr_range": list(SNR_RANGE),
                               "n_unusable": {k[5:]: int((~a[k]).sum()) for k in a
                                              if k.startswith("good_")}}
        kinds = {"lamost": lamost_kinds, "xp": [("embedding", "emb"), ("raw_pixels", "raw")]}
        ranks = {(mod, kind): partner_ranks(e[f"{kind}_{mod}_a"], e[f"{kind}_{mod}_b"])
                 for mod, ks in kinds.items() for _, kind in ks}
        if "id_lamost_a" in e:      # what the search engine returns: its top-50 re-rank
            ranks["lamost", "engine"] = reranked_partner_ranks(
                e["emb_lamost_a"], e["emb_lamost_b"], e["id_lamost_a"], e["id_lamost_b"],
                RERANK_MIN)
            lamost_kinds.append(("engine re-rank", "engine"))
        for mod, ks in kinds.items():
            out[f"{mod}_visits"] = {name: rank_summary(ranks[mod, kind]) for name, kind in ks}
        # by the query's S/N: how much of the miss is information the noise took away
        out["lamost_visits_by_query_snr"] = {
            f"{lo:g}-{hi:g}": {name: rank_summary(ranks["lamost", kind][sel])
                               for name, kind in lamost_kinds}
            for lo, hi in SNR_BINS
            if (sel := (a["snr_a"] >= lo) & (a["snr_a"] < hi)).any()}
    if "truth" in a:
        with clock.stage("synth_visit_ceiling"):
            ceil = visit_ceiling(a.pop("truth"), a.pop("flux_a"), a.pop("ivar_a"),
                                 a.pop("ivar_b"), grid_for("lamost").wavelength,
                                 seed=seed + 1)
            ceil["embedding"] = ranks["lamost", "emb"]
            out["lamost_visit_ceiling"] = {
                "all": {k: rank_summary(r) for k, r in ceil.items()},
                **{f"{lo:g}-{hi:g}": {k: rank_summary(r[sel]) for k, r in ceil.items()}
                   for lo, hi in SNR_BINS
                   if (sel := (a["snr_a"] >= lo) & (a["snr_a"] < hi)).any()}}
    with clock.stage("synth_noise_knn"):
        snr = np.concatenate([a["snr_a"], a["snr_b"]])
        partner = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
        stack = {kind: np.vstack([e[f"{kind}_lamost_a"], e[f"{kind}_lamost_b"]])
                 for _, kind in lamost_kinds if kind != "engine"}
        out["noise_invariance"] = {
            name: (snr_neighbour_rho(stack["emb"], snr, partner, identity=stack["id"],
                                     window=RERANK_MIN) if kind == "engine"
                   else snr_neighbour_rho(stack[kind], snr, partner))
            for name, kind in lamost_kinds}
    with clock.stage("synth_cross_modal"):
        names = model.label_names
        true = np.stack([lab[k] for k in ("teff", "logg", "feh")], 1)
        tv = label_vectors(true, ("teff", "logg", "feh"))
        out["cross_modal"] = {
            "embedding": cross_modal_synth((e["emb_lamost_a"],) * 2, (e["emb_xp_a"],) * 2,
                                           lab),
            "predicted_labels": cross_modal_synth(label_vectors(a["pred_lamost"], names),
                                                  label_vectors(a["pred_xp"], names), lab),
            # the ceiling: neighbours by the true labels (how many stars lie within tolerance)
            "true_labels_ceiling": cross_modal_synth(tv, tv, lab)}
        # what the engine returns: the embedding's top window re-ranked by the agreement
        # of the heads' predicted parameters (specsearch.query.agreement)
        window = rerank_window(K_NEIGHBOURS, 10_000)
        out["cross_modal"]["engine_rerank"] = {
            "lamost_to_xp": agreement_reranked(
                e["emb_lamost_a"], e["emb_xp_a"], a["pred_lamost"], a["err_lamost"],
                a["pred_xp"], a["err_xp"], names, lab, window),
            "xp_to_lamost": agreement_reranked(
                e["emb_xp_a"], e["emb_lamost_a"], a["pred_xp"], a["err_xp"],
                a["pred_lamost"], a["err_lamost"], names, lab, window)}
        # what a searcher reading the heads can reach: one side known exactly, the other
        # only through its predictions and uncertainties
        cols = [names.index(k) for k in ("teff", "logg", "feh")]
        pe = {m: (a[f"pred_{m}"][:, cols], a[f"err_{m}"][:, cols]) for m in ("lamost", "xp")}
        out["cross_modal"]["predictions_ceiling"] = {
            "lamost_to_xp": {"query_predicted": agreement_ceiling(true, *pe["lamost"], lab,
                                                                  query_side=True),
                             "gallery_predicted": agreement_ceiling(true, *pe["xp"], lab,
                                                                    query_side=False)},
            "xp_to_lamost": {"query_predicted": agreement_ceiling(true, *pe["xp"], lab,
                                                                  query_side=True),
                             "gallery_predicted": agreement_ceiling(true, *pe["lamost"], lab,
                                                                    query_side=False)}}
    return out


def real_tasks(model, real: Path, cache: Path | None, clock: Stopwatch) -> dict[str, Any]:
    """Task 4: the real identity and cross-modal rows of ``specsearch evaluate``."""
    from specsearch.model.evaluation.real_identity import cross_modal, identity
    from specsearch.model.training.real_sets import load_all

    if not real.is_dir():
        return {"skipped": f"{real} not found"}
    with clock.stage("real_load"):
        sets = load_all(real, cache)
    with clock.stage("real_tasks"):
        return {"identity": identity(model, sets), "cross_modal": cross_modal(model, sets)}


def ceiling_rows(ceil: dict[str, Any]) -> list[Row]:
    """Embedding vs each ceiling on the same stars (the ratio is the fraction reached)."""
    if not ceil:
        return []
    n, e = ceil["n_stars"], ceil["embedding"]
    rows = []
    for key, what in (("exact", "noiseless XP spectrum known up to scale"),
                      ("sed_known", "... up to a 3%/2% SED slope/curvature (SED-keeping "
                                    "LAMOST input)"),
                      ("sed_real", "... up to an 11%/3% SED slope/curvature (SED-keeping "
                                   "input at real LAMOST's calibration scatter)"),
                      ("sed_free", "... up to a free SED slope/curvature (continuum-"
                                   "normalised LAMOST input)")):
        rows.append(Row(f"synth LAMOST->XP partner top-1 among {n:,}, baseline = ceiling: "
                        f"{what}", e["top1"], ceil[key]["top1"]))
    return rows


ID_KINDS = {"identity": "identity vectors", "embedding+identity": "embedding+identity vectors",
            "engine re-rank": f"the engine's re-rank (embedding top {RERANK_MIN} by "
                              f"embedding+identity)"}
"""The identity rows of the table: the vectors alone, their cosine averaged with the
embedding's over every star, and what the search engine returns."""


def table_rows(syn: dict[str, Any], real: dict[str, Any]) -> list[Row]:
    """The table of the run (embedding vs the same run's baseline, with the issue's goals)."""
    n = syn["n_stars"]
    rows = []
    for mod, label, goal1 in (("lamost", "LAMOST", 0.95), ("xp", "XP", None)):
        e, r = syn[f"{mod}_visits"]["embedding"], syn[f"{mod}_visits"]["raw_pixels"]
        row = Row(f"synth {label} other visit top-1 among {n:,}", e["top1"], r["top1"],
                  (f">= {goal1} and " if goal1 else "") + ">= 2x baseline")
        row.met = e["top1"] >= (goal1 or 0.0) and (r["top1"] == 0 or row.ratio >= 2.0)
        rows += [row,
                 Row(f"synth {label} other visit top-5", e["top5"], r["top5"]),
                 Row(f"synth {label} other visit median rank", e["median_rank"],
                     r["median_rank"], kind="rank")]
    lv = syn["lamost_visits"]
    for kind in ID_KINDS:
        if kind in lv:
            row = Row(f"synth LAMOST other visit top-1 among {n:,}, {ID_KINDS[kind]}",
                      lv[kind]["top1"], lv["raw_pixels"]["top1"], ">= 0.95 and >= 2x baseline")
            row.met = lv[kind]["top1"] >= 0.95 and row.ratio >= 2.0
            rows += [row, Row(f"synth LAMOST other visit median rank, {ID_KINDS[kind]}",
                              lv[kind]["median_rank"], lv["raw_pixels"]["median_rank"],
                              kind="rank")]
    for tag, got in syn.get("lamost_visits_by_query_snr", {}).items():
        for kind in ("embedding", *ID_KINDS):
            if kind in got:
                what = "" if kind == "embedding" else f", {ID_KINDS[kind]}"
                rows.append(Row(f"synth LAMOST other visit top-1, query S/N {tag} "
                                f"(n={got[kind]['n']:,}){what}", got[kind]["top1"],
                                got["raw_pixels"]["top1"]))
    for tag, got in syn.get("lamost_visit_ceiling", {}).items():
        what = (f"among {n:,}" if tag == "all"
                else f"query S/N {tag} (n={got['embedding']['n']:,})")
        for key, how in (("noise_only", "noise-only query vs the noiseless spectra"),
                         ("bayes_noisy", "both visits noisy, no systematics, Bayes with the "
                                         "stars' spectra known"),
                         ("observed_poly", "the observed query vs the noiseless spectra, "
                                           "continuum fitted, tellurics masked")):
            rows.append(Row(f"synth LAMOST other visit top-1 {what}, baseline = ceiling: "
                            f"{how}", got["embedding"]["top1"], got[key]["top1"]))
    ne, nr = syn["noise_invariance"]["embedding"], syn["noise_invariance"]["raw_pixels"]
    rows.append(Row("synth LAMOST: Spearman rho(S/N, 10 neighbours' median S/N)", ne["rho"],
                    nr["rho"], "abs <= 0.1", abs(ne["rho"]) <= 0.1, kind="rho"))
    for kind in ID_KINDS:
        if (ni := syn["noise_invariance"].get(kind)) is not None:
            rows.append(Row(f"synth LAMOST: Spearman rho(S/N, 10 neighbours' median S/N), "
                            f"{ID_KINDS[kind]}", ni["rho"], nr["rho"], "abs <= 0.1",
                            abs(ni["rho"]) <= 0.1, kind="rho"))
    for tag, key in (("< 20", "lt_20"), (">= 80", "ge_80")):
        k = f"neighbour_median_snr_query_snr_{key}"
        rows.append(Row(f"synth LAMOST: neighbours' median S/N, queries S/N {tag}",
                        ne[k], nr[k], kind="snr"))
    ce, cl = syn["cross_modal"]["embedding"], syn["cross_modal"]["predicted_labels"]
    ceiling = syn["cross_modal"]["true_labels_ceiling"]["lamost_to_xp"]
    for way, label in (("lamost_to_xp", "LAMOST->XP"), ("xp_to_lamost", "XP->LAMOST")):
        rows += [Row(f"synth {label} partner top-1 among {n:,}", ce[way]["top1"],
                     cl[way]["top1"], ">= 0.40", ce[way]["top1"] >= 0.40),
                 Row(f"synth {label} partner top-10", ce[way]["top10"], cl[way]["top10"]),
                 Row(f"synth {label} top-10 within 150 K / 0.3 / 0.15 dex (ceiling "
                     f"{ceiling['label_agreement_top10']['fraction_within']:.2f})",
                     ce[way]["label_agreement_top10"]["fraction_within"],
                     cl[way]["label_agreement_top10"]["fraction_within"], ">= 0.90",
                     ce[way]["label_agreement_top10"]["fraction_within"] >= 0.90)]
        er = syn["cross_modal"].get("engine_rerank", {}).get(way)
        if er is not None:      # the engine's re-rank by parameter agreement
            within = er["label_agreement_top10"]["fraction_within"]
            rows += [Row(f"synth {label} partner top-1, engine re-rank by parameter agreement",
                         er["top1"], cl[way]["top1"], ">= 0.40", er["top1"] >= 0.40),
                     Row(f"synth {label} top-10 within tolerance, engine re-rank by "
                         f"parameter agreement", within,
                         cl[way]["label_agreement_top10"]["fraction_within"], ">= 0.90",
                         within >= 0.90)]
        pc = syn["cross_modal"].get("predictions_ceiling", {}).get(way)
        if pc is not None:
            side = label.split("->")
            for key, how in (("query_predicted", f"the {side[0]} query known by its "
                                                 f"predictions, the gallery's true labels"),
                             ("gallery_predicted", f"the query's true labels, the {side[1]} "
                                                   f"gallery known by its predictions")):
                rows.append(Row(f"synth {label} top-10 within tolerance, baseline = ceiling: "
                                f"{how}", ce[way]["label_agreement_top10"]["fraction_within"],
                                pc[key]["fraction_within"]))
    rows += ceiling_rows(syn.get("ceilings", {}))
    ident = real.get("identity", {})
    for name, label in (("lamost_dr10", "DR10"), ("lamost_dr8", "DR8")):
        got = ident.get(name)
        if not got or not got.get("embedding", {}).get("n"):
            continue
        e, r = got["embedding"], got["raw_pixels"]
        row = Row(f"real {label} other visit top-1 (n={e['n']}, pool {ident['pool']:,})",
                  e["top1"], r["top1"], ">= 0.90 and >= 2x baseline")
        row.met = e["top1"] >= 0.90 and (r["top1"] == 0 or row.ratio >= 2.0)
        rows += [row, Row(f"real {label} other visit top-5", e["top5"], r["top5"]),
                 Row(f"real {label} other visit median rank", e["median_rank"],
                     r["median_rank"], kind="rank")]
        for kind in ("identity", "embedding+identity"):
            if (x := got.get(kind)) and x.get("n"):
                row = Row(f"real {label} other visit top-1, {kind} vectors", x["top1"],
                          r["top1"], ">= 0.90 and >= 2x baseline")
                row.met = x["top1"] >= 0.90 and (r["top1"] == 0 or row.ratio >= 2.0)
                rows += [row, Row(f"real {label} other visit top-5, {kind} vectors",
                                  x["top5"], r["top5"])]
    cm = real.get("cross_modal", {})
    if cm.get("partner_rank_per_star"):
        ranks = cm["partner_rank_per_star"]
        rows.append(Row(f"real LAMOST star -> own XP among {cm['xp_pool']:,}: rank per star",
                        ", ".join(str(v) for v in ranks.values()), "—", "each <= 10",
                        all(v <= 10 for v in ranks.values())))
    if cm.get("partner_rank_per_star_engine"):
        ranks = cm["partner_rank_per_star_engine"]
        rows.append(Row(f"real LAMOST star -> own XP among {cm['xp_pool']:,}: rank per star, "
                        f"the engine's search by source_id (best visit, parameter re-rank)",
                        ", ".join(str(v) for v in ranks.values()), "—", "each <= 10",
                        all(v <= 10 for v in ranks.values())))
    return rows


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model directory (default: shipped)")
    p.add_argument("--real-data", type=Path, default=ROOT.parent / "shared" / "data" / "real")
    p.add_argument("--real-cache", type=Path, default=None,
                   help=".npz cache of the real sets (written on first use)")
    p.add_argument("--n-synth", type=int, default=10_000, help="synthetic stars")
    p.add_argument("--seed", type=int, default=14_014, help="seed of the synthetic stars")
    p.add_argument("--ceiling-n", type=int, default=2000,
                   help="stars of the cross-modal ceiling rows (0: skip them)")
    p.add_argument("--no-visit-ceiling", action="store_true",
                   help="skip the other-visit ceiling rows (~1 min at n = 10,000)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results"
                   / "identity.json")
    args = p.parse_args(argv)
    if args.n_synth < K_NEIGHBOURS + 2:
        p.error(f"--n-synth must be >= {K_NEIGHBOURS + 2}, got {args.n_synth}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import torch
    from threadpoolctl import threadpool_limits

    from specsearch.fsutil import write_json_atomic
    from specsearch.model import load_model

    torch.set_num_threads(args.threads)
    load_before = list(os.getloadavg())
    clock = Stopwatch()
    with threadpool_limits(args.threads), clock.stage("total"):
        model = load_model(args.model)
        step(f"model {model.model_hash[:12]} ({model.path}); {args.n_synth:,} stars, "
             f"seed {args.seed}, {args.threads} threads")
        syn = synthetic_tasks(model, args.n_synth, args.seed, clock,
                              visit_ceiling_on=not args.no_visit_ceiling)
        if args.ceiling_n:
            step(f"cross-modal ceilings among {args.ceiling_n:,}")
            with clock.stage("synth_ceilings"):
                syn["ceilings"] = xp_partner_ceilings(model, args.ceiling_n)
        step("real tasks")
        real = real_tasks(model, args.real_data, args.real_cache, clock)
    rows = table_rows(syn, real)
    table = format_table(rows)
    print(f"model {model.model_hash[:12]}; baseline: raw pixels (same-star rows), heads' "
          f"predicted labels (synthetic cross-modal rows)")
    print(table)
    print(f"seconds (wall/CPU, {args.threads} threads): {clock.summary()}")
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
           "load_average_before": load_before, "load_average_after": list(os.getloadavg()),
           "model": str(model.path), "model_hash": model.model_hash,
           "threads": args.threads, "wall_s": clock.wall_s,
           "cpu_s": clock.cpu_s, "synthetic": syn, "real": real,
           "table": [{"task": r.task, "embedding": r.embedding, "baseline": r.baseline,
                      "ratio": r.ratio, "goal": r.goal, "met": r.met} for r in rows]}
    write_json_atomic(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
