"""The metal-poor hunt: rank stars by P([Fe/H] < threshold), with expected purity/completeness.

Per star (``source_id``): each modality's rows (several visits are combined by inverse
variance) give a calibrated Gaussian for [Fe/H] (:mod:`specsearch.hunt.calibration`); stars
with both spectra combine the two. ``p_metal_poor`` is the probability below the threshold.

Because the probabilities are calibrated, the *expected* purity of any list is the mean of
its ``p`` and its expected completeness is its sum of ``p`` over the sum over all stars
searched. Both are reported per row (cumulative down the ranking) and for the chosen cut, so
a user can pick a follow-up list size. Optional seed spectra (known metal-poor stars) re-rank
by a blend of ``p`` and similarity to the seeds; the reported purity stays the calibrated
one of the list actually chosen.
"""

from __future__ import annotations

import dataclasses

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from specsearch.rows import EmbeddingTable
from specsearch.errors import ConfigError, QueryError
from specsearch.fsutil import now_iso
from specsearch.hunt.calibration import (GRID, FehCalibration, HuntCalibration,
                                         posterior_summaries)
from specsearch.hunt.calibration_fit import cross_fitted_checks, fit_measurement, fit_prior
from specsearch.hunt.pool_prior import (POOL_BIN_EDGES, below_fraction_se, bin_evidence,
                                        bin_overlap, fit_pool_weights, reweighted_prior)

MODES = ("any", "lamost", "xp", "both")


@dataclass(frozen=True, kw_only=True)
class HuntConfig:
    """What the hunt ranks and where it cuts.

    Attributes:
        feh_max: the threshold (dex): P([Fe/H] < feh_max).
        mode: ``any`` (every star; both predictions combined where it has both), ``lamost``
            or ``xp`` (that modality alone), ``both`` (only stars with both spectra).
        top: list size; None cuts at ``min_prob`` instead.
        min_prob: lowest p in the list when ``top`` is None.
        seed_weight: weight of the seed-similarity rank in the ranking score (0..1; used
            only when seeds are given).
        adapt_prior: refit the prior's fraction of stars below ``feh_max`` to the pool
            searched (for a pool selected unlike the survey the calibration describes;
            :func:`star_estimates`).
    """

    feh_max: float = -2.0
    mode: str = "any"
    top: int | None = None
    min_prob: float = 0.5
    seed_weight: float = 0.3
    adapt_prior: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"hunt mode must be one of {MODES}, got {self.mode!r}")
        if self.top is not None and self.top < 1:
            raise ConfigError(f"--top must be >= 1, got {self.top}")
        if not 0.0 <= self.min_prob <= 1.0 or not 0.0 <= self.seed_weight <= 1.0:
            raise ConfigError("min_prob and seed_weight must lie in [0, 1]")


@dataclass
class StarEstimates:
    """Per-star posterior summaries (arrays aligned on ``source_id``, sorted).

    Attributes:
        source_id: the stars.
        p_below: posterior probability that [Fe/H] < the threshold.
        mean, sd: posterior mean and standard deviation of [Fe/H] (dex).
        n_measurements: rows (visits x modalities) that informed each star.
        n_out_of_domain: rows left out because the model's domain check flagged them
            (``out_of_domain``: the model does not know stars like them, so their [Fe/H]
            reading says nothing).
        per_modality: modality -> {"row": first row of the star in that table (-1: none)}.
        prior_fraction: the prior's mass below the threshold that the posteriors used: the
            calibration's, or with ``adapt_prior`` the pool's own maximum-likelihood
            fraction (:func:`specsearch.hunt.pool_prior.fit_pool_weights`).
        prior_fraction_se: its standard error (None when not fitted).
        calibration_fraction: the calibration prior's mass below the threshold.
    """

    source_id: np.ndarray
    p_below: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    n_measurements: np.ndarray
    per_modality: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    n_out_of_domain: int = 0
    prior_fraction: float = float("nan")
    prior_fraction_se: float | None = None
    calibration_fraction: float = float("nan")


