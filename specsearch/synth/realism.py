"""Realism corrections for the synthetic survey, fitted on real spectra.

The physics + MILES-emulator model gets the broad picture right but leaves systematic,
temperature-dependent differences from real data that a model trained on it reads as
metallicity (see ``specsearch evaluate --real-data``): the XP blue end of real DR3 spectra,
and the LAMOST red arm and blue end. Each is corrected by a transfer function fitted on real
spectra, ``observed = model x exp(T(lambda, Teff))``, with ``T`` a cubic in
``log10(Teff / 5800 K)`` per sample, applied where the synthetic survey observes a star
(:mod:`specsearch.synth.xp`, :mod:`specsearch.synth.lamost`).

* **XP** (343-point sampled grid): the real Gaia DR3 mean XP spectra of dwarfs per spectral
  type (Kiwy 2023, ``gaia_xp/spt_templates``) against the model at the type's Teff (Pecaut &
  Mamajek 2013, 2022 table), main-sequence logg and [Fe/H] = -0.1 (solar neighbourhood),
  after dividing both by their mean flux. Each template also gets its own offset and
  reddening (the empirical XP extinction curve, Zhang et al. 2024, ``aux/``), so the
  correction holds what all types share, not the dust in front of a few of them. Even
  subtypes fit it; odd subtypes are held out to score it.
* **LAMOST** (the 3909-pixel grid): continuum-normalised real LAMOST DR10 spectra (train
  split of the star split, S/N > 30) against the observed model at their LASP labels;
  per-pixel median in Teff bins, then the cubic. Cal and test stars score it.

Outside the fitted Teff range the correction is held at its edge value and tapered slowly
to zero over :data:`TAPER_DEX` in log Teff (a fast taper would itself become a false Teff
signal: much of the correction is instrumental and does not stop at the fitted range). Fit with ``python -m specsearch.synth.realism
../shared/data/real`` (writes :data:`REALISM_FILE`; ``benchmarks/bench_realism.py`` draws the
before/after residuals).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specsearch.errors import ConfigError

REALISM_FILE = Path(__file__).resolve().parents[1] / "data" / "synth" / "realism.npz"
DEGREE = 3
TAPER_DEX = 0.5
TEFF0 = 5800.0
TEMPLATE_FEH = -0.1
"""Assumed mean [Fe/H] of the nearby dwarfs behind the XP type templates."""

DWARF_TEFF = {
    "B0": 31500, "B1": 26000, "B2": 20600, "B3": 17000, "B4": 16700, "B5": 15700,
    "B6": 14500, "B7": 14000, "B8": 12500, "B9": 10700,
    "A0": 9700, "A1": 9200, "A2": 8840, "A3": 8550, "A4": 8270, "A5": 8080, "A6": 8000,
    "A7": 7800, "A8": 7500, "A9": 7440,
    "F0": 7220, "F1": 7030, "F2": 6810, "F3": 6720, "F4": 6640, "F5": 6510, "F6": 6340,
    "F7": 6240, "F8": 6170, "F9": 6060,
    "G0": 5920, "G1": 5880, "G2": 5770, "G3": 5720, "G4": 5680, "G5": 5660, "G6": 5590,
    "G7": 5530, "G8": 5490, "G9": 5340,
    "K0": 5280, "K1": 5170, "K2": 5040, "K3": 4830, "K4": 4600, "K5": 4410, "K6": 4230,
    "K7": 4070, "K8": 4000, "K9": 3940,
    "M0": 3850, "M1": 3660, "M2": 3560, "M3": 3430, "M4": 3210, "M5": 3060, "M6": 2810,
    "M7": 2680, "M8": 2570, "M9": 2380,
}
"""Dwarf Teff (K) per spectral type: Pecaut & Mamajek (2013), E. Mamajek's 2022.04.16 table."""
XP_FIT_TYPES = ("A", "F", "G", "K", "M0", "M1", "M2", "M3")
"""Types the XP correction is fitted on (B stars are few and distant; late M below the
model's reliable range)."""


