"""Physics-based spectral features: where MILES does not reach, and for rare populations.

Everything here is an optical depth (or an emission term) on the model grid, built from
line lists (air wavelengths converted to vacuum) and equivalent widths that scale with
Teff, log g, [Fe/H] and [alpha/Fe] following empirical calibrations:

* red arm (7400-10500 A, not covered by MILES): Ca II triplet (EW vs Teff, gravity, [Fe/H];
  cf. Cenarro et al. 2002, Starkenburg et al. 2010), Paschen series (peaks near 9000 K),
  O I 7774, K I 7665/7699 and Na I 8183/8195 (strong in cool dwarfs, gravity sensitive),
  Mg I 8807, Fe/Si/Ti lines, TiO bands below ~4000 K;
* carbon-enhanced stars: CH G band, C2 Swan bands, CN violet and red systems;
* hot stars: He I and He II;
* white dwarfs: pressure-broadened Balmer (DA) or He I (DB) lines;
* emission-line stars: Balmer, Ca II and He I emission.

Equivalent widths are turned into Gaussian optical-depth profiles through the Gaussian
curve of growth (:func:`tau_for_ew`), so strong lines saturate as real ones do.
"""

from __future__ import annotations

import functools

import numpy as np

from specsearch.preprocess import air_to_vacuum
from specsearch.synth.grid import MODEL_FWHM_A, band_profile_sum, gaussian_profile_sum

SIGMA_MODEL = MODEL_FWHM_A / 2.3548

# Air wavelengths (A); converted to vacuum where used.
CA_TRIPLET = (8498.02, 8542.09, 8662.14)
PASCHEN = (9229.01, 9014.91, 8862.78, 8750.47, 8665.02, 8598.39, 8545.38, 8502.48,
           8467.25, 8437.95, 8413.32, 8392.40)                    # P9 ... P20
OXYGEN_7774 = (7771.94, 7774.17, 7775.39)
POTASSIUM = (7664.90, 7698.96)
SODIUM_RED = (8183.26, 8194.82)
# Fe-peak (Fe I, Ni I, Al I) and alpha-element (Mg I, Si I, Ti I) lines of the red arm with
# their relative strengths in a solar-type star (strongest ~0.45).
METAL_RED = (7445.75, 7495.07, 7511.02, 7568.90, 7583.79, 7748.27, 7780.56, 7832.20,
             7937.14, 7945.85, 7998.94, 8046.05, 8085.18, 8220.38, 8239.13, 8327.05,
             8365.63, 8387.77, 8468.41, 8514.07, 8526.67, 8582.26, 8611.80, 8621.60,
             8674.75, 8688.62, 8757.19, 8763.97, 8793.34, 8804.62, 8824.22, 8838.43,
             7422.28, 7714.31, 7748.89, 7797.59, 8772.87, 8773.90, 9088.32, 9258.29,
             10327.31, 10343.82)
METAL_RED_WEIGHT = (0.35, 0.40, 0.35, 0.25, 0.20, 0.30, 0.22, 0.25, 0.30, 0.30, 0.22,
                    0.30, 0.18, 0.20, 0.18, 0.40, 0.15, 0.45, 0.35, 0.35, 0.18, 0.20,
                    0.30, 0.35, 0.40, 0.45, 0.18, 0.18, 0.22, 0.22, 0.35, 0.30, 0.18,
                    0.20, 0.18, 0.18, 0.15, 0.15, 0.20, 0.20, 0.25, 0.20)
ALPHA_RED = (7405.77, 7415.95, 7423.50, 7932.35, 7944.00, 8556.78, 8648.47, 8728.01,
             8742.45, 8752.01, 8717.83, 8736.02, 8806.76, 8923.57, 8377.86, 8412.36,
             8426.50, 8434.96, 8675.37, 8682.98, 8734.71)
ALPHA_RED_WEIGHT = (0.22, 0.18, 0.20, 0.22, 0.22, 0.15, 0.18, 0.20, 0.25, 0.18, 0.18,
                    0.30, 0.60, 0.20, 0.15, 0.15, 0.20, 0.25, 0.15, 0.15, 0.15)
