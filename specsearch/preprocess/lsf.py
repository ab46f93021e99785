"""Resolution matching: a spectrum sharper than a grid's instrument is broadened to it first.

The encoders learned LAMOST LRS spectra at R = :data:`LAMOST_RESOLUTION` (the synthetic
survey broadens its model spectra to exactly that, :mod:`specsearch.synth.lamost`). A
spectrum from a sharper spectrograph (an echelle library at R = 10^4-10^5, X-shooter,
a slit spectrum at R = 5000) keeps deeper, narrower lines when it is only rebinned onto the
LAMOST pixels, and the model reads line depth as temperature, gravity and metallicity.
:func:`to_canonical_grid` therefore broadens such a spectrum to the grid's resolution with
a Gaussian of the quadrature difference (in log wavelength, like the synthetic survey)
before it rebins it.

**The input's resolution**, first found of (all set by the readers, :mod:`specsearch.io`):

* ``meta['fwhm_A']``: the line-spread FWHM in Angstrom (FITS ``FWHM`` card, e.g. MILES'
  2.5 A; a ``# fwhm_A = ...`` comment in a text table);
* ``meta['resolving_power']``: R = lambda / FWHM (ESO ``SPEC_RES``, SDSS ``wdisp``, a
  ``# resolving_power = ...`` comment, or the user's, :func:`state_resolution`: ``ingest``
  / ``search --resolving-power``, the API's ``resolving_power``);
* neither: when the sampling is much finer than the target line width (a step below
  :data:`FINE_STEP_FACTOR` of it) the spectrum is taken as Nyquist-sampled (FWHM = 2
  pixels, the sharpest its sampling allows); otherwise it is left as it is (LAMOST's own
  files, SDSS, spectra exported on the LAMOST grid).

**When**: only if the input FWHM at the median wavelength of its overlap with the grid is
below :data:`SHARPER_FACTOR` of the target's. MILES (2.5 A against LAMOST's 3.1 A at 5560 A:
0.81) is left alone: the shipped model was fine-tuned on native MILES spectra, and
broadening them moves its median errors on the held-out MILES stars by 5 K and 0.01 dex,
well inside their scatter (BENCHMARKS.md, "Resolution matching").

**How**: the spectrum is rebinned onto a fine log-wavelength work grid (a quarter of the
target's Gaussian sigma a pixel: bounded work whatever the input's sampling), convolved
with the difference kernel there (its width follows the input's FWHM pixel by pixel,
normalised over good pixels so gaps do not darken their edges) and rebinned onto the grid.
The flux is the broadened one; ``ivar`` and the mask stay those of the direct rebinning
(the smoothing correlates neighbouring pixels, so its apparent noise gain is not claimed).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from specsearch.errors import ConfigError
from specsearch.preprocess.grids import Grid, grid_for
from specsearch.spectrum import Spectrum

LAMOST_RESOLUTION = 1800.0
"""R = lambda / FWHM of LAMOST LRS spectra as the model learned them (constant in log
wavelength)."""
GRID_RESOLUTION: dict[str, float] = {"lamost": LAMOST_RESOLUTION}
"""Grids whose inputs are resolution-matched, and their R. The XP grid is not: a generic
spectrum put on it is far sharper than XP, but XP's line-spread function is not Gaussian
(use the Gaia XP readers for XP data)."""
SHARPER_FACTOR = 0.7
"""Broaden only when the input FWHM is below this fraction of the target's."""
BROADER_FACTOR = 1.25
"""An input FWHM above this multiple of the target's (R below 1,440 for LAMOST) is broader
than the model reads well: nothing can sharpen it, and its shallower lines read as a lower
metallicity (the shipped model on real DR10 FGK stars: [Fe/H] -0.06 / -0.10 / -0.18 /
-0.59 dex at R = 1400 / 1200 / 1000 / 600, with LAMOST-sized uncertainties; BENCHMARKS.md,
"Two more ways a real spectrum can differ"). Ingest counts such spectra."""
FINE_STEP_FACTOR = 0.2
"""Without a stated resolution, a spectrum whose median pixel step is below this fraction of
the target FWHM is taken as Nyquist-sampled (FWHM = :data:`ASSUMED_PIXELS_PER_FWHM` pixels)."""
ASSUMED_PIXELS_PER_FWHM = 2.0
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
WORK_STEPS_PER_SIGMA = 4.0
"""Work-grid pixels per target sigma (ln-wavelength step = sigma / 4)."""


