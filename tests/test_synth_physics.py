"""The synthetic spectra's physics: line strengths, populations, XP round trip, fidelity."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from specsearch.preprocess import XP_FLUX_SCALE, air_to_vacuum
from specsearch.synth.grid import model_wavelength
from specsearch.synth.model import stellar_spectra, white_dwarf_spectra

WAVE = model_wavelength()


def equivalent_width(flux: np.ndarray, line_air: tuple[float, float],
                     side_air: tuple[float, float, float, float]) -> np.ndarray:
    """EW (A) in ``line`` against a straight continuum through two side bands (air A)."""
    line = air_to_vacuum(np.array(line_air))
    side = air_to_vacuum(np.array(side_air))
    f = np.atleast_2d(flux)
    b1 = (WAVE >= side[0]) & (WAVE <= side[1])
    b2 = (WAVE >= side[2]) & (WAVE <= side[3])
    x1, x2 = WAVE[b1].mean(), WAVE[b2].mean()
    y1, y2 = f[:, b1].mean(axis=1), f[:, b2].mean(axis=1)
    inside = (WAVE >= line[0]) & (WAVE <= line[1])
    cont = y1[:, None] + (y2 - y1)[:, None] * (WAVE[inside] - x1) / (x2 - x1)
    return ((1.0 - f[:, inside] / cont) * np.gradient(WAVE)[inside]).sum(axis=1)


MG_B = ((5160.1, 5192.6), (5142.6, 5161.4, 5191.4, 5206.4))      # Lick Mg b
FE5270 = ((5245.6, 5285.6), (5233.2, 5248.2, 5285.7, 5318.2))
FE5335 = ((5312.1, 5352.1), (5304.6, 5315.9, 5353.4, 5363.4))
CA_K = ((3925.0, 3945.0), (3900.0, 3915.0, 3950.0, 3960.0))
H_BETA = ((4847.9, 4876.6), (4827.9, 4847.9, 4876.6, 4891.6))
CA_8542 = ((8522.0, 8562.0), (8474.0, 8484.0, 8563.0, 8577.0))


def test_metal_lines_grow_with_feh_including_the_extrapolated_tail():
    feh = np.array([-4.0, -3.0, -2.0, -1.0, 0.0, 0.3])
    n = feh.size
    f = stellar_spectra(np.full(n, 5000.0), np.full(n, 2.5), feh, np.clip(-0.3 * feh, 0, 0.35))
    for window in (MG_B, FE5270, FE5335, CA_8542):
        ew = equivalent_width(f, *window)
        assert np.all(np.diff(ew) > 0), (window, ew)
    ew_k = equivalent_width(f, *CA_K)       # saturated: grows up to solar, then flattens
    assert np.all(np.diff(ew_k[:5]) > 0) and ew_k[5] > 0.9 * ew_k[4]
    assert equivalent_width(f, *FE5270)[0] < 0.2 * equivalent_width(f, *FE5270)[4]


def test_lines_follow_teff():
    teff = np.array([4500.0, 5500.0, 6500.0, 7500.0])
    f = stellar_spectra(teff, np.full(4, 4.2), np.zeros(4), np.zeros(4))
    assert np.all(np.diff(equivalent_width(f, *H_BETA)) > 0)     # Balmer: hotter, stronger
    assert np.all(np.diff(equivalent_width(f, *MG_B)) < 0)       # metals: cooler, stronger


def test_alpha_enhancement_strengthens_mg_not_fe():
    f = stellar_spectra(np.full(2, 5000.0), np.full(2, 2.5), np.full(2, -1.0),
                        np.array([0.0, 0.4]))
    mg = equivalent_width(f, *MG_B)
    fe = equivalent_width(f, *FE5335)
    assert mg[1] > 1.1 * mg[0]
    assert abs(fe[1] / fe[0] - 1.0) < 0.05


def test_m_dwarfs_have_tio_and_white_dwarfs_broad_balmer():
    m = stellar_spectra(np.array([3300.0, 4500.0]), np.array([4.9, 4.6]), np.zeros(2),
                        np.zeros(2))
    tio = ((7590.0, 7640.0), (7530.0, 7580.0, 8050.0, 8100.0))     # TiO 7589 (red arm)
    ew = equivalent_width(m, *tio)
    assert ew[0] > 5.0 and ew[0] > 5 * abs(ew[1])
    wd = white_dwarf_spectra(np.array([12000.0, 12000.0]), np.array([8.0, 8.0]),
                             np.array([0.0, 2.0]))
    wide_hb = ((4780.0, 4940.0), (4700.0, 4740.0, 4980.0, 5020.0))
    ew_wd = equivalent_width(wd, *wide_hb)
    assert ew_wd[0] > 15.0 and abs(ew_wd[1]) < 1.0               # DA vs featureless DC


def test_xp_coefficients_round_trip_through_the_sampler():
    from specsearch.io import xp_basis as xb
    from specsearch.synth.xp import g_band_vectors, noiseless_coefficients, observe_xp

    flux = stellar_spectra(np.array([5800.0, 4200.0, 9000.0]), np.array([4.4, 1.8, 4.0]),
                           np.array([0.0, -0.5, -1.0]), np.zeros(3))
    mag = np.array([12.0, 15.0, 17.0])
    bp, rp, _ = noiseless_coefficients(flux, mag)
    g_bp, g_rp, zp = g_band_vectors()
    np.testing.assert_allclose(-2.5 * np.log10(bp @ g_bp + rp @ g_rp) + zp, mag, atol=1e-6)
    design = xb.xp_design()
    sampled = xb.sample(bp, rp, design=design)[0]
    bp2, rp2 = xb.project_to_coefficients(sampled, design.wavelength_nm, design=design)
    again = xb.sample(bp2, rp2, design=design)[0]
    assert np.max(np.abs(again - sampled) / np.abs(sampled).max(axis=1, keepdims=True)) < 5e-3
    obs = observe_xp(flux, mag, np.random.default_rng(0))
    np.testing.assert_allclose(obs.flux, xb.sample(obs.bp_coefficients,
                                                   obs.rp_coefficients)[0] / XP_FLUX_SCALE,
                               rtol=1e-4, atol=1e-6 * np.abs(obs.flux).max())
    # noise is at the level of the errors, and fainter stars are noisier
    pull = (obs.bp_coefficients - bp) / obs.bp_coefficient_errors
    assert 0.3 < np.std(pull) < 3.0
    assert obs.snr[0] > obs.snr[2]


def test_artefacts_do_what_they_say():
    from specsearch.preprocess import LAMOST_GRID
    from specsearch.synth.artefacts import apply_artefacts

    n = 4
    flux = np.ones((n, LAMOST_GRID.npix), dtype=np.float32)
    ivar = np.full_like(flux, 1e4)
    kinds = np.array(["dead_fibre", "sky_residual", "flux_tilt", "arm_join"], dtype=object)
    apply_artefacts(flux, ivar, kinds, np.zeros(n), np.random.default_rng(1))
    assert (np.abs(flux[0]) < 0.1).sum() >= 100                     # a dead segment
    assert np.abs(flux[1] - 1).max() > 0.4                           # spikes
    assert abs(flux[2, 0] / flux[2, -1] - 1.0) > 0.5                 # tilted
    w = LAMOST_GRID.wavelength
    assert abs(np.median(flux[3, w > 6000]) / np.median(flux[3, w < 5700]) - 1.0) > 0.3


def test_shipped_data_files_are_small_and_pickle_free():
    from specsearch.synth.emulator import DATA_FILE

    folder = DATA_FILE.parent
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    assert total < 2_000_000
    for path in folder.glob("*.npz"):
        with np.load(path, allow_pickle=False) as z:
            assert all(z[k].dtype != object for k in z.files)


def test_miles_fidelity_on_held_out_stars(real_data: Path):
    from specsearch.synth.emulator import holdout_ids
    from specsearch.synth.fidelity import miles_fidelity
    from specsearch.synth.fit_miles import read_miles

    miles = read_miles(real_data / "miles")
    _, held_out = holdout_ids()
    assert not set(held_out) & set(holdout_ids()[0])
    result = miles_fidelity(miles, held_out[::3])
    assert result.rms.size >= 30
    assert np.median(result.rms) < 0.035