TIO_RED_HEADS = (7589.0, 7666.0, 7743.0, 8206.0, 8432.0, 8859.0, 9209.0)
TIO_RED_DEPTH = (1.1, 0.9, 0.7, 0.4, 1.0, 0.9, 0.7)
CN_RED_HEADS = (7875.0, 8063.0, 8286.0, 8424.0, 9144.0)
BALMER = (6562.80, 4861.32, 4340.46, 4101.73, 3970.07, 3889.05, 3835.38, 3797.90,
          3770.63, 3750.15)                                        # H-alpha ... H12
HE_I = (4026.19, 4387.93, 4471.48, 4713.14, 4921.93, 5015.68, 5875.62, 6678.15, 7065.19)
HE_II = (4199.83, 4541.59, 4685.70, 5411.52)
CA_HK = (3933.66, 3968.47)

RED_ARM_START_A = 7380.0
"""Vacuum wavelength above which the red-arm physics replaces MILES (with a taper)."""


def vac(lines) -> np.ndarray:
    return air_to_vacuum(np.asarray(lines, dtype=np.float64))


@functools.lru_cache(maxsize=1)
def _curve_of_growth() -> tuple[np.ndarray, np.ndarray]:
    tau0 = np.logspace(-4, 4, 400)
    u = np.linspace(-12, 12, 2401)
    prof = np.exp(-0.5 * u * u)
    w = (1.0 - np.exp(-tau0[:, None] * prof[None, :])).sum(axis=1) * (u[1] - u[0])
    return tau0, w / np.sqrt(2.0 * np.pi)


def tau_for_ew(ew_A: np.ndarray, sigma_A: np.ndarray) -> np.ndarray:
    """Peak optical depth of a Gaussian-tau line with equivalent width ``ew_A`` (A).

    Inverts EW = sigma sqrt(2 pi) F(tau0) (the Gaussian curve of growth, linear for weak
    lines, logarithmic when saturated). Zero or negative EW gives tau0 = 0.
    """
    tau0, w = _curve_of_growth()
    ratio = np.clip(np.asarray(ew_A) / (np.asarray(sigma_A) * np.sqrt(2.0 * np.pi)), 0.0,
                    w[-1])
    return np.where(ratio > 0, np.interp(ratio, w, tau0), 0.0)


def strong_line_sigma(ew_A: np.ndarray, depth_ratio: float = 0.6) -> np.ndarray:
    """Gaussian sigma (A) for a strong line: wide enough that EW / (sigma sqrt(2 pi)) stays
    near ``depth_ratio`` (~0.5 central depth), mimicking damping wings at R ~ 2000."""
    return np.maximum(SIGMA_MODEL, np.asarray(ew_A) / (depth_ratio * np.sqrt(2.0 * np.pi)))


def _add_lines(tau, wave, lines_vac, ew, sigma):
    ew = np.atleast_2d(ew)
    sigma = np.broadcast_to(sigma, ew.shape)
    return gaussian_profile_sum(wave, lines_vac, sigma, tau_for_ew(ew, sigma), out=tau)


def metal_factor(teff: np.ndarray) -> np.ndarray:
    """Relative strength of neutral metal lines vs Teff (stronger in cooler atmospheres)."""
    return np.clip((7800.0 - teff) / 2600.0, 0.04, 1.6)


def tio_strength(teff: np.ndarray, feh: np.ndarray) -> np.ndarray:
    """TiO band strength: zero above ~4000 K, rising steeply in M stars."""
    return np.clip((4050.0 - teff) / 700.0, 0.0, 2.2) ** 1.6 * 10 ** (0.3 * np.clip(feh, -2.5,
                                                                                  0.4))