@dataclass(frozen=True)
class ResolutionMatch:
    """What resolution matching decided for one spectrum on one grid.

    Attributes:
        grid: the grid name.
        target_fwhm_A: the grid's FWHM at ``wavelength_A``.
        input_fwhm_A: the input's FWHM there, or None when unknown.
        source: where ``input_fwhm_A`` came from (``fwhm_A``, ``resolving_power``,
            ``sampling`` (assumed Nyquist), ``sampling (at least)`` (two pixels of a
            sampling too coarse for the grid's resolution: a lower bound), or ``unknown``).
        wavelength_A: the median wavelength of the input's good pixels on the grid.
        broaden: True when the spectrum is broadened before rebinning.
        broader: True when the input is broader than the grid's instrument by more than
            :data:`BROADER_FACTOR` (a stated resolution, or a sampling too coarse for any
            sharper one: no spectrum is sharper than two of its pixels).
    """

    grid: str
    target_fwhm_A: float
    input_fwhm_A: float | None
    source: str
    wavelength_A: float
    broaden: bool
    broader: bool = False


def _positive(value: object) -> float | None:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def input_resolution(spectrum: Spectrum) -> tuple[str, float] | None:
    """(kind, value) of the resolution a spectrum states: ``("fwhm_A", A)`` or
    ``("resolving_power", R)``; None when it states none (or a non-positive one)."""
    fwhm = _positive(spectrum.meta.get("fwhm_A"))
    if fwhm is not None:
        return "fwhm_A", fwhm
    power = _positive(spectrum.meta.get("resolving_power"))
    if power is not None:
        return "resolving_power", power
    return None


def check_resolving_power(resolving_power: float) -> float:
    """``resolving_power`` if it is a positive finite number, else ConfigError naming it."""
    if not (np.isfinite(resolving_power) and resolving_power > 0):
        raise ConfigError(f"resolving_power must be a positive number (R = lambda / FWHM); "
                          f"got {resolving_power}")
    return float(resolving_power)


def state_resolution(spectrum: Spectrum, resolving_power: float | None, source: str) -> bool:
    """Give ``spectrum`` the resolving power a caller knows (``ingest`` / ``search
    --resolving-power``) when its file states none; a stated one wins. True if set.

    Raises:
        ConfigError: ``resolving_power`` is not a positive finite number.
    """
    if resolving_power is None:
        return False
    check_resolving_power(resolving_power)
    if input_resolution(spectrum) is not None:
        return False
    spectrum.meta.update(resolving_power=float(resolving_power), resolution_from=source)
    return True


def resolution_match(spectrum: Spectrum, grid: Grid | str, *,
                     wavelength: np.ndarray | None = None) -> ResolutionMatch | None:
    """Decide whether ``spectrum`` is broadened before it goes onto ``grid``.

    Args:
        spectrum: a validated spectrum (vacuum Angstrom).
        grid: a grid or modality name; None is returned for grids without a resolution.
        wavelength: the wavelengths to judge by (e.g. rest frame); default the spectrum's.
    """
    grid = grid_for(grid) if isinstance(grid, str) else grid
    power = GRID_RESOLUTION.get(grid.name)
    if power is None:
        return None
    wave = spectrum.wavelength if wavelength is None else wavelength
    lo, hi = grid.wavelength[0], grid.wavelength[-1]
    inside = (wave >= lo) & (wave <= hi) & (spectrum.ivar > 0)
    if inside.sum() < 2:
        return None
    at = float(np.median(wave[inside]))
    target = at / power
    stated = input_resolution(spectrum)
    if stated is not None:
        source, value = stated
        fwhm = value if source == "fwhm_A" else at / value
    else:
        step = float(np.median(np.diff(wave[(wave >= lo) & (wave <= hi)])))
        if step < FINE_STEP_FACTOR * target:
            fwhm, source = ASSUMED_PIXELS_PER_FWHM * step, "sampling"
        elif ASSUMED_PIXELS_PER_FWHM * step > BROADER_FACTOR * target:
            # no FWHM stated, but none is sharper than two pixels: broader than the grid's
            return ResolutionMatch(grid.name, target, ASSUMED_PIXELS_PER_FWHM * step,
                                   "sampling (at least)", at, False, True)
        else:       # LAMOST's own sampling and SDSS's: its FWHM is not known
            return ResolutionMatch(grid.name, target, None, "unknown", at, False)
    return ResolutionMatch(grid.name, target, fwhm, source, at,
                           fwhm < SHARPER_FACTOR * target, fwhm > BROADER_FACTOR * target)


