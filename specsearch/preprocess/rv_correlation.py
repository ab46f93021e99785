"""Cross-correlation on the LAMOST grid, the machinery of :mod:`specsearch.preprocess.rv`.

The grid is uniform in log wavelength, so a radial velocity is a pixel shift. Here: the
pixels read and the wavelength windows measured apart, line depths, a template bank at
every whole-pixel shift (one matrix product per batch) and at fractions of a pixel (Fourier
phase shifts), the correlation peaks of a batch of spectra with their uncertainties, and
the conversions between pixels and km/s. :mod:`~specsearch.preprocess.rv` decides which
peaks make a velocity.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from specsearch.preprocess.grids import LAMOST_DLOGLAM, LAMOST_GRID, TELLURIC_BANDS, band_mask
from specsearch.preprocess.wavelengths import C_KMS

KMS_PER_PIXEL = C_KMS * (10.0 ** LAMOST_DLOGLAM - 1.0)
"""Velocity of one LAMOST-grid pixel (69.0 km/s)."""

RV_WINDOWS_A = ((3850.0, 5000.0), (5000.0, 6500.0), (6500.0, 8900.0))
"""Wavelength windows measured apart (:mod:`~specsearch.preprocess.rv`: two must agree).
Together they are what the cross-correlation reads (the bluest pixels are noisy on most
spectra)."""
RV_WINDOW_A = (RV_WINDOWS_A[0][0], RV_WINDOWS_A[-1][1])
N_REGIONS = 1 + len(RV_WINDOWS_A)
"""Region 0 is the whole range read, 1.. the windows (:func:`region_mask`)."""


@functools.lru_cache(maxsize=1)
def read_mask() -> np.ndarray:
    """(N,) the LAMOST-grid pixels a correlation reads: 3850-8900 A, telluric bands out."""
    wave = LAMOST_GRID.wavelength
    return (~band_mask(wave, TELLURIC_BANDS) & (wave >= RV_WINDOW_A[0])
            & (wave <= RV_WINDOW_A[1]))


@functools.lru_cache(maxsize=None)
def region_mask(region: int) -> np.ndarray:
    """Region 0: every pixel read; 1..: the :data:`RV_WINDOWS_A`."""
    mask = read_mask()
    if region == 0:
        return mask
    lo, hi = RV_WINDOWS_A[region - 1]
    wave = LAMOST_GRID.wavelength
    return mask & (wave >= lo) & (wave < hi)


def _depths(norm: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Mean-subtracted line depths, zero where not read."""
    d = np.where(good, np.clip(1.0 - norm, -0.5, 1.0), 0.0)
    n = np.maximum(good.sum(-1, keepdims=True), 1)
    return np.where(good, d - d.sum(-1, keepdims=True) / n, 0.0)


def _fractional_shifts(a: np.ndarray, step: float) -> np.ndarray:
    """(Q, N): ``a`` (N,) moved red by 0, step, 2 step... < 1 pixel (:func:`_shift_exact`)."""
    return np.stack([_shift_exact(a, f) for f in np.arange(0.0, 1.0 - 1e-9, step)])


_FINE_STEP = 0.05          # pixels (3.5 km/s)
_FINE_HALF = 1.5           # the fine search spans the whole-pixel peak +- this


@dataclass(frozen=True)
class Prepared:
    """A template bank made ready for :func:`correlate` (:func:`prepare`)."""

    depths: np.ndarray     # (T, N) float32 line depths of the templates
    coarse: np.ndarray     # (S*T, N) float32: every template at every whole-pixel shift
    coarse_sq: np.ndarray  # its squares
    shifts: np.ndarray     # (S,) whole-pixel shifts
    fine: np.ndarray       # (T, Q, N) float32: each template moved by Q fractions of a pixel
    norms: np.ndarray      # (R, S*T): sum of coarse^2 over each region's pixels (no gaps)


