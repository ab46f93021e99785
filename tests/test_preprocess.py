import numpy as np
import pytest

from specsearch.errors import ConfigError, SpectrumError
from specsearch.preprocess import (
    LAMOST_GRID,
    XP_GRID,
    air_to_vacuum,
    continuum,
    grid_for,
    prepare_model_input,
    rebinner,
    resample,
    vacuum_to_air,
)
from specsearch.spectrum import Spectrum


def _spec(wave, flux, ivar=None, mask=None):
    ivar = np.ones_like(flux) if ivar is None else ivar
    mask = np.zeros(flux.shape, bool) if mask is None else mask
    return Spectrum(wavelength=wave, flux=flux, ivar=ivar, mask=mask, spectrum_id="t")


def test_grids_are_the_documented_ones():
    assert LAMOST_GRID.npix == 3909
    assert LAMOST_GRID.wavelength[0] == pytest.approx(3699.985, abs=1e-3)
    assert 9090 < LAMOST_GRID.wavelength[-1] < 9100
    assert np.allclose(np.diff(np.log10(LAMOST_GRID.wavelength)), 1e-4)
    assert XP_GRID.npix == 343
    assert XP_GRID.wavelength[0] == 3360 and XP_GRID.wavelength[-1] == 10200
    with pytest.raises(ConfigError, match="unknown modality 'apogee'"):
        grid_for("apogee")


def test_air_vacuum_round_trip_and_known_value():
    # H-alpha: 6562.80 A in air is 6564.61 A in vacuum.
    assert air_to_vacuum(np.array([6562.80]))[0] == pytest.approx(6564.61, abs=0.01)
    w = np.linspace(3500, 10000, 50)
    assert np.allclose(vacuum_to_air(air_to_vacuum(w)), w, rtol=1e-8)


def test_resample_identity_on_own_grid():
    w = LAMOST_GRID.wavelength
    flux = 1.0 + 0.1 * np.sin(w / 50.0)
    out, iv = resample(_spec(w, flux, np.full(w.size, 4.0)), LAMOST_GRID)
    assert np.allclose(out, flux, rtol=1e-5)
    assert np.allclose(iv, 4.0, rtol=1e-4)


def test_resample_conserves_flux_and_propagates_ivar():
    # Input at 4x finer sampling: each output pixel averages ~4 input pixels,
    # so ivar grows ~4x, and a constant stays constant.
    w = np.linspace(3600.0, 9200.0, 40000)
    out, iv = resample(_spec(w, np.full(w.size, 3.0), np.full(w.size, 2.0)), LAMOST_GRID)
    assert np.allclose(out, 3.0, rtol=1e-5)
    pix_width = np.diff(LAMOST_GRID.edges())
    expected = 2.0 * pix_width / np.diff(w)[0]
    # Partial overlaps at pixel edges make the count slightly larger than width/step.
    assert np.allclose(iv[5:-5], expected[5:-5], rtol=0.1)


def test_resample_masks_and_coverage():
    w = np.linspace(4000.0, 6000.0, 3000)
    flux = np.ones_like(w)
    mask = (w > 5000) & (w < 5100)
    out, iv = resample(_spec(w, flux, mask=mask), LAMOST_GRID)
    g = LAMOST_GRID.wavelength
    assert np.all(iv[g < 3990] == 0) and np.all(iv[g > 6010] == 0)
    assert np.all(iv[(g > 5010) & (g < 5090)] == 0)
    assert np.all(iv[(g > 4100) & (g < 4900)] > 0)


def test_resample_errors_name_the_problem():
    w = np.linspace(12000.0, 13000.0, 100)
    with pytest.raises(SpectrumError, match="no usable pixel on the lamost grid"):
        resample(_spec(w, np.ones(100)), "lamost")
    with pytest.raises(SpectrumError, match="no usable pixel"):
        resample(_spec(np.linspace(4000, 5000, 10), np.full(10, np.nan)), "lamost")
    with pytest.raises(SpectrumError, match="one length"):
        _spec(np.linspace(4000, 5000, 10), np.ones(9)).validated()


def test_rebinner_batch_equals_single():
    w = np.linspace(3300.0, 10500.0, 5000)
    rb = rebinner(w, XP_GRID)
    rng = np.random.default_rng(1)
    flux = rng.random((3, w.size)) + 1
    ivar = np.ones_like(flux)
    bf, bi = rb(flux, ivar)
    sf, si = rb(flux[1], ivar[1])
    assert bf.shape == (3, 343)
    assert np.allclose(bf[1], sf) and np.allclose(bi[1], si)


