"""The underlying rest-frame model spectrum of each synthetic star (one per star).

A star's spectrum on the model grid (:mod:`specsearch.synth.grid`, 3300-10500 A vacuum,
2.5 A FWHM) is ``F = S * N``:

* ``S``, the smooth SED: pi B_lambda(Teff) times exp(s), with s the MILES-fitted smooth
  ratio at 40 A nodes (3570-7390 A), continued linearly (slope clipped) to 3300 A and held
  constant to 10500 A;
* ``N``, the normalised line spectrum: the MILES emulator inside 3545-7410 A, where its
  optical depth -ln N is scaled for what MILES cannot teach: [Fe/H] below (or above) the
  training range of the star's Teff bin (metal lines, tau ~ 10^(0.75 d[Fe/H]), Balmer cores
  kept) and [alpha/Fe] above/below the solar-neighbourhood trend the MILES stars follow
  (Mg, Ca, Si, Ti, O line windows, tau ~ 10^(0.8 d[alpha/Fe])); outside MILES (the red
  arm, and everything for white dwarfs) the physics features of
  :mod:`specsearch.synth.physics`.

Units: surface flux, erg s^-1 cm^-2 A^-1 (S is normalised to pi B_lambda at 5500 A), so
components of composites add with their radii squared.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp

from specsearch.synth import physics
from specsearch.synth.emulator import load_emulator
from specsearch.synth.grid import gaussian_profile_sum, model_wavelength, planck_lambda
from specsearch.synth.labels import StellarLabels

FEH_TAU_SLOPE = 0.75
ALPHA_TAU_SLOPE = 0.8
BLUE_SLOPE_LIMIT = 0.0015      # max |d s / d lambda| (1/A) for the blue SED extrapolation
WD_RADIUS_RSUN = 0.013

ALPHA_LINES_AIR = (5167.32, 5172.68, 5183.60, 5528.41, 4702.99, 4571.10, 4226.73, 6102.72,
                   6122.22, 6162.17, 6439.07, 6493.78, 5588.76, 5857.45, 3933.66, 3968.47,
                   5690.43, 5708.40, 6155.13, 4981.73, 4991.07, 4999.50, 5014.28, 5064.65,
                   4454.78, 4435.68)
BALMER_WINDOW_A = (40.0, 30.0, 24.0, 20.0, 16.0, 12.0, 10.0, 8.0, 6.0, 5.0)


def miles_alpha_trend(feh: np.ndarray) -> np.ndarray:
    """[alpha/Fe] typical of the (solar-neighbourhood) MILES stars at a given [Fe/H]."""
    return np.clip(-0.3 * np.asarray(feh), 0.0, 0.35)


@functools.lru_cache(maxsize=1)
def _masks() -> tuple[np.ndarray, np.ndarray]:
    """(balmer, alpha) masks on the emulator pixels, in [0, 1]."""
    emu = load_emulator()
    wave = model_wavelength()[emu.pixels]
    balmer = np.zeros((1, wave.size))
    gaussian_profile_sum(wave, physics.vac(physics.BALMER),
                         np.array(BALMER_WINDOW_A) / 2.0, np.ones((1, len(physics.BALMER))),
                         n_sigma=3.0, out=balmer)
    alpha = np.zeros((1, wave.size))
    gaussian_profile_sum(wave, physics.vac(ALPHA_LINES_AIR),
                         np.full(len(ALPHA_LINES_AIR), 1.5),
                         np.ones((1, len(ALPHA_LINES_AIR))), n_sigma=3.0, out=alpha)
    return np.clip(balmer[0], 0, 1).astype(np.float32), np.clip(alpha[0], 0, 1).astype(
        np.float32)


@functools.lru_cache(maxsize=1)
def _sed_interpolator() -> tuple[np.ndarray, sp.csr_matrix, np.ndarray]:
    """(extended node wavelengths, sparse (npix, k) linear-interpolation matrix, full-grid
    emulator coverage)."""
    emu = load_emulator()
    wave = model_wavelength()
    nodes = emu.node_wave
    step = nodes[1] - nodes[0]
    blue = np.arange(nodes[0] - step, wave[0] - step, -step)[::-1]
    red = np.arange(nodes[-1] + step, wave[-1] + step, step)
    ext = np.concatenate([blue, nodes, red])
    idx = np.clip(np.searchsorted(ext, wave) - 1, 0, ext.size - 2)
    t = (wave - ext[idx]) / (ext[idx + 1] - ext[idx])
    rows = np.repeat(np.arange(wave.size), 2)
    cols = np.stack([idx, idx + 1], axis=1).ravel()
    vals = np.stack([1.0 - t, t], axis=1).ravel()
    interp = sp.csr_matrix((vals, (rows, cols)), shape=(wave.size, ext.size))
    coverage = np.zeros(wave.size)
    coverage[emu.pixels] = emu.coverage
    return ext, interp, coverage


def extend_sed_nodes(sed_nodes: np.ndarray) -> np.ndarray:
    """(n, k_ext) SED nodes continued to the whole model grid (see the module docstring)."""
    emu = load_emulator()
    ext, _, _ = _sed_interpolator()
    nodes = emu.node_wave
    n_blue = int(np.searchsorted(ext, nodes[0]))
    n_red = ext.size - n_blue - nodes.size
    slope = np.clip((sed_nodes[:, 3] - sed_nodes[:, 0]) / (nodes[3] - nodes[0]),
                    -BLUE_SLOPE_LIMIT, BLUE_SLOPE_LIMIT)
    blue = sed_nodes[:, :1] + slope[:, None] * (ext[:n_blue][None, :] - nodes[0])
    red = np.repeat(sed_nodes[:, -3:].mean(axis=1, keepdims=True), n_red, axis=1)
    return np.concatenate([blue, sed_nodes, red], axis=1)


def stellar_spectra(teff, logg, feh, alpha_fe, *, c_fe=None, state=None,
                    halpha_ew=None, individuality=None) -> np.ndarray:
    """(n, npix) surface flux of single (non-degenerate) stars on the model grid.

    Args:
        teff, logg, feh, alpha_fe: (n,) labels (K, dex, dex, dex).
        c_fe: (n,) [C/Fe] for carbon-enhanced stars (NaN: none).
        state, halpha_ew: emission-line stars (``halpha_ew`` NaN: none); see
            :func:`specsearch.synth.physics.emission_flux`.
        individuality: per-star abundance offsets and rotation
            (:class:`specsearch.synth.individuality.Individuality`; None: none).
    """
    teff = np.asarray(teff, dtype=np.float64)
    logg = np.asarray(logg, dtype=np.float64)
    feh = np.asarray(feh, dtype=np.float64)
    alpha_fe = np.asarray(alpha_fe, dtype=np.float64)
    n = teff.size
    wave = model_wavelength()
    emu = load_emulator()
    out = emu.predict(teff, logg, feh)
    balmer, alpha_mask = _masks()
    # Physics extrapolation of line strengths beyond what MILES covers.
    s_feh = (10.0 ** (FEH_TAU_SLOPE * (feh - out.feh_clamped))).astype(np.float32)[:, None]
    s_alpha = (10.0 ** (ALPHA_TAU_SLOPE * (alpha_fe - miles_alpha_trend(feh))) - 1.0
               ).astype(np.float32)[:, None]
    scale = (1.0 - balmer) * (s_feh * (1.0 + alpha_mask * s_alpha)) + balmer
    # MILES has active M dwarfs; Balmer emission belongs to the 'emission' population, so
    # for M stars the model is capped in the Balmer cores (1.25: the crowded blue
    # pseudo-continuum of cool stars legitimately exceeds 1 there).
    norm_emu = out.norm_flux
    cool = np.flatnonzero(teff < 4200.0)
    if cool.size:
        cores = balmer > 0.5
        norm_emu[np.ix_(cool, np.flatnonzero(cores))] = np.minimum(
            norm_emu[np.ix_(cool, np.flatnonzero(cores))], np.float32(1.25))
    scale *= np.log(np.clip(norm_emu, 0.005, None))
    cov = emu.coverage.astype(np.float32)
    _, interp, coverage = _sed_interpolator()
    norm = np.ones((n, wave.size), dtype=np.float32)
    norm[:, emu.pixels] = cov * np.exp(scale) + (1.0 - cov)
    # Red arm (and beyond): physics, tapered in where MILES stops.
    red0 = int(np.searchsorted(wave, physics.RED_ARM_START_A - 60.0))
    tau_red = physics.red_arm_tau(wave[red0:], teff, logg, feh, alpha_fe)
    norm[:, red0:] *= np.exp(-tau_red * (1.0 - coverage[red0:])).astype(np.float32)
    if c_fe is not None:
        rows = np.flatnonzero(np.isfinite(c_fe))
        if rows.size:
            norm[rows] *= np.exp(-physics.carbon_tau(wave, teff[rows], feh[rows],
                                                     np.asarray(c_fe)[rows])).astype(np.float32)
    hot = np.flatnonzero(teff > 14000.0)
    if hot.size:
        norm[hot] *= np.exp(-physics.hot_star_tau(wave, teff[hot], logg[hot])).astype(
            np.float32)
    if individuality is not None:
        from specsearch.synth import individuality as indiv

        indiv.apply_abundances(norm, individuality.abund)
        indiv.apply_rotation(norm, individuality.vsini)
    if halpha_ew is not None:
        rows = np.flatnonzero(np.isfinite(halpha_ew))
        if rows.size:
            norm[rows] += physics.emission_flux(wave, np.asarray(state)[rows],
                                                np.asarray(halpha_ew)[rows]).astype(np.float32)
    sed = np.exp((interp @ extend_sed_nodes(out.sed_nodes).T).T.astype(np.float32))
    return planck_lambda(wave[None, :], teff[:, None], dtype=np.float32) * sed * norm


def white_dwarf_spectra(teff, logg, wd_type) -> np.ndarray:
    """(n, npix) surface flux of white dwarfs: black body x DA/DB/DC line spectrum."""
    wave = model_wavelength()
    teff = np.asarray(teff, dtype=np.float64)
    tau = physics.white_dwarf_tau(wave, teff, np.asarray(logg), np.asarray(wd_type))
    return planck_lambda(wave[None, :], teff[:, None], dtype=np.float32) * np.exp(
        -tau).astype(np.float32)


def model_spectra(labels: StellarLabels, individuality=None) -> np.ndarray:
    """(n, npix) rest-frame model spectra (surface flux of the system's brighter component
    scale) for a batch of labelled stars, composites included; ``individuality``
    (:mod:`specsearch.synth.individuality`) applies to the single stars and primaries."""
    n = len(labels)
    wave = model_wavelength()
    flux = np.zeros((n, wave.size), dtype=np.float32)
    x = labels.extra
    pop = labels.population
    single = np.flatnonzero(~np.isin(pop, ("white_dwarf", "wd_md", "ultracool")))
    if single.size:
        flux[single] = stellar_spectra(
            labels.teff[single], labels.logg[single], labels.feh[single],
            labels.alpha_fe[single], c_fe=x["c_fe"][single], state=labels.state[single],
            halpha_ew=x["halpha_ew"][single],
            individuality=None if individuality is None else individuality.take(single))
    wd = np.flatnonzero(pop == "white_dwarf")
    if wd.size:
        flux[wd] = white_dwarf_spectra(labels.teff[wd], labels.logg[wd], x["wd_type"][wd])
    ucd = np.flatnonzero(pop == "ultracool")
    if ucd.size:
        from specsearch.synth.ultracool import ultracool_spectra

        flux[ucd] = ultracool_spectra(labels.teff[ucd])
    pair = np.flatnonzero(pop == "wd_md")
    if pair.size:
        flux[pair] = white_dwarf_spectra(x["teff_wd"][pair], x["logg_wd"][pair],
                                         x["wd_type"][pair])
    comp = np.flatnonzero(np.isfinite(x["teff2"]))
    if comp.size:
        feh2 = np.where(np.isfinite(labels.feh[comp]), labels.feh[comp], 0.0)
        alpha2 = np.where(np.isfinite(labels.alpha_fe[comp]), labels.alpha_fe[comp], 0.0)
        flux[comp] += (x["radius_ratio2"][comp, None] ** 2).astype(np.float32) * stellar_spectra(
            x["teff2"][comp], x["logg2"][comp], feh2, alpha2)
    return flux