def red_arm_tau(wave: np.ndarray, teff, logg, feh, alpha_fe) -> np.ndarray:
    """(n, npix) optical depth of the red-arm features (only lines above ~7380 A)."""
    t, g = np.asarray(teff)[:, None], np.asarray(logg)[:, None]
    f, a = np.asarray(feh)[:, None], np.asarray(alpha_fe)[:, None]
    tau = np.zeros((t.shape[0], wave.size))
    # Ca II triplet: sum EW(8542 + 8662) vs Teff for solar giants, x gravity x metallicity.
    base = np.interp(t, [3000, 3500, 4000, 4500, 5000, 5500, 6000, 6500, 7000, 8000, 9000,
                         10000, 20000], [4.0, 5.5, 7.0, 7.6, 7.4, 6.8, 6.0, 5.0, 4.0, 2.4,
                                         1.4, 0.8, 0.2])
    ca_sum = base * np.clip(1.0 + 0.12 * (2.5 - g), 0.7, 1.5) \
        * np.clip(1.0 + 0.3 * (f + 0.6 * a), 0.15, 1.25)
    ca_ew = ca_sum * np.array([0.28, 0.55, 0.45])[None, :]
    _add_lines(tau, wave, vac(CA_TRIPLET), ca_ew, strong_line_sigma(ca_ew))
    # Paschen series: hydrogen, peaks near 9000 K, broader at high gravity.
    lt = np.log10(t)
    p_ew = 3.2 * np.exp(-0.5 * ((lt - 3.96) / 0.11) ** 2)
    order = np.arange(9, 21)
    p_ew = p_ew * (12.0 / order[None, :]) ** 0.9
    p_sig = np.sqrt(SIGMA_MODEL ** 2 + (1.0 + 1.2 * np.clip(g - 2.5, 0.0, 2.0)) ** 2)
    _add_lines(tau, wave, vac(PASCHEN), p_ew, p_sig)
    # O I 7774: A/F stars, much stronger in supergiants.
    o_ew = (0.12 + 0.9 * np.exp(-0.5 * ((t - 8000.0) / 1700.0) ** 2)) \
        * np.clip(1.0 + 0.35 * (4.0 - g), 0.6, 2.5) * 10 ** (0.3 * np.clip(f + a, -3, 0.5))
    _add_lines(tau, wave, vac(OXYGEN_7774), o_ew * np.array([0.40, 0.33, 0.27])[None, :],
               SIGMA_MODEL)
    # K I and Na I: strong in K/M dwarfs (gravity sensitive), weak in giants.
    dwarfness = np.clip((g - 3.0) / 1.6, 0.15, 1.2)
    cool = np.clip((5200.0 - t) / 1500.0, 0.0, 1.4)
    k_ew = (0.25 + 1.6 * cool * dwarfness) * 10 ** (0.25 * np.clip(f, -3, 0.5))
    k_ew = k_ew * np.array([0.55, 0.45])[None, :] * 2
    _add_lines(tau, wave, vac(POTASSIUM), k_ew, strong_line_sigma(k_ew, 0.8))
    na_ew = (0.15 + 2.2 * np.clip((4900.0 - t) / 1400.0, 0.0, 1.5) ** 1.3 * dwarfness) \
        * 10 ** (0.25 * np.clip(f, -3, 0.5))
    na_ew = na_ew * np.array([0.45, 0.55])[None, :] * 2
    _add_lines(tau, wave, vac(SODIUM_RED), na_ew, strong_line_sigma(na_ew, 0.8))
    # Fe-peak and alpha-element lines: weak lines, ~linear in abundance.
    m = metal_factor(t) * 10 ** (0.8 * np.clip(f, -4.0, 0.6)) \
        * np.clip(1.0 + 0.1 * (3.0 - g), 0.8, 1.3)
    _add_lines(tau, wave, vac(METAL_RED), m * np.array(METAL_RED_WEIGHT)[None, :],
               SIGMA_MODEL)
    _add_lines(tau, wave, vac(ALPHA_RED), m * 10 ** (0.8 * a)
               * np.array(ALPHA_RED_WEIGHT)[None, :], SIGMA_MODEL)
    # CN red system in cool giants (weak, shaded to the red), tracks metallicity.
    cn = np.clip((5400.0 - t) / 1200.0, 0.0, 1.2) * np.clip((3.5 - g) / 2.0, 0.0, 1.0) \
        * 10 ** (0.7 * np.clip(f, -4.0, 0.5))
    band_profile_sum(wave, vac(CN_RED_HEADS), np.full(len(CN_RED_HEADS), 60.0),
                     cn * np.full((1, len(CN_RED_HEADS)), 0.06), to_red=True, out=tau)
    # TiO bands (shaded to the red).
    q = tio_strength(t[:, 0], f[:, 0])[:, None]
    band_profile_sum(wave, vac(TIO_RED_HEADS), np.full(len(TIO_RED_HEADS), 70.0),
                     q * np.array(TIO_RED_DEPTH)[None, :], to_red=True, out=tau)
    return tau


