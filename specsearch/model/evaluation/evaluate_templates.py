"""Real co-added templates in ``specsearch evaluate --real-data``: the SDSS/BOSS PyHammer
templates (Kesseli et al. 2017; ``templates/sdss_pyhammer``).

They are real optical spectra at LAMOST's resolution **with the red arm** (3650-10200 A,
vacuum), co-added by MK type and SEGUE SSPP [Fe/H] bin (0.5 dex bins, open below -2), so
they test what the LAMOST test stars cannot: the [Fe/H] trend along each spectral-type
sequence over the whole LAMOST range, the metal-poor end, and Teff against SSPP's mean.
They are averages, not stars: they are scored apart from the per-star rows and never train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from specsearch.model.evaluation.metrics import label_stats
from specsearch.model.training.real_sets import read_csv_rows, to_float

PYHAMMER = Path("templates") / "sdss_pyhammer"
MAX_SNR = 150.0
"""Co-adds have S/N of several hundred; the model's inputs are capped at the training range."""
RED_ARM_A = (7400.0, 9100.0)


def read_pyhammer(real: Path) -> dict[str, Any] | None:
    """Templates on the LAMOST grid with their metadata (None when the folder is absent)."""
    from specsearch.preprocess import LAMOST_GRID, rebinner

    folder = Path(real) / PYHAMMER
    h5 = folder / "pyhammer_templates_228.h5"
    meta_csv = folder / "templates_meta.csv"
    if not (h5.is_file() and meta_csv.is_file()):
        return None
    try:
        import h5py
    except ImportError:
        return None
    with h5py.File(h5, "r") as f:
        wave = np.asarray(f["wavelength"], np.float64)
        flux = np.asarray(f["flux"], np.float64)
        err = np.asarray(f["prop_err"], np.float64)
    rows = read_csv_rows(meta_csv)
    if len(rows) != flux.shape[0]:
        raise ValueError(f"{meta_csv}: {len(rows)} rows for {flux.shape[0]} templates in {h5}")
    scale = np.nanmedian(np.where(flux > 0, flux, np.nan), axis=1, keepdims=True)
    flux = np.nan_to_num(flux / scale)
    err = err / scale
    ok = np.isfinite(err) & (err > 0) & np.isfinite(flux)
    ivar = np.where(ok, 1.0 / np.maximum(np.abs(flux) / MAX_SNR, np.where(ok, err, 1.0)) ** 2,
                    0.0)
    f_out, iv_out = rebinner(wave, LAMOST_GRID)(flux, ivar, min_coverage=0.9)

    def col(k: str) -> np.ndarray:
        return np.array([to_float(r.get(k)) for r in rows])

    return {"name": np.array([r["name"] for r in rows]), "spt": np.array([r["spt"] for r in rows]),
            "lum_class": np.array([r.get("lum_class", "") for r in rows]),
            "feh_lo": col("feh_bin_lo"), "feh_hi": col("feh_bin_hi"), "teff": col("teff"),
            "logg": col("log_g"), "flux": f_out.astype(np.float32),
            "ivar": iv_out.astype(np.float32), "wavelength": LAMOST_GRID.wavelength}


