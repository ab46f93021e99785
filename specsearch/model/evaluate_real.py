"""Real-data rows of the evaluation: MILES and LAMOST DR1 labelled spectra, the real
multi-visit LAMOST stars and their real Gaia XP spectra.

Spectra are read by the survey readers (:func:`specsearch.io.registry.read_spectra`) and put
on the canonical grid by the ingest code (:func:`specsearch.io.ingest.spectrum_row`: rest
frame from the header redshift, flux-conserving resampling; MILES covers 3540-7410 A, so
its LAMOST-grid pixels beyond 7410 A are masked). Labels: MILES (Cenarro et al. 2007
compilation), LAMOST DR1 (the LAMOST pipeline's own teff/logg/feh, themselves uncertain by
~100-200 K / 0.2-0.3 dex / 0.1-0.2 dex, so the scatter is an upper bound on our error).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from specsearch.errors import SpecsearchError
from specsearch.model.metrics import label_stats

LABELS = ("teff", "logg", "feh")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _to_grid(paths: list[Path]) -> tuple[list[Any], np.ndarray, np.ndarray, list[str]]:
    """Read spectra and put them on the LAMOST grid; (spectra, flux, ivar, skipped)."""
    from specsearch.io.ingest import spectrum_row
    from specsearch.io.registry import read_spectra

    specs, flux, ivar, skipped = [], [], [], []
    for p in paths:
        try:
            for spec in read_spectra(p):
                row = spectrum_row(spec, "lamost")
                specs.append(spec)
                flux.append(np.asarray(row["flux"], np.float32))
                ivar.append(np.asarray(row["ivar"], np.float32))
        except SpecsearchError as exc:
            skipped.append(f"{p.name}: {exc}")
    if not flux:
        return specs, np.zeros((0, 3909), np.float32), np.zeros((0, 3909), np.float32), skipped
    return specs, np.stack(flux), np.stack(ivar), skipped


def _label_block(model, batch, truth: dict[str, np.ndarray], extra_subsets=None
                 ) -> dict[str, Any]:
    out = {}
    for name in LABELS:
        if name not in model.label_names or name not in truth:
            continue
        j = model.label_names.index(name)
        subsets = {"all": batch.good.copy()}
        for k, s in (extra_subsets or {}).items():
            subsets[k] = batch.good & s
        out[name] = {k: dataclasses.asdict(label_stats(batch.predictions[s, j],
                                                       batch.uncertainties[s, j],
                                                       truth[name][s]))
                     for k, s in subsets.items()}
    return out


def _labelled_set(model, spectra_dir: Path, labels_csv: Path, key, note: str,
                  pattern: str, figures_dir: Path | None, name: str) -> dict[str, Any]:
    if not spectra_dir.is_dir() or not labels_csv.is_file():
        return {"skipped": f"{spectra_dir} or {labels_csv} not found"}
    rows = {r[key[0]]: r for r in _read_csv(labels_csv)}
    paths = sorted(spectra_dir.glob(pattern))
    specs, flux, ivar, skipped = _to_grid(paths)
    keys = [key[1](s) for s in specs]
    use = [i for i, k in enumerate(keys) if k in rows]
    if not use:
        return {"skipped": f"no spectrum in {spectra_dir} matched a row of {labels_csv}"}
    flux, ivar = flux[use], ivar[use]
    truth = {n: np.array([_float(rows[keys[i]].get(n)) for i in use]) for n in LABELS}
    batch = model.embed_numpy("lamost", flux, ivar)
    result: dict[str, Any] = {
        "n": len(use), "note": note, "n_unusable": int((~batch.good).sum()),
        "n_unreadable": len(skipped),
        "parameters": _label_block(model, batch, truth, {"feh < -2": truth["feh"] < -2.0}
                                   if np.any(truth["feh"] < -2.0) else None)}
    if figures_dir is not None:
        from specsearch.model.figures import parameter_figure
        figures_dir.mkdir(parents=True, exist_ok=True)
        parameter_figure(figures_dir / f"real_{name}.png", f"{name}: {note}",
                         model.label_names, batch.predictions, truth, batch.good)
    return result


MISSING_SENTINELS = (9999.0, -9999.0, 999.0, -999.0)
"""Values label tables use for 'unknown' (the MILES compilation writes [Fe/H] = 9999)."""


def _float(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return float("nan") if x in MISSING_SENTINELS else x


def _multivisit(model, real: Path) -> dict[str, Any]:
    """Same-star agreement of real repeat LAMOST visits, and cross-modal retrieval of their
    real Gaia XP spectra among the 2000 real XP sources of the same sky patch."""
    pairs_csv = real / "pairs_lamost_xp.csv"
    if not pairs_csv.is_file():
        return {"skipped": f"{pairs_csv} not found"}
    rows = _read_csv(pairs_csv)
    paths = [real / r["lamost_file"] for r in rows]
    specs, flux, ivar, skipped = _to_grid(paths)
    if len(specs) != len(rows):
        return {"skipped": f"unreadable: {skipped}"}
    sid = np.array([int(r["gaia_dr3_source_id"]) for r in rows])
    batch = model.embed_numpy("lamost", flux, ivar)
    emb = batch.embedding
    same, diff = [], []
    for i in range(len(sid)):
        for j in range(i + 1, len(sid)):
            (same if sid[i] == sid[j] else diff).append(float(emb[i] @ emb[j]))
    spread = {}
    for s in np.unique(sid):
        k = sid == s
        if k.sum() >= 2:
            for name in LABELS:
                if name in model.label_names:
                    j = model.label_names.index(name)
                    spread.setdefault(name, []).append(
                        (float(np.std(batch.predictions[k, j])),
                         float(np.mean(batch.uncertainties[k, j]))))
    out: dict[str, Any] = {
        "n_spectra": len(sid), "n_stars": int(np.unique(sid).size),
        "cosine_same_star_mean": float(np.mean(same)) if same else None,
        "cosine_different_star_mean": float(np.mean(diff)) if diff else None,
        "visit_scatter_vs_predicted_error": {k: [list(map(lambda x: round(x, 3), v))
                                                 for v in vals] for k, vals in spread.items()}}
    xp_file = real / "gaia_xp" / "xp_continuous_combined_chunk0.fits"
    if xp_file.is_file():
        out.update(_real_cross_modal(model, xp_file, sid, emb, batch))
    return out


def _real_cross_modal(model, xp_file: Path, sid, emb_l, batch_l) -> dict[str, Any]:
    from specsearch.io.gaia_xp import calibrate, read_xp_continuous

    sampled = calibrate(read_xp_continuous(xp_file))
    flux, ivar = sampled.catalog_flux()
    bx = model.embed_numpy("xp", flux, ivar)
    ranks, param_diff = [], {}
    xp_sid = sampled.source_id
    for i, s in enumerate(sid):
        hit = np.flatnonzero(xp_sid == s)
        if hit.size == 0 or not batch_l.good[i] or not bx.good[hit[0]]:
            continue
        sims = np.where(bx.good, bx.embedding @ emb_l[i], -np.inf)
        ranks.append(int((sims > sims[hit[0]]).sum()) + 1)
        for name in LABELS:
            if name in model.label_names:
                j = model.label_names.index(name)
                param_diff.setdefault(name, []).append(
                    round(float(batch_l.predictions[i, j] - bx.predictions[hit[0], j]), 3))
    return {"xp_pool": int(bx.good.sum()), "xp_partner_rank_per_visit": ranks,
            "lamost_minus_xp_prediction": param_diff}


def evaluate_real(model, real: Path, synthetic_report: dict[str, Any] | None = None, *,
                  figures_dir: Path | None = None) -> dict[str, Any]:
    """All real-data rows (sets whose files are missing are reported as skipped)."""
    if not real.is_dir():
        return {"skipped": f"{real} not found"}
    return {
        "miles": _labelled_set(
            model, real / "miles" / "spectra", real / "miles" / "labels.csv",
            ("miles_id", lambda s: s.spectrum_id), "MILES library, LAMOST grid, masked "
            ">7410 A", "*.fits", figures_dir, "miles"),
        "lamost_dr1": _labelled_set(
            model, real / "lamost" / "dr1" / "spectra", real / "lamost" / "dr1" / "labels.csv",
            ("filename", lambda s: s.meta.get("filename")), "LAMOST DR1, labels from the "
            "LAMOST pipeline", "*.fits", figures_dir, "lamost_dr1"),
        "lamost_multivisit": _multivisit(model, real),
    }
