"""Flux-conserving resampling onto the canonical grids, ivar propagated, masks honoured."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from specsearch.errors import SpectrumError
from specsearch.preprocess.grids import TELLURIC_BANDS, Grid, band_mask, grid_for
from specsearch.preprocess.lsf import broadened_flux, resolution_match
from specsearch.preprocess.rv import measure_rv
from specsearch.preprocess.spikes import mask_spikes
from specsearch.preprocess.wavelengths import C_KMS, pixel_edges, to_rest_frame
from specsearch.spectrum import Spectrum


@dataclass(frozen=True)
class Rebinner:
    """Flux-conserving rebinning from one input wavelength grid onto a canonical grid.

    Build it once (:func:`rebinner`) and call it on every batch that shares the input grid
    (XP tables, synthetic spectra): resampling is then one sparse product.

    Attributes:
        grid: the output grid.
        matrix: sparse (grid.npix, n_in) overlap lengths (Angstrom) of input pixel i with
            output pixel j.
        matrix_sq: ``matrix`` squared element-wise (variance propagation).
        out_width: (grid.npix,) output pixel widths in Angstrom.
    """

    grid: Grid
    matrix: sp.csr_matrix
    matrix_sq: sp.csr_matrix
    out_width: np.ndarray

    def __call__(self, flux: np.ndarray, ivar: np.ndarray, *,
                 min_coverage: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
        """Rebin (n_in,) or (batch, n_in) flux/ivar; see :func:`resample` for the rules.

        Each output pixel is the overlap-weighted mean of the good input pixels under it; its
        variance is sum(w^2 var) / sum(w)^2. An output pixel whose good coverage is below
        ``min_coverage`` of its width (masked input, or outside the input range) gets flux 0
        and ivar 0. Returns float32 arrays shaped like the input, with grid.npix pixels.
        """
        single = np.ndim(flux) == 1
        f = np.atleast_2d(np.asarray(flux, dtype=np.float64))
        iv = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
        n_in = self.matrix.shape[1]
        if f.shape != iv.shape or f.shape[1] != n_in:
            raise SpectrumError(
                f"flux and ivar must both have {n_in} pixels; got {f.shape} and {iv.shape}")
        good = (iv > 0) & np.isfinite(f) & np.isfinite(iv)
        f = np.where(good, f, 0.0)
        var = np.where(good, 1.0 / np.where(good, iv, 1.0), 0.0)
        g = good.astype(np.float64)
        wsum = (self.matrix @ g.T).T
        fsum = (self.matrix @ f.T).T
        vsum = (self.matrix_sq @ var.T).T
        ok = (wsum > min_coverage * self.out_width) & (vsum > 0)
        flux_out = np.where(ok, fsum / np.where(ok, wsum, 1.0), 0.0).astype(np.float32)
        ivar_out = np.where(ok, wsum ** 2 / np.where(ok, vsum, 1.0), 0.0).astype(np.float32)
        return (flux_out[0], ivar_out[0]) if single else (flux_out, ivar_out)


def rebinner(wavelength_in: np.ndarray, grid: Grid | str) -> Rebinner:
    """A :class:`Rebinner` from pixel centres ``wavelength_in`` (Angstrom) onto ``grid``."""
    grid = grid_for(grid) if isinstance(grid, str) else grid
    win = np.asarray(wavelength_in, dtype=np.float64)
    if win.ndim != 1 or win.size < 2 or not np.all(np.diff(win) > 0):
        raise SpectrumError(
            "input wavelength must be 1-D, strictly increasing, with >= 2 pixels")
    steps = np.diff(np.log(win))
    log_in = bool(np.allclose(steps, steps[0], rtol=1e-3))
    e_in = pixel_edges(win, log=log_in)
    lo_in, hi_in = _gap_limited(win, e_in)
    e_out = grid.edges()
    # For each output pixel j, the run of input pixels [lo_j, hi_j) that overlap it.
    lo = np.clip(np.searchsorted(e_in, e_out[:-1], side="right") - 1, 0, win.size - 1)
    hi = np.clip(np.searchsorted(e_in, e_out[1:], side="left"), 0, win.size)
    counts = np.maximum(hi - lo, 0)
    rows = np.repeat(np.arange(grid.npix), counts)
    cols = np.repeat(lo, counts) + (np.arange(counts.sum())
                                    - np.repeat(np.cumsum(counts) - counts, counts))
    overlap = np.clip(np.minimum(hi_in[cols], e_out[rows + 1])
                      - np.maximum(lo_in[cols], e_out[rows]), 0.0, None)
    keep = overlap > 0
    matrix = sp.csr_matrix((overlap[keep], (rows[keep], cols[keep])),
                           shape=(grid.npix, win.size))
    return Rebinner(grid=grid, matrix=matrix, matrix_sq=matrix.multiply(matrix).tocsr(),
                    out_width=np.diff(e_out))


GAP_STEPS = 2.0
"""A step between two input pixels more than this many times the local typical step (the
median of the 21 steps around it) is a gap: neither pixel beside it reaches further into
it than one typical step, so the grid's pixels inside stay uncovered (masked) instead of
being filled by the two stretched edge pixels."""


def _gap_limited(win: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) edges of each input pixel: the midpoint ``edges``, but no more than one
    local typical step from the pixel's centre (see :data:`GAP_STEPS`)."""
    from scipy.ndimage import median_filter

    step = np.diff(win)
    typical = median_filter(step, size=21, mode="nearest")
    reach = np.concatenate([[typical[0]], np.maximum(typical[:-1], typical[1:]),
                            [typical[-1]]]) if step.size > 1 else np.repeat(step, 2)
    lo = np.maximum(edges[:-1], win - reach)
    hi = np.minimum(edges[1:], win + reach)
    return lo, hi


