"""Single- and two-pixel spikes (cosmic rays, hot pixels) are masked; lines are not."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.special import erf

from specsearch.anomaly.artefacts import quality_features
from specsearch.preprocess import LAMOST_GRID, to_canonical_grid
from specsearch.preprocess.spikes import find_spikes, mask_spikes, ring_baseline

N = 3000


def _line(centre: float, fwhm_px: float, n: int = N) -> np.ndarray:
    """A Gaussian of unit area integrated over each pixel (pixel i spans i-0.5..i+0.5)."""
    s = fwhm_px / 2.3548 * np.sqrt(2.0)
    edges = np.arange(n + 1) - 0.5
    return np.diff(0.5 * erf((edges - centre) / s))


def _star(rng: np.random.Generator, snr: float) -> tuple[np.ndarray, np.ndarray]:
    """A continuum with absorption lines at LAMOST's sampling (FWHM 2.4 px) and noise."""
    flux = np.ones(N)
    for c in rng.uniform(20, N - 20, 150):
        flux -= rng.uniform(0.05, 0.6) * 2.4 * _line(c, 2.4) / _line(c, 2.4).max() / 2.4
    flux += rng.normal(0.0, 1.0 / snr, N)
    return flux, np.full(N, snr ** 2)


@pytest.mark.parametrize("fwhm_px", [1.8, 2.0, 2.4, 3.0])
@pytest.mark.parametrize("snr", [20.0, 100.0, 1000.0])
def test_emission_and_absorption_lines_at_any_phase_are_not_masked(fwhm_px, snr):
    """Anything the optics recorded is >= ~2 pixels wide: an emission line of any height
    at any sub-pixel phase, an absorption line of any depth, keeps every pixel."""
    rng = np.random.default_rng(int(fwhm_px * 10 + snr))
    flux, ivar = _star(rng, snr)
    centres = np.arange(60.0, N - 60.0, 40.0) + np.tile([0.0, 0.17, 0.33, 0.5], 100)[:72]
    heights = np.tile([0.3, 1.0, 5.0, 30.0, -0.5, -0.9], 12)
    for c, h in zip(centres, heights):
        prof = _line(c, fwhm_px)
        flux += h * prof / prof.max()
    _, masked = mask_spikes(flux, ivar)
    assert not masked.any(), np.flatnonzero(masked)


def test_one_and_two_pixel_hits_are_masked_and_nothing_else():
    rng = np.random.default_rng(3)
    flux, ivar = _star(rng, 30.0)
    clean = flux.copy()
    singles = np.arange(100, N - 100, 97)
    pairs = singles[:-1] + 48
    flux[singles] += rng.uniform(0.5, 5.0, singles.size)
    amp = rng.uniform(1.0, 5.0, pairs.size)
    flux[pairs] += amp
    flux[pairs + 1] += amp * rng.uniform(0.4, 1.0, pairs.size)
    out, masked = mask_spikes(flux, ivar)
    hit = np.zeros(N, bool)
    hit[singles] = hit[pairs] = hit[pairs + 1] = True
    assert not (masked & ~hit).any()
    # the few left in sit beside an absorption line, which makes them look wider
    assert masked[hit].mean() > 0.85
    assert (out[masked] == 0).all() and (out[~masked] == ivar[~masked]).all()
    assert out.dtype == ivar.dtype and out is not ivar
    assert not mask_spikes(clean, ivar)[1].any()
    same, none = mask_spikes(clean, ivar)
    assert same is ivar and none.shape == ivar.shape       # nothing masked: no copy


def test_crowded_hits_are_found():
    """Spikes inside each other's continuum ring: the ring's median does not follow them."""
    rng = np.random.default_rng(4)
    flux = 1.0 + rng.normal(0.0, 0.02, N)
    ivar = np.full(N, 2500.0)
    hits = np.arange(200, N - 200, 4)                     # every 4th pixel: ring overlap
    flux[hits] += 4.0
    masked = mask_spikes(flux, ivar)[1]
    assert masked[hits].all() and masked.sum() == hits.size


def test_a_continuum_read_from_wild_or_missing_pixels_masks_nothing():
    """Beside a masked stretch, or in a ring whose pixels scatter far more than their stated
    noise (a sky residual), a bump is not a spike: there is no continuum to judge it by."""
    rng = np.random.default_rng(5)
    flux, ivar = _star(rng, 50.0)
    flux[1000:1010] = 0.0
    ivar[1000:1010] = 0.0
    flux[1010] += 2.0                                     # first pixel after the gap
    flux[1997:2004] += np.array([-1.5, 2.0, -1.2, 0.0, 0.0, 1.8, -1.0])  # wild patch
    masked = mask_spikes(flux, ivar)[1]
    assert not masked[1005:1015].any() and not masked[1995:2006].any()


