"""Artefact screening: quality features of catalog spectra and flags for likely data problems.

Published outlier searches over LAMOST found most of their top outliers were data problems
(bad pixels, sky residuals, the blue/red arm join), not new astrophysics. These features
look at the *spectrum* (flux/ivar on the canonical grid), not at the embedding, so an object
can be both: an outlier *because of* an artefact. Flagged objects go to a separate list.

Per spectrum (:func:`quality_features`, vectorised over a batch):

* ``masked_fraction``: pixels with ivar 0, non-finite values or zero flux;
* ``snr``: median per-pixel S/N (flux x sqrt(ivar)) over good pixels;
* ``negative_fraction``: good pixels with negative flux (a star has none above S/N ~3);
* ``n_spikes`` / ``spike_sigma``: single-pixel outliers (cosmic rays, hot pixels): a pixel
  far from the mean of its two neighbours, in units of the noise, while the neighbours stay
  near the continuum (an unresolved line at R~1800 spans >= 2-3 pixels, a spike one;
  :func:`specsearch.preprocess.spikes.find_spikes`, which masks the strongest before the
  grid when a spectrum is read);
* ``sky_sigma``: the strongest narrow residual (matched filter of the line spread) at
  night-sky line wavelengths ([O I] 5577/6300/6364, Na D, Hg, and the OH bands), with
  ``sky_rel`` its amplitude relative to the local flux;
* ``dead_px``: the longest run of pixels whose flux falls below 10% of the surrounding
  level (a fibre that delivered no light there, with unflagged ivar);
* ``arm_step``: log10 flux step at the best split between 5740 and 5960 A (LAMOST's blue
  and red arms join near 5800 A; a wrong relative scale leaves a step), and
  ``arm_profile`` (B, S), the step at every candidate split (stellar features such as an
  M dwarf's TiO band head at 5847 A have their own profile, which the screening removes
  by comparing with similar stars);
* ``colour``: log10 of mean flux at 4200-4600 A over 7600-8200 A, for the flux-calibration
  tilt, judged against the star's Gaia XP colour when it has one, else against stars of the
  same predicted Teff (:func:`screen`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter1d, median_filter

from specsearch.preprocess import air_to_vacuum, grid_for
from specsearch.preprocess.spikes import find_spikes

C_KMS = 299_792.458

SKY_LINES_AIR: tuple[float, ...] = (4358.34, 5460.74, 5577.34, 5769.60, 5790.66, 5889.95,
                                    5895.92, 6300.30, 6363.78)
"""Strong night-sky emission lines (air, A): Hg street lights, [O I], Na D."""
OH_BANDS_AIR: tuple[tuple[float, float], ...] = ((6830.0, 6980.0), (7240.0, 7410.0),
                                                 (7750.0, 8020.0), (8280.0, 8480.0),
                                                 (8760.0, 9100.0))
"""Wavelength ranges (air, A) crowded with OH Meinel-band sky lines."""
STELLAR_ABSORPTION_AIR: tuple[float, ...] = (5889.95, 5895.92)
"""Sky lines that are also strong stellar absorption lines: only positive residuals count."""
NEGATIVE_SKY_REL = 0.6
"""A negative sky residual must be deeper than this fraction of the local flux (most
stellar absorption lines at R~1800 are shallower)."""

COLOUR_BLUE_A = (4200.0, 4600.0)
COLOUR_RED_A = (7600.0, 8200.0)
ARM_JOIN_A = (5740.0, 5960.0)


@dataclass(frozen=True, kw_only=True)
class ArtefactConfig:
    """Flag thresholds (each flag is one boolean column; the reasons column lists them).

    Attributes:
        max_masked_fraction: more masked pixels than this is ``masked``.
        min_snr: median per-pixel S/N below this is ``low_snr``.
        max_negative_fraction: more good pixels with negative flux is ``negative_flux``
            (only checked where S/N > 5, where a real spectrum has none).
        spike_sigma: a single-pixel outlier needs this many sigma; ``max_spikes`` or more
            spikes is ``spikes``.
        sky_sigma, sky_rel: a sky-line residual needs both this significance and this
            amplitude relative to the local flux to be ``sky_residual``.
        dead_px: a dead run of at least this many pixels is ``dead_segment`` (the CN 3883
            band head of carbon stars can reach ~0 over ~64 px).
        arm_step_z, arm_step_min: the arm-join step must be this robust z from stars of the
            same predicted Teff *and* at least this large in log10 flux (0.08 = 20%).
        tilt_z, tilt_min: same for the colour residual (log10; 0.3 = a factor 2 across 4400
            to 7900 A: XP's broad line spread moves flux between the windows in stars with
            strong bands, e.g. carbon stars, by up to ~0.25 dex).
    """

    max_masked_fraction: float = 0.5
    min_snr: float = 2.0
    max_negative_fraction: float = 0.05
    spike_sigma: float = 12.0
    max_spikes: int = 1
    sky_sigma: float = 8.0
    sky_rel: float = 0.25
    dead_px: int = 96
    arm_step_z: float = 6.0
    arm_step_min: float = 0.08
    tilt_z: float = 6.0
    tilt_min: float = 0.3


FLAGS: tuple[str, ...] = ("masked", "low_snr", "negative_flux", "spikes", "sky_residual",
                          "dead_segment", "arm_join", "flux_tilt")


def _longest_run(mask: np.ndarray) -> np.ndarray:
    """(B,) longest run of True along axis 1."""
    if mask.shape[1] == 0:
        return np.zeros(mask.shape[0], np.int64)
    c = np.cumsum(mask, axis=1)
    reset = np.maximum.accumulate(np.where(~mask, c, 0), axis=1)
    return (c - reset).max(axis=1)


def _window_mean(flux: np.ndarray, good: np.ndarray, wave: np.ndarray,
                 lo_hi: tuple[float, float]) -> np.ndarray:
    sel = (wave >= lo_hi[0]) & (wave <= lo_hi[1])
    g = good[:, sel]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(g.sum(1) > 0, (flux[:, sel] * g).sum(1) / np.maximum(g.sum(1), 1),
                        np.nan)


def colour_index(flux: np.ndarray, ivar: np.ndarray, modality: str) -> np.ndarray:
    """(B,) log10 mean flux 4200-4600 A over 7600-8200 A (NaN if either is <= 0)."""
    wave = grid_for(modality).wavelength
    good = (ivar > 0) & np.isfinite(flux)
    blue = _window_mean(flux, good, wave, COLOUR_BLUE_A)
    red = _window_mean(flux, good, wave, COLOUR_RED_A)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((blue > 0) & (red > 0), np.log10(blue / red), np.nan)


def _sky_pixels(wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pixels to test, of which positive-only) on a grid."""
    test = np.zeros(wave.size, bool)
    pos_only = np.zeros(wave.size, bool)
    for line in SKY_LINES_AIR:
        c = air_to_vacuum(np.array([line]))[0]
        # +-8 A: the residual RV error of a rest-frame catalog moves sky lines by a few A.
        near = np.abs(wave - c) <= 8.0
        test |= near
        if line in STELLAR_ABSORPTION_AIR:
            pos_only |= near
    for lo, hi in OH_BANDS_AIR:
        lo_v, hi_v = air_to_vacuum(np.array([lo, hi]))
        test |= (wave >= lo_v) & (wave <= hi_v)
    return test, pos_only


