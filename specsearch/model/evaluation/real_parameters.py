"""Parameter rows of the real-data report: the labels of each real labelled set's test stars
(:func:`labelled_set`), the shift of each label when one wavelength window is masked
(:func:`window_ablation`), and the real Gaia XP spectra (:func:`real_xp`: 18 Sco against the
literature, the XP dwarf templates' Teff order).

Labels: LAMOST DR10/DR1 carry the LAMOST pipeline's (LASP) values, themselves uncertain by
~50-150 K / 0.1-0.2 dex / 0.05-0.15 dex, so the scatter is an upper bound on the model's
error; MILES the Cenarro et al. (2007) compilation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from specsearch.model.evaluation.metrics import label_stats, robust_sigma
from specsearch.model.training.real_sets import RealSet
from specsearch.preprocess import grid_for

LABELS = ("teff", "logg", "feh")
WINDOWS_A = ((3700, 4500), (4500, 5500), (5500, 6500), (6500, 7400), (7400, 9100),
             (6800, 9100), (3700, 4400), (3700, 5000), (3700, 5700))
"""Windows masked one at a time; (7400, 9100) and (6800, 9100) are also the coverage of
spectra that stop at 7400 A (MILES) or 6800 A (many libraries and slit spectra), the last
three that of spectra without their blue end (a failed blue arm, another instrument's red
arm), which the domain check's coverage rule flags from less than half of 3850-5000 A."""
SCO18 = {"teff": 5823.0, "logg": 4.45, "feh": 0.054}
"""18 Sco, the solar twin (Melendez et al. 2014)."""


