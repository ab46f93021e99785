"""Artefact screening: each kind of data problem is flagged, astrophysics is not."""

from __future__ import annotations

import numpy as np
import pytest

from specsearch.anomaly.artefacts import colour_index, quality_features
from specsearch.anomaly.screening import features_of_arrays, screen
from specsearch.preprocess import LAMOST_GRID, XP_GRID, air_to_vacuum

WAVE = LAMOST_GRID.wavelength
LINES = np.array([3934.8, 3969.6, 4102.9, 4341.7, 4862.7, 5174.0, 5185.0, 5891.6, 5897.6,
                  6564.6, 8500.4, 8544.4, 8664.5])


def stars(n: int, seed: int, *, snr: float = 60.0) -> tuple[np.ndarray, np.ndarray,
                                                               np.ndarray]:
    """Simple FGK-like spectra: a blackbody-ish slope, absorption lines, Gaussian noise."""
    rng = np.random.default_rng(seed)
    teff = rng.uniform(4500, 7000, n)
    x = 1.4388e8 / (WAVE[None, :] * teff[:, None])
    flux = 1.0 / (WAVE[None, :] / 5500.0) ** 5 / np.expm1(x) * np.expm1(1.4388e8 / 5500
                                                                        / teff[:, None])
    for c in LINES:
        depth = rng.uniform(0.2, 0.6, (n, 1))
        flux *= 1.0 - depth * np.exp(-0.5 * ((WAVE - c) / 2.5) ** 2)
    sigma = flux / snr
    flux = flux + sigma * rng.standard_normal(flux.shape)
    return flux.astype(np.float32), (1.0 / sigma ** 2).astype(np.float32), teff


def line(centre: float, amp: float, sigma_a: float = 1.5) -> np.ndarray:
    return amp * np.exp(-0.5 * ((WAVE - centre) / sigma_a) ** 2)


@pytest.fixture(scope="module")
def sample():
    n = 400
    flux, ivar, teff = stars(n, seed=1)
    kinds = np.array([""] * n, dtype=object)
    level = np.median(flux, axis=1)
    rng = np.random.default_rng(2)
    # 0-9 spikes, 10-19 sky residuals, 20-29 dead segments, 30-39 arm-join steps,
    # 40-49 flux tilt, 50-59 emission-line stars (astrophysics: must stay clean).
    for i in range(0, 10):
        px = rng.integers(200, 3700)
        flux[i, px] += 3.0 * level[i]
        kinds[i] = "spikes"
    for i in range(10, 20):
        c = air_to_vacuum(np.array([rng.choice([5577.34, 6300.30, 7340.9, 8399.2])]))[0]
        flux[i] += line(c, 1.5 * level[i])
        kinds[i] = "sky_residual"
    for i in range(20, 30):
        start = rng.integers(300, 3000)
        flux[i, start:start + 300] *= 0.02
        kinds[i] = "dead_segment"
    for i in range(30, 40):
        flux[i, WAVE > 5850.0] *= rng.choice([0.55, 1.7])
        kinds[i] = "arm_join"
    for i in range(40, 50):
        p = rng.choice([-2.5, 2.5])
        flux[i] *= (WAVE / 5500.0) ** p
        ivar[i] /= ((WAVE / 5500.0) ** p) ** 2
        kinds[i] = "flux_tilt"
    for i in range(50, 60):
        flux[i] += line(6564.6, 2.0 * level[i], 2.0) + line(4862.7, 1.0 * level[i], 2.0)
        kinds[i] = "emission"
    feats = features_of_arrays(flux, ivar, "lamost")
    return feats, kinds, teff


def test_each_artefact_kind_is_flagged_by_its_own_flag(sample):
    feats, kinds, teff = sample
    flags = screen(feats, teff_pred=teff)
    for kind in ("spikes", "sky_residual", "dead_segment", "arm_join", "flux_tilt"):
        rows = kinds == kind
        assert flags.flags[kind][rows].mean() >= 0.9, kind
        assert flags.any[rows].all(), kind
        reasons = flags.reasons()[rows]
        assert all(kind in r for r in reasons[flags.flags[kind][rows]])


def test_clean_and_emission_line_stars_are_not_flagged(sample):
    feats, kinds, teff = sample
    flags = screen(feats, teff_pred=teff)
    assert flags.any[kinds == "emission"].sum() == 0
    assert flags.any[kinds == ""].mean() < 0.01


def test_tilt_judged_against_the_xp_colour():
    flux, ivar, teff = stars(300, seed=3)
    flux[:10] *= (WAVE / 5500.0) ** 2.0
    # The same stars seen by XP (no tilt): their colour from an XP-grid rebinning.
    xp_flux = np.stack([np.interp(XP_GRID.wavelength, WAVE, f) for f in
                        stars(300, seed=3)[0]])
    xp_colour = colour_index(xp_flux, np.ones_like(xp_flux), "xp")
    flags = screen(features_of_arrays(flux, ivar, "lamost"), xp_colour=xp_colour)
    assert flags.flags["flux_tilt"][:10].all()
    assert flags.flags["flux_tilt"][10:].sum() == 0


def test_masked_and_low_snr_spectra_are_flagged():
    flux, ivar, _ = stars(50, seed=4)
    ivar[0, :3000] = 0.0
    flux[1] = np.random.default_rng(5).standard_normal(WAVE.size).astype(np.float32) * 0.01
    ivar[1] = 1.0 / 0.01 ** 2
    flags = screen(features_of_arrays(flux, ivar, "lamost"))
    assert flags.flags["masked"][0]
    assert flags.flags["low_snr"][1]
    assert not flags.any[2:].any()


def test_xp_gets_the_generic_features_only():
    feats = quality_features(np.ones((3, XP_GRID.npix)), np.ones((3, XP_GRID.npix)), "xp")
    assert set(feats) == {"masked_fraction", "snr", "negative_fraction", "colour"}
    assert np.all(feats["masked_fraction"] == 0)


def test_synthetic_survey_artefacts_are_caught():
    synth = pytest.importorskip("specsearch.synth")
    lam, xp = synth.generate_columns(300, seed=11, artefact_fraction=0.2)
    kinds = np.asarray(lam["artefact_kind"]).astype(str)
    feats = features_of_arrays(np.asarray(lam["flux"]), np.asarray(lam["ivar"]), "lamost")
    flags = screen(feats, teff_pred=np.asarray(lam["teff"], float),
                   xp_colour=colour_index(np.asarray(xp["flux"]), np.asarray(xp["ivar"]),
                                          "xp"))
    has = kinds != ""
    assert flags.any[has].mean() >= 0.85
    assert flags.any[~has].mean() <= 0.05


def test_nanmedian_rows_is_nan_for_empty_rows_and_never_warns():
    import warnings

    from specsearch.anomaly.artefacts import nanmedian_rows
    a = np.array([[1.0, np.nan, 3.0], [np.nan] * 3, [np.nan, 2.0, np.inf]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = nanmedian_rows(np.where(np.isfinite(a), a, np.nan))
    np.testing.assert_array_equal(got, [2.0, np.nan, 2.0])
