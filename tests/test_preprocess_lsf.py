"""Resolution matching (preprocess.lsf): sharper spectra reach the LAMOST grid at R = 1800."""

from __future__ import annotations

import numpy as np
import pytest

import specsearch.preprocess.lsf as lsf
from specsearch.preprocess import (LAMOST_GRID, LAMOST_RESOLUTION, resample, resolution_match,
                                   to_canonical_grid)
from specsearch.spectrum import Spectrum


def _spectrum(wave, flux, ivar=None, **meta) -> Spectrum:
    ivar = np.ones(wave.size) if ivar is None else ivar
    return Spectrum(wavelength=np.asarray(wave, float), flux=np.asarray(flux, float),
                    ivar=np.asarray(ivar, float), mask=np.zeros(wave.size, bool), meta=meta)


def _line_sigma(wave, depth):
    """Second-moment sigma (Angstrom) of an absorption profile ``depth`` >= 0."""
    w = np.clip(depth, 0.0, None)
    centre = np.sum(w * wave) / np.sum(w)
    return float(np.sqrt(np.sum(w * (wave - centre) ** 2) / np.sum(w)))


def test_matching_a_model_spectrum_reproduces_the_synthetic_survey(monkeypatch):
    """The synthetic survey broadens its 2.5 A model spectra to R = 1800 with one sparse
    operator; matching the same spectrum at ingest must give the same LAMOST pixels."""
    from specsearch.synth.grid import MODEL_FWHM_A, model_wavelength
    from specsearch.synth.lamost import lamost_operator
    from specsearch.synth.model import stellar_spectra

    monkeypatch.setattr(lsf, "SHARPER_FACTOR", 1.01)  # 2.5 A is only 0.7x LAMOST's width
    wave = model_wavelength()
    flux = stellar_spectra(np.array([5800.0, 4500.0]), np.array([4.4, 2.5]),
                           np.array([0.0, -1.0]), np.array([0.0, 0.3]))
    op = lamost_operator()
    for f in flux:
        ref = op @ f
        spec = _spectrum(wave, f, fwhm_A=MODEL_FWHM_A)
        match = resolution_match(spec, "lamost")
        assert match.broaden and match.source == "fwhm_A"
        got, ivar = to_canonical_grid(spec, "lamost")[:2]
        plain, _ = resample(_spectrum(wave, f), "lamost")
        ok = ivar > 0
        scale = np.median(ref[ok])
        matched_err = np.abs(got[ok] - ref[ok]) / scale
        plain_err = np.abs(plain[ok] - ref[ok]) / scale
        assert np.sqrt(np.mean(matched_err ** 2)) < 5e-4
        assert matched_err[5:-5].max() < 5e-3
        assert plain_err.max() > 3e-2  # without matching, lines are visibly too deep


@pytest.mark.parametrize("stated", [{"resolving_power": 40000.0}, {}])
def test_sharp_line_comes_out_at_the_lamost_width(stated):
    """An R = 40,000 line (stated, or inferred from fine sampling) ends at FWHM = lambda/1800."""
    wave = np.arange(4800.0, 5200.0, 0.02)
    sigma_in = 5000.0 / 40000.0 / lsf.FWHM_PER_SIGMA
    flux = 1.0 - 0.5 * np.exp(-0.5 * ((wave - 5000.0) / sigma_in) ** 2)
    spec = _spectrum(wave, flux, **stated)
    match = resolution_match(spec, "lamost")
    assert match.broaden
    assert match.source == ("resolving_power" if stated else "sampling")
    got, ivar = to_canonical_grid(spec, "lamost")[:2]
    near = (LAMOST_GRID.wavelength > 4960) & (LAMOST_GRID.wavelength < 5040)
    sigma = _line_sigma(LAMOST_GRID.wavelength[near], 1.0 - got[near])
    target = 5000.0 / LAMOST_RESOLUTION / lsf.FWHM_PER_SIGMA
    pixel = 5000.0 * np.log(10.0) * 1e-4 / np.sqrt(12.0)  # the LAMOST pixel's own box
    assert sigma == pytest.approx(np.hypot(target, pixel), rel=0.05)
    plain, _ = resample(spec, "lamost")
    assert _line_sigma(LAMOST_GRID.wavelength[near], 1.0 - plain[near]) < 0.6 * sigma
    # the line's equivalent width survives the broadening (flux-conserving throughout)
    step = np.gradient(LAMOST_GRID.wavelength[near])
    ew_in = 0.5 * sigma_in * np.sqrt(2.0 * np.pi)
    assert np.sum((1.0 - got[near]) * step) == pytest.approx(ew_in, rel=0.02)


def test_lamost_sdss_and_miles_like_inputs_are_left_alone():
    wave = LAMOST_GRID.wavelength
    rng = np.random.default_rng(0)
    flux = 1.0 + 0.05 * rng.standard_normal(wave.size)
    native = _spectrum(wave, flux)
    match = resolution_match(native, "lamost")
    assert not match.broaden and match.source == "unknown"
    got = to_canonical_grid(native, "lamost").flux
    np.testing.assert_array_equal(got, resample(native, "lamost")[0])
    miles = _spectrum(3540.5 + 0.9 * np.arange(4300), np.ones(4300), fwhm_A=2.5)
    assert not resolution_match(miles, "lamost").broaden  # 0.81x LAMOST: close enough
    sdss = _spectrum(wave, flux, resolving_power=2000.0)
    assert not resolution_match(sdss, "lamost").broaden
    coarse = _spectrum(np.arange(3600.0, 9200.0, 2.0), np.ones(2800), fwhm_A=8.0)
    assert not resolution_match(coarse, "lamost").broaden
    assert resolution_match(native, "xp") is None  # XP inputs are never matched


