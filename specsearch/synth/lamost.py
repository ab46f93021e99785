"""LAMOST-like low-resolution spectra of synthetic stars.

From the extincted rest-frame model spectrum (:mod:`specsearch.synth.model`):

1. broadening to R = 1800 (Gaussian in log-wavelength, quadrature difference from the
   model's 2.5 A) and rebinning onto :data:`specsearch.preprocess.LAMOST_GRID`: one sparse
   operator for all stars;
2. residual velocity: the catalog puts LAMOST flux in the star's rest frame using the
   pipeline's RV, which is off by ``rv_error_kms`` (Gaussian); the spectrum is shifted by
   that residual only (the true ``rv`` is a label; a sub-pixel shift, applied after the
   broadening where the spectrum is well sampled). Telluric absorption and sky lines are
   imprinted at their observed wavelengths, i.e. shifted by -rv in the catalog frame;
3. flux scale: F_lambda in 1e-17 erg s^-1 cm^-2 A^-1 at the star's G magnitude, times a
   smooth flux-calibration error (a few %) and a small blue/red arm mismatch;
4. noise: photon + sky + read noise in counts with a throughput that is faint in the
   blue (dichroic dip near 5800 A, falling again beyond 8500 A), scaled so the median
   S/N per pixel over 4000-5500 A equals the star's ``snr``; ``ivar`` is the pipeline's
   variance estimate from the noiseless counts. A few cosmic-ray pixels and up to 8 red
   end pixels are flagged (ivar 0, flux 0).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from specsearch.preprocess import LAMOST_DLOGLAM, LAMOST_GRID, air_to_vacuum, rebinner
from specsearch.preprocess.lsf import LAMOST_RESOLUTION
from specsearch.synth.grid import C_KMS, MODEL_DLOG10, MODEL_FWHM_A, model_wavelength

RESOLUTION = LAMOST_RESOLUTION
"""The survey's R; ingest broadens sharper real spectra to the same (preprocess.lsf)."""
TELLURIC_RESIDUAL = (0.12, 0.10)
"""Mean and scatter of the fraction of the telluric optical depth left after the
pipeline's correction (negative = over-corrected); real DR1 spectra show only weak
A/B-band residuals."""
SNR_WINDOW_A = (4000.0, 5500.0)
SKY_LINES_AIR = (5577.34, 5889.95, 5895.92, 6300.30, 6363.78, 4358.34, 5460.74, 5769.60,
                 5790.66)
SKY_LINE_REL = (1.0, 0.35, 0.3, 0.5, 0.18, 0.15, 0.12, 0.08, 0.08)
OH_BANDS_AIR = ((6830.0, 6980.0), (7240.0, 7410.0), (7750.0, 8020.0), (8280.0, 8480.0),
                (8760.0, 9100.0))
TELLURIC_BANDS_AIR = (
    # (start, end, depth at airmass 1 / 1 cm PWV, molecule): O2 scales with airmass, H2O
    # with precipitable water. The LAMOST pipeline divides most of this out; what is left
    # is a residual (see ``TELLURIC_RESIDUAL``).
    (6866.0, 6890.0, 0.25, "o2"), (7594.0, 7630.0, 0.60, "o2"), (7160.0, 7340.0, 0.10, "h2o"),
    (8120.0, 8350.0, 0.12, "h2o"), (8950.0, 9100.0, 0.25, "h2o"), (6470.0, 6600.0, 0.02, "h2o"))


@functools.lru_cache(maxsize=1)
def lamost_operator() -> sp.csr_matrix:
    """(3909, npix) sparse operator: R=1800 broadening then rebinning onto LAMOST_GRID."""
    wave = model_wavelength()
    dln = MODEL_DLOG10 * np.log(10.0)
    sig_r = 1.0 / (RESOLUTION * 2.3548)
    sig_m = MODEL_FWHM_A / (2.3548 * wave)
    sig_px = np.sqrt(np.clip(sig_r ** 2 - sig_m ** 2, 0.0, None)) / dln
    half = int(np.ceil(4.0 * sig_px.max())) + 1
    offsets = np.arange(-half, half + 1)
    cols = np.arange(wave.size)[:, None] + offsets[None, :]
    s = np.maximum(sig_px, 0.05)[:, None]
    w = np.exp(-0.5 * (offsets[None, :] / s) ** 2)
    w = np.where((cols >= 0) & (cols < wave.size), w, 0.0)
    w /= w.sum(axis=1, keepdims=True)
    rows = np.repeat(np.arange(wave.size), offsets.size)
    conv = sp.csr_matrix((w.ravel(), (rows, np.clip(cols, 0, wave.size - 1).ravel())),
                         shape=(wave.size, wave.size))
    rb = rebinner(wave, LAMOST_GRID)
    norm = sp.diags(1.0 / np.asarray(rb.matrix.sum(axis=1)).ravel())
    return (norm @ rb.matrix @ conv).tocsr().astype(np.float32)


