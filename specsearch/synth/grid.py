"""The synthetic survey's model wavelength grid and small spectral helpers.

Every synthetic star is first made as ONE rest-frame model spectrum on this grid; the
LAMOST-like and Gaia XP spectra are both derived from it (:mod:`specsearch.synth.instrument`).

The grid is log-linear (vacuum Angstrom) with half the LAMOST pixel (log10 step 5e-5,
34.5 km/s) on the LAMOST lattice (so every second model pixel centre is a LAMOST pixel
centre), from 3300 to 10500 A: 10060 pixels, covering the LAMOST range (3700-9100 A) and
the Gaia XP range (330-1050 nm). Its intrinsic resolution is 2.5 A FWHM (MILES, on which the
data-driven part is fitted); instruments broaden from there.
"""

from __future__ import annotations

import functools

import numpy as np

from specsearch.preprocess import LAMOST_DLOGLAM, LAMOST_LOGLAM0, Grid

MODEL_DLOG10 = LAMOST_DLOGLAM / 2.0
MODEL_FIRST, MODEL_LAST = -1000, 9060     # lattice indices (half LAMOST pixels from 3700 A)
MODEL_FWHM_A = 2.5
"""Intrinsic resolution of the model spectrum (Angstrom FWHM, constant in wavelength)."""

C_KMS = 299792.458
H_CGS, C_CGS, K_CGS = 6.62607015e-27, 2.99792458e10, 1.380649e-16


@functools.lru_cache(maxsize=1)
def model_grid() -> Grid:
    """The model grid (vacuum Angstrom, log-linear)."""
    k = np.arange(MODEL_FIRST, MODEL_LAST)
    wave = 10.0 ** (LAMOST_LOGLAM0 + MODEL_DLOG10 * k)
    return Grid(name="synth-model", wavelength=wave, flux_unit="erg s-1 cm-2 A-1 (surface)",
                log_spacing=True)


def model_wavelength() -> np.ndarray:
    """(npix,) model wavelengths in vacuum Angstrom."""
    return model_grid().wavelength


def planck_lambda(wave_A: np.ndarray, teff: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Surface flux pi B_lambda(T) in erg s^-1 cm^-2 A^-1, broadcast over (n, 1) x (npix,).

    ``dtype=np.float32`` is ~3x faster and accurate to 1e-6 for Teff > 1500 K on the model
    grid (the exponent stays far below float32 overflow)."""
    lam = np.asarray(wave_A, dtype=np.float64) * 1e-8
    t = np.asarray(teff, dtype=np.float64)
    c1 = (np.pi * 2.0 * H_CGS * C_CGS ** 2 / lam ** 5 * 1e-8).astype(dtype)
    c2 = (H_CGS * C_CGS / (lam * K_CGS)).astype(dtype)
    limit = 80.0 if dtype == np.float32 else 600.0
    x = np.minimum(c2 / t.astype(dtype), dtype(limit))
    return c1 / np.expm1(x)


def gaussian_profile_sum(wave: np.ndarray, centres: np.ndarray, sigma: np.ndarray,
                         strength: np.ndarray, *, n_sigma: float = 5.0,
                         out: np.ndarray | None = None) -> np.ndarray:
    """Accumulate Gaussian profiles into an (n, npix) array (e.g. optical depth).

    Args:
        wave: (npix,) increasing wavelengths (Angstrom).
        centres: (m,) line centres (Angstrom, same frame as ``wave``).
        sigma: (n, m) or (m,) Gaussian sigma (Angstrom).
        strength: (n, m) peak value of each profile per star.
        out: array to add into (created if None; needs ``n`` rows).
    Each line is evaluated only on the pixels within ``n_sigma`` of the widest star's sigma,
    so the cost is O(n * m * window), not O(n * m * npix).
    """
    strength = np.atleast_2d(strength)
    n = strength.shape[0]
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), strength.shape)
    if out is None:
        out = np.zeros((n, wave.size))
    for j, c in enumerate(np.asarray(centres, dtype=np.float64)):
        s = sigma[:, j]
        a = strength[:, j]
        if not np.any(a != 0):
            continue
        half = n_sigma * float(s.max())
        i0, i1 = np.searchsorted(wave, [c - half, c + half])
        if i1 <= i0:
            continue
        x = (wave[i0:i1][None, :] - c) / s[:, None]
        out[:, i0:i1] += a[:, None] * np.exp(-0.5 * x * x)
    return out


def band_profile_sum(wave: np.ndarray, heads: np.ndarray, scale_A: np.ndarray,
                     strength: np.ndarray, *, to_red: bool = True,
                     out: np.ndarray | None = None) -> np.ndarray:
    """Accumulate molecular-band optical depth: a sharp head that fades exponentially.

    ``to_red``: the band is shaded to the red (TiO, CN red system) - absorption starts at the
    head and decays over ``scale_A`` redward; False: shaded to the violet (C2 Swan, CN violet,
    CH). ``strength`` is (n, m) peak optical depth, ``scale_A`` (m,) e-folding length.
    """
    strength = np.atleast_2d(strength)
    if out is None:
        out = np.zeros((strength.shape[0], wave.size))
    for j, h in enumerate(np.asarray(heads, dtype=np.float64)):
        a = strength[:, j]
        if not np.any(a != 0):
            continue
        L = float(scale_A[j])
        lo, hi = (h - 0.3 * MODEL_FWHM_A, h + 5.0 * L) if to_red else (h - 5.0 * L,
                                                                        h + 0.3 * MODEL_FWHM_A)
        i0, i1 = np.searchsorted(wave, [lo, hi])
        d = (wave[i0:i1] - h) if to_red else (h - wave[i0:i1])
        # A head softened by the model resolution, then an exponential decay.
        shape = np.exp(-np.clip(d, 0.0, None) / L) / (1.0 + np.exp(-d / (0.4 * MODEL_FWHM_A)))
        out[:, i0:i1] += a[:, None] * shape[None, :]
    return out
