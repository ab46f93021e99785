"""Refitting the hunt's prior to a pool of stars (``adapt_prior`` of
:func:`specsearch.hunt.rank.star_estimates`): the weights of [Fe/H] bins around the
threshold by maximum likelihood (Saerens et al. 2002), the calibration prior's shape kept
inside each bin.
"""

from __future__ import annotations

import numpy as np

from specsearch.hunt.calibration import GRID

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
