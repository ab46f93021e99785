"""Evaluation metrics (numpy in, small dataclasses / floats out)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def robust_sigma(values: np.ndarray) -> float:
    """1.4826 x median absolute deviation of the finite values (NaN if none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


@dataclass
class LabelStats:
    """Accuracy of one label on one subset.

    Attributes:
        n: stars with a finite truth and prediction.
        bias: median(pred - true).
        sigma: 1.4826 x MAD of (pred - true) (robust scatter).
        rms: root mean square of (pred - true) (outlier-sensitive).
        z_width: 1.4826 x MAD of (pred - true) / predicted uncertainty (1 = calibrated).
        outlier_frac: fraction with |pred - true| > 5 x sigma.
    """

    n: int
    bias: float
    sigma: float
    rms: float
    z_width: float
    outlier_frac: float


def label_stats(pred: np.ndarray, err: np.ndarray, true: np.ndarray) -> LabelStats:
    ok = np.isfinite(pred) & np.isfinite(true)
    d = (pred - true)[ok]
    if d.size == 0:
        nan = float("nan")
        return LabelStats(0, nan, nan, nan, nan, nan)
    sigma = robust_sigma(d)
    z = d / np.where(err[ok] > 0, err[ok], np.nan)
    return LabelStats(n=int(d.size), bias=float(np.median(d)), sigma=sigma,
                      rms=float(np.sqrt(np.mean(d * d))), z_width=robust_sigma(z),
                      outlier_frac=float(np.mean(np.abs(d - np.median(d)) > 5 * sigma))
                      if sigma > 0 else 0.0)


@dataclass
class RetrievalStats:
    """Cross-modal retrieval among n pairs: how often the partner is in the top k."""

    n: int
    top1: float
    top10: float
    median_rank: float


def retrieval(query: np.ndarray, gallery: np.ndarray, *, metric: str = "cosine",
              chunk: int = 2048) -> RetrievalStats:
    """Row i of ``query`` should find row i of ``gallery``.

    ``metric``: ``cosine`` (inner product of L2-normalised rows) or ``euclidean``. Exact
    brute force in blocks of ``chunk`` queries (the rank of the partner is the count of
    gallery items scoring strictly higher).
    """
    q = np.asarray(query, dtype=np.float32)
    g = np.asarray(gallery, dtype=np.float32)
    g_norm = (g * g).sum(1) if metric == "euclidean" else 0.0
    ranks = np.empty(q.shape[0], dtype=np.int64)
    for s in range(0, q.shape[0], chunk):
        sim = q[s:s + chunk] @ g.T
        if metric == "euclidean":      # -|q - g|^2 up to a per-query constant
            sim = 2 * sim - g_norm[None, :]
        own = sim[np.arange(sim.shape[0]), np.arange(s, s + sim.shape[0])]
        ranks[s:s + chunk] = (sim > own[:, None]).sum(1)
    return RetrievalStats(n=int(q.shape[0]), top1=float(np.mean(ranks < 1)),
                          top10=float(np.mean(ranks < 10)),
                          median_rank=float(np.median(ranks)) + 1.0)


def median_relative_error(pred: np.ndarray, obs: np.ndarray, weight: np.ndarray,
                          *, min_abs: float = 0.05) -> np.ndarray:
    """(n,) per spectrum, the median over good pixels of |pred - obs| / |obs|.

    Pixels with weight 0, or |obs| below ``min_abs`` (in prepared units ~1; avoids dividing
    by the cores of saturated lines), are skipped; NaN for a spectrum without such pixels.
    """
    good = (weight > 0) & (np.abs(obs) > min_abs) & np.isfinite(pred)
    rel = np.where(good, np.abs(pred - obs) / np.where(good, np.abs(obs), 1.0), np.nan)
    out = np.full(rel.shape[0], np.nan)
    some = good.any(1)
    out[some] = np.nanmedian(rel[some], axis=1)
    return out
