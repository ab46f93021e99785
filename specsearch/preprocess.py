"""Grids, wavelength conventions, resampling, continuum normalisation and model scaling.

This module is the single implementation of the spectral science that every stage shares:
ingest puts spectra on the canonical grids with :func:`resample`, the synthetic survey and
the model use the same grids, and training, embedding and the query path all call
:func:`prepare_model_input`.

Canonical grids (vacuum Angstrom):

* ``lamost``: LAMOST's own log-linear sampling (log10 step 1e-4, i.e. 69 km/s a pixel),
  starting at log10(lambda) = 3.5682 (3700 A, the LAMOST LRS start) and running to 9098 A:
  3909 pixels. Real LAMOST DR1-DR9 spectra sit on this lattice, so resampling them is
  nearly an identity.
* ``xp``: GaiaXPy's default sampling, 336-1020 nm in 2 nm steps: 343 pixels. Catalog XP flux
  is in units of 1e-17 W m^-2 nm^-1 (``XP_FLUX_SCALE``) so that ivar stays well inside
  float32 range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from specsearch.errors import ConfigError, SpectrumError
from specsearch.spectrum import Spectrum

XP_FLUX_SCALE = 1e-17
"""Catalog XP flux unit in W m^-2 nm^-1 (GaiaXPy's unit is W m^-2 nm^-1)."""


@dataclass(frozen=True)
class Grid:
    """A modality's canonical wavelength grid.

    Attributes:
        name: the modality name (``lamost`` or ``xp``).
        wavelength: (npix,) vacuum wavelength in Angstrom, strictly increasing.
        flux_unit: the unit of catalog flux on this grid.
        log_spacing: True when the grid is uniform in log10(wavelength).
    """

    name: str
    wavelength: np.ndarray
    flux_unit: str
    log_spacing: bool

    @property
    def npix(self) -> int:
        return int(self.wavelength.shape[0])

    def edges(self) -> np.ndarray:
        """(npix + 1,) pixel edges in Angstrom (midpoints in log or linear space)."""
        return pixel_edges(self.wavelength, log=self.log_spacing)

    def describe(self) -> dict:
        """A JSON-able description, stored in model and index manifests."""
        return {"name": self.name, "npix": self.npix,
                "start_A": float(self.wavelength[0]), "end_A": float(self.wavelength[-1]),
                "log_spacing": self.log_spacing, "flux_unit": self.flux_unit}


LAMOST_LOGLAM0 = 3.5682
LAMOST_DLOGLAM = 1e-4
LAMOST_NPIX = 3909

LAMOST_GRID = Grid(
    name="lamost",
    wavelength=10.0 ** (LAMOST_LOGLAM0 + LAMOST_DLOGLAM * np.arange(LAMOST_NPIX)),
    flux_unit="relative F_lambda (LAMOST counts-calibrated)",
    log_spacing=True,
)
XP_GRID = Grid(
    name="xp",
    wavelength=np.arange(3360.0, 10200.0 + 1.0, 20.0),
    flux_unit="1e-17 W m-2 nm-1",
    log_spacing=False,
)
GRIDS: dict[str, Grid] = {"lamost": LAMOST_GRID, "xp": XP_GRID}


def grid_for(modality: str) -> Grid:
    """The canonical grid of ``modality`` (``lamost`` or ``xp``)."""
    try:
        return GRIDS[modality]
    except KeyError:
        raise ConfigError(
            f"unknown modality {modality!r}; expected one of {sorted(GRIDS)}") from None


# --------------------------------------------------------------------------- wavelengths

def air_to_vacuum(wavelength_air: np.ndarray) -> np.ndarray:
    """Air to vacuum wavelength (Angstrom), IAU standard (Morton 2000 / Ciddor 1996).

    MILES and most laboratory line lists are in air; LAMOST and the canonical grids are in
    vacuum. Valid above 2000 A; shorter wavelengths are returned unchanged.
    """
    wave = np.asarray(wavelength_air, dtype=np.float64)
    sigma2 = (1e4 / wave) ** 2
    n = 1.0 + 8.336624212083e-5 + 2.408926869968e-2 / (1.301065924522e2 - sigma2) \
        + 1.599740894897e-4 / (3.892568793293e1 - sigma2)
    return np.where(wave > 2000.0, wave * n, wave)


def vacuum_to_air(wavelength_vacuum: np.ndarray) -> np.ndarray:
    """Vacuum to air wavelength (Angstrom), IAU standard (Morton 2000); inverse of
    :func:`air_to_vacuum` to better than 1e-8 relative."""
    wave = np.asarray(wavelength_vacuum, dtype=np.float64)
    sigma2 = (1e4 / wave) ** 2
    n = 1.0 + 0.0000834254 + 0.02406147 / (130.0 - sigma2) + 0.00015998 / (38.9 - sigma2)
    return np.where(wave > 2000.0, wave / n, wave)


def to_rest_frame(wavelength: np.ndarray, z: float) -> np.ndarray:
    """Remove a redshift ``z`` (e.g. LAMOST's header ``Z`` = v/c): lambda / (1 + z)."""
    if not np.isfinite(z) or z <= -1.0:
        raise SpectrumError(f"redshift z must be finite and > -1, got {z}")
    return np.asarray(wavelength, dtype=np.float64) / (1.0 + z)


def pixel_edges(wavelength: np.ndarray, *, log: bool) -> np.ndarray:
    """(n + 1,) pixel edges of pixel centres ``wavelength`` (midpoints, extrapolated at ends)."""
    w = np.log(wavelength) if log else np.asarray(wavelength, dtype=np.float64)
    mid = 0.5 * (w[1:] + w[:-1])
    edges = np.concatenate([[w[0] - (mid[0] - w[0])], mid, [w[-1] + (w[-1] - mid[-1])]])
    return np.exp(edges) if log else edges


# --------------------------------------------------------------------------- resampling

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
    e_out = grid.edges()
    # For each output pixel j, the run of input pixels [lo_j, hi_j) that overlap it.
    lo = np.clip(np.searchsorted(e_in, e_out[:-1], side="right") - 1, 0, win.size - 1)
    hi = np.clip(np.searchsorted(e_in, e_out[1:], side="left"), 0, win.size)
    counts = np.maximum(hi - lo, 0)
    rows = np.repeat(np.arange(grid.npix), counts)
    cols = np.repeat(lo, counts) + (np.arange(counts.sum())
                                    - np.repeat(np.cumsum(counts) - counts, counts))
    overlap = np.clip(np.minimum(e_in[cols + 1], e_out[rows + 1])
                      - np.maximum(e_in[cols], e_out[rows]), 0.0, None)
    keep = overlap > 0
    matrix = sp.csr_matrix((overlap[keep], (rows[keep], cols[keep])),
                           shape=(grid.npix, win.size))
    return Rebinner(grid=grid, matrix=matrix, matrix_sq=matrix.multiply(matrix).tocsr(),
                    out_width=np.diff(e_out))


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
    flux, ivar = rebinner(wave, grid)(spec.flux, spec.ivar, min_coverage=min_coverage)
    if not np.any(ivar > 0):
        raise SpectrumError(
            f"{spec.path or spec.spectrum_id or 'spectrum'}: no usable pixel on the {grid.name} "
            f"grid ({grid.wavelength[0]:.0f}-{grid.wavelength[-1]:.0f} A); the spectrum covers "
            f"{wave[0]:.0f}-{wave[-1]:.0f} A")
    return flux, ivar


REST_FRAME_MAX_Z = 0.01
"""Header redshifts above this (3000 km/s: not a star's radial velocity) are not removed."""


def to_canonical_grid(spectrum: Spectrum, modality: str, *, rest_frame: bool = True
                      ) -> tuple[np.ndarray, np.ndarray, float | None]:
    """A spectrum on its modality's canonical grid, the way the catalog stores it.

    The one path from an observed spectrum to model input used by ingest, the query engine
    and the HTTP service alike. With ``rest_frame`` the survey's redshift (``meta['z']``,
    LAMOST's pipeline value) is removed when it is finite and ``|z| <= REST_FRAME_MAX_Z``.

    Returns:
        (flux, ivar, z_removed) with float32 arrays of ``grid.npix`` and the redshift that
        was removed (None if none).
    """
    z = spectrum.meta.get("z")
    use_z = (rest_frame and z is not None and np.isfinite(z)
             and abs(float(z)) <= REST_FRAME_MAX_Z)
    z_removed = float(z) if use_z else None
    flux, ivar = resample(spectrum, modality, rest_frame_z=z_removed)
    return flux, ivar, z_removed


# --------------------------------------------------------------------------- continuum

def _box_smooth(values: np.ndarray, weights: np.ndarray, half_width: int) -> np.ndarray:
    """Weighted running mean along the last axis (window 2*half_width+1, shrinking at ends)."""
    pad = [(0, 0)] * (values.ndim - 1) + [(half_width + 1, half_width)]
    cv = np.cumsum(np.pad(values * weights, pad), axis=-1)
    cw = np.cumsum(np.pad(weights, pad), axis=-1)
    width = 2 * half_width + 1
    num = cv[..., width:] - cv[..., :-width]
    den = cw[..., width:] - cw[..., :-width]
    return num / np.maximum(den, 1e-12)


CONTINUUM_BIN = 8
"""Pixels averaged into one bin before the continuum is fitted (speed: the iterations run on
1/8 of the pixels; lines narrower than a bin are still rejected by the clipping)."""


def continuum(flux: np.ndarray, ivar: np.ndarray, *, half_width: int = 72,
              n_iter: int = 3, low_sigma: float = 1.5, high_sigma: float = 3.0) -> np.ndarray:
    """A pseudo-continuum for a batch of spectra on one grid (vectorised, O(npix)).

    Good pixels (ivar > 0) are averaged in bins of ``CONTINUUM_BIN`` pixels; the binned
    spectrum is smoothed with a triangular kernel (a running mean applied twice, total width
    ~4 x ``half_width`` pixels), and bins more than ``low_sigma`` below (absorption) or
    ``high_sigma`` above (emission, spikes) the smooth curve, in units of its scatter, are
    rejected before the next of ``n_iter`` iterations; the result is linearly interpolated
    back to every pixel. Masked pixels are bridged. On the LAMOST grid the default
    (72 px ~ 3.4% in wavelength, ~160 A at 4800 A) keeps Balmer and Ca lines in the
    normalised flux and follows the instrument response and the arm join.

    Args:
        flux, ivar: (npix,) or (batch, npix).
    Returns:
        The continuum, same shape, strictly positive.
    """
    f = np.atleast_2d(np.asarray(flux, dtype=np.float32))
    w = ((np.atleast_2d(np.asarray(ivar)) > 0) & np.isfinite(f)).astype(np.float32)
    f = np.where(w > 0, f, 0.0).astype(np.float32)
    cont = _continuum_clean(f, w, half_width=half_width, n_iter=n_iter,
                            low_sigma=low_sigma, high_sigma=high_sigma)
    return cont[0] if np.ndim(flux) == 1 else cont


def _continuum_clean(f: np.ndarray, w: np.ndarray, *, half_width: int = 72, n_iter: int = 3,
                     low_sigma: float = 1.5, high_sigma: float = 3.0) -> np.ndarray:
    """:func:`continuum` of (batch, npix) float32 flux already zeroed where ``w`` (0/1) is 0."""
    import torch  # linear upsampling in one multi-threaded pass

    npix = f.shape[1]
    starts = np.arange(0, npix, CONTINUUM_BIN)
    fb = np.add.reduceat(f, starts, axis=1)   # f is 0 where w is 0
    wb = np.add.reduceat(w, starts, axis=1)
    fb /= np.maximum(wb, 1e-12)
    keep = (wb > 0).astype(np.float32)
    hw = max(1, half_width // CONTINUUM_BIN)
    smooth = fb
    for _ in range(n_iter):
        smooth = _box_smooth(_box_smooth(fb, keep, hw), np.ones_like(keep), hw)
        resid = (fb - smooth) * keep
        scatter = np.sqrt((resid ** 2).sum(-1, keepdims=True)
                          / np.maximum(keep.sum(-1, keepdims=True), 1.0))
        scatter = np.maximum(scatter, 1e-6 * np.abs(smooth).mean(-1, keepdims=True))
        keep = keep * ((resid > -low_sigma * scatter) & (resid < high_sigma * scatter))
    # Linear interpolation between bin centres ((b + 0.5) * BIN - 0.5), constant beyond the
    # first and last centre: exactly torch's linear upsampling with align_corners=False.
    up = torch.nn.functional.interpolate(
        torch.from_numpy(np.ascontiguousarray(smooth[:, None, :], dtype=np.float32)),
        scale_factor=CONTINUUM_BIN, mode="linear", align_corners=False)
    cont = up[:, 0, :npix].numpy().copy()
    floor = 1e-3 * np.maximum(np.abs(smooth).max(axis=-1, keepdims=True), 1e-30)
    return np.maximum(cont, floor, out=cont)


def continuum_normalise(flux: np.ndarray, ivar: np.ndarray,
                        **kwargs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Divide by :func:`continuum`; returns (normalised flux, normalised ivar, continuum)."""
    cont = continuum(flux, ivar, **kwargs)
    return np.asarray(flux) / cont, np.asarray(ivar) * cont ** 2, cont


# --------------------------------------------------------------------------- model input

@dataclass
class ModelInput:
    """What an encoder consumes for a batch on a canonical grid.

    Attributes:
        flux: (batch, npix) float32 scaled flux (continuum-normalised for ``lamost``,
            mean-normalised for ``xp``); 0 where masked.
        weight: (batch, npix) float32 inverse variance of ``flux`` (0 where masked).
        scale: (batch,) float32 the per-spectrum scale that was divided out (log10),
            which carries the apparent brightness and is not part of the shape.
        good: (batch,) bool, False for spectra with too few good pixels to use.
    """

    flux: np.ndarray
    weight: np.ndarray
    scale: np.ndarray
    good: np.ndarray


MIN_GOOD_FRACTION = 0.2
"""A spectrum needs at least this fraction of good pixels on its grid to be encoded."""


def prepare_model_input(flux: np.ndarray, ivar: np.ndarray, modality: str) -> ModelInput:
    """Scale a batch of canonical-grid spectra the way every encoder expects.

    ``lamost``: continuum-normalised (:func:`continuum`), clipped to [-0.5, 2.5];
    ``xp``: divided by the ivar-unweighted mean of the good pixels (the SED shape is kept:
    at XP resolution it carries most of the information).

    Rows with non-finite values are cleaned (bad pixels get weight 0); rows with fewer than
    ``MIN_GOOD_FRACTION`` good pixels are flagged ``good=False`` rather than raising, so a
    batch job can skip and count them.
    """
    grid = grid_for(modality)
    f = np.atleast_2d(np.asarray(flux, dtype=np.float32))
    iv = np.atleast_2d(np.asarray(ivar, dtype=np.float32))
    if f.shape[-1] != grid.npix or f.shape != iv.shape:
        raise SpectrumError(
            f"{modality} spectra must have {grid.npix} pixels on the canonical grid; "
            f"got flux {f.shape} and ivar {iv.shape}")
    # Copies we may modify in place: each full-size pass costs ~10 ms per 1000 LAMOST
    # spectra, and this runs for every spectrum the builder embeds.
    f = np.array(f, dtype=np.float32, copy=True)
    iv = np.array(iv, dtype=np.float32, copy=True)
    ok = iv > 0                          # False for NaN too
    ok &= iv < np.inf
    ok &= np.isfinite(f)
    ok &= f != 0
    bad = ~ok
    f[bad] = 0.0
    iv[bad] = 0.0
    n_ok = ok.sum(axis=1)
    good = n_ok >= MIN_GOOD_FRACTION * grid.npix
    if modality == "lamost":
        cont = _continuum_clean(f, ok.astype(np.float32))
        f /= cont                        # f is now the normalised flux
        np.clip(f, -0.5, 2.5, out=f)
        cont *= cont
        iv *= cont                       # ivar of the normalised flux: ivar * cont^2
        f[bad] = 0.0
        mean_cont = np.sqrt(cont, out=cont).mean(axis=1)
        scale = np.log10(np.where(mean_cont > 0, mean_cont, 1.0))
    else:
        mean = np.abs(f.sum(axis=1) / np.maximum(n_ok, 1))
        mean = np.where(mean > 0, mean, 1.0).astype(np.float32)
        f /= mean[:, None]
        iv *= (mean * mean)[:, None]
        scale = np.log10(mean)
    x, w = f, iv
    scale = np.where(np.isfinite(scale), scale, 0.0)
    return ModelInput(flux=x.astype(np.float32), weight=w.astype(np.float32),
                      scale=scale.astype(np.float32), good=good)