def test_spectra_broader_than_lamost_are_marked_and_counted_by_ingest(tmp_path):
    from specsearch.io.ingest import ingest

    wave = LAMOST_GRID.wavelength
    native = _spectrum(wave, np.ones(wave.size))           # LAMOST's own sampling
    assert not resolution_match(native, "lamost").broader
    for power, broader in ((2000.0, False), (1600.0, False), (1200.0, True), (600.0, True)):
        got = resolution_match(_spectrum(wave, np.ones(wave.size), resolving_power=power),
                               "lamost")
        assert got.broader is broader and not got.broaden, power
    assert resolution_match(_spectrum(np.arange(3600.0, 9200.0, 2.0), np.ones(2800),
                                      fwhm_A=8.0), "lamost").broader       # ~R 700
    miles = _spectrum(3540.5 + 0.9 * np.arange(4300), np.ones(4300), fwhm_A=2.5)
    assert not resolution_match(miles, "lamost").broader
    # no stated resolution, 5 A pixels: no spectrum is sharper than 2 pixels (R < 600)
    coarse_wave = np.arange(3700.0, 9100.0, 5.0)
    assert resolution_match(_spectrum(coarse_wave, np.ones(coarse_wave.size)),
                            "lamost").broader
    rng = np.random.default_rng(1)
    for name, w in (("coarse.csv", coarse_wave), ("native.csv", wave)):
        f = 1.0 + 0.01 * rng.standard_normal(w.size)
        np.savetxt(tmp_path / name, np.c_[w, f, np.full(w.size, 1e4)], delimiter=",",
                   header="wavelength,flux,ivar", comments="")
    report = ingest([tmp_path / "coarse.csv", tmp_path / "native.csv"], tmp_path / "cat",
                    modality="lamost", air=False, progress=False)
    assert report.rows_written == 2 and report.rows_broader == 1
    assert "1 spectra are broader than LAMOST" in report.summary()
    # the catalog keeps the ratio, and the embedding builder flags the broad spectrum
    from collections import Counter

    from specsearch.embed.encode import embed_table
    from specsearch.io.catalog import open_catalog
    from specsearch.model import load_model

    import pyarrow as pa

    table = pa.Table.from_batches(list(open_catalog(tmp_path / "cat").iter_batches(
        "lamost"))).combine_chunks()
    ratio = dict(zip(table.column("origin").to_pylist(),
                     table.column("fwhm_ratio").to_pylist()))
    assert ratio["coarse.csv"] > lsf.BROADER_FACTOR and ratio["native.csv"] is None  # unknown
    cols = embed_table(load_model(None), "lamost", table.to_batches()[0], with_residual=True,
                       meta_columns=[], skipped=Counter())
    flags = dict(zip(table.column("origin").to_pylist(), cols["out_of_domain"]))
    assert flags == {"coarse.csv": True, "native.csv": False}


def test_gaps_stay_masked_and_do_not_darken_their_edges():
    wave = np.arange(4000.0, 6000.0, 0.05)
    ivar = np.ones(wave.size)
    ivar[(wave > 5000) & (wave < 5030)] = 0.0
    spec = _spectrum(wave, np.full(wave.size, 3.0), ivar, resolving_power=20000.0)
    assert resolution_match(spec, "lamost").broaden
    got, out_ivar = to_canonical_grid(spec, "lamost")[:2]
    in_gap = (LAMOST_GRID.wavelength > 5002) & (LAMOST_GRID.wavelength < 5028)
    assert np.all(out_ivar[in_gap] == 0) and np.all(got[in_gap] == 0)
    covered = out_ivar > 0
    np.testing.assert_allclose(got[covered], 3.0, rtol=1e-5)


def test_a_million_pixel_echelle_spectrum_is_matched_on_a_bounded_work_grid():
    wave = np.linspace(3700.0, 9100.0, 1_000_000)
    spec = _spectrum(wave, 1.0 + 0.1 * np.sin(wave), resolving_power=100000.0)
    work, _ = lsf._work_grid("lamost")
    assert work.npix < 20_000  # independent of the input's 1e6 pixels
    got, ivar = to_canonical_grid(spec, "lamost")[:2]
    assert np.isfinite(got).all() and (ivar > 0).sum() > 3800
    # the 6.3 A-period ripple is wider than the kernel: it survives, damped
    assert np.ptp(got[ivar > 0]) > 0.1


def test_a_resolution_the_caller_knows_fills_in_only_where_the_file_says_none():
    from specsearch.errors import ConfigError

    wave = np.arange(4000.0, 6000.0, 0.8)
    silent = _spectrum(wave, np.ones(wave.size))
    assert resolution_match(silent, "lamost").source == "unknown"
    assert lsf.state_resolution(silent, 5000.0, "ingest --resolving-power")
    assert silent.meta["resolution_from"] == "ingest --resolving-power"
    assert resolution_match(silent, "lamost").broaden      # 1.0 A < 0.7 x 2.8 A
    stated = _spectrum(wave, np.ones(wave.size), fwhm_A=6.0)
    assert not lsf.state_resolution(stated, 5000.0, "search --resolving-power")
    assert stated.meta == {"fwhm_A": 6.0}                   # the file's own value wins
    assert not lsf.state_resolution(silent, None, "unused")
    for bad in (0.0, -5.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="resolving_power"):
            lsf.state_resolution(_spectrum(wave, np.ones(wave.size)), bad, "x")
