"""Real-data rows of ``specsearch evaluate --real-data``: parameters, uncertainties, identity
and the metal-poor hunt on every real set of the folder (layout of ``../shared/data/real``).

Every set is split by star (:mod:`specsearch.model.training.real_sets`); parameters, uncertainties
and the hunt are scored on the ``test`` stars only, which ``specsearch finetune`` never
reads (it trains on ``train`` and calibrates on ``cal``); the report says so in ``split``.

The parameter rows are in :mod:`specsearch.model.evaluation.real_parameters`, the identity
rows in :mod:`specsearch.model.evaluation.real_identity`; this module holds the domain and
hunt rows, gathers every row (:func:`evaluate_real`) and scores the real-data goals
(:func:`real_goal_rows`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from specsearch.model.evaluation.evaluate_templates import pyhammer
from specsearch.model.evaluation.real_identity import cross_modal, identity
from specsearch.model.evaluation.real_parameters import (LABELS, labelled_set, real_xp,
                                                         window_ablation)
from specsearch.model.training.real_sets import RealSet, load_all

SPLIT_NOTE = ("scored on the test split of a split by star (SHA-1 of the star key: LAMOST "
              "designation, MILES star, Gaia source_id; repeat-visit stars always test); "
              "finetune reads only train and cal")


def domain(model, sets: dict[str, RealSet]) -> dict[str, Any]:
    """The relative reconstruction error (:mod:`specsearch.model.domain`) on the held-out
    real spectra of each set, and how many of them the model's domain check flags (the
    SDSS type templates' flags are in :func:`pyhammer`'s report, which embeds them)."""
    check = model.domain_check
    out: dict[str, Any] = {"thresholds": None if check is None else check.thresholds}
    for name, s in sets.items():
        if s.modality not in model.modalities:
            continue
        test = s.select(s.in_split("test"))
        if not len(test):
            continue
        b = model.embed_numpy(s.modality, test.flux, test.ivar, with_domain=True)
        v = b.recon_relative[np.isfinite(b.recon_relative)]
        if not v.size:
            continue
        out[name] = {"n": int(v.size), "median": float(np.median(v)),
                     "p99": float(np.quantile(v, 0.99)), "max": float(v.max())}
        if b.out_of_domain is not None:
            out[name]["flagged"] = int(b.out_of_domain.sum())
    return out


def hunt_pool(model, sets: dict[str, RealSet], threshold: float = -2.0) -> dict[str, Any]:
    """The metal-poor hunt over a mixed pool of held-out real spectra (MILES + LAMOST test
    stars): a list twice the number of labelled [Fe/H] < threshold stars, ranked by the
    calibrated P([Fe/H] < threshold) of the model's hunt calibration."""
    from specsearch.hunt.calibration import posterior_summaries
    from specsearch.hunt.hunt import found_agreement
    from specsearch.hunt.pipeline import find_calibration

    parts = [s.select(s.in_split("test")) for k, s in sets.items()
             if s.modality == "lamost" and "feh" in s.labels]
    parts = [p for p in parts if len(p)]
    if not parts:
        return {"skipped": "no labelled test stars"}
    flux = np.concatenate([p.flux for p in parts])
    ivar = np.concatenate([p.ivar for p in parts])
    feh = np.concatenate([p.labels["feh"] for p in parts])
    b = model.embed_numpy("lamost", flux, ivar)
    ok = b.good & np.isfinite(feh)
    j = model.label_names.index("feh")
    # The model's own hunt calibration; without one (a model never calibrated) the
    # posterior uses the heads' uncertainties as they are and a flat prior.
    cal = find_calibration(model.model_hash, model_dir=getattr(model, "path", None))
    fc = cal.for_modality("lamost")
    loglik = fc.loglik(b.predictions[ok, j], b.uncertainties[ok, j])
    p, _, _ = posterior_summaries(cal.posterior(loglik), threshold)
    how = "hunt calibration" if cal.calibrated else "heads' uncertainties (no calibration)"
    truth = feh[ok] < threshold
    n_vmp = int(truth.sum())
    if n_vmp == 0:
        return {"skipped": "no labelled metal-poor test star"}
    order = np.argsort(-p)
    top = order[:2 * n_vmp]
    # A list of 2N holds at most N true members (purity <= 0.5 by construction); the purity
    # that can meet a 70% goal is that of the shortest list reaching 80% completeness.
    found = np.cumsum(truth[order])
    cut = int(np.searchsorted(found, np.ceil(0.8 * n_vmp))) + 1
    return {"n_pool": int(ok.sum()), "n_metal_poor": n_vmp, "list_length": int(top.size),
            "completeness": float(truth[top].sum() / n_vmp),
            "purity": float(truth[top].mean()), "expected_purity": float(p[top].mean()),
            "expected_completeness": float(p[top].sum() / max(p.sum(), 1e-12)),
            "list_length_at_80pct": cut, "purity_at_80pct": float(truth[order[:cut]].mean()),
            "expected_purity_at_80pct": float(p[order[:cut]].mean()),
            # the counting noise of these short lists: is the measured number of members
            # consistent with the calibrated p (two-sided tails of its Poisson-binomial)?
            "agreement_2n": found_agreement(p[top], int(truth[top].sum())),
            "agreement_at_80pct": found_agreement(p[order[:cut]], int(found[cut - 1])),
            "agreement_pool": found_agreement(p, n_vmp),
            "probability": how, "split": "test",
            # the same lists with the prior refitted to this pool (no labels used): the
            # pool mixes MILES and LAMOST test stars, richer in metal-poor stars than the
            # survey the calibration describes
            "adapted_prior": _adapted_hunt(cal, loglik, threshold, truth, order, top, cut,
                                           found, n_vmp)}


