"""What makes a synthetic star *this* star and not only a star with its five labels.

Real stars with the same Teff, logg, [Fe/H], [alpha/Fe] and E(B-V) still differ: their
individual abundances scatter around the Galactic trends, they rotate, and the dust in front
of them follows different extinction laws. Each synthetic star draws (from its batch's
generator, so a star is the same in every visit):

* ``abund``: [X/Fe] offsets for Mg, Ca, Ti, Si, Na, Al, Mn, Sr, Ba (line windows), C (CH G
  band) and N (CN bands), Gaussian with the scatter at fixed [Fe/H] of large surveys
  (~0.05 dex for alpha elements, 0.1-0.15 for neutron-capture elements; C and N wider in
  giants, whose mixing changes them). They scale the optical depth in each element's
  windows, ``tau -> tau * 10**(TAU_SLOPE * d[X/Fe])``, like the [alpha/Fe] term of
  :mod:`specsearch.synth.model`. The labels do not change: [alpha/Fe] stays the mean.
* ``vsini`` (km/s): small for cool dwarfs and giants, tens of km/s from late F and
  ~100-250 km/s for A stars (log-normal); applied as a Gaussian broadening of the line
  spectrum in velocity (sigma = 0.44 vsini, the width of a limb-darkened rotation profile).
* ``r_v``: the extinction law's R_V, N(3.1, 0.18) clipped to 2.6-3.8 (G23).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from specsearch.synth import physics
from specsearch.synth.grid import C_KMS, MODEL_DLOG10, gaussian_profile_sum, model_wavelength

LINES_AIR = {
    "mg": (3829.36, 3832.30, 3838.29, 4571.10, 4702.99, 5167.32, 5172.68, 5183.60, 5528.41,
           8806.76),
    "ca": (3933.66, 3968.47, 4226.73, 4454.78, 6102.72, 6122.22, 6162.17, 6439.07, 8498.02,
           8542.09, 8662.14),
    "ti": (4443.80, 4501.27, 4533.97, 4981.73, 4991.07, 4999.50, 5064.65, 5210.39),
    "si": (3905.52, 6155.13, 7944.00),
    "na": (5682.63, 5688.21, 5889.95, 5895.92, 8183.26, 8194.82),
    "al": (3944.01, 3961.52),
    "mn": (4030.75, 4033.06, 4034.48),
    "sr": (4077.71, 4215.52),
    "ba": (4554.03, 4934.08, 5853.67, 6141.71, 6496.90),
}
"""Strong lines per element (air, Angstrom)."""
BANDS_AIR = {"c": ((4290.0, 4318.0),), "n": ((3860.0, 3884.0), (4180.0, 4216.0))}
"""Molecular band windows: CH G band for C, CN for N."""
ELEMENTS = tuple(LINES_AIR) + tuple(BANDS_AIR)
SCATTER = {"mg": 0.05, "ca": 0.05, "ti": 0.06, "si": 0.05, "na": 0.08, "al": 0.08,
           "mn": 0.06, "sr": 0.12, "ba": 0.12, "c": 0.10, "n": 0.15}
GIANT_SCATTER = {"c": 0.18, "n": 0.25}
TAU_SLOPE = 0.8
R_V_GRID = np.round(np.arange(2.6, 3.8001, 0.1), 2)
ROT_SIGMA_PER_VSINI = 0.44


@dataclass
class Individuality:
    """Per-star individuality (arrays of length n; ``abund`` is (n, len(ELEMENTS)))."""

    abund: np.ndarray
    vsini: np.ndarray
    r_v: np.ndarray

    def take(self, rows: np.ndarray) -> "Individuality":
        return Individuality(self.abund[rows], self.vsini[rows], self.r_v[rows])


def draw(rng: np.random.Generator, teff: np.ndarray, logg: np.ndarray) -> Individuality:
    """Draw the individuality of ``len(teff)`` stars (NaN Teff, e.g. white dwarfs: none)."""
    n = len(teff)
    giant = np.asarray(logg) < 3.5
    sig = np.array([SCATTER[e] for e in ELEMENTS])[None, :].repeat(n, axis=0)
    for e, s in GIANT_SCATTER.items():
        sig[giant, ELEMENTS.index(e)] = s
    abund = rng.standard_normal((n, len(ELEMENTS))) * sig
    t = np.nan_to_num(np.asarray(teff, np.float64), nan=0.0)
    median = np.where(t >= 7200, 130.0, np.where(t >= 6300, 25.0, np.where(t >= 6000, 8.0, 3.0)))
    median = np.where(giant & (t < 6000), 4.0, median)
    vsini = np.clip(median * 10.0 ** rng.normal(0.0, 0.3, n), 0.0, 350.0)
    r_v = np.clip(rng.normal(3.1, 0.18, n), R_V_GRID[0], R_V_GRID[-1])
    return Individuality(abund.astype(np.float32), vsini.astype(np.float32),
                         r_v.astype(np.float32))


@functools.lru_cache(maxsize=1)
def element_masks() -> np.ndarray:
    """(len(ELEMENTS), npix) windows in [0, 1] on the model grid."""
    wave = model_wavelength()
    out = np.zeros((len(ELEMENTS), wave.size), np.float32)
    for i, e in enumerate(ELEMENTS):
        if e in LINES_AIR:
            m = np.zeros((1, wave.size))
            lines = LINES_AIR[e]
            gaussian_profile_sum(wave, physics.vac(lines), np.full(len(lines), 1.5),
                                 np.ones((1, len(lines))), n_sigma=3.0, out=m)
            out[i] = np.clip(m[0], 0.0, 1.0)
        else:
            for lo, hi in BANDS_AIR[e]:
                lo_v, hi_v = physics.vac([lo, hi])
                out[i, (wave >= lo_v) & (wave <= hi_v)] = 1.0
    return out


def apply_abundances(norm: np.ndarray, abund: np.ndarray) -> np.ndarray:
    """Scale the line optical depth of normalised spectra (n, npix) in each element's
    windows by ``10**(TAU_SLOPE * abund)``; in place, returned."""
    expo = (abund.astype(np.float32) @ element_masks()) * np.float32(TAU_SLOPE)
    touched = np.flatnonzero(element_masks().any(axis=0))
    tau = -np.log(np.clip(norm[:, touched], 0.005, None))
    norm[:, touched] = np.exp(-tau * np.power(np.float32(10.0), expo[:, touched]))
    return norm


def apply_rotation(norm: np.ndarray, vsini: np.ndarray, step_px: float = 0.25) -> np.ndarray:
    """Broaden normalised spectra (n, npix) by rotation (Gaussian approximation, in velocity
    on the log-linear model grid); in place, returned. Rows are grouped by width."""
    km_per_px = C_KMS * np.log(10.0) * MODEL_DLOG10
    sigma_px = ROT_SIGMA_PER_VSINI * np.asarray(vsini, np.float64) / km_per_px
    q = np.round(sigma_px / step_px) * step_px
    for s in np.unique(q[q >= 0.5]):
        rows = np.flatnonzero(q == s)
        norm[rows] = gaussian_filter1d(norm[rows], float(s), axis=1, mode="nearest")
    return norm


@functools.lru_cache(maxsize=len(R_V_GRID) + 1)
def extinction_curve(r_v: float) -> np.ndarray:
    """(npix,) A(lambda)/E(B-V) on the model grid for the G23 law with this R_V."""
    import astropy.units as u
    from dust_extinction.parameter_averages import G23

    return r_v * G23(Rv=r_v)(model_wavelength() * u.AA)


@functools.lru_cache(maxsize=1)
def extinction_curves() -> np.ndarray:
    """(len(R_V_GRID), npix) A(lambda)/E(B-V) on the model grid, one per R_V (G23)."""
    return np.stack([extinction_curve(float(rv)) for rv in R_V_GRID]).astype(np.float32)


def extinction_for(r_v: np.ndarray) -> np.ndarray:
    """(n, npix) A(lambda)/E(B-V) for each star's R_V (nearest grid value)."""
    idx = np.clip(np.rint((np.asarray(r_v) - R_V_GRID[0]) / 0.1).astype(int), 0,
                  len(R_V_GRID) - 1)
    return extinction_curves()[idx]
