"""The metal-poor hunt: calibrated probabilities, combination of modalities, seeds, CLI."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import binomtest

from specsearch.rows import EmbeddingTable
from specsearch.cli import main
from specsearch.errors import ConfigError
from specsearch.hunt import (FehCalibration, HuntCalibration, HuntConfig, fit_calibration,
                             fit_hunt_calibration, hunt)

DIM = 8
NOISE = {"lamost": 0.12, "xp": 0.3}


def survey(n: int, seed: int, *, mp_fraction: float = 0.03):
    """Stars with true [Fe/H] (a disk + a metal-poor tail) and head-like predictions that
    regress to the mean and whose reported errors are 30% too small (what calibration
    must fix). Metal-poor stars sit in their own region of the embedding."""
    rng = np.random.default_rng(seed)
    mp = rng.random(n) < mp_fraction
    true = np.where(mp, rng.uniform(-3.8, -1.8, n), rng.normal(-0.3, 0.35, n))
    sid = np.arange(n, dtype=np.int64) + seed * 1_000_000
    centre = np.zeros(DIM)
    centre[0] = 1.0
    tables = {}
    for m, noise in NOISE.items():
        err = noise * rng.uniform(0.6, 1.4, n)
        pred = 0.9 * true - 0.03 + err * rng.standard_normal(n)
        v = rng.standard_normal((n, DIM)) * 0.3
        v[mp] += 2.0 * centre
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        meta = pa.table({"spectrum_id": [f"{m}-{s}" for s in sid], "source_id": sid,
                         "feh_pred": pred.astype(np.float32),
                         "feh_err": (0.7 * err).astype(np.float32),
                         "feh": true.astype(np.float32),
                         "snr": rng.uniform(5, 100, n).astype(np.float32)})
        tables[m] = EmbeddingTable(m, v.astype(np.float32), meta, ("feh",), "h")
    return tables, true, sid


@pytest.fixture(scope="module")
def calibration() -> HuntCalibration:
    tables, _, _ = survey(20_000, seed=1)
    return fit_hunt_calibration(tables)


def test_calibration_fixes_the_error_scale(calibration):
    lam = calibration.modalities["lamost"]
    assert lam.scale == pytest.approx(1 / 0.7, rel=0.1)          # reported errors 30% small
    assert lam.checks["z_robust_width"] == pytest.approx(1.0, abs=0.1)
    for key in ("feh<-2.0", "feh<-2.5"):
        assert lam.checks[key]["ece"] < 0.01


@pytest.mark.parametrize("mode", ["lamost", "xp", "any"])
def test_hunt_probabilities_are_calibrated_on_new_stars(calibration, mode):
    tables, true, sid = survey(20_000, seed=2)
    res = hunt(tables, calibration, config=HuntConfig(feh_max=-2.0, mode=mode, top=20_000))
    p = res.table.column("p_metal_poor").to_numpy()
    below = true[res.table.column("source_id").to_numpy() - 2_000_000] < -2.0
    # Expected and observed counts agree overall and within probability bins.
    assert abs(p.sum() - below.sum()) < 4 * np.sqrt(p.sum()) + 5
    for lo, hi in ((0.05, 0.5), (0.5, 0.95), (0.95, 1.01)):
        sel = (p >= lo) & (p < hi)
        if sel.sum() >= 20:
            test = binomtest(int(below[sel].sum()), int(sel.sum()), float(p[sel].mean()))
            assert test.pvalue > 1e-3, (mode, lo, hi, below[sel].mean(), p[sel].mean())
    # Expected purity of the chosen-by-p list matches what it really holds.
    chosen = hunt(tables, calibration, config=HuntConfig(feh_max=-2.0, mode=mode))
    got = true[chosen.table.column("source_id").to_numpy() - 2_000_000] < -2.0
    assert got.mean() == pytest.approx(chosen.chosen.expected_purity, abs=0.06)


def test_both_modalities_beat_either_alone(calibration):
    tables, true, _ = survey(10_000, seed=3)
    loss = {}
    for mode in ("lamost", "xp", "any"):
        res = hunt(tables, calibration, config=HuntConfig(feh_max=-2.0, mode=mode,
                                                          top=10_000))
        p = np.clip(res.table.column("p_metal_poor").to_numpy(), 1e-6, 1 - 1e-6)
        y = true[res.table.column("source_id").to_numpy() - 3_000_000] < -2.0
        loss[mode] = -np.mean(np.where(y, np.log(p), np.log(1 - p)))   # a proper score
    assert loss["any"] < loss["lamost"] < loss["xp"]


def test_seeds_pull_similar_stars_up(calibration):
    tables, true, sid = survey(5000, seed=4)
    seeds = tables["lamost"].vectors[true < -2.5][:3]
    plain = hunt(tables, HuntCalibration({}), config=HuntConfig(feh_max=-2.0, top=200))
    seeded = hunt(tables, HuntCalibration({}), config=HuntConfig(feh_max=-2.0, top=200,
                                                                 seed_weight=0.6),
                  seeds=seeds)
    assert "seed_similarity" in seeded.table.column_names
    frac = [np.mean(true[r.table.column("source_id").to_numpy() - 4_000_000] < -2.0)
            for r in (plain, seeded)]
    assert frac[1] >= frac[0]


def test_summary_reports_purity_and_completeness(calibration):
    tables, _, _ = survey(10_000, seed=5)
    res = hunt(tables, calibration, config=HuntConfig(feh_max=-2.5, top=150))
    assert res.chosen.n == 150 and res.table.num_rows == 150
    assert 0 < res.chosen.expected_completeness <= 1
    assert any("<- chosen" in line for line in res.summary_lines())
    purity = res.table.column("expected_purity").to_numpy()
    assert purity[-1] == pytest.approx(res.chosen.expected_purity, rel=1e-5)
    # the counting noise of the list: the Poisson-binomial of its calibrated p
    from specsearch.hunt.hunt import found_agreement
    p = res.table.column("p_metal_poor").to_numpy().astype(np.float64)
    expect = found_agreement(p, 0)
    assert res.chosen.expected_true == pytest.approx(expect["expected"], rel=1e-4)
    assert res.chosen.expected_true_sd == pytest.approx(expect["sd"], rel=1e-4)
    assert any(f"+- {res.chosen.expected_true_sd:.1f}" in line for line in res.summary_lines())


def test_calibration_json_round_trip(calibration, tmp_path):
    path = calibration.save(tmp_path / "cal.json")
    back = HuntCalibration.load(path)
    p = np.array([-2.5, -1.0, 0.0])
    e = np.array([0.1, 0.2, 0.1])
    for m in ("lamost", "xp"):
        np.testing.assert_allclose(back.posterior(back.for_modality(m).loglik(p, e)),
                                   calibration.posterior(calibration.for_modality(m).loglik(
                                       p, e)))
    (tmp_path / "bad.json").write_text('{"kind": "something else"}')
    with pytest.raises(ConfigError, match="hunt calibration"):
        HuntCalibration.load(tmp_path / "bad.json")


def test_too_few_labels_is_a_clear_error():
    with pytest.raises(ConfigError, match=">= 50"):
        fit_calibration(np.zeros(10), np.ones(10), np.zeros(10), modality="xp")
    ident = FehCalibration.identity("xp")
    from specsearch.hunt.calibration import GRID, posterior_summaries
    post = HuntCalibration({}).posterior(ident.loglik(np.array([-2.0]), np.array([0.1])))
    p, mean, sd = posterior_summaries(post, -2.0)
    assert p[0] == pytest.approx(0.5, abs=0.03) and sd[0] == pytest.approx(0.1, rel=0.05)
    assert GRID[0] <= -4.5


def test_hunt_and_calibrate_commands(tmp_path, capsys):
    from astropy.table import Table

    from specsearch.io.embeddings import EmbeddingsWriter

    for name, seed in (("val", 6), ("survey", 7)):
        tables, _, _ = survey(4000, seed=seed, mp_fraction=0.05)
        for m, t in tables.items():
            with EmbeddingsWriter(tmp_path / name, m, model_hash="h", embedding_dim=DIM,
                                  label_names=["feh"]) as w:
                w.write({**{c: t.meta.column(c) for c in t.meta.column_names},
                         "modality": [m] * len(t), "embedding": t.vectors})
    cal = tmp_path / "cal.json"
    assert main(["hunt-calibrate", str(tmp_path / "val"), "--out", str(cal)]) == 0
    assert "lamost: n=4000" in capsys.readouterr().out
    out = tmp_path / "vmp.fits"
    assert main(["hunt", str(tmp_path / "survey"), "--feh-max", "-2", "--out", str(out),
                 "--calibration", str(cal), "--mode", "both"]) == 0
    text = capsys.readouterr().out
    assert "calibrated" in text and "<- chosen" in text
    assert main(["hunt", str(tmp_path / "survey"), "--feh-max", "-2", "--out",
                 str(tmp_path / "vmp2.csv"), "--calibration", str(cal), "--mode", "both",
                 "--adapt-prior", "--filter", "snr>=10"]) == 0
    assert "prior refitted to this pool" in capsys.readouterr().out
    # a pool selected by the [Fe/H] reading itself is refused, naming the column
    assert main(["hunt", str(tmp_path / "survey"), "--feh-max", "-2", "--out",
                 str(tmp_path / "vmp3.csv"), "--calibration", str(cal),
                 "--adapt-prior", "--filter", "feh_pred<-1"]) == 2
    assert "feh_pred" in capsys.readouterr().err
    got = Table.read(out)
    assert np.all(np.diff(np.asarray(got["rank"])) == 1)
    assert np.all(np.asarray(got["p_metal_poor"]) >= 0.5)
    assert np.mean(np.asarray(got["feh"]) < -2.0) > 0.7


def test_found_agreement_is_the_poisson_binomial_of_the_list():
    from specsearch.hunt.hunt import EXACT_AGREEMENT_MAX, found_agreement

    a = found_agreement(np.array([0.5, 0.5]), 2)         # counts 0/1/2 at 1/4, 1/2, 1/4
    assert a["expected"] == pytest.approx(1.0) and a["sd"] == pytest.approx(np.sqrt(0.5))
    assert a["p_at_least"] == pytest.approx(0.25) and a["p_at_most"] == pytest.approx(1.0)
    # certain members: finding fewer is (nearly) impossible
    assert found_agreement(np.array([1.0, 1.0, 0.9]), 1)["p_at_most"] < 1e-6
    # long lists: the normal approximation agrees with the exact count
    rng = np.random.default_rng(3)
    p = rng.uniform(0.0, 0.3, EXACT_AGREEMENT_MAX)
    exact = found_agreement(p, 700)["p_at_least"]
    approx = found_agreement(np.concatenate([p, [0.0]]), 700)["p_at_least"]
    assert approx == pytest.approx(exact, abs=0.01)
    with pytest.raises(ValueError, match="found must lie"):
        found_agreement(np.array([0.2]), 2)


def test_pool_weights_are_the_mixture_maximum_likelihood():
    from specsearch.hunt.calibration import GRID
    from specsearch.hunt.pool_prior import (bin_evidence, bin_overlap, fit_pool_weights,
                                            reweighted_prior)

    rng = np.random.default_rng(11)
    overlap = bin_overlap(np.array([-2.0]))            # two bins: below / above -2
    assert np.allclose(overlap.sum(1), 1.0)
    assert overlap[GRID < -2.02, 0].min() == 1.0 and overlap[GRID > -1.98, 1].min() == 1.0
    prior = np.where(GRID < -2, 0.2, 1.0)
    log_prior = np.log(prior / prior.sum())
    # stars drawn from a prior with 40% below -2, measured with 0.3 dex Gaussian errors
    true = np.where(rng.random(4000) < 0.4, rng.uniform(-5, -2, 4000),
                    rng.uniform(-2, 1, 4000))
    pred = true + 0.3 * rng.standard_normal(4000)
    ll = -0.5 * ((pred[:, None] - GRID[None, :]) / 0.3) ** 2
    log_ev, mass = bin_evidence(ll, log_prior, overlap)
    assert mass[0] == pytest.approx(0.2 * 3 / (0.2 * 3 + 3), abs=0.01)
    w = fit_pool_weights(log_ev, mass)
    assert w.sum() == pytest.approx(1.0) and w[0] == pytest.approx(0.4, abs=0.03)
    new = np.asarray(reweighted_prior(log_prior, overlap, mass, w))
    # (the cell the edge cuts in two takes the mean of its two factors: not exact there)
    assert new @ overlap[:, 0] == pytest.approx(w[0], abs=5e-3)
    # the shape inside a bin is kept
    inside = GRID < -2.1
    assert np.allclose(new[inside] / new[inside][0], prior[inside] / prior[inside][0])
    with pytest.raises(ValueError, match="no stars"):
        fit_pool_weights(np.zeros((0, 2)), mass)


def _prior_shifted_pool(fraction: float, seed: int):
    """A survey subsampled so that a ``fraction`` of its stars lie below -2, each side
    keeping its own [Fe/H] distribution (a pure prior shift, as a pre-selected sample)."""
    tables, true, sid = survey(40_000, seed=seed)
    rng = np.random.default_rng(seed)
    below, above = np.flatnonzero(true < -2.0), np.flatnonzero(true >= -2.0)
    if fraction > below.size / true.size:
        above = rng.choice(above, int(below.size * (1 - fraction) / fraction), replace=False)
    else:
        below = rng.choice(below, int(above.size * fraction / (1 - fraction)), replace=False)
    keep = np.sort(np.concatenate([below, above]))
    sub = {m: EmbeddingTable(m, t.vectors[keep], t.meta.take(pa.array(keep)), ("feh",), "h")
           for m, t in tables.items()}
    return sub, true[keep], sid[keep]


@pytest.mark.parametrize("fraction", [0.005, 0.10])
def test_adapted_prior_finds_the_pools_own_fraction(calibration, fraction):
    """The calibration describes a survey with ~3% below -2; in a pool selected to hold
    10% (or 0.5%), the ambiguous readings (XP alone: 0.3 dex errors) get probabilities
    that are off unless the prior adapts."""
    tables, true, sid = _prior_shifted_pool(fraction, seed=12)
    truth = (true < -2.0).mean()
    cfg = {"feh_max": -2.0, "top": len(true), "mode": "xp"}
    plain = hunt(tables, calibration, config=HuntConfig(**cfg))
    adapted = hunt(tables, calibration, config=HuntConfig(**cfg, adapt_prior=True))
    assert adapted.prior_adapted and not plain.prior_adapted
    assert plain.prior_fraction == pytest.approx(0.03, abs=0.01)       # the calibration's
    se = adapted.prior_fraction_se
    assert 0 < se < 0.01
    assert abs(adapted.prior_fraction - truth) < 3 * se
    n_true = (true < -2.0).sum()
    assert abs(adapted.expected_total - n_true) < 3 * np.sqrt(n_true) + 3
    assert abs(adapted.expected_total - n_true) < abs(plain.expected_total - n_true)
    # the stars the measurement leaves undecided: p now matches how many are below
    ids = plain.table.column("source_id").to_numpy()
    pp = plain.table.column("p_metal_poor").to_numpy()
    by_id = dict(zip(adapted.table.column("source_id").to_numpy().tolist(),
                     adapted.table.column("p_metal_poor").to_numpy().tolist()))
    pa_ = np.array([by_id[i] for i in ids.tolist()])
    # two bins: p moves (nearly) monotonically, so the plain ranking stays (the grid cell
    # the threshold cuts in two bends it a little for stars whose [Fe/H] sits right there)
    from scipy.stats import spearmanr
    assert spearmanr(pp, pa_).statistic > 0.999
    below = true[np.searchsorted(sid, ids)] < -2.0
    amb = (pp > 0.05) & (pp < 0.95)
    assert amb.sum() > 30
    assert abs(pa_[amb].mean() - below[amb].mean()) < abs(pp[amb].mean() - below[amb].mean())
    assert "prior refitted to this pool" in "\n".join(adapted.summary_lines())


def test_two_bin_fit_agrees_with_the_em():
    from specsearch.hunt.pool_prior import fit_pool_weights

    rng = np.random.default_rng(4)
    log_ev = rng.normal(0, 2, (3000, 2))
    log_ev[:, 0] -= 2.5                              # most stars favour the upper bin
    two = fit_pool_weights(log_ev, np.array([0.5, 0.5]))
    # the same mixture written with a third, empty-evidence bin takes the EM path
    three = fit_pool_weights(np.column_stack([log_ev, np.full(3000, -50.0)]),
                             np.array([0.4, 0.4, 0.2]), tol=1e-12, max_iter=100_000)
    assert three[2] < 1e-6
    np.testing.assert_allclose(two, three[:2] / three[:2].sum(), atol=1e-5)