def shift_pixels(flux: np.ndarray, velocity_kms: np.ndarray, *,
                 dloglam: float = LAMOST_DLOGLAM) -> np.ndarray:
    """Redshift (n, npix) log-linear spectra by ``velocity_kms`` with linear interpolation.

    Shifts are clipped to +-0.99 pixel (69 km/s on the LAMOST grid): this is for residual
    velocities, the spectra are already near the rest frame.
    """
    s = np.clip(np.log1p(np.asarray(velocity_kms) / C_KMS) / (dloglam * np.log(10.0)),
                -0.99, 0.99).astype(flux.dtype)[:, None]
    out = flux.copy()
    # F_obs(i) = F(i - s): towards the previous pixel for s > 0, the next for s < 0.
    sp_, sn = np.maximum(s, 0), np.maximum(-s, 0)
    out[:, 1:] += sp_ * (flux[:, :-1] - flux[:, 1:])
    out[:, :-1] += sn * (flux[:, 1:] - flux[:, :-1])
    return out


@functools.lru_cache(maxsize=1)
def throughput() -> np.ndarray:
    """Relative throughput on the LAMOST grid (red arm peak 1).

    Shaped after real LAMOST DR1 spectra (``../shared/data/real/lamost``): the blue arm
    collects ~8x fewer photons than the red (S/N in i is ~2.5-3.5x S/N in g for FGK stars,
    as the headers' SNRG/SNRI say), falls steeply below 4300 A, and the dichroic leaves a
    dip near 5700-5800 A where the arms join."""
    w = LAMOST_GRID.wavelength
    blue = np.interp(w, [3700, 3900, 4300, 4800, 5300, 5600, 5720, 5850, 5950],
                     [0.012, 0.035, 0.08, 0.12, 0.12, 0.10, 0.05, 0.02, 0.0])
    red = np.interp(w, [5700, 5800, 5950, 6300, 6800, 7900, 8600, 9100],
                    [0.0, 0.12, 0.5, 0.85, 1.0, 1.0, 0.8, 0.45])
    return blue + red


@functools.lru_cache(maxsize=1)
def sky_spectrum() -> tuple[np.ndarray, np.ndarray]:
    """(continuum, lines): relative night-sky brightness per LAMOST pixel (a fixed,
    reproducible OH forest in the red)."""
    w = LAMOST_GRID.wavelength
    cont = 0.25 * np.ones_like(w) + 0.1 * (w / 9000.0) ** 2
    lines = np.zeros_like(w)
    sig = 1.2
    rng = np.random.default_rng(1800)
    centres, amps = list(SKY_LINES_AIR), list(SKY_LINE_REL)
    for lo, hi in OH_BANDS_AIR:
        k = int((hi - lo) / 12)
        centres += list(rng.uniform(lo, hi, k))
        amps += list(rng.uniform(0.05, 0.6, k) * (1.0 + (lo > 8000)))
    for c, a in zip(air_to_vacuum(np.array(centres)), amps):
        lines += 40.0 * a * np.exp(-0.5 * ((w - c) / sig) ** 2)
    return cont, lines


SKY_LINE_FLOOR = 0.6
"""Sky-line variance that does not fade for bright stars (sky-subtraction residuals scale
with the line, not with the star): the OH forest stays visible in the ivar of G~14 stars,
as in real LAMOST spectra."""


def telluric_transmission(velocity_kms: np.ndarray, airmass: np.ndarray,
                          pwv_cm: np.ndarray) -> np.ndarray:
    """(n, 3909) telluric transmission seen in each star's rest frame (shifted by -v).

    ``airmass`` scales the O2 bands and ``pwv_cm * airmass`` the H2O bands; pass the
    airmass times the uncorrected fraction for pipeline-corrected spectra (negative values
    give over-correction bumps)."""
    wave = LAMOST_GRID.wavelength
    n = np.asarray(velocity_kms).shape[0]
    factor = (1.0 + np.asarray(velocity_kms, dtype=np.float64) / C_KMS)[:, None]
    tau = np.zeros((n, wave.size), dtype=np.float32)
    for lo, hi, depth, mol in TELLURIC_BANDS_AIR:
        lo_v, hi_v = air_to_vacuum(np.array([lo, hi]))
        i0, i1 = np.searchsorted(wave, [lo_v * 0.995, hi_v * 1.005])
        w = wave[None, i0:i1] * factor
        amount = (airmass if mol == "o2" else pwv_cm * airmass)[:, None]
        inside = (w - lo_v) / (hi_v - lo_v)
        # A band with a sharp head and a shaded tail, smoothed by the resolution.
        shape = np.sqrt(np.clip(1.0 - inside, 0.0, 1.0)) * expit((w - lo_v) / 1.5)
        tau[:, i0:i1] += (-np.log(1.0 - depth) * amount * shape).astype(np.float32)
    return np.exp(-tau)