def _stats(model, batch, truth: dict[str, np.ndarray], subsets: dict[str, np.ndarray]
           ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in LABELS:
        if name not in model.label_names or name not in truth:
            continue
        j = model.label_names.index(name)
        out[name] = {k: dataclasses.asdict(label_stats(batch.predictions[s & batch.good, j],
                                                       batch.uncertainties[s & batch.good, j],
                                                       truth[name][s & batch.good]))
                     for k, s in subsets.items() if (s & batch.good).any()}
    return out


def _subsets(s: RealSet) -> dict[str, np.ndarray]:
    n = len(s)
    teff = s.labels.get("teff", np.full(n, np.nan))
    feh = s.labels.get("feh", np.full(n, np.nan))
    snr = s.snr if s.snr is not None else np.full(n, np.nan)
    fgk = (teff >= 4000) & (teff < 7000)
    sub = {"all": np.ones(n, bool), "FGK S/N>30": fgk & (snr > 30),
           "S/N<20": snr < 20, "S/N 20-50": (snr >= 20) & (snr < 50), "S/N>=50": snr >= 50,
           "Teff<5000": teff < 5000, "Teff 5000-6000": (teff >= 5000) & (teff < 6000),
           "Teff 6000-7000": (teff >= 6000) & (teff < 7000), "Teff>=7000": teff >= 7000,
           "feh<-2": feh < -2.0}
    return {k: v for k, v in sub.items() if v.any()}


def labelled_set(model, s: RealSet, *, figures_dir: Path | None = None) -> dict[str, Any]:
    """Parameters of one real labelled set on its test stars."""
    t = s.select(s.in_split("test"))
    if not len(t):
        return {"skipped": f"{s.name}: no test stars"}
    batch = model.embed_numpy(t.modality, t.flux, t.ivar)
    result: dict[str, Any] = {"n": len(t), "n_stars": int(np.unique(t.star).size),
                              "split": "test", "n_unusable": int((~batch.good).sum()),
                              "parameters": _stats(model, batch, t.labels, _subsets(t))}
    if figures_dir is not None:
        from specsearch.model.evaluation.figures import parameter_figure
        figures_dir.mkdir(parents=True, exist_ok=True)
        parameter_figure(figures_dir / f"real_{s.name}.png", f"{s.name} (test stars)",
                         model.label_names, batch.predictions, t.labels, batch.good)
    return result


def window_ablation(model, s: RealSet) -> dict[str, Any]:
    """Median shift of each label when one wavelength window is masked (ivar = 0), and the
    bias, robust sigma and z-width against the labels after, and the share the domain check
    flags, on the FGK S/N > 30 test stars: which windows move which label, and how a
    spectrum without its red or its blue end reads."""
    t = s.select(s.in_split("test"))
    sub = _subsets(t).get("FGK S/N>30")
    if sub is None or sub.sum() < 10:
        return {"skipped": "fewer than 10 FGK S/N>30 test stars"}
    t = t.select(sub)
    wave = grid_for("lamost").wavelength
    base = model.embed_numpy("lamost", t.flux, t.ivar)
    out: dict[str, Any] = {"n": len(t)}
    for lo, hi in WINDOWS_A:
        iv = t.ivar.copy()
        iv[:, (wave >= lo) & (wave < hi)] = 0.0
        b = model.embed_numpy("lamost", t.flux, iv, with_domain=True)
        ok = base.good & b.good
        row = {}
        for name in LABELS:
            if name in model.label_names:
                j = model.label_names.index(name)
                row[f"{name}_shift"] = float(np.median(b.predictions[ok, j] -
                                                       base.predictions[ok, j]))
                if name in t.labels:
                    resid = b.predictions[ok, j] - t.labels[name][ok]
                    row[f"{name}_bias"] = float(np.nanmedian(resid))
                    row[f"{name}_sigma"] = robust_sigma(resid)
                    row[f"{name}_z"] = robust_sigma(resid / b.uncertainties[ok, j])
        if b.out_of_domain is not None:     # the share the domain check flags
            row["flagged"] = float(np.mean(b.out_of_domain[ok]))
        out[f"mask {lo}-{hi} A"] = row
    return out


def real_xp(model, real: Path) -> dict[str, Any]:
    """18 Sco's real XP spectrum vs literature, and the real XP dwarf templates' Teff order."""
    from scipy.stats import spearmanr

    from specsearch.model.training.real_sets import read_to_grid

    out: dict[str, Any] = {}
    sco = real / "gaia_xp" / "archive_format" / "18Sco-XP-spectra.csv"
    if sco.is_file():
        _, flux, ivar, skipped = read_to_grid([sco], "xp")
        if len(flux):
            b = model.embed_numpy("xp", flux[:1], ivar[:1])
            out["18Sco"] = {n: {"pred": float(b.predictions[0, model.label_names.index(n)]),
                                "err": float(b.uncertainties[0, model.label_names.index(n)]),
                                "literature": v}
                            for n, v in SCO18.items() if n in model.label_names}
    tdir = real / "gaia_xp" / "spt_templates" / "templates"
    if tdir.is_dir():
        order = "OBAFGKML"
        paths = sorted(tdir.glob("Gaia_template_*V.dat"),
                       key=lambda p: (order.index(p.stem[14]), int(p.stem[15])))
        flux, ivar = read_ipac_xp(paths)
        if len(flux) == len(paths) and "teff" in model.label_names:
            b = model.embed_numpy("xp", flux, ivar, with_domain=True)
            teff = b.predictions[:, model.label_names.index("teff")]
            types = [p.stem[14:16] for p in paths]
            fgk = np.array([t[0] in "AFGK" for t in types])
            # Odd subtypes never entered the synthetic XP realism fit (synth/realism.py).
            odd = fgk & np.array([int(t[1]) % 2 == 1 for t in types])
            rank = -np.arange(len(types))
            rho_all = spearmanr(rank, teff).statistic
            rho_fgk = spearmanr(rank[fgk], teff[fgk]).statistic
            rho_odd = spearmanr(rank[odd], teff[odd]).statistic
            out["xp_templates"] = {"n": len(types), "spearman_type_vs_teff": float(rho_all),
                                   "spearman_A_to_K": float(rho_fgk),
                                   "spearman_A_to_K_odd_subtypes": float(rho_odd),
                                   "teff_by_type": dict(zip(types, map(float, teff))),
                                   "recon_relative_by_type": dict(zip(
                                       types, map(float, b.recon_relative)))}
            if b.out_of_domain is not None:
                keep = ~b.out_of_domain
                out["xp_templates"]["out_of_domain"] = [t for t, f in
                                                        zip(types, b.out_of_domain) if f]
                out["xp_templates"]["spearman_in_domain"] = float(
                    spearmanr(rank[keep], teff[keep]).statistic)
    return out


def read_ipac_xp(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Mean real XP spectra as IPAC tables (Wavelength nm, Flux, Flux_error in W m^-2 nm^-1)
    on the XP grid (they are sampled on it: checked), in the catalog's flux unit."""
    from astropy.io import ascii as ap_ascii

    wave = grid_for("xp").wavelength / 10.0
    flux, ivar = [], []
    for p in paths:
        t = ap_ascii.read(p, format="ipac")
        w = np.asarray(t["Wavelength"], float)
        if w.shape != wave.shape or not np.allclose(w, wave):
            raise ValueError(f"{p}: not sampled on the XP grid (336-1020 nm, 2 nm)")
        f = np.asarray(t["Flux"], float) * 1e17
        e = np.asarray(t["Flux_error"], float) * 1e17
        flux.append(f.astype(np.float32))
        ivar.append(np.where(e > 0, 1.0 / np.maximum(e, 1e-30) ** 2, 0.0).astype(np.float32))
    return np.stack(flux), np.stack(ivar)