def _sky_residual(flux: np.ndarray, ivar: np.ndarray, good: np.ndarray, wave: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(B,) strongest line-shaped residual at sky pixels: significance and amplitude
    relative to the local flux. Negative residuals (over-subtracted sky) count only when
    deeper than ``NEGATIVE_SKY_REL``, since stellar absorption lines sit in the windows."""
    test, pos_only = _sky_pixels(wave)
    b = flux.shape[0]
    if not test.any():
        return np.zeros(b), np.zeros(b)
    idx = np.flatnonzero(test)
    # A local baseline (running median over 15 px ~ 20 A, robust to absorption lines)
    # removes the continuum and broad stellar features; an unresolved sky line (FWHM
    # ~2.5-3 px) survives it. Only the pixels the filter and shape test read are medianed.
    # Bad pixels enter as +inf/-inf alternately so they shift the median by nothing on
    # average (cheaper than a NaN-aware median).
    need = np.unique(np.clip(idx[:, None] + np.arange(-5, 6), 0, wave.size - 1))
    win = np.clip(need[:, None] + np.arange(-7, 8), 0, wave.size - 1)
    filler = np.where(np.arange(wave.size) % 2 == 0, np.inf, -np.inf).astype(np.float32)
    fw = np.where(good, flux, filler).astype(np.float32)[:, win]        # (B, m, 15)
    base_need = np.partition(fw, 7, axis=-1)[..., 7].astype(np.float64)
    base = np.zeros(flux.shape)
    base[:, need] = np.where(np.isfinite(base_need), base_need, 0.0)
    resid = np.zeros(flux.shape)
    resid[:, need] = np.where(good[:, need], flux[:, need] - base[:, need], 0.0)
    w = np.where(good, ivar, 0.0)
    offsets = np.arange(-3, 4)
    g = np.exp(-0.5 * (offsets / 1.2) ** 2)
    cols = np.clip(idx[:, None] + offsets[None, :], 0, wave.size - 1)
    r, ww = resid[:, cols], w[:, cols]                       # (B, m, 7)
    num = (r * ww * g).sum(-1)
    den = (ww * g * g).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        amp = np.where(den > 0, num / den, 0.0)
        sig = amp * np.sqrt(den)
        rel = np.where(np.abs(base[:, idx]) > 0, amp / np.abs(base[:, idx]), 0.0)
    # Line-shaped: back near the baseline 4-5 px either side (a molecular band head or
    # any other step leaves one side high).
    left = resid[:, np.clip(idx - 5, 0, None)] + resid[:, np.clip(idx - 4, 0, None)]
    right = resid[:, np.clip(idx + 5, None, wave.size - 1)] + \
        resid[:, np.clip(idx + 4, None, wave.size - 1)]
    shaped = (np.abs(left) < 0.7 * np.abs(amp)) & (np.abs(right) < 0.7 * np.abs(amp))
    neg_ok = ~pos_only[idx][None, :] & (rel < -NEGATIVE_SKY_REL)
    strength = np.where(shaped & ((sig > 0) | neg_ok), np.abs(sig), 0.0)
    best = np.argmax(strength, axis=1)
    rows = np.arange(b)
    return strength[rows, best], np.abs(rel[rows, best])


def quality_features(flux: np.ndarray, ivar: np.ndarray, modality: str, *,
                     spike_sigma: float = ArtefactConfig.spike_sigma) -> dict[str, np.ndarray]:
    """Quality features of a batch of canonical-grid spectra (see the module docstring).

    Args:
        flux, ivar: (B, npix) on ``modality``'s canonical grid.
        spike_sigma: significance a single-pixel outlier needs to be counted.
    Returns:
        name -> (B,) array (``arm_profile``: (B, S)). LAMOST gets every feature; XP (low
        resolution, no arms, no sky lines) gets masked_fraction, snr, negative_fraction
        and colour.
    """
    grid = grid_for(modality)
    f = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    iv = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
    good = (iv > 0) & np.isfinite(f) & np.isfinite(iv) & (f != 0)
    f = np.where(np.isfinite(f), f, 0.0)
    n_good = good.sum(1)
    out: dict[str, np.ndarray] = {"masked_fraction": 1.0 - n_good / f.shape[1]}
    snr_pix = np.where(good, f * np.sqrt(np.where(good, iv, 0.0)), np.nan)
    with np.errstate(all="ignore"):
        out["snr"] = np.where(n_good > 0, nanmedian_rows(snr_pix), 0.0)
        out["negative_fraction"] = np.where(n_good > 0, ((f < 0) & good).sum(1)
                                            / np.maximum(n_good, 1), 0.0)
    out["colour"] = colour_index(f, np.where(good, iv, 0.0), modality)
    if modality != "lamost":
        return out
    wave = grid.wavelength
    spike, sig = find_spikes(f, iv, good)
    strong = spike & (sig > spike_sigma)
    out["n_spikes"] = strong.sum(1).astype(np.float64)
    out["spike_sigma"] = np.where(spike, sig, 0.0).max(1)
    out["sky_sigma"], out["sky_rel"] = _sky_residual(f, iv, good, wave)
    out["dead_px"] = _dead_run(f, good)
    profile = arm_step_profile(f, good, wave)
    out["arm_step"] = largest_step(profile)
    out["arm_profile"] = profile
    return out


def _dead_run(f: np.ndarray, good: np.ndarray, bin_px: int = 16) -> np.ndarray:
    """(B,) length (pixels) of the longest dead run: 16-px bins with flux below 10% of the
    level within +-768 px, entered abruptly (the bins just outside are > 4x brighter than
    the run: a fibre losing its light is a cliff, a cool or carbon star's faint blue end
    a slope)."""
    b, n = f.shape
    nbin = n // bin_px
    fb = (f[:, :nbin * bin_px] * good[:, :nbin * bin_px]).reshape(b, nbin, bin_px).sum(-1)
    gb = good[:, :nbin * bin_px].reshape(b, nbin, bin_px).sum(-1)
    has = gb >= bin_px // 2
    level = np.where(has, fb / np.maximum(gb, 1), np.nan)
    smooth = median_filter(np.where(has, level, -np.inf), size=(1, 3), mode="nearest")
    env = maximum_filter1d(smooth, size=97, axis=1, mode="nearest")
    low = has & (env > 0) & (level < 0.1 * env)
    c = np.cumsum(low, axis=1)
    run = c - np.maximum.accumulate(np.where(~low, c, 0), axis=1)
    length = run.max(axis=1)
    end = np.argmax(run, axis=1)
    start = end - length + 1
    lv = np.where(has, level, 0.0)
    cl = np.concatenate([np.zeros((b, 1)), np.cumsum(lv, axis=1)], axis=1)
    rows = np.arange(b)
    inside = (cl[rows, end + 1] - cl[rows, np.clip(start, 0, None)]) / np.maximum(length, 1)

    def side(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        ok = (lo >= 0) & (hi <= nbin) & (hi > lo)
        lo_c, hi_c = np.clip(lo, 0, nbin), np.clip(hi, 0, nbin)
        mean = (cl[rows, hi_c] - cl[rows, lo_c]) / np.maximum(hi_c - lo_c, 1)
        return np.where(ok, mean, -np.inf)

    outside = np.maximum(side(start - 2, start), side(end + 1, end + 3))
    abrupt = outside > 4.0 * np.maximum(inside, 0.0) + 1e-30
    return np.where((length > 0) & abrupt, length * bin_px, 0).astype(np.float64)


def arm_step_profile(f: np.ndarray, good: np.ndarray, wave: np.ndarray, bin_px: int = 8,
                     half: int = 12) -> np.ndarray:
    """(B, S) log10 step (median of the 12 bins redward minus the 12 blueward) at each
    of S candidate splits (every 8 px, ~11 A) across ARM_JOIN_A."""
    lo = np.searchsorted(wave, ARM_JOIN_A[0]) - half * bin_px
    hi = np.searchsorted(wave, ARM_JOIN_A[1]) + half * bin_px
    lo, hi = max(lo, 0), min(hi, wave.size)
    nbin = (hi - lo) // bin_px
    seg = slice(lo, lo + nbin * bin_px)
    b = f.shape[0]
    fb = (f[:, seg] * good[:, seg]).reshape(b, nbin, bin_px).sum(-1)
    gb = good[:, seg].reshape(b, nbin, bin_px).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        lb = np.where((gb > 0) & (fb > 0), np.log10(fb / np.maximum(gb, 1)), np.nan)
    steps = [nanmedian_rows(lb[:, s:s + half]) - nanmedian_rows(lb[:, s - half:s])
             for s in range(half, nbin - half + 1)]
    return np.stack(steps, axis=1) if steps else np.full((b, 1), np.nan)


def nanmedian_rows(a: np.ndarray) -> np.ndarray:
    """(B,) median of the finite values of each row of (B, N) ``a``; NaN for a row with none.

    Unlike ``np.nanmedian`` it never warns (an all-NaN row is an expected case here), so no
    ``warnings.catch_warnings`` is needed: that context manager changes process-wide state
    and is not safe while other threads (the service's workers) run."""
    out = np.full(a.shape[0], np.nan)
    some = np.isfinite(a).any(axis=1)
    if some.any():
        out[some] = np.nanmedian(a[some], axis=1)
    return out


def largest_step(profile: np.ndarray) -> np.ndarray:
    """(B,) the entry of largest |value| of each (B, S) step profile (NaN if none)."""
    absd = np.where(np.isfinite(profile), np.abs(profile), -1.0)
    best = np.argmax(absd, axis=1)
    out = profile[np.arange(profile.shape[0]), best]
    return np.where(absd.max(axis=1) >= 0, out, np.nan)
