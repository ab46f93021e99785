"""Robust standardisation of outlier components and their combination into one score.

Every component (k-NN distance, reconstruction residual, cross-modal disagreement, ...) has
its own scale and its own dependence on data quality, so each is turned into a robust
z-score before they are compared: ``z = (x - median) / (1.4826 MAD)``, optionally within
quantile bins of a conditioning variable (S/N): a noisy spectrum is expected to sit further
from its neighbours, and comparing it with spectra of similar S/N keeps the list from
filling up with merely noisy objects.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

MAD_TO_SIGMA = 1.4826
"""1 / Phi^-1(3/4): MAD x this = sigma for a Gaussian."""


def robust_location_scale(x: np.ndarray) -> tuple[float, float]:
    """(median, 1.4826 MAD) of the finite values of ``x`` (scale floored at 1e-12)."""
    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med))) * MAD_TO_SIGMA
    if mad <= 0:  # more than half the values equal: fall back to the std
        mad = float(np.std(v))
    return med, max(mad, 1e-12)


def robust_z(x: np.ndarray, *, by: np.ndarray | None = None, n_bins: int = 10,
             min_per_bin: int = 200) -> np.ndarray:
    """Robust z-score of ``x``; NaN stays NaN.

    Args:
        x: (n,) values (e.g. log k-NN distances).
        by: optional (n,) conditioning variable (e.g. S/N); the median and MAD are then taken
            within ``n_bins`` quantile bins of ``by`` (each with >= ``min_per_bin`` finite
            rows; fewer bins are used on small inputs). Rows with non-finite ``by`` use the
            global median and MAD.
    Returns:
        (n,) float64 z-scores.
    """
    x = np.asarray(x, dtype=np.float64)
    z = np.full(x.shape, np.nan)
    finite = np.isfinite(x)
    if not finite.any():
        return z
    med, scale = robust_location_scale(x)
    z[finite] = (x[finite] - med) / scale
    if by is None:
        return z
    b = np.asarray(by, dtype=np.float64)
    ok = finite & np.isfinite(b)
    bins = int(min(n_bins, ok.sum() // max(min_per_bin, 1)))
    if bins < 2:
        return z
    edges = np.quantile(b[ok], np.linspace(0.0, 1.0, bins + 1))
    which = np.clip(np.searchsorted(edges, b, side="right") - 1, 0, bins - 1)
    for i in range(bins):
        rows = ok & (which == i)
        if rows.sum() < 2:
            continue
        m, s = robust_location_scale(x[rows])
        z[rows] = (x[rows] - m) / s
    return z


def local_residual(x: np.ndarray, neighbours: np.ndarray, max_neighbours: int = 20,
                   chunk: int = 50_000) -> np.ndarray:
    """``x`` minus its median over each row's first ``max_neighbours`` neighbours (rows
    of the same table, -1 = none); NaN without neighbours. ``x`` is (n,) or (n, S)
    (profiles: the median is taken per column)."""
    import warnings

    nb = np.asarray(neighbours)[:, :max_neighbours]
    out = np.full(np.shape(x), np.nan)
    for a in range(0, nb.shape[0], chunk):
        sub = nb[a:a + chunk]
        vals = x[np.clip(sub, 0, None)]                  # (m, k) or (m, k, S)
        mask = sub >= 0 if vals.ndim == 2 else (sub >= 0)[..., None]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # rows without neighbours
            out[a:a + chunk] = x[a:a + chunk] - np.nanmedian(np.where(mask, vals, np.nan),
                                                             axis=1)
    return out


TAIL_QUANTILE = 0.99
"""Above this quantile a component's tail is modelled (exponential peaks-over-threshold)."""


def tail_score(x: np.ndarray) -> np.ndarray:
    """-log10 of the upper-tail probability of each value among the finite ones (NaN
    stays NaN): 3 means "1 in 1000 objects is this extreme".

    Below the 99th percentile the empirical tail fraction is used (distribution-free).
    Above it, the tail is modelled as exponential, P(X > x) = 0.01 exp(-(x - u) / beta)
    with u the 99th percentile and beta the median excess / ln 2 (peaks over threshold):
    the score keeps growing for objects far beyond the rest, instead of saturating at
    log10(n) for the top object of every component, and a component whose tail is heavy
    for ordinary objects is tempered by its own large beta.
    """
    from scipy.stats import rankdata

    x = np.asarray(x, dtype=np.float64)
    out = np.full(x.shape, np.nan)
    ok = np.isfinite(x)
    n = int(ok.sum())
    if n == 0:
        return out
    v = x[ok]
    rank_from_top = n + 1 - rankdata(v, method="average")
    score = -np.log10(rank_from_top / n)
    u = np.quantile(v, TAIL_QUANTILE)
    excess = v[v > u] - u
    if excess.size >= 5:
        beta = max(float(np.median(excess)) / np.log(2.0), 1e-9)
        p_tail = 1.0 - TAIL_QUANTILE
        top = v > u
        score[top] = -np.log10(p_tail) + (v[top] - u) / beta / np.log(10.0)
    out[ok] = score
    return out


COMBINE_METHODS = ("max", "rms", "rank_max", "rank_fisher")


def combine_scores(components: Mapping[str, np.ndarray], *, method: str = "max",
                   weights: Mapping[str, float] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Combine z-scores of several components into one anomaly score per object.

    Only excess counts (negative z, i.e. *more* typical than the median, is clipped to 0);
    a NaN component (not available for this object, e.g. no partner spectrum) is ignored.

    Args:
        components: name -> (n,) z-scores.
        method: ``max`` (the strongest z; easy to explain: the driver is the component
            that set the score), ``rms`` (root mean square of the available z: rewards
            objects odd in several ways), ``rank_max`` (the strongest
            :func:`tail_score`: components compared by how rare a value is among all
            objects, not by a z-score, so a component with a heavy tail for ordinary
            objects cannot fill the list on its own) or ``rank_fisher`` (the sum of tail
            scores, -log10 of the product of tail probabilities: Fisher's combination of
            independent evidence). Rank methods give scores in -log10(tail probability).
        weights: optional multiplier per component (default 1).
    Returns:
        (score (n,) float64, driver (n,) object array of component names; "" when no
        component is available for that object).
    """
    names = list(components)
    if not names:
        raise ValueError("combine_scores needs at least one component")
    if method not in COMBINE_METHODS:
        raise ValueError(f"unknown combination method {method!r}; expected one of "
                         f"{COMBINE_METHODS}")
    w = np.array([float((weights or {}).get(k, 1.0)) for k in names])
    stack = np.vstack([np.asarray(components[k], dtype=np.float64) for k in names])
    if method.startswith("rank"):
        stack = np.vstack([tail_score(row) for row in stack])
    stack = np.clip(stack, 0.0, None) * w[:, None]
    available = np.isfinite(stack)
    filled = np.where(available, stack, -np.inf)
    driver_idx = np.argmax(filled, axis=0)
    any_available = available.any(axis=0)
    if method in ("max", "rank_max"):
        score = np.where(any_available, filled.max(axis=0), np.nan)
    elif method == "rank_fisher":
        score = np.where(any_available, np.where(available, stack, 0.0).sum(axis=0), np.nan)
    else:
        sq = np.where(available, stack ** 2, 0.0).sum(axis=0)
        cnt = available.sum(axis=0)
        score = np.where(any_available, np.sqrt(sq / np.maximum(cnt, 1)), np.nan)
    driver = np.asarray(names, dtype=object)[driver_idx]
    driver[~any_available] = ""
    return score, driver