def carbon_tau(wave: np.ndarray, teff, feh, c_fe) -> np.ndarray:
    """(n, npix) optical depth of CH, C2 and CN bands for carbon-enhanced stars."""
    t = np.asarray(teff)[:, None]
    feh = np.asarray(feh)[:, None]
    c_h = feh + np.asarray(c_fe)[:, None]
    # Molecular band strength ~ carbon abundance / continuous (H-) opacity, and the H-
    # opacity falls roughly as metallicity^0.5: a CEMP giant with [C/H] = -1 shows a G band
    # as strong as a solar giant's.
    q = np.clip(10 ** (c_h - 0.5 * feh + 0.3), 0.0, 4.0) * np.clip((6600.0 - t) / 1800.0,
                                                                  0.05, 1.5)
    tau = np.zeros((t.shape[0], wave.size))
    band_profile_sum(wave, vac([4314.0]), np.array([18.0]), 0.6 * q, to_red=False, out=tau)
    band_profile_sum(wave, vac([4737.0, 5165.0, 5636.0, 6191.0]),
                     np.array([60.0, 70.0, 80.0, 60.0]),
                     q * np.array([[0.35, 0.45, 0.30, 0.12]]) * np.clip(
                         (5800.0 - t) / 1200.0, 0.0, 1.5), to_red=False, out=tau)
    band_profile_sum(wave, vac([3883.0, 4216.0]), np.array([35.0, 30.0]),
                     q * np.array([[0.7, 0.35]]), to_red=False, out=tau)
    band_profile_sum(wave, vac(CN_RED_HEADS[:4]), np.full(4, 60.0),
                     q * np.array([[0.12, 0.12, 0.10, 0.10]]), to_red=True, out=tau)
    return tau


def hot_star_tau(wave: np.ndarray, teff, logg) -> np.ndarray:
    """He I (15000-30000 K) and He II (> 30000 K) lines of O/B and subdwarf stars."""
    t, g = np.asarray(teff)[:, None], np.asarray(logg)[:, None]
    tau = np.zeros((t.shape[0], wave.size))
    he1 = 1.1 * np.exp(-0.5 * ((np.log10(t) - 4.32) / 0.11) ** 2)
    w1 = np.array([[0.6, 0.5, 1.0, 0.3, 0.6, 0.4, 0.9, 0.6, 0.4]])
    sig = np.sqrt(SIGMA_MODEL ** 2 + (0.8 + 0.6 * np.clip(g - 3.5, 0, 2.5)) ** 2)
    _add_lines(tau, wave, vac(HE_I), he1 * w1, sig)
    he2 = 0.9 * np.clip((t - 29000.0) / 12000.0, 0.0, 1.5)
    _add_lines(tau, wave, vac(HE_II), he2 * np.array([[0.5, 0.7, 1.0, 0.8]]), sig)
    return tau


