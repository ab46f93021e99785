"""Per-star individuality of the synthetic survey: abundances, rotation, extinction law."""

from __future__ import annotations

import numpy as np

from specsearch.synth import individuality as ind
from specsearch.synth.grid import model_wavelength
from specsearch.synth.model import stellar_spectra


def test_draw_is_reproducible_and_hot_stars_rotate_faster():
    teff = np.array([5000.0] * 400 + [8500.0] * 400)
    logg = np.full(teff.size, 4.3)
    a = ind.draw(np.random.default_rng(1), teff, logg)
    b = ind.draw(np.random.default_rng(1), teff, logg)
    assert np.array_equal(a.abund, b.abund) and np.array_equal(a.vsini, b.vsini)
    assert a.abund.shape == (teff.size, len(ind.ELEMENTS))
    assert np.median(a.vsini[400:]) > 10 * np.median(a.vsini[:400])
    assert (a.r_v >= ind.R_V_GRID[0] - 1e-5).all() and (a.r_v <= ind.R_V_GRID[-1] + 1e-5).all()
    assert 0.03 < a.abund[:, ind.ELEMENTS.index("mg")].std() < 0.07


def test_abundance_offsets_act_only_in_their_windows():
    wave = model_wavelength()
    norm = np.full((2, wave.size), 0.6, np.float32)
    abund = np.zeros((2, len(ind.ELEMENTS)), np.float32)
    abund[1, ind.ELEMENTS.index("na")] = 0.3
    out = ind.apply_abundances(norm.copy(), abund)
    assert np.allclose(out[0], 0.6, atol=1e-5)                     # no offset: unchanged
    na_d = np.argmin(np.abs(wave - 5891.6))                          # Na D2 (vacuum)
    far = np.argmin(np.abs(wave - 5300.0))
    assert out[1, na_d] < 0.5                                        # deeper line
    assert abs(out[1, far] - 0.6) < 1e-5


def test_rotation_broadens_lines_and_keeps_their_strength():
    wave = model_wavelength()
    norm = np.ones((2, wave.size), np.float32)
    c = np.argmin(np.abs(wave - 6000.0))
    norm[:, c - 3:c + 4] = 0.5
    out = ind.apply_rotation(norm.copy(), np.array([0.0, 200.0]))
    assert np.array_equal(out[0], norm[0])
    assert out[1, c] > 0.55
    assert abs((1 - out[1]).sum() - (1 - norm[1]).sum()) < 0.05 * (1 - norm[1]).sum()


def test_two_stars_with_the_same_labels_differ():
    one = np.ones(2)
    rng = np.random.default_rng(4)
    i = ind.draw(rng, 5800.0 * one, 4.4 * one)
    f = stellar_spectra(5800.0 * one, 4.4 * one, 0.0 * one, 0.0 * one, individuality=i)
    same = stellar_spectra(5800.0 * one, 4.4 * one, 0.0 * one, 0.0 * one)
    assert np.allclose(same[0], same[1])
    assert np.abs(f[0] / f[1] - 1).max() > 0.01