def resample(spectrum: Spectrum, grid: Grid | str, *, rest_frame_z: float | None = None,
             min_coverage: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Put one spectrum on a canonical grid (flux-conserving, ivar propagated, masks honoured).

    Args:
        spectrum: any :class:`Spectrum` (vacuum wavelengths).
        grid: a :class:`Grid` or a modality name.
        rest_frame_z: if given, the wavelengths are first divided by (1 + z).
        min_coverage: minimum good-pixel coverage of an output pixel (fraction of its width).
    Returns:
        (flux, ivar) float32 arrays of ``grid.npix``; pixels without coverage have ivar 0.
    Raises:
        SpectrumError: the spectrum does not overlap the grid or has no usable pixel there.
    """
    grid = grid_for(grid) if isinstance(grid, str) else grid
    spec = spectrum.validated()
    wave = spec.wavelength if rest_frame_z is None else to_rest_frame(spec.wavelength,
                                                                       rest_frame_z)
    return _rebin(spec, wave, grid, min_coverage)


def _rebin(spec: Spectrum, wave: np.ndarray, grid: Grid, min_coverage: float = 0.5
           ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`resample` of a validated spectrum at wavelengths ``wave``."""
    flux, ivar = rebinner(wave, grid)(spec.flux, spec.ivar, min_coverage=min_coverage)
    if not np.any(ivar > 0):
        raise SpectrumError(
            f"{spec.path or spec.spectrum_id or 'spectrum'}: no usable pixel on the {grid.name} "
            f"grid ({grid.wavelength[0]:.0f}-{grid.wavelength[-1]:.0f} A); the spectrum covers "
            f"{wave[0]:.0f}-{wave[-1]:.0f} A")
    return flux, ivar


REST_FRAME_MAX_Z = 0.01
"""Header redshifts above this (3000 km/s: not a star's radial velocity) are not removed."""

RV_MODES = ("auto", "header", "none")
"""How :func:`to_canonical_grid` puts a spectrum in the rest frame: ``auto`` removes the
header redshift, then measures what velocity is left (LAMOST grid) and removes it when the
spectrum shows one; ``header`` removes the header redshift only; ``none`` keeps the
observed frame."""

RV_MIN_GAIN = 0.008
"""A measured velocity is removed only when the template fits it better than it fits zero
velocity by this much (``r - r_zero`` of :class:`specsearch.preprocess.rv.RVMeasurement`).
Real DR10 spectra in the rest frame, with noise added down to S/N 3-10, exceed it in 1% of
cases (99th percentile 0.005-0.007); a header redshift off by 100 km/s exceeds it in ~90%
at S/N 10, by 200 km/s in all (BENCHMARKS.md, "Spectra in the observed frame")."""


class CanonicalSpectrum(NamedTuple):
    """A spectrum on its canonical grid (:func:`to_canonical_grid`).

    Attributes:
        flux, ivar: float32 arrays of ``grid.npix``.
        z_removed: the redshift removed (header and measured together), None if none.
        rv_source: ``header``, ``measured`` (no header redshift), ``header+measured`` (the
            spectrum contradicted its header) or None.
        spikes_masked: input pixels masked as single-pixel spikes (cosmic rays, hot
            pixels; :mod:`specsearch.preprocess.spikes`) before the grid.
    """

    flux: np.ndarray
    ivar: np.ndarray
    z_removed: float | None
    rv_source: str | None
    spikes_masked: int = 0


def to_canonical_grid(spectrum: Spectrum, modality: str, *, rest_frame: bool = True,
                      rv: str = "auto", spikes: bool = True) -> CanonicalSpectrum:
    """A spectrum on its modality's canonical grid, the way the catalog stores it.

    The one path from an observed spectrum to model input used by ingest, the query engine
    and the HTTP service alike. With ``rest_frame`` the survey's redshift (``meta['z']``,
    LAMOST's pipeline value) is removed when it is finite and ``|z| <= REST_FRAME_MAX_Z``;
    with ``rv="auto"`` (the default) a LAMOST-grid spectrum's remaining radial velocity is
    then measured by cross-correlation (:func:`specsearch.preprocess.rv.measure_rv`) and
    removed when the spectrum shows one (:data:`RV_MIN_GAIN`): a file without a redshift,
    or with a wrong one, still reaches the model in the rest frame. ``rest_frame=False``
    is ``rv="none"``.
    A spectrum much sharper than the grid's instrument is broadened to it first
    (:mod:`specsearch.preprocess.lsf`; the flux only, ivar and mask stay the rebinned ones).
    A spectrum marked ``meta['telluric_uncorrected']`` (:func:`state_telluric`) has the
    telluric bands masked at its observed wavelengths first. With ``spikes`` (the default)
    an optical spectrum's single-pixel spikes (cosmic rays, hot pixels: one pixel, its
    neighbours at the continuum, which no line the optics recorded is) are masked on its
    own pixels before anything else reads it (:func:`specsearch.preprocess.spikes.mask_spikes`;
    not for a spectrum whose stated resolution puts a line on fewer than
    :data:`MIN_LINE_PIXELS` pixels).

    Raises:
        SpectrumError: no usable pixel on the grid.
        ValueError: an unknown ``rv`` mode.
    """
    if rv not in RV_MODES:
        raise ValueError(f"rv must be one of {RV_MODES}, got {rv!r}")
    if not rest_frame:
        rv = "none"
    z = spectrum.meta.get("z")
    use_z = (rv != "none" and z is not None and np.isfinite(z)
             and abs(float(z)) <= REST_FRAME_MAX_Z)
    z_removed = float(z) if use_z else None
    source = "header" if use_z else None
    grid = grid_for(modality)
    spec = spectrum.validated()
    n_spikes = 0
    if grid.name == "lamost":
        if spec.meta.get("telluric_uncorrected"):
            spec = _telluric_masked(spec)
        if spikes and _lines_span_pixels(spec, grid):
            ivar, hit = mask_spikes(spec.flux, spec.ivar)
            n_spikes = int(hit.sum())
            if n_spikes:
                spec = replace(spec, ivar=ivar, mask=spec.mask | hit)
    flux, ivar = _on_grid(spec, grid, z_removed)
    if rv == "auto" and grid.name == "lamost":
        m = measure_rv(flux, ivar, min_gain=RV_MIN_GAIN)
        if bool(m.ok[0]) and float(m.r[0] - m.r_zero[0]) >= RV_MIN_GAIN:
            z_removed = (1.0 + (z_removed or 0.0)) * (1.0 + float(m.v_kms[0]) / C_KMS) - 1.0
            source = "header+measured" if use_z else "measured"
            flux, ivar = _on_grid(spec, grid, z_removed)
    return CanonicalSpectrum(flux, ivar, z_removed, source, n_spikes)


MIN_LINE_PIXELS = 1.6
"""The spike mask (:mod:`specsearch.preprocess.spikes`) runs only where a line spans at
least this many of the spectrum's pixels (FWHM): below ~1.5 pixels an unresolved line
looks like a spike. A spectrum that states no resolution is taken as sampled at the
Nyquist rate (two pixels), as :mod:`specsearch.preprocess.lsf` does."""


def _lines_span_pixels(spec: Spectrum, grid: Grid) -> bool:
    """Whether ``spec``'s stated line spread covers :data:`MIN_LINE_PIXELS` pixels."""
    match = resolution_match(spec, grid)
    if match is None or match.input_fwhm_A is None or match.source not in (
            "fwhm_A", "resolving_power"):
        return True
    at = int(np.clip(np.searchsorted(spec.wavelength, match.wavelength_A), 1,
                     spec.wavelength.size - 1))
    pixel = float(spec.wavelength[at] - spec.wavelength[at - 1])
    return pixel <= 0 or match.input_fwhm_A >= MIN_LINE_PIXELS * pixel


def _on_grid(spec: Spectrum, grid: Grid, z: float | None) -> tuple[np.ndarray, np.ndarray]:
    """A validated spectrum rebinned (and resolution-matched) at rest-frame redshift z."""
    wave = spec.wavelength if z is None else to_rest_frame(spec.wavelength, z)
    flux, ivar = _rebin(spec, wave, grid)
    match = resolution_match(spec, grid, wavelength=wave)
    if match is not None and match.broaden:
        sharp = broadened_flux(spec, grid, match, wavelength=wave)
        flux = np.where(ivar > 0, sharp, 0.0).astype(np.float32)
    return flux, ivar


def state_telluric(spectrum: Spectrum, uncorrected: bool, source: str) -> bool:
    """Mark ``spectrum`` as not corrected for telluric absorption (the caller knows: ``ingest``
    / ``search --telluric-uncorrected``, the API's ``telluric_uncorrected``), so that
    :func:`to_canonical_grid` masks the telluric bands (:data:`TELLURIC_BANDS`, at the
    observed wavelengths) instead of letting the model read the night's atmosphere as the
    star. True if marked.

    Measured on real DR10 stars with a telluric spectrum of airmass 2 and 3 cm of water put
    back (BENCHMARKS.md, "Telluric absorption left in, cosmic rays"): Teff +90 / 137 K and
    [Fe/H] -0.08 / 0.17 dex read as they are, +19 / 77 K and +0.02 / 0.07 with the bands
    masked; masking a corrected spectrum costs -0.05 dex in [Fe/H], so it is not a default.
    """
    if not uncorrected:
        return False
    spectrum.meta.update(telluric_uncorrected=True, telluric_from=source)
    return True


def _telluric_masked(spec: Spectrum) -> Spectrum:
    """``spec`` with its pixels in the telluric bands (observed wavelengths) masked."""
    band = band_mask(spec.wavelength, TELLURIC_BANDS)
    return replace(spec, ivar=np.where(band, 0.0, spec.ivar), mask=spec.mask | band)
