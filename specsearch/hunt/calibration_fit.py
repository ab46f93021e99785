"""Fitting a :class:`~specsearch.hunt.calibration.HuntCalibration` on labelled held-out
stars: each modality's measurement model (:func:`fit_measurement`: the isotonic ``g`` and
the Student-t noise by maximum likelihood, with its width as a function of the true
[Fe/H]), the prior (:func:`fit_prior`), and their 2-fold cross-fitted reliability
(:func:`cross_fitted_checks`). The model itself is described in
:mod:`specsearch.hunt.calibration`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy.optimize import isotonic_regression, minimize

from specsearch.errors import ConfigError
from specsearch.fsutil import now_iso
from specsearch.hunt.calibration import (GRID, FehCalibration, HuntCalibration,
                                         posterior_summaries)

MAX_KNOTS = 256
PRIOR_SMOOTH = 0.05
"""Gaussian kernel (dex) smoothing the labelled-set histogram into the prior."""
PRIOR_FLOOR = 1e-3
"""Weight of a uniform component in the prior (stars beyond the labelled range)."""


def _isotonic_knots(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots of the increasing isotonic regression of y on x (thinned, x strictly up)."""
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    fit = isotonic_regression(ys, increasing=True).x
    change = np.flatnonzero(np.diff(fit) != 0)
    idx = np.unique(np.concatenate([[0], change, change + 1, [xs.size - 1]]))
    if idx.size > MAX_KNOTS:
        idx = idx[np.unique(np.linspace(0, idx.size - 1, MAX_KNOTS).round().astype(int))]
    ux, inv = np.unique(xs[idx], return_inverse=True)
    uy = np.bincount(inv, weights=fit[idx]) / np.bincount(inv)
    return ux, np.maximum.accumulate(uy)


def _fit_noise(resid: np.ndarray, err: np.ndarray) -> tuple[float, float, float | None]:
    """ML (scale, floor, nu) of resid ~ t_nu(0, (scale err)^2 + floor^2); nu is None
    (Gaussian) when the fit prefers more than 200 degrees of freedom."""
    from scipy.special import gammaln

    def nll(p: np.ndarray) -> float:
        var = (np.exp(p[0]) * err) ** 2 + np.exp(p[1]) ** 2
        nu = 1.0 + np.exp(p[2])
        ll = (gammaln((nu + 1) / 2) - gammaln(nu / 2) - 0.5 * np.log(nu * np.pi * var)
              - 0.5 * (nu + 1) * np.log1p(resid * resid / (nu * var)))
        return float(-ll.sum())

    best = None
    for log_nu in (np.log(3.0), np.log(30.0)):        # two starts: heavy and light tails
        res = minimize(nll, np.array([0.0, np.log(0.02), log_nu]), method="Nelder-Mead",
                       options={"xatol": 1e-4, "fatol": 1e-4, "maxiter": 4000})
        if best is None or res.fun < best.fun:
            best = res
    scale, floor, nu = np.exp(best.x[0]), np.exp(best.x[1]), 1.0 + np.exp(best.x[2])
    return float(scale), float(floor), (None if nu > 200 else float(nu))


def fit_measurement(pred: np.ndarray, err: np.ndarray, true: np.ndarray, *,
                    modality: str) -> FehCalibration:
    """Fit one modality's measurement model on labelled stars (NaN rows ignored).

    Raises:
        ConfigError: fewer than 50 usable labelled stars.
    """
    pred, err, true = (np.asarray(a, dtype=np.float64) for a in (pred, err, true))
    ok = np.isfinite(pred) & np.isfinite(err) & np.isfinite(true) & (err > 0)
    if ok.sum() < 50:
        raise ConfigError(f"a [Fe/H] calibration needs >= 50 labelled stars with predictions;"
                          f" got {int(ok.sum())} ({modality})")
    p, e, t = pred[ok], err[ok], true[ok]
    kx, ky = _isotonic_knots(t, p)
    resid = p - np.interp(t, kx, ky)
    scale, floor, nu = _fit_noise(resid, e)
    wx, wy = _width_by_truth(t, resid / np.sqrt((scale * e) ** 2 + floor ** 2))
    if wx.size:
        # Refit scale/floor/nu on the residuals with the width profile divided out.
        mult = np.interp(t, wx, wy)
        scale, floor, nu = _fit_noise(resid / mult, e)
    return FehCalibration(modality=modality, knots_true=kx.tolist(), knots_pred=ky.tolist(),
                          scale=scale, floor=floor, nu=nu, width_true=wx.tolist(),
                          width_mult=wy.tolist(), n=int(ok.sum()))


def refit_noise(model: FehCalibration, pred: np.ndarray, err: np.ndarray, true: np.ndarray,
                *, min_stars: int = 50) -> FehCalibration:
    """The same measurement model with its noise (scale, floor, nu) refitted on other
    labelled stars, keeping the shape ``g`` and the width profile.

    Used for real spectra: the synthetic calibration survey pins down ``g`` (it holds
    thousands of metal-poor stars) while a few hundred held-out real stars say how wide the
    real residuals are.

    Raises:
        ConfigError: fewer than ``min_stars`` usable stars.
    """
    pred, err, true = (np.asarray(a, dtype=np.float64) for a in (pred, err, true))
    ok = np.isfinite(pred) & np.isfinite(err) & np.isfinite(true) & (err > 0)
    if ok.sum() < min_stars:
        raise ConfigError(f"refitting the [Fe/H] noise model needs >= {min_stars} labelled "
                          f"stars; got {int(ok.sum())} ({model.modality})")
    p, e, t = pred[ok], err[ok], true[ok]
    resid = p - np.interp(t, model.knots_true, model.knots_pred)
    if model.width_true:
        resid = resid / np.interp(t, model.width_true, model.width_mult)
    scale, floor, nu = _fit_noise(resid, e)
    return dataclasses.replace(model, scale=scale, floor=floor, nu=nu, n=model.n + int(ok.sum()),
                               checks={**model.checks, "noise_refit_stars": int(ok.sum())})