@dataclass(frozen=True)
class Transfer:
    """``T(lambda, Teff) = sum_j coef[j] * x**j``, x = log10(Teff / 5800), per sample."""

    coef: np.ndarray           # (DEGREE + 1, npix)
    x_range: tuple[float, float]

    def __call__(self, teff: np.ndarray) -> np.ndarray:
        """(n, npix) log correction; 0 for non-finite Teff."""
        t = np.asarray(teff, dtype=np.float64)
        x = np.log10(np.where(np.isfinite(t) & (t > 0), t, TEFF0) / TEFF0)
        lo, hi = self.x_range
        xc = np.clip(x, lo, hi)
        outside = np.maximum(lo - x, 0.0) + np.maximum(x - hi, 0.0)
        taper = np.clip(1.0 - outside / TAPER_DEX, 0.0, 1.0) * np.isfinite(t)
        powers = np.stack([xc ** j for j in range(self.coef.shape[0])], axis=1)
        return (powers @ self.coef) * taper[:, None]

    def factor(self, teff: np.ndarray) -> np.ndarray:
        """(n, npix) multiplicative correction, float32."""
        return np.exp(self(teff)).astype(np.float32)


def _powers(x: np.ndarray) -> np.ndarray:
    return np.stack([x ** j for j in range(DEGREE + 1)], axis=1)


# --- XP ---------------------------------------------------------------------------------

def template_types(real: Path) -> list[str]:
    tdir = Path(real) / "gaia_xp" / "spt_templates" / "templates"
    return [t for t in (p.stem[14:16] for p in sorted(tdir.glob("Gaia_template_*V.dat")))
            if t in DWARF_TEFF and (t[0] in "AFGK" or t in XP_FIT_TYPES)]


def model_xp_sampled(teff: np.ndarray, feh: float = TEMPLATE_FEH) -> np.ndarray:
    """(n, 343) noiseless sampled XP spectra of main-sequence model stars (uncorrected)."""
    from specsearch.io import xp_basis as xb
    from specsearch.synth.labels import ms_logg
    from specsearch.synth.model import stellar_spectra
    from specsearch.synth.xp import noiseless_coefficients

    teff = np.asarray(teff, dtype=np.float64)
    fe = np.full_like(teff, feh)
    surf = stellar_spectra(teff, ms_logg(teff, fe), fe, np.zeros_like(teff))
    bp, rp, _ = noiseless_coefficients(surf, np.full(teff.size, 12.0))
    stacked, _ = xb.xp_design().stacked()
    return np.concatenate([bp, rp], axis=1) @ stacked


def extinction_shape(real: Path, wave_nm: np.ndarray) -> np.ndarray:
    """A_lambda / E(440-550) of the empirical XP curve, mean-subtracted, on ``wave_nm``."""
    path = Path(real) / "aux" / "xp_extinction_curve" / "XP_extinction_curve.csv"
    if not path.is_file():
        raise ConfigError(f"{path}: the empirical XP extinction curve is missing")
    t = np.genfromtxt(path, delimiter=",", skip_header=1)
    k = np.interp(wave_nm, t[:, 1], t[:, 2]) + 2.73
    return k - k.mean()