def star_estimates(tables: Mapping[str, EmbeddingTable], calibration: HuntCalibration, *,
                   threshold: float, mode: str = "any", label: str = "feh",
                   row_masks: Mapping[str, np.ndarray] | None = None,
                   chunk: int = 20_000, adapt_prior: bool = False) -> StarEstimates:
    """Posterior [Fe/H] of every star from all its measurements (module docstring).

    With ``adapt_prior`` the prior is refitted to the pool first (the pool must be chosen
    independently of the [Fe/H] reading: :func:`check_pool_filters`): the weights of the
    [Fe/H] bins that ``POOL_BIN_EDGES`` cut around the threshold (by default the two sides
    of it; the calibration's shape kept inside each), by maximum likelihood
    (:func:`specsearch.hunt.pool_prior.fit_pool_weights`), for a pool selected to be
    richer, or poorer, in metal-poor stars than the survey the calibration describes.
    p, and with it every expected number, follows the pool; with two bins the order of
    the stars barely changes (only where the threshold cuts a grid cell). Two passes
    over the pool; between them one number per star and bin is kept.
    """
    rows: dict[str, dict[str, np.ndarray]] = {}
    n_ood = 0
    for modality, table in tables.items():
        if mode in ("lamost", "xp") and modality != mode:
            continue
        for col in (f"{label}_pred", f"{label}_err"):
            if not table.has(col):
                raise QueryError(f"{modality}: no column {col!r}: the hunt needs the heads' "
                                 f"[Fe/H] predictions (columns: {table.meta.column_names})")
        pred = table.column(f"{label}_pred")
        err = table.column(f"{label}_err")
        ok = np.isfinite(pred) & np.isfinite(err) & (err > 0)
        mask = (row_masks or {}).get(modality)
        if mask is not None:
            ok &= np.asarray(mask, bool)
        if table.has("out_of_domain"):
            ood = np.asarray(table.meta.column("out_of_domain").fill_null(False)
                             .to_numpy(zero_copy_only=False), bool)
            n_ood += int((ok & ood).sum())
            ok &= ~ood
        idx = np.flatnonzero(ok)
        rows[modality] = {"row": idx, "sid": table.source_id[idx], "pred": pred[idx],
                          "err": err[idx]}
    if not rows:
        raise QueryError(f"no modality to hunt in for mode {mode!r} (have {sorted(tables)})")
    ids = np.unique(np.concatenate([r["sid"] for r in rows.values()]))
    if mode == "both":
        if len(rows) < 2:
            raise QueryError("mode 'both' needs LAMOST and XP data")
        for r in rows.values():
            ids = np.intersect1d(ids, r["sid"])
    n = ids.size
    per: dict[str, dict[str, np.ndarray]] = {}
    n_meas = np.zeros(n, np.int64)
    for modality, r in rows.items():
        pos = np.searchsorted(ids, r["sid"])
        hit = (pos < n) & (ids[np.minimum(pos, max(n - 1, 0))] == r["sid"]) if n else \
            np.zeros(pos.size, bool)
        order = np.argsort(pos[hit], kind="stable")
        for k in ("row", "sid", "pred", "err"):
            r[k] = r[k][hit][order]
        r["pos"] = pos[hit][order]
        first = np.full(n, -1, np.int64)
        uniq, start = np.unique(r["pos"], return_index=True)
        first[uniq] = r["row"][start]
        per[modality] = {"row": first}
        n_meas += np.bincount(r["pos"], minlength=n)

    def logliks():
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            loglik = np.zeros((b - a, GRID.size))
            for modality, r in rows.items():
                lo, hi = np.searchsorted(r["pos"], [a, b])
                if hi == lo:
                    continue
                ll = calibration.for_modality(modality).loglik(r["pred"][lo:hi],
                                                               r["err"][lo:hi])
                uniq, start = np.unique(r["pos"][lo:hi], return_index=True)
                loglik[uniq - a] += np.add.reduceat(ll, start, axis=0)
            yield a, b, loglik

    if adapt_prior and n:
        used, fraction, se, w0 = adapted_calibration(calibration, logliks(), threshold, n)
    else:
        used, se = calibration, None
        fraction = w0 = calibration_fraction(calibration, threshold)
    p = np.zeros(n)
    mean = np.full(n, np.nan)
    sd = np.full(n, np.nan)
    for a, b, loglik in logliks():
        p[a:b], mean[a:b], sd[a:b] = posterior_summaries(used.posterior(loglik), threshold)
    return StarEstimates(source_id=ids, p_below=p, mean=mean, sd=sd, n_measurements=n_meas,
                         per_modality=per, n_out_of_domain=n_ood, prior_fraction=fraction,
                         prior_fraction_se=se, calibration_fraction=w0)


def check_pool_filters(filters, label: str = "feh") -> None:
    """Refuse a pool prior on a pool selected by the measurement itself.

    Refitting the prior assumes the pool was chosen independently of the [Fe/H] reading
    (sky area, magnitude, colour, kinematics, a target list). A filter on the reading
    (``feh_pred<-1``) keeps the normal stars whose noise scattered them low; their
    likelihoods then look metal-poor and the refit counts them as such (on the synthetic
    evaluation survey: 41% below -2 fitted where 13% are, BENCHMARKS.md). Filters on
    other head outputs that correlate with [Fe/H] (``alpha_fe_pred``) bias it as well;
    they are not refused, since their effect depends on the pool."""
    from specsearch.query.filters import Filter

    bad = [c.column for c in Filter.parse(filters).conditions
           if c.column.startswith(f"{label}_") or c.column == "p_metal_poor"]
    if bad:
        raise QueryError(f"the pool prior (adapt_prior) needs a pool chosen independently of "
                         f"the {label} measurement; the filter on {', '.join(sorted(set(bad)))} "
                         f"selects on it (drop the filter, or hunt without adapt_prior)")


