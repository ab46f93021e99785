"""Radial velocities of spectra without one (or with a wrong one), on committed real spectra."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from specsearch.cli import main
from specsearch.errors import SpectrumError
from specsearch.io.ingest import ingest
from specsearch.io.registry import read_spectra
from specsearch.preprocess import (C_KMS, LAMOST_NPIX, RV_MIN_GAIN, measure_rv,
                                   to_canonical_grid)
from specsearch.preprocess.rv import default_templates, template_labels
from specsearch.preprocess.rv_correlation import KMS_PER_PIXEL


def _one(path):
    return next(iter(read_spectra(path)))


@pytest.fixture(scope="module")
def dr8(samples):
    # a real LAMOST DR8 star at -320 km/s (its header Z)
    return _one(samples / "lamost" / "format_samples" / "spec-55859-F5902_sp01-013_dr8.fits.gz")


@pytest.fixture(scope="module")
def miles(samples):
    return _one(samples / "miles" / "spectra" / "MILES_res2.50_star_m0838V.fits")


def _kms(z):
    return None if z is None else z * C_KMS


def test_the_shipped_templates_are_what_the_synthetic_model_makes():
    from specsearch.synth import rv_templates

    tpl = default_templates()
    lab = template_labels()
    assert tpl.shape == (len(lab), LAMOST_NPIX) and np.isfinite(tpl).all()
    assert not tpl.flags.writeable and default_templates() is tpl
    assert lab[:, 0].min() <= 3600 and lab[:, 0].max() >= 10000
    assert set(lab[:, 2]) == {0.0, -1.5}
    assert KMS_PER_PIXEL == pytest.approx(69.04, abs=0.01)
    made_lab, made = rv_templates.build()
    np.testing.assert_array_equal(made_lab, lab)
    # float16 both ways (one step near 1 is 5e-4); other CPUs may round a step apart
    np.testing.assert_allclose(made.astype(np.float32), tpl, atol=2e-3)


@pytest.mark.parametrize("name", ["dr1/spectra/spec-55862-B6212_sp06-008.fits",
                                  "format_samples/spec-55859-F5902_sp01-001_dr7.fits.gz"])
def test_a_real_star_without_its_header_redshift_is_put_in_the_rest_frame(samples, name):
    spec = _one(samples / "lamost" / name)            # an F5 and a G7 star, S/N 29 and 12
    header = to_canonical_grid(spec, "lamost")
    assert header.rv_source == "header" and header.z_removed == spec.meta["z"]
    bare = dataclasses.replace(spec, meta={k: v for k, v in spec.meta.items() if k != "z"})
    got = to_canonical_grid(bare, "lamost")
    assert got.rv_source == "measured"
    assert _kms(got.z_removed) == pytest.approx(_kms(spec.meta["z"]), abs=15.0)
    good = (got.ivar > 0) & (header.ivar > 0)
    assert np.corrcoef(got.flux[good], header.flux[good])[0, 1] > 0.99
    # observed frame kept on request: nothing measured, nothing removed
    for kwargs in ({"rv": "none"}, {"rest_frame": False}, {"rv": "header"}):
        kept = to_canonical_grid(bare, "lamost", **kwargs)
        assert kept.z_removed is None and kept.rv_source is None
    m = measure_rv(*to_canonical_grid(bare, "lamost", rv="none")[:2])
    assert m.ok[0] and m.r[0] - m.r_zero[0] > RV_MIN_GAIN
    assert 0 <= m.template[0] < len(template_labels())


def test_a_header_the_spectrum_does_not_contradict_is_kept(dr8):
    # an A2 star at S/N 5.6 and -320 km/s: broad lines, a flat correlation peak
    got = to_canonical_grid(dr8, "lamost")
    assert got.rv_source == "header" and _kms(got.z_removed) == pytest.approx(-319.7, abs=0.1)


def test_a_wrong_header_redshift_is_corrected_and_a_right_one_kept(samples):
    spectra = samples / "lamost" / "dr1" / "spectra"
    # DR1's pipeline Z of this star is -85.6 km/s; the spectrum is at rest (+3 km/s)
    wrong = to_canonical_grid(_one(spectra / "spec-55862-B6212_sp06-005.fits"), "lamost")
    assert wrong.rv_source == "header+measured" and abs(_kms(wrong.z_removed)) < 20.0
    kept = to_canonical_grid(_one(spectra / "spec-55862-B6212_sp06-005.fits"), "lamost",
                             rv="header")
    assert kept.rv_source == "header" and _kms(kept.z_removed) == pytest.approx(-85.6, abs=0.1)
    for name in ("spec-55862-B6212_sp06-006.fits", "spec-55862-B6212_sp06-008.fits"):
        spec = _one(spectra / name)
        got = to_canonical_grid(spec, "lamost")
        assert got.rv_source == "header" and got.z_removed == spec.meta["z"], name


def test_a_library_spectrum_at_rest_stays_and_a_shifted_copy_comes_back(miles):
    rest = to_canonical_grid(miles, "lamost")
    assert rest.rv_source is None and rest.z_removed is None
    for v in (250.0, -180.0):
        moved = dataclasses.replace(miles, wavelength=miles.wavelength * (1 + v / C_KMS))
        got = to_canonical_grid(moved, "lamost")
        assert got.rv_source == "measured" and _kms(got.z_removed) == pytest.approx(v, abs=15)
        good = (got.ivar > 0) & (rest.ivar > 0)
        assert np.corrcoef(got.flux[good], rest.flux[good])[0, 1] > 0.999
    # XP spectra are too coarse for a velocity: never measured
    xp_like = to_canonical_grid(dataclasses.replace(
        miles, wavelength=miles.wavelength * (1 + 250 / C_KMS)), "xp")
    assert xp_like.rv_source is None


def test_window_velocities_agree_within_their_uncertainties():
    from specsearch.preprocess.rv import AGREE_KMS, AGREE_MAX_KMS, _agreement

    # a hot star at S/N 10: a precise blue window (Balmer lines) and a red one 60 km/s off
    # with a broad peak agree, and the mean leans on the precise one
    v, sigma = _agreement(np.array([[251.0, 7.0], [191.0, 24.0]]))
    assert 240.0 < v < 251.0 and sigma < 7.0
    # two precise windows as far apart do not
    assert _agreement(np.array([[250.0, 3.0], [190.0, 3.0]])) is None
    # within AGREE_KMS whatever their uncertainties
    assert _agreement(np.array([[0.0, 0.5], [AGREE_KMS - 1.0, 0.5]])) is not None
    # peaks of noise (uncertainties of hundreds of km/s) agree no further than the cap
    assert _agreement(np.array([[0.0, 300.0], [AGREE_MAX_KMS + 10.0, 300.0]])) is None
    # the largest agreeing group wins: a window pulled by a Balmer jump stays out
    v, _ = _agreement(np.array([[189.0, 3.0], [0.0, 2.0], [4.0, 4.0]]))
    assert abs(v) < 5.0
    assert _agreement(np.array([[10.0, 5.0]])) is None
    # a peak without an uncertainty (no curvature) widens nothing and still averages
    assert _agreement(np.array([[0.0, np.inf], [100.0, np.inf]])) is None
    v, sigma = _agreement(np.array([[0.0, np.inf], [30.0, np.nan]]))
    assert v == pytest.approx(15.0) and np.isfinite(sigma)


def test_a_spectrum_without_telluric_correction_has_its_bands_masked(dr8):
    from specsearch.preprocess import TELLURIC_BANDS, LAMOST_GRID, band_mask, state_telluric

    spec = dataclasses.replace(dr8, meta=dict(dr8.meta))
    plain = to_canonical_grid(spec, "lamost", rv="header")
    assert not state_telluric(spec, False, "test") and "telluric_uncorrected" not in spec.meta
    assert state_telluric(spec, True, "test")
    got = to_canonical_grid(spec, "lamost", rv="header")
    # masked at the observed wavelengths: on the rest-frame grid the bands move by the
    # star's -320 km/s (7.4 A at the A band)
    shift = 1.0 + _kms(got.z_removed) / C_KMS
    observed = band_mask(LAMOST_GRID.wavelength * shift, TELLURIC_BANDS)
    inner = observed & np.roll(observed, 2) & np.roll(observed, -2)
    assert (got.ivar[inner] == 0).all() and (plain.ivar[inner] > 0).mean() > 0.9
    outside = ~observed & ~np.roll(observed, 1) & ~np.roll(observed, -1) & (got.ivar > 0)
    np.testing.assert_array_equal(got.flux[outside], plain.flux[outside])


def test_noise_and_featureless_spectra_give_no_velocity(rng):
    noise = rng.normal(1.0, 0.1, (50, LAMOST_NPIX))
    m = measure_rv(noise, np.full_like(noise, 100.0))
    assert not m.ok.any() and np.isnan(m.v_kms).all() and m.r.max() < 0.15
    flat = measure_rv(np.ones(LAMOST_NPIX), np.ones(LAMOST_NPIX))
    assert not flat.ok[0] and flat.r[0] == 0.0
    # too few pixels to read: nothing measured, no error
    few = np.zeros(LAMOST_NPIX)
    few[1000:1100] = 1.0
    empty = measure_rv(np.ones(LAMOST_NPIX), few)
    assert not empty.ok[0] and empty.template[0] == -1


def test_hostile_values_give_no_velocity_and_no_warning(rng):
    import warnings

    flux = rng.normal(1.0, 0.05, (4, LAMOST_NPIX))
    ivar = np.full_like(flux, 400.0)
    flux[0, ::7] = np.inf
    flux[1] = 1e30
    flux[2] = -flux[2]
    ivar[3, :] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = measure_rv(flux, ivar)
    assert not m.ok.any() and np.isfinite(m.r).all()


def test_bad_arguments_are_named():
    with pytest.raises(SpectrumError, match="lamost grid"):
        measure_rv(np.ones(100), np.ones(100))
    with pytest.raises(ValueError, match="vmax_kms"):
        measure_rv(np.ones(LAMOST_NPIX), np.ones(LAMOST_NPIX), vmax_kms=-1)
    with pytest.raises(ValueError, match="templates"):
        measure_rv(np.ones(LAMOST_NPIX), np.ones(LAMOST_NPIX), templates=np.ones((2, 10)))
    with pytest.raises(ValueError, match="rv must be one of"):
        to_canonical_grid(None, "lamost", rv="guess")  # type: ignore[arg-type]


def test_ingest_counts_and_records_what_it_removed(samples, tmp_path, capsys):
    spectra = samples / "lamost" / "dr1" / "spectra"
    report = ingest([spectra], tmp_path / "auto", modality="lamost", progress=False)
    assert report.rows_written == 3
    assert report.rows_rv_corrected == 1 and report.rows_rv_measured == 0
    assert "contradicted" in report.summary()
    header = ingest([spectra], tmp_path / "header", modality="lamost", progress=False,
                    rv="header")
    assert header.rows_rv_corrected == 0 and "radial velocity" not in header.summary()
    from specsearch.io.catalog import open_catalog
    rv = {}
    for name in ("auto", "header"):
        t = open_catalog(tmp_path / name).read_column("lamost", "rv").to_numpy()
        rv[name] = np.sort(t)
    assert rv["header"][0] == pytest.approx(-85.6, abs=0.1)
    assert np.abs(rv["auto"]).min() < 20.0 and rv["auto"].min() > -20.0
    with pytest.raises(ValueError, match="rv must be one of"):
        ingest([spectra], tmp_path / "x", modality="lamost", progress=False, rv="guess")
    assert main(["ingest", "--modality", "lamost", str(spectra), "--out",
                 str(tmp_path / "cli"), "--rv", "header", "--no-progress"]) == 0
    assert "radial velocity" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["ingest", "--modality", "lamost", str(spectra), "--out", str(tmp_path / "y"),
              "--rv", "guess"])
