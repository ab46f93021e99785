"""Calibrating the [Fe/H] heads into probabilities P([Fe/H] < threshold).

The heads give a prediction and a 1-sigma uncertainty per star. Turning them into honest
probabilities needs a model of how predictions relate to the truth, fitted on a labelled
held-out set, and Bayes' rule:

1. **Measurement model** (per modality): ``pred = g(true) + noise``, with ``g`` an isotonic
   (monotone, non-parametric) regression of the prediction on the true [Fe/H] (heads pull
   metal-poor stars towards the mean: ``g`` is flatter than the identity there) and the
   noise Student-t with squared scale ``(scale * err)^2 + floor^2`` and ``nu`` degrees of
   freedom (maximum likelihood; ``scale`` fixes over/under-confident errors, ``floor`` adds
   what the heads do not know about, ``nu`` the heavy tails: the rare star predicted far
   from its truth, which a Gaussian would turn into a confident false detection).
2. **Prior**: the labelled set's [Fe/H] distribution (a smoothed histogram on a grid, plus a
   small uniform floor so a star may be more metal-poor than any calibration star).
3. **Posterior** on the grid: prior x the likelihood of every available measurement of the
   star (several visits, LAMOST and XP: independent noise given the truth, so likelihoods
   multiply). ``P([Fe/H] < t)`` is the posterior mass below ``t``; a Gaussian around a
   regressed mean cannot get this right for a population with a long metal-poor tail.

Stored as JSON (no pickle).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import isotonic_regression, minimize

from specsearch.errors import ConfigError
from specsearch.fsutil import now_iso, write_json_atomic

FORMAT_VERSION = 2
MAX_KNOTS = 256
GRID = np.round(np.arange(-5.0, 1.0 + 1e-9, 0.02), 4)
"""[Fe/H] grid (dex) of the posterior."""
PRIOR_SMOOTH = 0.05
"""Gaussian kernel (dex) smoothing the labelled-set histogram into the prior."""
PRIOR_FLOOR = 1e-3
"""Weight of a uniform component in the prior (stars beyond the labelled range)."""


@dataclass
class FehCalibration:
    """The measurement model of one modality's [Fe/H] head (see the module docstring).

    Attributes:
        modality: ``lamost`` or ``xp``.
        knots_true, knots_pred: the isotonic map true -> expected prediction (np.interp
            knots, flat beyond the ends), dex.
        scale: multiplier of the head's uncertainty.
        floor: uncertainty (dex) added in quadrature.
        nu: degrees of freedom of the Student-t noise (None: Gaussian). Heads have
            heavier tails than a Gaussian (a normal star now and then predicted very
            metal-poor); a Gaussian likelihood would then call such a star certain.
        width_true, width_mult: the noise width as a function of the true [Fe/H]
            (np.interp knots; empty: 1). A head is often much less precise for the rare
            metal-poor stars than its per-star errors say (XP: ~4x), which a single
            scale fitted on all stars cannot capture.
        n: labelled stars used.
        checks: reliability measured by 2-fold cross-fitting on the labelled set.
    """

    modality: str
    knots_true: list[float]
    knots_pred: list[float]
    scale: float = 1.0
    floor: float = 0.0
    nu: float | None = None
    width_true: list[float] = field(default_factory=list)
    width_mult: list[float] = field(default_factory=list)
    n: int = 0
    checks: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def identity(cls, modality: str) -> "FehCalibration":
        """No calibration: predictions unbiased, uncertainties taken at face value."""
        return cls(modality=modality, knots_true=[-10.0, 10.0], knots_pred=[-10.0, 10.0])

    def loglik(self, pred: np.ndarray, err: np.ndarray, grid: np.ndarray = GRID
               ) -> np.ndarray:
        """(n, G) log-likelihood of each (pred, err) for true [Fe/H] on ``grid``; rows
        with a NaN input are 0 (no information)."""
        pred = np.asarray(pred, dtype=np.float64)[:, None]
        err = np.asarray(err, dtype=np.float64)[:, None]
        expected = np.interp(grid, self.knots_true, self.knots_pred)[None, :]
        mult = (np.interp(grid, self.width_true, self.width_mult) if self.width_true
                else np.ones(grid.size))[None, :]
        var = ((self.scale * err) ** 2 + self.floor ** 2) * mult ** 2
        ok = np.isfinite(pred) & np.isfinite(var) & (var > 0)
        var = np.where(ok, var, 1.0)
        r2 = (np.where(ok, pred, 0.0) - expected) ** 2 / var
        if self.nu is None:
            out = -0.5 * (r2 + np.log(var))
        else:   # Student-t (constants dropped: they cancel in the posterior)
            out = -0.5 * np.log(var) - 0.5 * (self.nu + 1.0) * np.log1p(r2 / self.nu)
        return np.where(ok, out, 0.0)


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


@dataclass
class HuntCalibration:
    """Measurement models of each modality plus the prior.

    Attributes:
        modalities: modality -> :class:`FehCalibration` (missing: identity model).
        prior: (G,) prior on :data:`GRID` (empty: flat).
        label: the label column calibrated (``feh``).
        model_hash: the model whose heads were calibrated (only valid for that model).
        created, source: provenance.
    """

    modalities: dict[str, FehCalibration]
    prior: list[float] = field(default_factory=list)
    label: str = "feh"
    model_hash: str = ""
    created: str = ""
    source: str = ""

    def for_modality(self, modality: str) -> FehCalibration:
        return self.modalities.get(modality) or FehCalibration.identity(modality)

    @property
    def calibrated(self) -> bool:
        return bool(self.modalities)

    @property
    def log_prior(self) -> np.ndarray:
        if not self.prior:
            return np.zeros(GRID.size)
        return np.log(np.maximum(np.asarray(self.prior, dtype=np.float64), 1e-300))

    def posterior(self, loglik: np.ndarray) -> np.ndarray:
        """(n, G) normalised posterior from summed log-likelihoods (n, G)."""
        lp = loglik + self.log_prior[None, :]
        lp -= lp.max(axis=1, keepdims=True)
        post = np.exp(lp)
        return post / post.sum(axis=1, keepdims=True)

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "kind": "specsearch.hunt_calibration",
                "label": self.label, "model_hash": self.model_hash, "created": self.created,
                "source": self.source, "grid": {"start": float(GRID[0]),
                                                "stop": float(GRID[-1]), "n": GRID.size},
                "prior": list(map(float, self.prior)),
                "modalities": {m: dataclasses.asdict(c) for m, c in self.modalities.items()}}

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "HuntCalibration":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: unreadable hunt calibration: {exc}") from exc
        if d.get("kind") != "specsearch.hunt_calibration" or \
                d.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"{path}: not a specsearch hunt calibration of format "
                              f"{FORMAT_VERSION} (kind {d.get('kind')!r}, version "
                              f"{d.get('format_version')!r}); refit it with "
                              f"`specsearch hunt-calibrate`")
        grid = d.get("grid", {})
        if grid.get("n") != GRID.size or grid.get("start") != GRID[0]:
            raise ConfigError(f"{path}: prior grid {grid} differs from this specsearch's "
                              f"({GRID[0]}..{GRID[-1]}, {GRID.size} points); refit it")
        try:
            mods = {m: FehCalibration(**c) for m, c in d["modalities"].items()}
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: malformed hunt calibration ({exc})") from None
        return cls(modalities=mods, prior=list(d.get("prior", [])),
                   label=d.get("label", "feh"), model_hash=d.get("model_hash", ""),
                   created=d.get("created", ""), source=d.get("source", ""))


def posterior_summaries(post: np.ndarray, threshold: float
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P(x < threshold), posterior mean, posterior sd) of (n, G) posteriors on GRID."""
    # Each grid point stands for a cell of one grid step; a cell cut by the threshold
    # counts with the fraction of it that lies below.
    step = GRID[1] - GRID[0]
    frac = np.clip((threshold - (GRID - step / 2)) / step, 0.0, 1.0)
    p = post @ frac
    mean = post @ GRID
    sd = np.sqrt(np.maximum(post @ GRID ** 2 - mean ** 2, 0.0))
    return p, mean, sd