def white_dwarf_tau(wave: np.ndarray, teff, logg, wd_type) -> np.ndarray:
    """Pressure-broadened Balmer (DA) or He I (DB) lines; DC white dwarfs are featureless.

    Each line is a narrow core plus broad Stark wings (two Gaussians in optical depth); the
    Balmer lines are strongest near 12000-13000 K and broaden with log g.
    """
    t, g = np.asarray(teff)[:, None], np.asarray(logg)[:, None]
    kind = np.asarray(wd_type)[:, None]
    tau = np.zeros((t.shape[0], wave.size))
    strength = np.exp(-0.5 * ((np.log10(t) - 4.1) / 0.16) ** 2)
    width = (18.0 + 10.0 * (g - 8.0)) * np.clip(t / 12000.0, 0.5, 1.6) ** 0.5
    order = np.arange(len(BALMER))
    rel = np.array([0.8, 1.0, 0.95, 0.85, 0.7, 0.55, 0.42, 0.3, 0.2, 0.12])[None, :]
    rel_w = (1.0 / (1.0 + 0.25 * order))[None, :] * np.where(order == 0, 0.7, 1.0)[None, :]
    da = (kind == 0).astype(float)
    for frac, tau_peak, wscale in ((0.3, 1.6, 0.25), (0.7, 0.65, 1.0)):
        sig = np.maximum(width * wscale * rel_w, SIGMA_MODEL)
        gaussian_profile_sum(wave, vac(BALMER), sig, da * strength * rel * tau_peak * frac
                             * 2, n_sigma=4.0, out=tau)
    db = (kind == 1).astype(float)
    he_strength = np.exp(-0.5 * ((np.log10(t) - 4.35) / 0.12) ** 2)
    gaussian_profile_sum(wave, vac(HE_I), np.full((t.shape[0], len(HE_I)), 12.0),
                         db * he_strength * np.array([[0.4, 0.4, 0.9, 0.3, 0.5, 0.4, 0.8,
                                                       0.5, 0.3]]), n_sigma=4.0, out=tau)
    return tau


def emission_flux(wave: np.ndarray, state: np.ndarray, halpha_ew) -> np.ndarray:
    """(n, npix) emission in units of the local continuum (add to the normalised flux).

    ``halpha_ew`` is negative (emission) in A. dMe stars: Balmer + Ca II H&K, narrow;
    Be stars: Balmer + weak He I, a few A wide (disk rotation); T Tauri-like: strong Balmer,
    Ca II H&K and triplet, He I 5876.
    """
    ew = -np.asarray(halpha_ew, dtype=np.float64)[:, None]
    n = ew.shape[0]
    kind = np.asarray(state)
    be = (kind == "hot_ms")[:, None]
    tts = (kind == "ttauri")[:, None]
    sig = np.where(be, 4.0, np.where(tts, 3.0, SIGMA_MODEL))
    balmer_dec = np.array([[1.0, 0.35, 0.2, 0.12, 0.08, 0.05, 0.03]])
    balmer_dec = np.where(be, balmer_dec ** 1.3, balmer_dec)
    ew_b = ew * balmer_dec
    amp = ew_b / (sig * np.sqrt(2.0 * np.pi))
    out = gaussian_profile_sum(wave, vac(BALMER[:7]), np.broadcast_to(sig, amp.shape), amp)
    ca = np.where(be, 0.0, np.where(tts, 0.5, 0.25)) * ew
    amp_ca = np.concatenate([ca, ca * 0.8], axis=1) / (sig * np.sqrt(2.0 * np.pi))
    gaussian_profile_sum(wave, vac(CA_HK), np.broadcast_to(sig, amp_ca.shape), amp_ca, out=out)
    cat = np.where(tts, 0.05, 0.0) * ew * np.ones((n, 3))
    gaussian_profile_sum(wave, vac(CA_TRIPLET), np.broadcast_to(sig, cat.shape),
                         cat / (sig * np.sqrt(2.0 * np.pi)), out=out)
    he = np.where(be | tts, 0.04, 0.0) * ew * np.ones((n, 2))
    gaussian_profile_sum(wave, vac([5875.62, 6678.15]), np.broadcast_to(sig, he.shape),
                         he / (sig * np.sqrt(2.0 * np.pi)), out=out)
    return out