def test_screening_counts_are_unchanged_by_the_strict_form():
    """The artefact screening reads the same test at its own significance."""
    rng = np.random.default_rng(6)
    flux = np.stack([_star(rng, 40.0)[0] for _ in range(4)])
    ivar = np.full(flux.shape, 1600.0)
    flux[0, [300, 900]] += 3.0
    feats = quality_features(np.pad(flux, ((0, 0), (0, LAMOST_GRID.npix - N)),
                                    constant_values=1.0),
                             np.pad(ivar, ((0, 0), (0, LAMOST_GRID.npix - N)),
                                    constant_values=1600.0), "lamost")
    assert feats["n_spikes"].tolist() == [2.0, 0.0, 0.0, 0.0]
    spike, sig = find_spikes(flux, ivar)
    assert spike.shape == sig.shape == flux.shape
    ring = ring_baseline(flux, ivar > 0, 2, 4)
    assert abs(ring[1, 500] - np.mean(flux[1, [496, 497, 498, 502, 503, 504]])) < 1e-12


def test_real_lamost_spectrum_reads_as_before_its_cosmic_rays(samples):
    """A real DR7 spectrum with 12 raised pixels (where it is well exposed: beside a sky
    residual or in a blue end at S/N ~1 a spike is not told from its neighbours) reaches
    the grid as the clean one does; without the mask (``spikes=False``) it does not."""
    from specsearch.io.registry import read_spectra

    path = samples / "lamost" / "format_samples" / "spec-55859-F5902_sp01-001_dr7.fits.gz"
    spec = next(read_spectra(path)).validated()
    clean = to_canonical_grid(spec, "lamost")
    assert clean.spikes_masked <= 2
    w = spec.wavelength
    exposed = ((w > 4200) & (w < 5500)) | ((w > 6000) & (w < 6800))
    good = np.flatnonzero((spec.ivar > 0) & exposed)
    at = good[np.linspace(0, good.size - 1, 12).astype(int)]
    flux = spec.flux.copy()
    flux[at] += 4.0 * np.median(spec.flux[spec.ivar > 0])
    hit = dataclasses.replace(spec, flux=flux)
    got = to_canonical_grid(hit, "lamost")
    kept = to_canonical_grid(hit, "lamost", spikes=False)
    assert got.spikes_masked == clean.spikes_masked + 12 and kept.spikes_masked == 0
    by_hand = dataclasses.replace(hit, ivar=np.where(np.isin(np.arange(w.size), at), 0.0,
                                                     spec.ivar))
    np.testing.assert_array_equal(got.flux, to_canonical_grid(by_hand, "lamost",
                                                              spikes=False).flux)
    both = (got.ivar > 0) & (clean.ivar > 0)
    scale = np.median(clean.flux[clean.ivar > 0])
    assert np.abs(got.flux - clean.flux)[both].max() < 0.15 * scale
    assert np.abs(kept.flux - clean.flux)[both].max() > 1.0 * scale


def test_ingest_reports_the_spikes_it_masked(tmp_path):
    from specsearch.io.ingest import ingest

    rng = np.random.default_rng(7)
    wave = LAMOST_GRID.wavelength[200:3200]
    flux, _ = _star(rng, 40.0)
    flux[[500, 1500, 2500]] += 3.0
    (tmp_path / "in").mkdir()
    rows = "\n".join(f"{w:.4f},{f:.6f},0.025" for w, f in zip(wave, flux))
    (tmp_path / "in" / "star.csv").write_text("wavelength,flux,error\n" + rows + "\n")
    report = ingest([tmp_path / "in"], tmp_path / "cat", modality="lamost", progress=False)
    assert report.rows_written == 1
    assert (report.rows_spikes_masked, report.pixels_spikes_masked) == (1, 3)
    assert "3 pixels in 1 spectra" in report.summary()


def test_lines_narrower_than_a_pixel_and_a_half_are_not_masked():
    """A spectrum whose stated resolution puts a line on ~1 pixel (a heavily binned one):
    its unresolved lines look like spikes, so nothing is masked; stated at two pixels or
    unstated (taken as Nyquist-sampled), its one-pixel hit is masked."""
    from specsearch.spectrum import Spectrum

    wave = np.arange(4000.0, 7000.0, 2.0)
    rng = np.random.default_rng(8)
    flux = 1.0 + rng.normal(0.0, 0.01, wave.size)
    flux[[500, 900]] += 3.0                                  # unresolved emission lines
    def spec(**meta):
        return Spectrum(wavelength=wave, flux=flux, ivar=np.full(wave.size, 1e4),
                        mask=np.zeros(wave.size, bool), meta=meta)
    assert to_canonical_grid(spec(fwhm_A=2.2), "lamost", rv="none").spikes_masked == 0
    assert to_canonical_grid(spec(fwhm_A=4.0), "lamost", rv="none").spikes_masked == 2
    assert to_canonical_grid(spec(), "lamost", rv="none").spikes_masked == 2
