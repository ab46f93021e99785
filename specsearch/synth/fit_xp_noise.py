"""Fit the Gaia XP coefficient error model used by the synthetic survey.

Regenerate the shipped file with::

    python -m specsearch.synth.fit_xp_noise ../shared/data/real/gaia_xp \\
        --out specsearch/data/synth/xp_noise_model.npz

From the real DR3 sky patch (``xp_continuous_combined_chunk0.fits``, 2000 sources) it fits,
per band and coefficient i, log10 e_i as a quadratic in L = log10(coefficient 0 of the band)
(coefficient 0 tracks the band's flux: photon noise gives a slope of 0.5, calibration floors
steepen it), plus the scatter of real errors around the relation, split into a per-source
part (number of transits, crowding) and a per-coefficient part. From the archive rows that
carry correlation arrays (archive CSVs and the VOTable) it takes the mean coefficient
correlation matrix per band (a mean of correlation matrices is again one).

It also fits the coefficient prior used to turn model SEDs into coefficients
(:func:`specsearch.synth.xp.prior_projection`): the 336-1020 nm samples do not pin down all
110 coefficients (condition number ~1e7), so among the coefficient vectors that reproduce a
model's sampled spectrum the synthetic survey takes the one most probable under the real
sources' coefficient distribution: the mean and covariance of (bp, rp) / s over the brighter
half of the sky patch, s being each source's mean sampled flux.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from specsearch.errors import ReaderError
from specsearch.io.xp_basis import CORR_I, CORR_J, N_COEFF
from specsearch.synth.fit_miles import save

PATCH_FILE = "xp_continuous_combined_chunk0.fits"


def fit_error_model(coef: np.ndarray, err: np.ndarray) -> dict:
    """Per-coefficient quadratic of log10 error in log10 coef_0, and the scatter around it."""
    ok = np.isfinite(coef).all(1) & np.isfinite(err).all(1) & (coef[:, 0] > 0) & \
        (err > 0).all(1)
    level = np.log10(coef[ok, 0])
    loge = np.log10(err[ok])
    a = np.stack([np.ones_like(level), level, level ** 2], axis=1)
    poly, *_ = np.linalg.lstsq(a, loge, rcond=None)          # (3, 55)
    resid = loge - a @ poly
    star = resid.mean(axis=1)
    return {"poly": poly.T, "range": np.array([level.min(), level.max()]),
            "sigma_star": float(star.std()),
            "sigma_coef": (resid - star[:, None]).std(axis=0), "n": int(ok.sum())}


def mean_correlation(corr_rows: list[np.ndarray]) -> np.ndarray:
    """(1485,) archive-order mean correlation of the given rows (NaN rows skipped)."""
    rows = np.concatenate([r for r in corr_rows if r is not None])
    rows = rows[np.isfinite(rows).all(axis=1)]
    if rows.size == 0:
        raise ReaderError(None, "no XP rows with correlation arrays to average")
    return rows.mean(axis=0)


def correlation_matrix(lower: np.ndarray) -> np.ndarray:
    """(55, 55) symmetric correlation matrix from the archive lower-triangle order."""
    m = np.eye(N_COEFF)
    m[CORR_I, CORR_J] = lower
    m[CORR_J, CORR_I] = lower
    return m


def fit_prior(patch) -> dict:
    """Mean (110,) and covariance (110, 110) of [bp, rp] / mean sampled flux, bright half."""
    from specsearch.io import xp_basis as xb

    ok = patch.has("bp") & patch.has("rp")
    coef = np.hstack([patch.bp_coefficients[ok], patch.rp_coefficients[ok]])
    stacked, _ = xb.xp_design().stacked()
    scale = (coef @ stacked).mean(axis=1)
    keep = scale > np.median(scale)
    norm = coef[keep] / scale[keep, None]
    return {"prior_mean": norm.mean(axis=0), "prior_cov": np.cov(norm, rowvar=False),
            "n": np.array(keep.sum())}


def fit(folder: str | Path) -> dict:
    from specsearch.io.gaia_xp import read_xp_continuous

    folder = Path(folder)
    patch = read_xp_continuous(folder / PATCH_FILE)
    out: dict[str, np.ndarray] = {}
    meta: dict = {"patch": PATCH_FILE}
    for band in ("bp", "rp"):
        coef, err, _, _ = patch.band(band)
        model = fit_error_model(coef, err)
        out[f"{band}_err_poly"] = model["poly"]
        out[f"{band}_level_range"] = model["range"]
        out[f"{band}_sigma_coef"] = model["sigma_coef"]
        out[f"{band}_sigma_star"] = np.array(model["sigma_star"])
        meta[f"{band}_n_fit"] = model["n"]
    prior = fit_prior(patch)
    out.update(prior)
    meta["prior_sources"] = int(prior.pop("n"))
    seen: set[int] = set()
    rows: dict[str, list] = {"bp": [], "rp": []}
    files = sorted((folder / "archive_format").glob("*.csv")) + sorted(folder.glob("*.vot"))
    for path in files:
        xp = read_xp_continuous(path)
        keep = np.array([int(s) not in seen for s in xp.source_id])
        seen.update(int(s) for s in xp.source_id)
        for band in ("bp", "rp"):
            corr = getattr(xp, f"{band}_coefficient_correlations")
            if corr is not None:
                rows[band].append(corr[keep])
    for band in ("bp", "rp"):
        lower = mean_correlation(rows[band])
        np.linalg.cholesky(correlation_matrix(lower))          # must be positive definite
        out[f"{band}_corr_mean"] = lower
    meta["correlation_sources"] = len(seen)
    meta["files"] = [p.name for p in files]
    out["meta_json"] = np.array(json.dumps(meta))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fit the synthetic XP error model on real DR3 XP.")
    p.add_argument("gaia_xp", help="folder with xp_continuous_combined_chunk0.fits, "
                                   "archive_format/*.csv and *.vot")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "synth"
                                        / "xp_noise_model.npz"))
    args = p.parse_args(argv)
    arrays = fit(args.gaia_xp)
    path = save(arrays, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB); {arrays['meta_json']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