def _fit_with_nuisance(r: np.ndarray, x: np.ndarray, k: np.ndarray, fit: np.ndarray,
                       iters: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Cubic-in-x correction with a per-row offset and reddening term alternated out."""
    a = np.zeros(len(x))
    s = np.zeros(len(x))
    nuis = np.stack([np.ones_like(k), k], axis=1)
    for _ in range(iters):
        y = r - a[:, None] * k[None, :] - s[:, None]
        coef, *_ = np.linalg.lstsq(_powers(x[fit]), y[fit], rcond=None)
        co, *_ = np.linalg.lstsq(nuis, (r - _powers(x) @ coef).T, rcond=None)
        s, a = co[0], co[1]
    # The least reddened templates (80th percentile of a: a < 0 is redder) define zero
    # reddening; the mean dust of the rest stays out of the correction.
    base = np.percentile(a[fit], 80)
    coef[0] += base * k
    return coef, a - base


def fit_xp(real: Path) -> tuple[Transfer, dict]:
    """Fit the XP transfer function on the real dwarf templates (see the module doc)."""
    from specsearch.model.evaluation.real_parameters import read_ipac_xp

    real = Path(real)
    types = template_types(real)
    if not types:
        raise ConfigError(f"{real}/gaia_xp/spt_templates/templates: no XP type templates")
    tdir = real / "gaia_xp" / "spt_templates" / "templates"
    flux, _ = read_ipac_xp([tdir / f"Gaia_template_{t}V.dat" for t in types])
    teff = np.array([DWARF_TEFF[t] for t in types], dtype=np.float64)
    syn = model_xp_sampled(teff)
    wave = np.arange(336.0, 1021.0, 2.0)
    r = np.log((flux / flux.mean(1, keepdims=True)) / (syn / syn.mean(1, keepdims=True)))
    x = np.log10(teff / TEFF0)
    usable = np.ones(len(types), dtype=bool)
    fit = np.array([int(t[1]) % 2 == 0 for t in types])
    k = extinction_shape(real, wave)
    coef, a = _fit_with_nuisance(r, x, k, fit)
    transfer = Transfer(coef=coef.astype(np.float32),
                        x_range=(float(x[usable].min()), float(x[usable].max())))
    after = r - transfer(teff) - a[:, None] * k[None, :]
    before = r - a[:, None] * k[None, :]
    stats = {"types": types, "teff": teff.tolist(), "fit": fit.tolist(),
             "usable": usable.tolist(), "reddening": a.tolist(),
             "rms_before": [float(np.std(b - b.mean())) for b in before],
             "rms_after": [float(np.std(b - b.mean())) for b in after]}
    return transfer, stats


# --- LAMOST -----------------------------------------------------------------------------

def model_lamost_normalised(teff, logg, feh, rng: np.random.Generator | None = None,
                            correct: bool = False, chunk: int = 200) -> np.ndarray:
    """(n, 3909) continuum-normalised, observed (noise-free) model LAMOST spectra."""
    from specsearch.preprocess import continuum_normalise
    from specsearch.synth.lamost import observe_lamost
    from specsearch.synth.model import miles_alpha_trend, stellar_spectra

    rng = rng or np.random.default_rng(0)
    out = []
    for i in range(0, len(teff), chunk):
        sl = slice(i, i + chunk)
        m = len(teff[sl])
        surf = stellar_spectra(teff[sl], logg[sl], feh[sl], miles_alpha_trend(feh[sl]))
        lam = observe_lamost(surf, np.full(m, 1e-19), np.zeros(m), np.full(m, 2000.0),
                             np.full(m, 14.0), rng, teff=teff[sl] if correct else None)
        norm, _, _ = continuum_normalise(lam.noiseless.astype(np.float64),
                                         np.ones(lam.noiseless.shape))
        out.append(norm)
    return np.concatenate(out)


def lamost_residuals(s, split: str, min_snr: float = 30.0, correct: bool = False
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(teff (n,), real/model - 1 (n, 3909), NaN where the real pixel is masked) for the
    labelled LAMOST set ``s`` (a :class:`specsearch.model.training.real_sets.RealSet`)."""
    from specsearch.preprocess import continuum_normalise

    sel = s.in_split(split) & (s.snr > min_snr) & np.isfinite(s.labels["teff"])
    teff, logg, feh = (np.asarray(s.labels[k][sel], np.float64) for k in ("teff", "logg", "feh"))
    syn = model_lamost_normalised(teff, logg, feh, correct=correct)
    ivar = s.ivar[sel].astype(np.float64)
    real, _, _ = continuum_normalise(s.flux[sel].astype(np.float64), ivar)
    res = np.where(ivar > 0, real / np.maximum(syn, 1e-3) - 1.0, np.nan)
    return teff, res


def fit_lamost(s, bins_dex: float = 0.02, min_per_bin: int = 15) -> tuple[Transfer, dict]:
    """Fit the LAMOST transfer function on the train stars of the labelled set ``s``."""
    teff, res = lamost_residuals(s, "train")
    x = np.log10(teff / TEFF0)
    edges = np.arange(x.min(), x.max() + bins_dex, bins_dex)
    xs, meds, ws = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        b = (x >= lo) & (x < hi)
        if b.sum() >= min_per_bin:
            xs.append(np.median(x[b]))
            meds.append(np.nan_to_num(np.nanmedian(res[b], axis=0)))
            ws.append(np.sqrt(b.sum()))
    if len(xs) <= DEGREE:
        raise ConfigError(f"{s.name}: too few labelled train stars to fit the LAMOST correction")
    xs, w = np.asarray(xs), np.asarray(ws)[:, None]
    coef, *_ = np.linalg.lstsq(_powers(xs) * w, np.log1p(np.asarray(meds)) * w, rcond=None)
    transfer = Transfer(coef=coef.astype(np.float32), x_range=(float(xs.min()), float(xs.max())))
    return transfer, {"n_train": int(len(teff)), "bins": len(xs),
                      "teff_range": [float(TEFF0 * 10 ** xs.min()),
                                     float(TEFF0 * 10 ** xs.max())]}


# --- file -------------------------------------------------------------------------------

def save(path: Path, xp: Transfer, lamost: Transfer, meta: dict) -> None:
    import io

    from specsearch.fsutil import write_bytes_atomic

    buf = io.BytesIO()
    np.savez(buf, xp_coef=xp.coef, xp_x_range=np.asarray(xp.x_range),
             lamost_coef=lamost.coef, lamost_x_range=np.asarray(lamost.x_range),
             meta=np.asarray(json.dumps(meta)))
    write_bytes_atomic(Path(path), buf.getvalue())


@functools.lru_cache(maxsize=4)
def load(path: str | None = None) -> dict[str, Transfer]:
    """The shipped corrections ``{"xp": Transfer, "lamost": Transfer}``."""
    p = Path(path) if path else REALISM_FILE
    if not p.is_file():
        raise ConfigError(f"{p}: the realism corrections are missing; refit them with "
                          f"`python -m specsearch.synth.realism ../shared/data/real`")
    with np.load(p, allow_pickle=False) as z:
        return {m: Transfer(coef=z[f"{m}_coef"].astype(np.float32),
                            x_range=tuple(float(v) for v in z[f"{m}_x_range"]))
                for m in ("xp", "lamost")}


def main(argv: list[str] | None = None) -> int:
    import argparse

    from specsearch.model.training.real_sets import load_all

    p = argparse.ArgumentParser(prog="python -m specsearch.synth.realism",
                                description="Fit the synthetic survey's realism corrections "
                                            "on real spectra")
    p.add_argument("real", type=Path, help="the real data directory (../shared/data/real)")
    p.add_argument("--out", type=Path, default=REALISM_FILE)
    p.add_argument("--real-cache", type=Path, help="the real sets' .npz cache (see finetune)")
    a = p.parse_args(argv)
    xp, xp_stats = fit_xp(a.real)
    sets = load_all(a.real, a.real_cache)
    lamost, lamost_stats = fit_lamost(sets["lamost_dr10"])
    save(a.out, xp, lamost, {"xp": {k: xp_stats[k] for k in ("types", "fit")},
                             "lamost": lamost_stats})
    held = [i for i, f in enumerate(xp_stats["fit"]) if not f and xp_stats["usable"][i]]
    print(f"XP: fitted on {sum(xp_stats['fit'])} templates; held-out types rms "
          f"{np.median([xp_stats['rms_before'][i] for i in held]):.3f} -> "
          f"{np.median([xp_stats['rms_after'][i] for i in held]):.3f} (median)")
    print(f"LAMOST: {lamost_stats['n_train']} DR10 train stars, {lamost_stats['bins']} Teff bins")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