@functools.lru_cache(maxsize=4)
def _work_grid(name: str) -> tuple[Grid, float]:
    """The fine log-wavelength work grid of a resolution-matched grid, and its ln step."""
    grid = grid_for(name)
    sigma_t = 1.0 / (FWHM_PER_SIGMA * GRID_RESOLUTION[name])
    step = sigma_t / WORK_STEPS_PER_SIGMA
    margin = 6.0 * sigma_t
    start, stop = np.log(grid.wavelength[0]) - margin, np.log(grid.wavelength[-1]) + margin
    n = int(np.ceil((stop - start) / step)) + 1
    wave = np.exp(start + step * np.arange(n))
    return Grid(name=f"{name}-work", wavelength=wave, flux_unit=grid.flux_unit,
                log_spacing=True), step


def broadened_flux(spectrum: Spectrum, grid: Grid | str, match: ResolutionMatch, *,
                   wavelength: np.ndarray | None = None) -> np.ndarray:
    """``spectrum``'s flux broadened to the grid's resolution, on the grid (float32).

    ``match`` is :func:`resolution_match`'s answer for the same spectrum, grid and
    wavelengths (with an input FWHM; the caller decides whether to broaden). The input's
    line width follows it: constant in Angstrom for a stated ``fwhm_A`` or an assumed
    Nyquist sampling, constant in log wavelength for a resolving power. Pixels of the grid
    the spectrum does not cover come out 0.
    """
    from specsearch.preprocess.resample import rebinner  # resample imports this module

    if match.input_fwhm_A is None:
        raise ValueError("broadened_flux needs a ResolutionMatch with an input FWHM")
    grid = grid_for(grid) if isinstance(grid, str) else grid
    wave = spectrum.wavelength if wavelength is None else wavelength
    work, step = _work_grid(grid.name)
    flux_w, ivar_w = rebinner(wave, work)(spectrum.flux, spectrum.ivar)
    flux_w, good = flux_w.astype(np.float64), ivar_w > 0
    sigma_t = 1.0 / (FWHM_PER_SIGMA * GRID_RESOLUTION[grid.name])
    sigma_ln = match.input_fwhm_A / (FWHM_PER_SIGMA * match.wavelength_A)
    sigma_in = (np.full(work.npix, sigma_ln) if match.source == "resolving_power" else
                match.input_fwhm_A / (FWHM_PER_SIGMA * work.wavelength))
    box = step / np.sqrt(12.0)  # the work grid's own pixel box
    sigma_px = np.sqrt(np.clip(sigma_t ** 2 - sigma_in ** 2 - box ** 2, 0.0, None)) / step
    sigma_px = np.maximum(sigma_px, 1e-3)
    half = int(np.ceil(4.0 * sigma_px.max()))
    num = np.zeros_like(flux_w)
    den = np.zeros_like(flux_w)
    values = np.where(good, flux_w, 0.0)
    weights_good = good.astype(np.float64)
    n = flux_w.size
    for offset in range(-half, half + 1):  # gather: out[i] = sum_o k_i(o) f[i + o]
        k = np.exp(-0.5 * (offset / sigma_px) ** 2)
        lo, hi = max(0, -offset), min(n, n - offset)
        num[lo:hi] += k[lo:hi] * values[lo + offset:hi + offset]
        den[lo:hi] += k[lo:hi] * weights_good[lo + offset:hi + offset]
    smooth = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    out, _ = rebinner(work.wavelength, grid)(smooth, np.where(den > 0, 1.0, 0.0))
    return out