def prepare(tpl: np.ndarray, vmax_kms: float) -> Prepared:
    """(T, N) continuum-normalised rest-frame templates as line depths at every whole-pixel
    shift within +-``vmax_kms`` and at every fine fraction of a pixel."""
    mask = read_mask()
    dep = _depths(np.asarray(tpl, np.float64), np.broadcast_to(mask, tpl.shape))
    kmax = int(np.ceil(vmax_kms / KMS_PER_PIXEL))
    shifts = np.arange(-kmax, kmax + 1)
    # the depths are zero outside the read window, so a roll wraps zeros only
    coarse = np.concatenate([np.roll(dep, int(k), axis=-1) for k in shifts]).astype(np.float32)
    fine = np.stack([_fractional_shifts(row, _FINE_STEP) for row in dep]).astype(np.float32)
    sq = coarse * coarse
    norms = np.stack([sq @ region_mask(r).astype(np.float32) for r in range(N_REGIONS)])
    return Prepared(dep.astype(np.float32), coarse, sq, shifts, fine, norms)


@dataclass(frozen=True)
class Peaks:
    """Per-spectrum result of :func:`correlate` (arrays of length m)."""

    v: np.ndarray          # (m,) km/s, NaN where no peak counts
    r: np.ndarray
    r_zero: np.ndarray
    template: np.ndarray
    sigma: np.ndarray      # (m,) km/s: the peak's own uncertainty (:func:`peak_sigma`)


def correlate(norm: np.ndarray, good: np.ndarray, prep: Prepared, min_r: float,
               vmax_kms: float, region: int) -> Peaks:
    """Cross-correlation peaks of continuum-normalised rows over their ``good`` pixels
    (all inside ``region``, see :func:`region_mask`)."""
    m, n_tpl = norm.shape[0], prep.depths.shape[0]
    v, r_best, sigma = np.full(m, np.nan), np.zeros(m), np.full(m, np.nan)
    r_zero, which = np.zeros(m), np.full(m, -1, np.int64)
    d = _depths(norm, good).astype(np.float32)
    gf = good.astype(np.float32)
    dn = np.sqrt((d.astype(np.float64) ** 2).sum(-1))
    # whole pixels, every template: a matrix product over the region's columns only (the
    # depths are zero elsewhere); the templates' norms over the region are precomputed,
    # less what falls in each row's gaps
    cols = np.flatnonzero(region_mask(region))
    sl = slice(int(cols[0]), int(cols[-1]) + 1)
    tn = np.broadcast_to(prep.norms[region], (m, prep.norms.shape[1])).copy()
    missing = region_mask(region) & ~good          # the region's pixels a row lacks
    gap_cols = np.flatnonzero(missing.any(0))
    if gap_cols.size:   # take their share out: a product over the gaps only
        tn -= missing[:, gap_cols].astype(np.float32) @ prep.coarse_sq[:, gap_cols].T
        np.maximum(tn, 0.0, out=tn)
    cc = (d[:, sl] @ prep.coarse[:, sl].T) / np.maximum(np.sqrt(tn) * dn[:, None], 1e-12)
    best = cc.argmax(1)
    s_idx, t_idx = np.divmod(best, n_tpl)
    kmax = int(prep.shifts.max())
    zero = int(np.where(prep.shifts == 0)[0][0])
    q = prep.fine.shape[1]
    for k in range(m):
        if gf[k].sum() < 100:
            continue
        s0, t0 = int(prep.shifts[s_idx[k]]), int(t_idx[k])
        r_best[k], which[k] = float(cc[k, best[k]]), t0
        r_zero[k] = float(cc[k, zero * n_tpl + t0])
        if abs(s0) >= kmax:                                  # at the window's edge
            continue
        # shift s = i + f (i whole, 0 <= f < 1): the spectrum moved by -i against the
        # template moved by f
        lo = int(np.floor(s0 - _FINE_HALF))
        whole = np.arange(lo, int(np.floor(s0 + _FINE_HALF)) + 1)
        dk = np.stack([np.roll(d[k], -i) for i in whole])
        gk = np.stack([np.roll(gf[k], -i) for i in whole])
        ft = prep.fine[t0]
        curve = (dk @ ft.T) / np.maximum(np.sqrt(gk @ (ft * ft).T) * dn[k], 1e-12)
        trial = (whole[:, None] + np.arange(q)[None, :] * _FINE_STEP).ravel()
        curve = curve.ravel()
        keep = np.abs(trial - s0) <= _FINE_HALF + 1e-9
        trial, curve = trial[keep], curve[keep]
        j = int(np.clip(curve.argmax(), 1, len(trial) - 2))
        y0, y1, y2 = curve[j - 1], curve[j], curve[j + 1]
        den = y0 - 2 * y1 + y2
        off = float(np.clip(0.5 * (y0 - y2) / den, -1.0, 1.0)) if den < 0 else 0.0
        px = trial[j] + off * _FINE_STEP
        r_best[k] = max(r_best[k], float(curve.max()))
        if r_best[k] >= min_r and abs(velocity_of(px)) <= vmax_kms:
            v[k] = velocity_of(px)
            sigma[k] = peak_sigma(trial, curve, j, float(gf[k].sum()))
    return Peaks(v, r_best, r_zero, which, sigma)