POOL_BIN_EDGES = (0.0,)
"""Edges (dex, relative to the threshold) of the [Fe/H] bins whose prior weights
:func:`fit_pool_weights` refits to a pool; the prior's shape is kept inside each bin.
One edge, at the threshold, is a pure prior shift of the two classes (Saerens et al.
2002): on the real held-out pool (565 stars, 8 below -2) it finds a fraction of
0.014 +- 0.007 (labelled: 0.014) and expectations that match the counts, where six bins
(edges at -1, -0.5, 0, 0.5, 1) find 0.008 +- 0.006: too many free weights for a pool that
size (BENCHMARKS.md, "The hunt's prior, refitted to the pool")."""


def bin_overlap(edges: np.ndarray) -> np.ndarray:
    """(G, K) fraction of each GRID cell (one grid step wide) inside each of the K bins
    that ``edges`` (K - 1 inner edges, increasing) cut the line into."""
    step = GRID[1] - GRID[0]
    lo, hi = GRID - step / 2, GRID + step / 2
    bounds = np.concatenate([[-np.inf], np.asarray(edges, np.float64), [np.inf]])
    ov = np.clip(np.minimum(hi[:, None], bounds[None, 1:])
                 - np.maximum(lo[:, None], bounds[None, :-1]), 0.0, None)
    return ov / step