def bin_centre(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """[Fe/H] bin centres; open bins (``lo`` NaN: "< hi") count as hi - 0.25."""
    return np.where(np.isfinite(lo), 0.5 * (lo + hi), hi - 0.25)


def pyhammer(model, real: Path) -> dict[str, Any]:
    """Teff vs SSPP, the [Fe/H] trend along each type's sequence, the metal-poor bin, and the
    red arm's pull on [Fe/H]."""
    from scipy.stats import spearmanr

    t = read_pyhammer(real)
    if t is None:
        return {"skipped": f"{Path(real) / PYHAMMER}: missing, or h5py not installed"}
    names = model.label_names
    b = model.embed_numpy("lamost", t["flux"], t["ivar"], with_domain=True)
    pred = {n: b.predictions[:, names.index(n)] for n in ("teff", "logg", "feh") if n in names}
    err = {n: b.uncertainties[:, names.index(n)] for n in pred}
    out: dict[str, Any] = {"n": int(len(t["name"])), "n_good": int(b.good.sum())}
    if b.out_of_domain is not None:      # the templates the model's domain check flags
        out["out_of_domain"] = [str(n) for n in t["name"][b.out_of_domain]]
    has_t = np.isfinite(t["teff"]) & b.good
    if "teff" in pred and has_t.sum() >= 5:
        st = label_stats(pred["teff"][has_t], err["teff"][has_t], t["teff"][has_t])
        out["teff_vs_sspp"] = {"n": st.n, "bias": st.bias, "sigma": st.sigma}
    fgk = np.array([s[:1] in ("F", "G", "K") for s in t["spt"]])
    binned = fgk & np.isfinite(t["feh_hi"]) & b.good
    if "feh" in pred and binned.sum() >= 5:
        c = bin_centre(t["feh_lo"], t["feh_hi"])
        per_type = []
        for spt in np.unique(t["spt"][binned]):
            s = binned & (t["spt"] == spt)
            if s.sum() >= 3:
                per_type.append(float(spearmanr(c[s], pred["feh"][s]).statistic))
        poor = binned & ~np.isfinite(t["feh_lo"]) & (t["feh_hi"] <= -2.0)
        out["feh_trend"] = {
            "n": int(binned.sum()),
            "spearman_all": float(spearmanr(c[binned], pred["feh"][binned]).statistic),
            "types": len(per_type),
            "median_spearman_per_type": float(np.median(per_type)) if per_type else None,
            "monotonic_types": int(sum(r > 0.99 for r in per_type)),
            "feh_below_minus2": {"n": int(poor.sum()),
                                 "median_pred": float(np.median(pred["feh"][poor]))
                                 if poor.any() else None,
                                 "frac_pred_below_minus1p75": float(np.mean(
                                     pred["feh"][poor] < -1.75)) if poor.any() else None}}
        red = (t["wavelength"] >= RED_ARM_A[0]) & (t["wavelength"] <= RED_ARM_A[1])
        masked = model.embed_numpy("lamost", t["flux"], np.where(red[None, :], 0.0, t["ivar"]))
        shift = masked.predictions[:, names.index("feh")] - pred["feh"]
        out["feh_trend"]["red_arm_mask_median_shift"] = float(np.median(shift[binned]))
    return out


def format_pyhammer(p: dict[str, Any]) -> list[str]:
    """Report lines for :func:`pyhammer`."""
    if not p or "skipped" in p:
        return [f"  PyHammer SDSS templates: {p.get('skipped', 'not scored')}"] if p else []
    lines = [f"  PyHammer SDSS co-added templates (3650-10200 A, red arm): {p['n']} "
             f"({p['n_good']} usable)"]
    if "teff_vs_sspp" in p:
        s = p["teff_vs_sspp"]
        lines.append(f"    Teff vs SSPP mean (n={s['n']}): bias {s['bias']:.0f} K, "
                     f"sigma {s['sigma']:.0f} K")
    if "feh_trend" in p:
        f = p["feh_trend"]
        mp = f["feh_below_minus2"]
        lines.append(f"    [Fe/H] vs SSPP bin, F-K (n={f['n']}): Spearman {f['spearman_all']:.3f}; "
                     f"per type median {f['median_spearman_per_type']:.3f}, monotonic "
                     f"{f['monotonic_types']}/{f['types']} types")
        if mp["n"]:
            lines.append(f"    SSPP [Fe/H] < -2 templates (n={mp['n']}): median prediction "
                         f"{mp['median_pred']:.2f}, {mp['frac_pred_below_minus1p75']:.0%} "
                         f"below -1.75")
        lines.append(f"    masking the red arm (7400-9100 A) moves [Fe/H] by "
                     f"{f['red_arm_mask_median_shift']:+.3f} dex (median)")
    return lines