def _adapted_hunt(cal, loglik, threshold, truth, order, top, cut, found, n_vmp
                  ) -> dict[str, Any]:
    from specsearch.hunt.calibration import posterior_summaries
    from specsearch.hunt.hunt import found_agreement
    from specsearch.hunt.rank import adapted_calibration

    used, fraction, se, w0 = adapted_calibration(cal, loglik, threshold)
    p, _, _ = posterior_summaries(used.posterior(loglik), threshold)
    return {"prior_fraction": fraction, "prior_fraction_se": se,
            "calibration_fraction": w0, "expected_purity": float(p[top].mean()),
            "expected_purity_at_80pct": float(p[order[:cut]].mean()),
            "agreement_2n": found_agreement(p[top], int(truth[top].sum())),
            "agreement_at_80pct": found_agreement(p[order[:cut]], int(found[cut - 1])),
            "agreement_pool": found_agreement(p, n_vmp)}


def evaluate_real(model, real: Path, synthetic_report: dict[str, Any] | None = None, *,
                  figures_dir: Path | None = None, cache: Path | None = None
                  ) -> dict[str, Any]:
    """All real-data rows (sets whose files are missing are left out)."""
    if not real.is_dir():
        return {"skipped": f"{real} not found"}
    sets = load_all(real, cache)
    out: dict[str, Any] = {"split": SPLIT_NOTE}
    for name in ("lamost_dr10", "lamost_dr1", "miles"):
        if name in sets:
            out[name] = labelled_set(model, sets[name], figures_dir=figures_dir)
    if "lamost_dr10" in sets:
        out["window_ablation_dr10"] = window_ablation(model, sets["lamost_dr10"])
    out["identity"] = identity(model, sets)
    out["cross_modal"] = cross_modal(model, sets)
    out["xp"] = real_xp(model, real)
    out["pyhammer"] = pyhammer(model, real)
    out["domain"] = domain(model, sets)
    out["hunt"] = hunt_pool(model, sets)
    out["goals"] = real_goal_rows(out)
    return out