def _pool_bins(calibration: HuntCalibration, threshold: float
               ) -> tuple[np.ndarray, np.ndarray, int]:
    overlap = bin_overlap(threshold + np.asarray(POOL_BIN_EDGES))
    _, mass = bin_evidence(np.zeros((1, GRID.size)), calibration.log_prior, overlap)
    return overlap, mass, int(np.searchsorted(POOL_BIN_EDGES, 0.0)) + 1


def calibration_fraction(calibration: HuntCalibration, threshold: float) -> float:
    """The calibration prior's mass below ``threshold``."""
    _, mass, n_below = _pool_bins(calibration, threshold)
    return float(mass[:n_below].sum())


def adapted_calibration(calibration: HuntCalibration, logliks, threshold: float,
                        n: int | None = None
                        ) -> tuple[HuntCalibration, float, float, float]:
    """``calibration`` with its prior refitted to a pool (see :func:`star_estimates`).

    ``logliks``: the pool's (n, G) log-likelihoods, or an iterable of (start, stop,
    chunk) with ``n`` rows in all. Returns (the adapted calibration, the fitted fraction
    below ``threshold``, its standard error, the calibration's own fraction).
    """
    overlap, mass, n_below = _pool_bins(calibration, threshold)
    if isinstance(logliks, np.ndarray):
        logliks, n = [(0, logliks.shape[0], logliks)], logliks.shape[0]
    log_ev = np.zeros((int(n), mass.size), np.float32)
    for a, b, loglik in logliks:
        log_ev[a:b] = bin_evidence(loglik, calibration.log_prior, overlap)[0]
    w = fit_pool_weights(log_ev, mass)
    used = dataclasses.replace(
        calibration, prior=reweighted_prior(calibration.log_prior, overlap, mass, w))
    return (used, float(w[:n_below].sum()), below_fraction_se(log_ev, w, n_below),
            float(mass[:n_below].sum()))


def fit_hunt_calibration(tables: Mapping[str, EmbeddingTable], *, label: str = "feh",
                         source: str = "", row_masks: Mapping[str, np.ndarray] | None = None
                         ) -> HuntCalibration:
    """Fit each modality's measurement model and the prior on labelled rows (the tables
    must hold the true ``label`` column, e.g. a validation split never hunted in)."""
    mods: dict[str, FehCalibration] = {}
    truths = []
    for modality, table in tables.items():
        if not table.has(label):
            raise ConfigError(f"{modality}: no true {label!r} column to calibrate on "
                              f"(columns: {table.meta.column_names})")
        truth = table.column(label)
        mask = (row_masks or {}).get(modality)
        if mask is not None:
            truth = np.where(mask, truth, np.nan)
        pred, err = table.column(f"{label}_pred"), table.column(f"{label}_err")
        mods[modality] = fit_measurement(pred, err, truth, modality=modality)
        mods[modality].checks = cross_fitted_checks(pred, err, truth, modality=modality)
        ok = np.isfinite(truth)
        _, first = np.unique(table.source_id[ok], return_index=True)
        truths.append((table.source_id[ok][first], truth[ok][first]))
    sid = np.concatenate([t[0] for t in truths])
    val = np.concatenate([t[1] for t in truths])
    _, first = np.unique(sid, return_index=True)
    hashes = {t.model_hash for t in tables.values()}
    return HuntCalibration(modalities=mods, prior=fit_prior(val[first]).tolist(), label=label,
                           created=now_iso(), source=source,
                           model_hash=hashes.pop() if len(hashes) == 1 else "")


def seed_similarity(tables: Mapping[str, EmbeddingTable], ids: np.ndarray,
                    seeds: np.ndarray) -> np.ndarray:
    """(stars,) the best cosine similarity of any of a star's rows to any seed vector."""
    seeds = np.atleast_2d(np.asarray(seeds, dtype=np.float32))
    best = np.full(ids.size, -np.inf)
    for table in tables.values():
        sid = table.source_id
        sims = np.full(len(table), -np.inf)
        for start in range(0, len(table), 65_536):
            block = table.vectors[start:start + 65_536] @ seeds.T
            sims[start:start + 65_536] = block.max(axis=1)
        pos = np.clip(np.searchsorted(ids, sid), 0, max(ids.size - 1, 0))
        hit = ids[pos] == sid if ids.size else np.zeros(sid.size, bool)
        np.maximum.at(best, pos[hit], sims[hit])
    return best