@dataclass
class LamostSpectra:
    """LAMOST-like spectra of a batch (flux in 1e-17 erg s^-1 cm^-2 A^-1)."""

    flux: np.ndarray
    ivar: np.ndarray
    noiseless: np.ndarray
    snr: np.ndarray


def observe_lamost(flux_surface: np.ndarray, xp_g_scale: np.ndarray, rv: np.ndarray,
                   snr: np.ndarray, mag_g: np.ndarray, rng: np.random.Generator, *,
                   rv_error_kms: float = 5.0, teff: np.ndarray | None = None
                   ) -> LamostSpectra:
    """Observe a batch of extincted rest-frame model spectra with the LAMOST-like instrument.

    Args:
        flux_surface: (n, npix) model spectra (surface flux units, extincted).
        xp_g_scale: (n,) factor taking the model spectra to apparent flux at the star's G
            (from the XP side, so both modalities share one absolute scale).
        rv: (n,) true radial velocities (km/s); the pipeline estimate errs by
            ``rv_error_kms``.
        snr: (n,) target median S/N per pixel over 4000-5500 A.
        mag_g: (n,) G magnitude (sets the sky-to-star ratio).
        teff: (n,) Teff (K) for the realism correction fitted on real LAMOST
            (:mod:`specsearch.synth.realism`); None: none.
    """
    n = flux_surface.shape[0]
    rv_est = rv + rng.normal(0.0, rv_error_kms, n)
    op = lamost_operator()
    flux = np.asarray(op @ flux_surface.T, dtype=np.float32).T
    # Residual velocity, applied after broadening (well sampled at R=1800).
    flux = shift_pixels(flux * (xp_g_scale * 1e17).astype(np.float32)[:, None], rv - rv_est)
    if teff is not None:
        from specsearch.synth.realism import load as load_realism

        flux *= load_realism()["lamost"].factor(teff)
    airmass = 1.0 + rng.exponential(0.25, n)
    pwv = rng.lognormal(np.log(0.8), 0.5, n)
    left = np.clip(rng.normal(*TELLURIC_RESIDUAL, n), -0.1, 0.5)
    flux *= telluric_transmission(rv_est, airmass * left, pwv)
    w = LAMOST_GRID.wavelength
    x = ((w - 6400.0) / 2700.0).astype(np.float32)
    calib = np.exp(rng.normal(0, 0.03, (n, 1)).astype(np.float32) * x
                   + rng.normal(0, 0.02, (n, 1)).astype(np.float32) * (x * x - 0.3))
    calib[:, w > 5800.0] *= (1.0 + rng.normal(0, 0.01, (n, 1))).astype(np.float32)
    # Counts: photons ~ lambda F_lambda x throughput; sky and read noise add variance.
    thr = throughput().astype(np.float32)
    t = thr * (w / 5000.0).astype(np.float32)
    u = np.maximum(flux, 0.0) * t
    win = (w >= SNR_WINDOW_A[0]) & (w <= SNR_WINDOW_A[1])
    level = np.median(u[:, win], axis=1, keepdims=True)
    sky_rel = (0.3 * 10.0 ** (0.4 * (np.asarray(mag_g)[:, None] - 17.0))).astype(np.float32)
    sky_cont, sky_lines = sky_spectrum()
    v = level * (sky_rel * (sky_cont * thr).astype(np.float32)
                 + (sky_rel + SKY_LINE_FLOOR) * (sky_lines * thr).astype(np.float32)
                 + np.float32(0.02))
    var = u + v
    ratio = np.median(u[:, win] / np.sqrt(var[:, win]), axis=1, keepdims=True)
    sqrt_k = (np.asarray(snr)[:, None] / np.maximum(ratio, 1e-30)).astype(np.float32)
    sigma = np.sqrt(var) / (sqrt_k * np.maximum(t, 1e-6))
    noiseless = flux * calib
    flux_out = noiseless + sigma * calib * rng.standard_normal(flux.shape, dtype=np.float32)
    ivar = 1.0 / (sigma * calib) ** 2
    bad = rng.random(flux.shape, dtype=np.float32) < 5e-4      # flagged cosmic rays
    n_end = rng.integers(0, 9, n)
    bad |= np.arange(w.size)[None, :] >= (w.size - n_end)[:, None]
    flux_out[bad] = 0.0
    ivar[bad] = 0.0
    return LamostSpectra(flux=flux_out, ivar=ivar, noiseless=noiseless,
                         snr=np.asarray(snr, dtype=np.float32))
