"""Realism corrections of the synthetic survey (fitted on real spectra) and the real-data
uncertainty calibration over groups."""

from __future__ import annotations

import numpy as np
import pytest

from specsearch.model.training.calibrate import _fit_scale_floor
from specsearch.synth import realism
from specsearch.synth.survey import generate_columns


def test_transfer_holds_its_edge_and_tapers_outside():
    coef = np.array([[0.1, 0.2], [1.0, -1.0], [0.0, 0.0], [0.0, 0.0]], np.float32)
    t = realism.Transfer(coef=coef, x_range=(-0.1, 0.1))
    x = np.array([0.0, 0.1, 0.1 + realism.TAPER_DEX / 2, 0.1 + 2 * realism.TAPER_DEX])
    out = t(realism.TEFF0 * 10.0 ** x)
    assert np.allclose(out[0], [0.1, 0.2])
    assert np.allclose(out[1], [0.2, 0.1], atol=1e-6)          # edge value
    assert np.allclose(out[2], 0.5 * out[1], atol=1e-6)        # half way down the taper
    assert np.allclose(out[3], 0.0)
    assert np.allclose(t(np.array([np.nan])), 0.0)             # no Teff: no correction
    assert t.factor(np.array([realism.TEFF0])).dtype == np.float32


def test_shipped_corrections_load_and_are_bounded():
    tr = realism.load()
    teff = np.array([3500.0, 4500.0, 5800.0, 7000.0, 9000.0, 20000.0])
    for name, npix in (("xp", 343), ("lamost", 3909)):
        c = tr[name](teff)
        assert c.shape == (teff.size, npix)
        assert np.isfinite(c).all()
        assert np.abs(c).max() < 1.5, name


def test_survey_applies_realism_only_when_asked():
    lam, xp = generate_columns(12, seed=5)
    lam0, xp0 = generate_columns(12, seed=5, realism=False)
    # Same stars and the same random draws: only the corrected spectra differ.
    assert np.array_equal(lam["teff"], lam0["teff"])
    ratio = np.median(xp["flux"] / xp0["flux"], axis=0)
    assert np.abs(np.log(ratio)).max() > 0.05          # the XP blue end moves
    again, _ = generate_columns(12, seed=5)
    assert np.array_equal(again["flux"], lam["flux"])  # deterministic


def test_scale_floor_fit_recovers_scale_and_floor():
    rng = np.random.default_rng(0)
    n = 1500
    s0 = rng.uniform(0.02, 0.2, n)
    group = (s0 > 0.1).astype(int)          # small- and large-error stars as two groups
    r = rng.normal(0.0, np.sqrt((1.8 * s0) ** 2 + 0.08 ** 2))
    k, f = _fit_scale_floor(r, s0, group, min_group=15)
    assert k == pytest.approx(1.8, rel=0.15)
    assert f == pytest.approx(0.08, rel=0.3)


def test_xp_correction_generalises_to_held_out_types(real_data):
    transfer, stats = realism.fit_xp(real_data)
    held = [i for i, f in enumerate(stats["fit"]) if not f]
    assert len(held) >= 10
    before = np.median([stats["rms_before"][i] for i in held])
    after = np.median([stats["rms_after"][i] for i in held])
    assert after < 0.5 * before