def _get(d: dict, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def real_goal_rows(real: dict[str, Any]) -> list[dict[str, Any]]:
    """The real-data goals (issues 13 and 14) as rows: what, value, goal, met."""
    rows: list[dict[str, Any]] = []

    def add(what, value, goal, met):
        if value is not None:
            rows.append({"what": what, "value": value, "goal": goal, "met": bool(met)})

    fgk = "FGK S/N>30"
    for label, bias_max, sig_max in (("feh", 0.05, 0.12), ("teff", 50.0, 100.0)):
        s = _get(real, "lamost_dr10", "parameters", label, fgk)
        if s:
            add(f"DR10 vs LASP {fgk}: {label} |offset|", abs(s["bias"]), f"<= {bias_max}",
                abs(s["bias"]) <= bias_max)
            add(f"DR10 vs LASP {fgk}: {label} sigma", s["sigma"], f"<= {sig_max}",
                s["sigma"] <= sig_max)
    s = _get(real, "lamost_dr10", "parameters", "logg", fgk)
    if s:
        add(f"DR10 vs LASP {fgk}: logg sigma", s["sigma"], "<= 0.2", s["sigma"] <= 0.2)
    for label in LABELS:
        s = _get(real, "lamost_dr10", "parameters", label, fgk)
        if s:
            add(f"DR10 {fgk}: {label} z-width", s["z_width"], "0.8-1.25",
                0.8 <= s["z_width"] <= 1.25)
    for label, goal in (("teff", 120.0), ("logg", 0.25), ("feh", 0.12)):
        s = _get(real, "miles", "parameters", label, "all")
        if s:
            add(f"MILES {label} sigma", s["sigma"], f"<= {goal}", s["sigma"] <= goal)
    h = real.get("hunt") or {}
    if "completeness" in h:
        add("real hunt completeness (list = 2 x labelled [Fe/H]<-2)", h["completeness"],
            ">= 0.8", h["completeness"] >= 0.8)
        add("real hunt purity at 80% completeness (a 2N list holds <= 50%)",
            h["purity_at_80pct"], ">= 0.7", h["purity_at_80pct"] >= 0.7)
    sco = _get(real, "xp", "18Sco")
    if sco:
        dt = abs(sco["teff"]["pred"] - sco["teff"]["literature"])
        df = abs(sco["feh"]["pred"] - sco["feh"]["literature"])
        add("18 Sco XP |Teff - literature| (K)", dt, "<= 100", dt <= 100)
        add("18 Sco XP |[Fe/H] - literature|", df, "<= 0.1", df <= 0.1)
    rho = _get(real, "xp", "xp_templates", "spearman_type_vs_teff")
    if rho is not None:
        add("XP templates: Spearman(type, Teff)", rho, "Teff order (~1)", rho >= 0.98)
    for name in ("lamost_dr10", "lamost_dr8"):
        e = _get(real, "identity", name, "embedding", "top1")
        r = _get(real, "identity", name, "raw_pixels", "top1")
        if e is not None:
            add(f"{name} repeat visits top-1 (pool: all real LAMOST)", e,
                ">= 0.9" if name == "lamost_dr10" else ">= 2x raw", e >= 0.9 if name ==
                "lamost_dr10" else e >= 2 * (r or 0))
            if r is not None:
                add(f"{name} embedding / raw-pixel top-1", e / r if r else float("inf"),
                    ">= 2", r == 0 and e > 0 or (r > 0 and e / r >= 2))
        # with identity vectors: the same-star search re-ranks by both cosines
        i = _get(real, "identity", name, "embedding+identity", "top1")
        if i is not None:
            add(f"{name} repeat visits top-1, embedding + identity vectors", i,
                ">= 0.9" if name == "lamost_dr10" else ">= 2x raw", i >= 0.9 if name ==
                "lamost_dr10" else i >= 2 * (r or 0))
    ranks = _get(real, "cross_modal", "partner_rank_per_star")
    if ranks:
        worst = max(ranks.values())
        add("real LAMOST star -> own XP: worst rank of 3 stars", worst, "<= 10", worst <= 10)
    return rows
