"""Radial velocities of spectra that come without one, by cross-correlation with templates.

The model reads spectra in the rest frame: the synthetic survey is in it up to the survey's
RV errors, LAMOST files carry their pipeline redshift (header ``Z``), which ingest removes.
A spectrum that arrives without one (a generic FITS or text file, an upload to the web page)
is read at the star's radial velocity, and on the LAMOST grid a halo star's 200-300 km/s is
3-4 pixels: the shipped model then reads a real DR10 FGK star's [Fe/H] 1.1 dex (200 km/s)
to 2.3 dex (300 km/s) too low, i.e. a normal star becomes a metal-poor candidate
(BENCHMARKS.md, "Spectra in the observed frame"). :func:`measure_rv` finds the velocity so
that :func:`specsearch.preprocess.to_canonical_grid` can remove it.

Method (on the LAMOST grid, uniform in log wavelength, so a velocity is a pixel shift):

1. the spectrum is continuum-normalised (:func:`~specsearch.preprocess.continuum`)
   and, like each (normalised) template, turned into line depths ``1 - f`` (clipped to
   [-0.5, 1] against cosmic rays), masked where it has no data, in the telluric bands
   (:data:`~specsearch.preprocess.TELLURIC_BANDS`: they stay at the observatory's rest
   frame, not the star's) and outside 3850-8900 A, then mean-subtracted;
2. the normalised cross-correlation with every template at whole-pixel shifts within
   ``+-vmax_kms`` (one matrix product) picks the template and the pixel; a finer search
   with that template (0.05 pixel steps, the template moved by a Fourier phase shift) and
   a parabola through the three best points give the velocity, which counts when the
   peak correlation reaches ``min_r`` away from the edge of the search;
3. the same in three windows apart (3850-5000, 5000-6500, 6500-8900 A): at least two must
   agree within 40 km/s, and the whole range's velocity is kept only if it agrees with
   them (else theirs). A hot star's Balmer jump and wings can pull the whole range's peak
   by 100-200 km/s where no metal line agrees; noise at S/N 3-10 makes a few such peaks
   too. Whether a velocity is worth removing is the caller's test: ``r - r_zero``, how
   much better it fits than zero velocity (:data:`specsearch.preprocess.RV_MIN_GAIN`).

Templates: 26 noise-free synthetic LAMOST spectra of the synthetic survey's stellar model
(the physics the model was trained on), M dwarfs and K giants to late B stars at solar and
at -1.5 dex metallicity, made once offline by :mod:`specsearch.synth.rv_templates` and
shipped in ``specsearch/data/preprocess/rv_templates.npz`` (float16, 120 kB).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from specsearch.errors import SpectrumError
from specsearch.preprocess.continuum import continuum
from specsearch.preprocess.grids import LAMOST_DLOGLAM, LAMOST_GRID, TELLURIC_BANDS, band_mask
from specsearch.preprocess.wavelengths import C_KMS

KMS_PER_PIXEL = C_KMS * (10.0 ** LAMOST_DLOGLAM - 1.0)
"""Velocity of one LAMOST-grid pixel (69.0 km/s)."""

RV_WINDOWS_A = ((3850.0, 5000.0), (5000.0, 6500.0), (6500.0, 8900.0))
"""Wavelength windows measured apart; two must agree (:data:`AGREE_KMS`). Together they are
what the cross-correlation reads (the bluest pixels are noisy on most spectra)."""
RV_WINDOW_A = (RV_WINDOWS_A[0][0], RV_WINDOWS_A[-1][1])
_N_REGIONS = 1 + len(RV_WINDOWS_A)
AGREE_KMS = 40.0
WINDOW_MIN_R = 0.12
"""Peak correlation a window's velocity needs (noise alone reaches ~0.11 over a third of
the pixels; the agreement of two windows is the test that counts)."""

DEFAULT_VMAX_KMS = 800.0
DEFAULT_MIN_R = 0.25
"""Peak correlation the whole range needs. Noise alone peaks at 0.06-0.07 over the template
and shift trials; real DR10 A/F/G spectra at S/N 10 / 5 / 3 reach 0.55 / 0.33 / 0.22 (median;
``benchmarks/bench_rv.py``)."""

TEMPLATE_FILE = "rv_templates.npz"
"""In ``specsearch/data/preprocess/`` (made by :mod:`specsearch.synth.rv_templates`)."""


@dataclass(frozen=True)
class RVMeasurement:
    """Per-spectrum result of :func:`measure_rv` (arrays of length n).

    Attributes:
        v_kms: the velocity to remove (km/s; positive: the star recedes), NaN where ``ok``
            is False.
        r: the peak normalised cross-correlation (0 where nothing could be read).
        template: index of the best template (-1 where nothing could be read).
        r_zero: the best template's correlation at zero velocity: ``r - r_zero`` is how much
            better the measured velocity fits than none (small for a spectrum already in
            the rest frame, whatever its noise).
        ok: the measurement counts: a whole-range peak of at least ``min_r`` inside the
            search, confirmed by two wavelength windows (module docstring).
    """

    v_kms: np.ndarray
    r: np.ndarray
    r_zero: np.ndarray
    template: np.ndarray
    ok: np.ndarray


@functools.lru_cache(maxsize=1)
def _template_file() -> tuple[np.ndarray, np.ndarray]:
    import importlib.resources

    path = importlib.resources.files("specsearch").joinpath("data", "preprocess",
                                                              TEMPLATE_FILE)
    with path.open("rb") as fh, np.load(fh, allow_pickle=False) as z:
        lab, flux = np.asarray(z["labels"], np.float64), np.asarray(z["flux"], np.float32)
    if flux.shape != (lab.shape[0], LAMOST_GRID.npix) or not np.isfinite(flux).all():
        raise ValueError(f"{path}: radial-velocity templates of shape {flux.shape}, expected "
                         f"({lab.shape[0]}, {LAMOST_GRID.npix}) finite values")
    lab.setflags(write=False)
    flux.setflags(write=False)
    return lab, flux


def template_labels() -> np.ndarray:
    """(T, 3) teff, logg, feh of the default templates (read-only)."""
    return _template_file()[0]


def default_templates() -> np.ndarray:
    """(T, LAMOST_NPIX) continuum-normalised rest-frame templates (read-only float32)."""
    return _template_file()[1]


@functools.lru_cache(maxsize=1)
def _read_mask() -> np.ndarray:
    wave = LAMOST_GRID.wavelength
    return (~band_mask(wave, TELLURIC_BANDS) & (wave >= RV_WINDOW_A[0])
            & (wave <= RV_WINDOW_A[1]))


@functools.lru_cache(maxsize=None)
def _region_mask(region: int) -> np.ndarray:
    """Region 0: every pixel read; 1..: the :data:`RV_WINDOWS_A`."""
    mask = _read_mask()
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
class _Prepared:
    depths: np.ndarray     # (T, N) float32 line depths of the templates
    coarse: np.ndarray     # (S*T, N) float32: every template at every whole-pixel shift
    coarse_sq: np.ndarray  # its squares
    shifts: np.ndarray     # (S,) whole-pixel shifts
    fine: np.ndarray       # (T, Q, N) float32: each template moved by Q fractions of a pixel
    norms: np.ndarray      # (R, S*T): sum of coarse^2 over each region's pixels (no gaps)


def _prepare(tpl: np.ndarray, vmax_kms: float) -> _Prepared:
    mask = _read_mask()
    dep = _depths(np.asarray(tpl, np.float64), np.broadcast_to(mask, tpl.shape))
    kmax = int(np.ceil(vmax_kms / KMS_PER_PIXEL))
    shifts = np.arange(-kmax, kmax + 1)
    # the depths are zero outside the read window, so a roll wraps zeros only
    coarse = np.concatenate([np.roll(dep, int(k), axis=-1) for k in shifts]).astype(np.float32)
    fine = np.stack([_fractional_shifts(row, _FINE_STEP) for row in dep]).astype(np.float32)
    sq = coarse * coarse
    norms = np.stack([sq @ _region_mask(r).astype(np.float32) for r in range(_N_REGIONS)])
    return _Prepared(dep.astype(np.float32), coarse, sq, shifts, fine, norms)


@functools.lru_cache(maxsize=2)
def _prepared_default(vmax_kms: float) -> _Prepared:
    return _prepare(default_templates(), vmax_kms)


def prepare_default_templates() -> None:
    """Load and prepare the default templates now (about 25 MB, 0.3 s), e.g. before a
    worker process caps its memory; :func:`measure_rv` otherwise does it on first use."""
    _prepared_default(DEFAULT_VMAX_KMS)


def measure_rv(flux: np.ndarray, ivar: np.ndarray, *, templates: np.ndarray | None = None,
               vmax_kms: float = DEFAULT_VMAX_KMS, min_r: float = DEFAULT_MIN_R,
               min_gain: float | None = None) -> RVMeasurement:
    """Radial velocities of (n, N) or (N,) LAMOST-grid spectra (see the module docstring).

    Args:
        flux, ivar: spectra on the LAMOST canonical grid (ivar 0 where there is no data).
        templates: (T, N) continuum-normalised rest-frame templates on the same grid
            (default: :func:`default_templates`).
        vmax_kms: the largest |velocity| searched.
        min_r: the peak correlation a measurement needs.
        min_gain: if given, a spectrum whose best velocity fits no better than zero
            velocity by this much (``r - r_zero``) is not checked further and comes back
            not ``ok`` (nothing to remove): the windows' check is paid only where a
            velocity would be removed.
    Raises:
        SpectrumError: the arrays are not on the LAMOST grid.
    """
    flux = np.atleast_2d(np.asarray(flux, np.float64))
    ivar = np.atleast_2d(np.asarray(ivar, np.float64))
    npix = LAMOST_GRID.npix
    if flux.shape[-1] != npix or flux.shape != ivar.shape:
        raise SpectrumError(f"radial velocities are measured on the lamost grid: spectra must "
                            f"be (n, {npix}); got flux {flux.shape} and ivar {ivar.shape}")
    if not (np.isfinite(vmax_kms) and 0 < vmax_kms <= 5000):
        raise ValueError(f"vmax_kms must be in (0, 5000], got {vmax_kms}")
    if templates is None:
        prep = _prepared_default(float(vmax_kms))
    else:
        tpl = np.atleast_2d(np.asarray(templates, np.float64))
        if tpl.shape[-1] != npix or not np.isfinite(tpl).all():
            raise ValueError(f"templates must be finite (T, {npix}); got {tpl.shape}")
        prep = _prepare(tpl, float(vmax_kms))
    n = flux.shape[0]
    v = np.full(n, np.nan)
    r_best, r_zero = np.zeros(n), np.zeros(n)
    which = np.full(n, -1, np.int64)
    with np.errstate(invalid="ignore"):
        good = (ivar > 0) & np.isfinite(flux) & np.isfinite(ivar) & _read_mask()
    rows = np.where(good.sum(-1) >= 200)[0]
    if rows.size == 0:
        return RVMeasurement(v_kms=v, r=r_best, r_zero=r_zero, template=which, ok=np.isfinite(v))
    g = good[rows]
    cont = continuum(np.where(g, flux[rows], 0.0), np.where(g, ivar[rows], 0.0))
    with np.errstate(all="ignore"):        # hostile values: not read, never a warning
        norm = np.where(g, flux[rows], 0.0) / cont
    g &= np.isfinite(norm)
    norm = np.where(g, norm, 1.0)
    full = _correlate(norm, g, prep, min_r, vmax_kms, 0)
    r_best[rows], r_zero[rows], which[rows] = full.r, full.r_zero, full.template
    # the windows must agree: a hot star's Balmer jump and wings, or a bad stretch of
    # spectrum, can pull the whole range's peak where no line agrees
    checked = np.ones(rows.size, bool) if min_gain is None else \
        np.isfinite(full.v) & (full.r - full.r_zero >= min_gain)
    if not checked.any():
        return RVMeasurement(v_kms=v, r=r_best, r_zero=r_zero, template=which, ok=np.isfinite(v))
    parts = [_correlate(norm[checked], (g & _region_mask(r))[checked], prep, WINDOW_MIN_R,
                        vmax_kms, r) for r in range(1, _N_REGIONS)]
    at = np.cumsum(checked) - 1          # row k's position among the checked rows
    for k, row in enumerate(rows):
        if not checked[k]:
            continue
        got = np.array([w.v[at[k]] for w in parts])
        centre = _agreement(got[np.isfinite(got)])
        if centre is None:
            continue
        if np.isfinite(full.v[k]) and abs(full.v[k] - centre) <= AGREE_KMS:
            v[row] = full.v[k]
        else:                       # the whole range disagrees with the windows: theirs
            v[row] = centre
            r_best[row] = _ncc_at(norm[k], g[k], prep, int(full.template[k]),
                                  _pixels(centre))
    return RVMeasurement(v_kms=v, r=r_best, r_zero=r_zero, template=which, ok=np.isfinite(v))


def _agreement(vs: np.ndarray) -> float | None:
    """The mean of the largest group of velocities within :data:`AGREE_KMS` of each other
    (at least two), None if no two agree."""
    best: list[float] = []
    for a in vs:
        group = vs[np.abs(vs - a) <= AGREE_KMS]
        if group.size >= 2 and group.size > len(best) and np.ptp(group) <= AGREE_KMS:
            best = list(group)
    return float(np.mean(best)) if best else None


@dataclass(frozen=True)
class _Peaks:
    v: np.ndarray          # (m,) km/s, NaN where no peak counts
    r: np.ndarray
    r_zero: np.ndarray
    template: np.ndarray


def _correlate(norm: np.ndarray, good: np.ndarray, prep: _Prepared, min_r: float,
               vmax_kms: float, region: int) -> _Peaks:
    """Cross-correlation peaks of continuum-normalised rows over their ``good`` pixels
    (all inside ``region``, see :func:`_region_mask`)."""
    m, n_tpl = norm.shape[0], prep.depths.shape[0]
    v, r_best = np.full(m, np.nan), np.zeros(m)
    r_zero, which = np.zeros(m), np.full(m, -1, np.int64)
    d = _depths(norm, good).astype(np.float32)
    gf = good.astype(np.float32)
    dn = np.sqrt((d.astype(np.float64) ** 2).sum(-1))
    # whole pixels, every template: a matrix product over the region's columns only (the
    # depths are zero elsewhere); the templates' norms over the region are precomputed,
    # less what falls in each row's gaps
    cols = np.flatnonzero(_region_mask(region))
    sl = slice(int(cols[0]), int(cols[-1]) + 1)
    tn = np.broadcast_to(prep.norms[region], (m, prep.norms.shape[1])).copy()
    missing = _region_mask(region) & ~good          # the region's pixels a row lacks
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
        if r_best[k] >= min_r and abs(_velocity(px)) <= vmax_kms:
            v[k] = _velocity(px)
    return _Peaks(v, r_best, r_zero, which)


def _ncc_at(norm: np.ndarray, good: np.ndarray, prep: _Prepared, template: int,
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


def _pixels(v_kms: float) -> float:
    """The pixel shift of velocity ``v_kms`` on the log grid (inverse of :func:`_velocity`)."""
    return float(np.log10(1.0 + v_kms / C_KMS) / LAMOST_DLOGLAM)


def _velocity(pixels: float) -> float:
    """The velocity that moves rest-frame features by ``pixels`` on the log grid."""
    return C_KMS * (10.0 ** (LAMOST_DLOGLAM * pixels) - 1.0)