_CURVATURE_STEPS = 10      # fine steps (0.5 pixel) each side of the peak for its curvature


def peak_sigma(trial: np.ndarray, curve: np.ndarray, j: int, n_pixels: float) -> float:
    """The velocity uncertainty (km/s) of a correlation peak: the maximum-likelihood form
    of Zucker (2003, MNRAS 342, 1291), sigma_s^2 = -(1 - C^2) / (N C C''), C the peak
    correlation, C'' its curvature per pixel^2 (from the curve 0.5 pixel either side), N
    the pixels read. Broad lines (hot stars) give a flat peak and a large sigma; noise
    lowers C. ``trial`` holds uniform steps in pixels, ``curve`` the correlation there."""
    h = min(_CURVATURE_STEPS, j, len(trial) - 1 - j)
    if h < 2:
        return float("inf")
    dx = float(trial[j + h] - trial[j])
    c = float(curve[j])
    c2 = float(curve[j - h] - 2.0 * c + curve[j + h]) / (dx * dx)
    if not (c2 < 0 and 0 < c < 1 and n_pixels > 0):
        return float("inf")
    return float(np.sqrt((1.0 - c * c) / (n_pixels * c * -c2)) * KMS_PER_PIXEL)


def ncc_at(norm: np.ndarray, good: np.ndarray, prep: Prepared, template: int,
            pixels: float) -> float:
    """The normalised correlation of one row with one template moved by ``pixels``."""
    d = _depths(norm[None], good[None])[0]
    whole = int(np.floor(pixels))
    t = _shift_exact(prep.depths[template].astype(np.float64), pixels - whole)
    t = np.roll(t, whole)
    num = float(d @ t)
    den = np.sqrt(float((d * d).sum()) * float((good * t * t).sum()))
    return num / max(den, 1e-12)


def _shift_exact(a: np.ndarray, frac: float) -> np.ndarray:
    """``a`` (N,) moved red by ``frac`` of a pixel by a Fourier phase shift, zero-padded
    (linear interpolation would blur a template at fractional shifts and pull the peak
    towards whole pixels)."""
    n = a.shape[-1]
    size = 1 << int(np.ceil(np.log2(2 * n)))
    phase = np.exp(-2j * np.pi * np.fft.rfftfreq(size) * frac)
    return np.fft.irfft(np.fft.rfft(a, size) * phase, size)[:n]


def pixels_of(v_kms: float) -> float:
    """The pixel shift of velocity ``v_kms`` on the log grid (inverse of :func:`velocity_of`)."""
    return float(np.log10(1.0 + v_kms / C_KMS) / LAMOST_DLOGLAM)


def velocity_of(pixels: float) -> float:
    """The velocity that moves rest-frame features by ``pixels`` on the log grid."""
    return C_KMS * (10.0 ** (LAMOST_DLOGLAM * pixels) - 1.0)