def _width_by_truth(true: np.ndarray, z: np.ndarray, *, step: float = 0.25,
                    min_count: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Knots of the robust width (1.4826 MAD) of ``z`` as a function of the true value:
    bins of ``step`` dex, merged from the sparse (metal-poor) end until each holds
    ``min_count`` stars. Empty when there are too few stars for two bins."""
    order = np.argsort(true)
    t, zz = true[order], z[order]
    edges = np.arange(np.floor(t[0] / step) * step, t[-1] + step, step)
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, None)
    groups, current = [], []
    for b in np.unique(idx):
        current.extend(np.flatnonzero(idx == b).tolist())
        if len(current) >= min_count:
            groups.append(np.asarray(current))
            current = []
    if current and groups:
        groups[-1] = np.concatenate([groups[-1], np.asarray(current)])
    if len(groups) < 2:
        return np.zeros(0), np.zeros(0)
    cx = np.array([np.median(t[g]) for g in groups])
    cw = np.array([1.4826 * np.median(np.abs(zz[g] - np.median(zz[g]))) for g in groups])
    return cx, np.maximum(cw, 0.2)


def fit_prior(true: np.ndarray, grid: np.ndarray = GRID) -> np.ndarray:
    """(G,) prior density of [Fe/H] on ``grid`` from labelled values (sums to 1)."""
    t = np.asarray(true, dtype=np.float64)
    t = t[np.isfinite(t)]
    if t.size == 0:
        return np.full(grid.size, 1.0 / grid.size)
    step = grid[1] - grid[0]
    edges = np.concatenate([grid - step / 2, [grid[-1] + step / 2]])
    hist = np.histogram(np.clip(t, grid[0], grid[-1]), bins=edges)[0].astype(np.float64)
    k = np.arange(-int(4 * PRIOR_SMOOTH / step), int(4 * PRIOR_SMOOTH / step) + 1) * step
    kernel = np.exp(-0.5 * (k / PRIOR_SMOOTH) ** 2)
    dens = np.convolve(hist, kernel / kernel.sum(), mode="same")
    dens = dens / dens.sum()
    return (1 - PRIOR_FLOOR) * dens + PRIOR_FLOOR / grid.size


def cross_fitted_checks(pred: np.ndarray, err: np.ndarray, true: np.ndarray, *,
                        modality: str, thresholds: tuple[float, ...] = (-1.5, -2.0, -2.5,
                                                                         -3.0),
                        seed: int = 0) -> dict[str, Any]:
    """2-fold cross-fitted reliability of one modality: for each threshold, the expected
    (sum of p) vs the observed number of stars below it and the expected calibration error
    over 10 probability bins; and the robust width of (true - posterior mean) / sd."""
    pred, err, true = (np.asarray(a, dtype=np.float64) for a in (pred, err, true))
    ok = np.isfinite(pred) & np.isfinite(err) & np.isfinite(true) & (err > 0)
    pred, err, true = pred[ok], err[ok], true[ok]
    fold = np.random.default_rng(seed).random(pred.size) < 0.5
    probs = {t: np.full(pred.size, np.nan) for t in thresholds}
    z = np.full(pred.size, np.nan)
    for f in (True, False):
        train, test = fold == f, fold != f
        if train.sum() < 50 or test.sum() == 0:
            continue
        cal = HuntCalibration({modality: fit_measurement(pred[train], err[train],
                                                         true[train], modality=modality)},
                              prior=fit_prior(true[train]).tolist())
        post = cal.posterior(cal.for_modality(modality).loglik(pred[test], err[test]))
        for t in thresholds:
            probs[t][test] = posterior_summaries(post, t)[0]
        _, mean, sd = posterior_summaries(post, 0.0)
        z[test] = (true[test] - mean) / np.maximum(sd, 1e-6)
    zf = z[np.isfinite(z)]
    out: dict[str, Any] = {"z_robust_width": float(1.4826 * np.median(np.abs(
        zf - np.median(zf)))) if zf.size else None}
    for t in thresholds:
        p = probs[t]
        use = np.isfinite(p)
        below = true[use] < t
        bins = np.clip((p[use] * 10).astype(int), 0, 9)
        ece = sum((bins == b).sum() / use.sum() * abs(p[use][bins == b].mean()
                                                      - below[bins == b].mean())
                  for b in range(10) if (bins == b).any())
        out[f"feh<{t}"] = {"expected": float(p[use].sum()), "observed": int(below.sum()),
                           "ece": float(ece)}
    return out


def fit_calibration(pred: np.ndarray, err: np.ndarray, true: np.ndarray, *,
                    modality: str, check: bool = True, seed: int = 0) -> HuntCalibration:
    """A one-modality :class:`HuntCalibration` (measurement model + prior + checks)."""
    model = fit_measurement(pred, err, true, modality=modality)
    if check:
        model.checks = cross_fitted_checks(pred, err, true, modality=modality, seed=seed)
    return HuntCalibration({modality: model}, prior=fit_prior(true).tolist(),
                           created=now_iso())