def test_continuum_recovers_smooth_shape_under_absorption_lines():
    w = LAMOST_GRID.wavelength
    smooth = 2.0 + np.linspace(0, 1, w.size)
    lines = np.ones_like(w)
    for c in np.arange(4000, 9000, 90.0):
        lines -= 0.5 * np.exp(-0.5 * ((w - c) / 2.0) ** 2)
    cont = continuum(smooth * lines, np.ones_like(w))
    inner = slice(200, -200)
    assert np.median(np.abs(cont[inner] / smooth[inner] - 1)) < 0.02


def test_prepare_model_input_flags_bad_rows_and_checks_length():
    rng = np.random.default_rng(2)
    flux = rng.random((3, LAMOST_GRID.npix)).astype(np.float32) + 1
    ivar = np.ones_like(flux)
    ivar[1, :] = 0                      # all masked
    flux[2, :100] = np.nan              # a few non-finite pixels
    m = prepare_model_input(flux, ivar, "lamost")
    assert m.good.tolist() == [True, False, True]
    assert np.all(np.isfinite(m.flux)) and np.all(m.weight[2, :100] == 0)
    assert abs(np.median(m.flux[0]) - 1) < 0.05
    with pytest.raises(SpectrumError, match="343 pixels"):
        prepare_model_input(flux, ivar, "xp")


def test_lamost_model_input_keeps_the_sed_after_the_pixels():
    from specsearch.preprocess import SED_BINS, prepared_width, split_sed

    wave = LAMOST_GRID.wavelength
    blue = (wave / 6000.0) ** -2.0              # a hot star's slope
    red = (wave / 6000.0) ** 1.0
    flux = np.stack([blue, 7.0 * blue, red]).astype(np.float32)
    ivar = np.ones_like(flux)
    ivar[2, wave > 7400] = 0                    # no red arm (as MILES)
    m = prepare_model_input(flux, ivar, "lamost")
    assert m.flux.shape == (3, prepared_width("lamost")) == (3, LAMOST_GRID.npix + SED_BINS)
    assert prepared_width("xp") == XP_GRID.npix
    pix, sed = split_sed(m.flux, LAMOST_GRID.npix)
    _, measured = split_sed(m.weight, LAMOST_GRID.npix)
    assert abs(np.median(pix[0]) - 1) < 0.02    # the pixels stay continuum-normalised
    # brightness is divided out, the slope is kept (blue falls, red rises: inner stretches,
    # the continuum smoothing is one-sided at the ends)
    np.testing.assert_allclose(sed[0], sed[1], atol=1e-5)
    assert np.all(np.diff(sed[0][1:-1]) < 0) and np.all(np.diff(sed[2][1:11]) > 0)
    assert measured[0].tolist() == [1.0] * SED_BINS
    # stretches beyond the red cut are not measured and hold 0; the rest are centred
    assert measured[2][-3:].tolist() == [0.0] * 3 and np.all(sed[2][measured[2] == 0] == 0)
    assert abs(sed[2][measured[2] > 0].mean()) < 1e-5 and abs(sed[0].mean()) < 1e-5
    # the SED of the pixels' neighbour slope matches the power law's log10 steps in between
    lw = np.log10(wave)
    step = np.median(np.diff(sed[0][2:-2]))
    assert step == pytest.approx(-2.0 * (lw[-1] - lw[0]) / SED_BINS, rel=0.15)


def test_a_gap_in_the_input_wavelengths_stays_masked_on_the_grid():
    """Pixel edges are midpoints, so the two pixels beside a gap (a client that sent only
    its good pixels, an instrument's chip gap) would stretch across it and fill the grid
    there; each reaches no further than one typical step into a gap."""
    from specsearch.preprocess import LAMOST_GRID, rebinner

    wave = LAMOST_GRID.wavelength[100:3800]
    gap = (wave > 7500) & (wave < 7700)
    grid = LAMOST_GRID.wavelength
    flux, ivar = rebinner(wave[~gap], LAMOST_GRID)(np.ones((~gap).sum()), np.ones((~gap).sum()))
    inside = (grid > 7510) & (grid < 7690)
    assert (ivar[inside] == 0).all()
    covered = (ivar > 0) & ~inside
    assert covered.sum() >= 3700 - gap.sum() - 4
    np.testing.assert_allclose(flux[covered], 1.0, rtol=1e-6)
    regular = rebinner(wave, LAMOST_GRID)(np.ones(wave.size), np.ones(wave.size))[1]
    assert (regular > 0).sum() == 3700               # a regular grid loses nothing
