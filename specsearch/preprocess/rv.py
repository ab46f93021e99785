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
   agree, within 40 km/s or within 3 times their combined uncertainty (each peak's own,
   from its height, curvature and the pixels read: Zucker 2003) up to 150 km/s, and the
   whole range's velocity is kept only if it agrees with their inverse-variance mean
   (else that mean). A hot star's Balmer jump and wings can pull the whole range's peak by
   100-200 km/s where no metal line agrees; noise at S/N 3-10 makes a few such peaks too;
   a hot star's broad lines make its red window's velocity imprecise, which its
   uncertainty says. Whether a velocity is worth removing is the caller's test:
   ``r - r_zero``, how much better it fits than zero velocity
   (:data:`specsearch.preprocess.RV_MIN_GAIN`).

Templates: 26 noise-free synthetic LAMOST spectra of the synthetic survey's stellar model
(the physics the model was trained on), M dwarfs and K giants to late B stars at solar and
at -1.5 dex metallicity, made once offline by :mod:`specsearch.synth.rv_templates` and
shipped in ``specsearch/data/preprocess/rv_templates.npz`` (float16, 120 kB).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from specsearch.errors import SpectrumError
from specsearch.preprocess.continuum import continuum
from specsearch.preprocess.grids import LAMOST_GRID
from specsearch.preprocess.rv_correlation import (
    N_REGIONS, Prepared, correlate, ncc_at, pixels_of, prepare, read_mask, region_mask)

AGREE_KMS = 40.0
AGREE_SIGMAS = 3.0
"""Two velocities also agree within this many of their combined uncertainty
(:func:`~specsearch.preprocess.rv_correlation.peak_sigma`): a hot star's broad lines put
the red window's velocity 40-60 km/s from the blue window's at S/N 10, and a fixed
:data:`AGREE_KMS` alone left a quarter of such stars without a velocity."""
AGREE_MAX_KMS = 150.0
"""...but never further apart than this (a peak of noise has an uncertainty of hundreds of
km/s)."""
SIGMA_FLOOR_KMS = 1.0
"""Smallest uncertainty a window's velocity is weighted by."""
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


@functools.lru_cache(maxsize=2)
def _prepared_default(vmax_kms: float) -> Prepared:
    return prepare(default_templates(), vmax_kms)


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
        prep = prepare(tpl, float(vmax_kms))
    n = flux.shape[0]
    v = np.full(n, np.nan)
    r_best, r_zero = np.zeros(n), np.zeros(n)
    which = np.full(n, -1, np.int64)
    with np.errstate(invalid="ignore"):
        good = (ivar > 0) & np.isfinite(flux) & np.isfinite(ivar) & read_mask()
    rows = np.where(good.sum(-1) >= 200)[0]
    if rows.size == 0:
        return RVMeasurement(v_kms=v, r=r_best, r_zero=r_zero, template=which, ok=np.isfinite(v))
    g = good[rows]
    cont = continuum(np.where(g, flux[rows], 0.0), np.where(g, ivar[rows], 0.0))
    with np.errstate(all="ignore"):        # hostile values: not read, never a warning
        norm = np.where(g, flux[rows], 0.0) / cont
    g &= np.isfinite(norm)
    norm = np.where(g, norm, 1.0)
    full = correlate(norm, g, prep, min_r, vmax_kms, 0)
    r_best[rows], r_zero[rows], which[rows] = full.r, full.r_zero, full.template
    # the windows must agree: a hot star's Balmer jump and wings, or a bad stretch of
    # spectrum, can pull the whole range's peak where no line agrees
    checked = np.isfinite(full.v)
    if min_gain is not None:
        checked &= full.r - full.r_zero >= min_gain
    if not checked.any():
        return RVMeasurement(v_kms=v, r=r_best, r_zero=r_zero, template=which, ok=np.isfinite(v))
    parts = [correlate(norm[checked], (g & region_mask(r))[checked], prep, WINDOW_MIN_R,
                        vmax_kms, r) for r in range(1, N_REGIONS)]
    at = np.cumsum(checked) - 1          # row k's position among the checked rows
    for k, row in enumerate(rows):
        if not checked[k]:
            continue
        got = [(w.v[at[k]], w.sigma[at[k]]) for w in parts]
        centre = _agreement(np.array([p for p in got if np.isfinite(p[0])]).reshape(-1, 2))
        if centre is None:
            continue
        if np.isfinite(full.v[k]) and _agree(full.v[k], full.sigma[k], *centre):
            v[row] = full.v[k]
        else:                       # the whole range disagrees with the windows: theirs
            v[row] = centre[0]
            r_best[row] = ncc_at(norm[k], g[k], prep, int(full.template[k]),
                                  pixels_of(centre[0]))
    return RVMeasurement(v_kms=v, r=r_best, r_zero=r_zero, template=which, ok=np.isfinite(v))


def _agree(v1: float, s1: float, v2: float, s2: float) -> bool:
    """Two velocities (km/s) with their peaks' uncertainties agree: within
    :data:`AGREE_KMS`, or within :data:`AGREE_SIGMAS` of their combined uncertainty up to
    :data:`AGREE_MAX_KMS`."""
    combined = float(np.hypot(s1, s2))
    tol = AGREE_KMS
    if np.isfinite(combined):            # a peak without a curvature widens nothing
        tol = min(max(AGREE_KMS, AGREE_SIGMAS * combined), AGREE_MAX_KMS)
    return abs(v1 - v2) <= tol


def _agreement(peaks: np.ndarray) -> tuple[float, float] | None:
    """The inverse-variance mean (and its uncertainty) of the largest group of (v, sigma)
    ``peaks`` that agree pairwise (:func:`_agree`; at least two; between groups of a size,
    the most precise), None if no two agree."""
    best: tuple[int, float, float] | None = None
    n = len(peaks)
    for size in range(n, 1, -1):
        for group in itertools.combinations(range(n), size):
            if not all(_agree(*peaks[a], *peaks[b])
                       for a, b in itertools.combinations(group, 2)):
                continue
            err = peaks[list(group), 1]
            err = np.where(np.isfinite(err), err, AGREE_MAX_KMS)   # no curvature: weak
            w = 1.0 / np.maximum(err, SIGMA_FLOOR_KMS) ** 2
            centre = float(np.sum(w * peaks[list(group), 0]) / w.sum())
            sigma = float(w.sum() ** -0.5)
            if best is None or sigma < best[2]:
                best = (size, centre, sigma)
        if best is not None:
            return best[1], best[2]
    return None


