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
