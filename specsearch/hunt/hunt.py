"""Run the metal-poor hunt: the ranked list and its expected purity/completeness table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from specsearch.rows import EmbeddingTable
from specsearch.hunt.calibration import HuntCalibration
from specsearch.hunt.rank import HuntConfig, seed_similarity, star_estimates

SUMMARY_SIZES = (10, 30, 100, 300, 1000, 3000, 10_000)
EXACT_AGREEMENT_MAX = 5_000
"""Longest list whose member count :func:`found_agreement` convolves exactly."""


@dataclass
class CutSummary:
    """Expected quality of the top ``n`` of the ranking (from the calibrated p)."""

    n: int
    min_prob: float
    expected_true: float
    expected_purity: float
    expected_completeness: float
    expected_true_sd: float = 0.0
    """Standard deviation of the number of true members (Poisson-binomial of the list's p:
    the counting noise a follow-up of this list will see)."""


@dataclass
class HuntResult:
    """The hunt's output.

    Attributes:
        table: the chosen list (ranked rows, see :func:`hunt`).
        chosen: the cut that made ``table``.
        curve: the same numbers at other list sizes, to pick another cut.
        expected_total: sum of p over all stars searched (expected number below the
            threshold).
        n_stars: stars searched.
        calibrated: False when the heads' uncertainties were used uncalibrated.
        n_out_of_domain: measurements left out because the model's domain check flagged
            them (embeddings made with residuals carry ``out_of_domain``).
        prior_fraction, prior_fraction_se, prior_adapted: the prior's fraction below the
            threshold that p used (the calibration's, or the pool's fitted one with its
            standard error).
    """

    table: pa.Table
    chosen: CutSummary
    curve: list[CutSummary]
    expected_total: float
    n_stars: int
    calibrated: bool
    n_out_of_domain: int = 0
    prior_fraction: float = float("nan")
    prior_fraction_se: float | None = None
    prior_adapted: bool = False

    def summary_lines(self) -> list[str]:
        lines = []
        if self.prior_adapted:
            se = self.prior_fraction_se
            lines.append(f"prior refitted to this pool: fraction below the threshold "
                         f"{self.prior_fraction:.4f}"
                         + (f" +- {se:.4f}" if se is not None and np.isfinite(se) else ""))
        lines.append(f"{'list size':>9} {'min p':>7} {'E[true] +- sd':>15} {'purity':>7} "
                     f"{'completeness':>12}")
        for c in self.curve:
            mark = "  <- chosen" if c.n == self.chosen.n else ""
            true = f"{c.expected_true:.1f} +- {c.expected_true_sd:.1f}"
            lines.append(f"{c.n:>9} {c.min_prob:>7.3f} {true:>15} "
                         f"{c.expected_purity:>7.3f} {c.expected_completeness:>12.3f}{mark}")
        return lines


def found_agreement(p: np.ndarray, found: int) -> dict[str, float]:
    """How well ``found`` true members of a list agree with its calibrated ``p``.

    With calibrated, independent probabilities the number of true members of a list is
    Poisson-binomial: mean ``sum(p)``, variance ``sum(p (1 - p))``. Returns that mean and
    standard deviation and both tail probabilities of ``found`` (exact, by convolution), so
    a measured purity can be judged against the expected one with the counting noise of a
    short list (one star moves the purity of a list of 16 by 0.06). Lists longer than
    :data:`EXACT_AGREEMENT_MAX` use the normal approximation with continuity correction.
    """
    p = np.clip(np.asarray(p, dtype=np.float64).ravel(), 0.0, 1.0)
    if not 0 <= found <= p.size:
        raise ValueError(f"found must lie in [0, {p.size}], got {found}")
    mean, sd = float(p.sum()), float(np.sqrt((p * (1.0 - p)).sum()))
    if p.size <= EXACT_AGREEMENT_MAX:
        dist = np.ones(1)
        for q in p:
            dist = np.convolve(dist, (1.0 - q, q))
        at_least, at_most = dist[found:].sum(), dist[:found + 1].sum()
    else:
        from scipy.stats import norm
        at_least = norm.sf(found - 0.5, mean, max(sd, 1e-12))
        at_most = norm.cdf(found + 0.5, mean, max(sd, 1e-12))
    return {"expected": mean, "sd": sd, "found": int(found),
            "p_at_least": float(min(1.0, at_least)), "p_at_most": float(min(1.0, at_most))}


def _cut(p_sorted: np.ndarray, cum: np.ndarray, cum_var: np.ndarray, total: float, n: int
         ) -> CutSummary:
    n = int(min(max(n, 0), p_sorted.size))
    if n == 0:
        return CutSummary(0, float("nan"), 0.0, float("nan"), 0.0)
    return CutSummary(n=n, min_prob=float(p_sorted[:n].min()), expected_true=float(cum[n - 1]),
                      expected_purity=float(cum[n - 1] / n),
                      expected_completeness=float(cum[n - 1] / total) if total > 0 else 0.0,
                      expected_true_sd=float(np.sqrt(max(cum_var[n - 1], 0.0))))


def hunt(tables: Mapping[str, EmbeddingTable], calibration: HuntCalibration, *,
         config: HuntConfig | None = None, seeds: np.ndarray | None = None,
         row_masks: Mapping[str, np.ndarray] | None = None) -> HuntResult:
    """Rank the stars of ``tables`` by P([Fe/H] < config.feh_max) and cut the list.

    Args:
        tables: modality -> rows with ``feh_pred``/``feh_err`` (and metadata).
        calibration: :class:`HuntCalibration` (``HuntCalibration(modalities={})`` = none).
        seeds: optional (m, D) unit vectors of known metal-poor stars (any modality).
        row_masks: modality -> (n,) bool rows allowed (metadata filters).
    Returns:
        A :class:`HuntResult`. Columns of ``table``: rank, source_id, modalities,
        p_metal_poor, feh_post_mean, feh_post_sd (posterior), n_measurements,
        [seed_similarity], rank_score,
        expected_purity / expected_completeness (of the list down to this row), then per
        modality ``feh_pred_<m>``, ``feh_err_<m>``, ``spectrum_id_<m>``, then the other head
        predictions and metadata of the star's first row (LAMOST preferred).
    """
    config = config or HuntConfig()
    label = calibration.label
    est = star_estimates(tables, calibration, threshold=config.feh_max, mode=config.mode,
                         label=label, row_masks=row_masks, adapt_prior=config.adapt_prior)
    p = est.p_below
    score = p.copy()
    sim = None
    if seeds is not None and len(seeds):
        sim = seed_similarity({m: t for m, t in tables.items() if m in est.per_modality},
                              est.source_id, seeds)
        finite = np.isfinite(sim)
        q = np.zeros(sim.size)
        if finite.any():
            order = np.argsort(sim[finite], kind="stable")
            ranks = np.empty(order.size)
            ranks[order] = np.arange(order.size) / max(order.size - 1, 1)
            q[finite] = ranks
        score = (1.0 - config.seed_weight) * p + config.seed_weight * q
    order = np.lexsort((est.source_id, -score))
    p_sorted = p[order]
    total = float(np.nansum(p))
    # Expected quality of the list *as ranked* (with seeds the ranking is not by p).
    cum = np.cumsum(p_sorted)
    cum_var = np.cumsum(p_sorted * (1.0 - p_sorted))
    if config.top is not None:
        n = config.top
    else:
        n = int(np.sum(p_sorted >= config.min_prob)) if sim is None else \
            int(np.sum(p >= config.min_prob))
    chosen = _cut(p_sorted, cum, cum_var, total, n)
    sizes = sorted({s for s in SUMMARY_SIZES if s < p_sorted.size} | {chosen.n})
    curve = [_cut(p_sorted, cum, cum_var, total, s) for s in sizes if s > 0]
    rows = order[:chosen.n]
    table = _result_table(tables, est, rows, p, score, sim, cum, total, label)
    return HuntResult(table=table, chosen=chosen, curve=curve, expected_total=total,
                      n_stars=int(est.source_id.size), calibrated=calibration.calibrated,
                      n_out_of_domain=est.n_out_of_domain, prior_fraction=est.prior_fraction,
                      prior_fraction_se=est.prior_fraction_se,
                      prior_adapted=config.adapt_prior)


def _result_table(tables, est, rows, p, score, sim, cum, total, label) -> pa.Table:
    n = rows.size
    mods = list(est.per_modality)
    has = {m: est.per_modality[m]["row"][rows] >= 0 for m in mods}
    cols: dict[str, pa.Array] = {
        "rank": pa.array(np.arange(1, n + 1), pa.int32()),
        "source_id": pa.array(est.source_id[rows], pa.int64()),
        "modalities": pa.array(["+".join(m for m in mods if has[m][i]) for i in range(n)],
                               pa.string()),
        "p_metal_poor": pa.array(p[rows].astype(np.float32)),
        f"{label}_post_mean": pa.array(est.mean[rows].astype(np.float32)),
        f"{label}_post_sd": pa.array(est.sd[rows].astype(np.float32)),
        "n_measurements": pa.array(est.n_measurements[rows].astype(np.int32)),
    }
    if sim is not None:
        cols["seed_similarity"] = pa.array(sim[rows].astype(np.float32))
    cols["rank_score"] = pa.array(score[rows].astype(np.float32))
    ranks = np.arange(1, n + 1)
    cols["expected_purity"] = pa.array((cum[:n] / ranks).astype(np.float32))
    cols["expected_completeness"] = pa.array(
        (cum[:n] / total if total > 0 else np.zeros(n)).astype(np.float32))
    first_table_row = np.full(n, -1, np.int64)
    first_modality = np.full(n, "", dtype=object)
    for m in mods:
        t = tables[m]
        r = est.per_modality[m]["row"][rows]
        ok = r >= 0
        pred = np.where(ok, t.column(f"{label}_pred")[np.clip(r, 0, None)], np.nan)
        err = np.where(ok, t.column(f"{label}_err")[np.clip(r, 0, None)], np.nan)
        spid = np.where(ok, t.spectrum_id[np.clip(r, 0, None)].astype(str), "")
        cols[f"{label}_pred_{m}"] = pa.array(pred.astype(np.float32), mask=~ok)
        cols[f"{label}_err_{m}"] = pa.array(err.astype(np.float32), mask=~ok)
        cols[f"spectrum_id_{m}"] = pa.array(spid.astype(str), pa.string())
        take = (first_table_row < 0) & ok
        first_table_row[take] = r[take]
        first_modality[take] = m
    # Other head predictions and metadata from the star's first row (LAMOST preferred).
    meta_parts = []
    for m in sorted(mods, key=lambda x: x != "lamost"):
        sel = np.flatnonzero(first_modality == m)
        if sel.size:
            t = tables[m].meta.take(pa.array(first_table_row[sel], pa.int64()))
            meta_parts.append((sel, t))
    skip = set(cols) | {"source_id", "spectrum_id", "modality", f"{label}_pred",
                        f"{label}_err"}
    if meta_parts:
        merged = pa.concat_tables([t for _, t in meta_parts], promote_options="permissive")
        position = np.concatenate([sel for sel, _ in meta_parts])
        inverse = np.empty(n, np.int64)
        inverse[position] = np.arange(n)
        merged = merged.take(pa.array(inverse, pa.int64()))
        for name in merged.column_names:
            if name not in skip and not pa.types.is_fixed_size_list(merged.column(name).type):
                cols[name] = merged.column(name)
    return pa.table(cols)
