"""Synthetic-vs-real residuals per wavelength window, before and after the realism corrections
(:mod:`specsearch.synth.realism`), on real spectra the corrections were not fitted on.

* LAMOST: continuum-normalised real LAMOST DR10 spectra (S/N > 30) of the **cal and test**
  stars of the star split against the observed model at their LASP labels. Per window: the
  RMS over pixels of the median residual (the systematic part, what a model can learn as a
  false signal) and the median over stars of each star's RMS residual.
* XP: the real Gaia DR3 dwarf templates of the **odd subtypes** (the fit used the even ones),
  shape residual log(real/model) after each template's own offset and reddening.

Usage:
  python benchmarks/bench_realism.py [--real ../shared/data/real] [--real-cache runs/real.npz]
Writes benchmarks/results/realism.json and realism_lamost.png / realism_xp.png.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LAMOST_WINDOWS = ((3700, 4500), (4500, 5500), (5500, 6500), (6500, 7400), (7400, 8200),
                  (8200, 9100))
XP_WINDOWS = ((336, 400), (400, 500), (500, 650), (650, 800), (800, 1020))
TEFF_BINS = ((4800, 5600), (5600, 6400), (6400, 7400))


def lamost_rows(s, wave: np.ndarray) -> tuple[list[dict], dict]:
    from specsearch.synth.realism import lamost_residuals

    curves = {}
    rows = []
    res = {}
    for tag, correct in (("before", False), ("after", True)):
        parts = [lamost_residuals(s, split, correct=correct) for split in ("cal", "test")]
        teff = np.concatenate([p[0] for p in parts])
        res[tag] = np.concatenate([p[1] for p in parts])
        curves[tag] = {f"{lo}-{hi}": np.nanmedian(res[tag][(teff >= lo) & (teff < hi)], axis=0)
                       for lo, hi in TEFF_BINS}
    for lo, hi in LAMOST_WINDOWS:
        m = (wave >= lo) & (wave < hi)
        row = {"window_A": f"{lo}-{hi}", "n_stars": int(len(teff))}
        for tag in ("before", "after"):
            med = np.nanmedian(res[tag][:, m], axis=0)
            row[f"systematic_rms_{tag}"] = float(np.sqrt(np.nanmean(med ** 2)))
            row[f"star_rms_{tag}"] = float(np.nanmedian(np.sqrt(np.nanmean(
                res[tag][:, m] ** 2, axis=1))))
        rows.append(row)
    return rows, curves


def xp_rows(real: Path) -> tuple[list[dict], dict]:
    from specsearch.synth.realism import extinction_shape, fit_xp, load, model_xp_sampled

    _, stats = fit_xp(real)          # the templates' reddening and the fit/held-out split
    transfer = load()["xp"]          # scored: the shipped correction
    from specsearch.model.evaluation.real_parameters import read_ipac_xp

    types = stats["types"]
    held = [i for i, f in enumerate(stats["fit"]) if not f]
    tdir = Path(real) / "gaia_xp" / "spt_templates" / "templates"
    flux, _ = read_ipac_xp([tdir / f"Gaia_template_{types[i]}V.dat" for i in held])
    teff = np.array([stats["teff"][i] for i in held])
    syn = model_xp_sampled(teff)
    wave = np.arange(336.0, 1021.0, 2.0)
    r0 = np.log((flux / flux.mean(1, keepdims=True)) / (syn / syn.mean(1, keepdims=True)))
    k = extinction_shape(real, wave)
    a = np.array([stats["reddening"][i] for i in held])
    curves = {"before": r0 - a[:, None] * k, "after": r0 - transfer(teff) - a[:, None] * k}
    for tag in curves:
        curves[tag] = curves[tag] - curves[tag].mean(axis=1, keepdims=True)
    rows = []
    for lo, hi in XP_WINDOWS:
        m = (wave >= lo) & (wave < hi)
        rows.append({"window_nm": f"{lo}-{hi}", "n_templates": len(held),
                     **{f"rms_{tag}": float(np.median(np.sqrt(np.mean(c[:, m] ** 2, axis=1))))
                        for tag, c in curves.items()}})
    return rows, {"types": [types[i] for i in held], "wave": wave, **curves}


def figures(out: Path, wave_l: np.ndarray, lam_curves: dict, xp: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(len(TEFF_BINS), 1, figsize=(11, 7), sharex=True)
    for ax, key in zip(axes, lam_curves["before"]):
        ax.plot(wave_l, lam_curves["before"][key], color="0.6", lw=0.6, label="before")
        ax.plot(wave_l, lam_curves["after"][key], color="C3", lw=0.6, label="after")
        ax.set_ylim(-0.12, 0.12)
        ax.set_ylabel(f"Teff {key} K")
        ax.axhline(0, color="k", lw=0.4)
    axes[0].legend(loc="upper right", fontsize=8)
    axes[0].set_title("real LAMOST DR10 (held-out stars) / synthetic - 1, median, "
                      "continuum-normalised")
    axes[-1].set_xlabel("wavelength (A)")
    p = out / "realism_lamost.png"
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(str(p))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, tag in zip(axes, ("before", "after")):
        for t, c in zip(xp["types"], xp[tag]):
            ax.plot(xp["wave"], c, lw=0.8, label=t)
        ax.set_title(f"real / synthetic XP, held-out dwarf types ({tag})")
        ax.set_xlabel("wavelength (nm)")
        ax.axhline(0, color="k", lw=0.4)
    axes[0].set_ylabel("log ratio (own offset and reddening removed)")
    axes[1].legend(fontsize=6, ncol=3)
    p = out / "realism_xp.png"
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(str(p))
    return paths


def main(argv: list[str] | None = None) -> int:
    from specsearch.model.training.real_sets import load_all
    from specsearch.preprocess import LAMOST_GRID

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "data" / "real")
    p.add_argument("--real-cache", type=Path)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    a = p.parse_args(argv)
    t0 = time.time()
    sets = load_all(a.real, a.real_cache)
    wave = LAMOST_GRID.wavelength
    lam, lam_curves = lamost_rows(sets["lamost_dr10"], wave)
    xp, xp_curves = xp_rows(a.real)
    a.out.mkdir(parents=True, exist_ok=True)
    figs = figures(a.out, wave, lam_curves, xp_curves)
    print("LAMOST DR10 held-out (cal + test) stars, S/N > 30: residual per window")
    print(f"{'window A':>11} {'systematic before':>18} {'after':>7} {'per-star before':>16} "
          f"{'after':>7}")
    for r in lam:
        print(f"{r['window_A']:>11} {r['systematic_rms_before']:18.4f} "
              f"{r['systematic_rms_after']:7.4f} {r['star_rms_before']:16.4f} "
              f"{r['star_rms_after']:7.4f}")
    print("\nreal XP dwarf templates, held-out (odd) subtypes: shape residual RMS per window")
    print(f"{'window nm':>10} {'before':>8} {'after':>8}")
    for r in xp:
        print(f"{r['window_nm']:>10} {r['rms_before']:8.4f} {r['rms_after']:8.4f}")
    result = {"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
              "command": "python " + " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
              "seconds": time.time() - t0, "lamost": lam, "xp": xp, "figures": figs}
    from specsearch.fsutil import write_json_atomic

    write_json_atomic(a.out / "realism.json", result)
    print(f"\nwrote {a.out / 'realism.json'} and {', '.join(Path(f).name for f in figs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