def bin_evidence(loglik: np.ndarray, log_prior: np.ndarray, overlap: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """((n, K) log evidence of each star for each bin, (K,) prior mass of each bin): the
    evidence for bin k is the likelihood averaged over the prior inside it."""
    prior = np.exp(log_prior - log_prior.max())
    prior /= prior.sum()
    mass = np.maximum(prior @ overlap, 1e-300)
    lp = loglik + np.log(np.maximum(prior, 1e-300))[None, :]
    mx = lp.max(axis=1, keepdims=True)
    ev = np.exp(lp - mx) @ overlap
    return np.log(np.maximum(ev, 1e-300)) + mx - np.log(mass)[None, :], mass


def fit_pool_weights(log_ev: np.ndarray, start: np.ndarray, *, tol: float = 1e-10,
                     max_iter: int = 5000) -> np.ndarray:
    """Maximum-likelihood weights of the K bins for a pool of stars, from each star's
    evidence per bin (:func:`bin_evidence`): the EM of a mixture with fixed components
    (Saerens et al. 2002, a classifier's priors re-estimated on a new population), started
    from ``start`` (the calibration's masses). The log-likelihood is concave in the
    weights, so EM converges to the maximum; with two bins the single weight is the root
    of the score, found by bisection (some 35 passes over the pool, where EM may need
    thousands when the fraction is small)."""
    log_ev = np.asarray(log_ev, np.float64)
    if log_ev.shape[0] == 0:
        raise ValueError("no stars to fit the pool's prior on")
    if log_ev.shape[1] == 2:        # one weight: the root of the concave score, bisected
        r = np.exp(np.clip(log_ev[:, 0] - log_ev[:, 1], -700.0, 700.0))

        def score(w: float) -> float:
            return float(np.sum((r - 1.0) / (w * r + 1.0 - w)))

        lo, hi = 1e-12, 1.0 - 1e-12
        if score(lo) <= 0:
            return np.array([lo, 1.0 - lo])
        if score(hi) >= 0:
            return np.array([hi, 1.0 - hi])
        while hi - lo > tol:
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if score(mid) > 0 else (lo, mid)
        w = 0.5 * (lo + hi)
        return np.array([w, 1.0 - w])
    e = np.exp(log_ev - log_ev.max(axis=1, keepdims=True))
    w = np.asarray(start, np.float64) / np.sum(start)
    for _ in range(max_iter):
        post = e * w[None, :]
        post /= np.maximum(post.sum(axis=1, keepdims=True), 1e-300)
        new = post.mean(axis=0)
        if np.max(np.abs(new - w)) < tol:
            return new
        w = new
    return w


def below_fraction_se(log_ev: np.ndarray, w: np.ndarray, n_below: int) -> float:
    """Approximate standard error of the fitted mass below the threshold (the first
    ``n_below`` bins): the observed information of the two-group mixture, with each
    group's shape at the fitted weights."""
    e = np.exp(log_ev - log_ev.max(axis=1, keepdims=True))
    wb, wa = w[:n_below].sum(), w[n_below:].sum()
    if not (0 < wb < 1):
        return float("inf")
    a = e[:, :n_below] @ (w[:n_below] / wb)
    b = e[:, n_below:] @ (w[n_below:] / wa)
    score = (a - b) / np.maximum(wb * a + wa * b, 1e-300)
    info = float(np.sum(score ** 2))
    return 1.0 / np.sqrt(info) if info > 0 else float("inf")


def reweighted_prior(log_prior: np.ndarray, overlap: np.ndarray, mass: np.ndarray,
                     w: np.ndarray) -> list[float]:
    """The calibration prior with each bin's mass set to ``w`` (its shape kept inside; a
    grid cell an edge cuts in two takes the overlap-weighted mean of the two factors, so
    the masses come out within half a cell's prior of ``w``)."""
    prior = np.exp(log_prior - log_prior.max())
    prior /= prior.sum()
    new = prior * (overlap @ (np.asarray(w) / np.maximum(mass, 1e-300)))
    return (new / new.sum()).tolist()


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

