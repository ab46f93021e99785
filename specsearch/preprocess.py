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

import warnings
from dataclasses import dataclass
from typing import Any

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
#
# The continuum and the model-input scaling are written once, in torch, so that the same
# code runs on the CPU (multi-threaded) and on the model's GPU inside the embedding builder;
# the numpy functions below are thin wrappers over it.

CONTINUUM_BIN = 8
"""Pixels averaged into one bin before the continuum is fitted (speed: the iterations run on
1/8 of the pixels; lines narrower than a bin are still rejected by the clipping)."""


def _box_smooth(values, weights, half_width: int):
    """Weighted running mean along the last axis of (batch, n) tensors (window
    2*half_width+1, shrinking at the ends)."""
    import torch
    import torch.nn.functional as F

    pad = (half_width + 1, half_width)
    cv = torch.cumsum(F.pad(values * weights, pad), dim=-1)
    cw = torch.cumsum(F.pad(weights, pad), dim=-1)
    width = 2 * half_width + 1
    num = cv[..., width:] - cv[..., :-width]
    den = cw[..., width:] - cw[..., :-width]
    return num / den.clamp_min(1e-12)


def _bin_sum(values, n_bins: int):
    """(batch, npix) -> (batch, n_bins) sums over consecutive ``CONTINUUM_BIN`` pixels
    (the last bin takes what is left)."""
    import torch

    full = (values.shape[-1] // CONTINUUM_BIN) * CONTINUUM_BIN
    sums = values[:, :full].reshape(values.shape[0], -1, CONTINUUM_BIN).sum(-1)
    if full < values.shape[-1]:
        sums = torch.cat([sums, values[:, full:].sum(-1, keepdim=True)], dim=-1)
    return sums[:, :n_bins]


def _upsample_bins(values, npix: int):
    """(batch, n_bins) bin values -> (batch, npix) pixels, linear between bin centres
    ((b + 0.5) * BIN - 0.5) and constant beyond the first and last centre: the same as
    ``F.interpolate(mode="linear", align_corners=False)``, written as one small matrix
    product (several times faster than the interpolation kernel on a CPU)."""
    import torch

    batch, n_bins = values.shape
    left = torch.cat([values[:, :1], values[:, :-1]], dim=-1)
    right = torch.cat([values[:, 1:], values[:, -1:]], dim=-1)
    d = (2.0 * torch.arange(CONTINUUM_BIN, dtype=values.dtype, device=values.device)
         - (CONTINUUM_BIN - 1)) / (2 * CONTINUUM_BIN)       # offset of each pixel, in bins
    weights = torch.stack([(-d).clamp_min(0), 1.0 - d.abs(), d.clamp_min(0)])  # (3, BIN)
    out = torch.stack([left, values, right], dim=-1) @ weights  # (batch, n_bins, BIN)
    return out.reshape(batch, n_bins * CONTINUUM_BIN)[:, :npix]


def _continuum_bins(fb, wb, *, half_width: int = 72, n_iter: int = 3,
                    low_sigma: float = 1.5, high_sigma: float = 3.0):
    """The clipped, smoothed continuum of binned spectra (batch, n_bins), floored > 0."""
    import torch

    fb = fb / wb.clamp_min(1e-12)
    keep = (wb > 0).to(fb.dtype)
    ones = torch.ones_like(keep[:1]).expand_as(keep)
    hw = max(1, half_width // CONTINUUM_BIN)
    smooth = fb
    for _ in range(n_iter):
        smooth = _box_smooth(_box_smooth(fb, keep, hw), ones, hw)
        resid = (fb - smooth) * keep
        scatter = torch.sqrt(resid.square().sum(-1, keepdim=True)
                             / keep.sum(-1, keepdim=True).clamp_min(1.0))
        scatter = torch.maximum(scatter, 1e-6 * smooth.abs().mean(-1, keepdim=True))
        keep = keep * ((resid > -low_sigma * scatter) & (resid < high_sigma * scatter))
    floor = 1e-3 * smooth.abs().amax(-1, keepdim=True).clamp_min(1e-30)
    return torch.maximum(smooth, floor)


def continuum_torch(f, w, *, half_width: int = 72, n_iter: int = 3,
                    low_sigma: float = 1.5, high_sigma: float = 3.0):
    """:func:`continuum` of (batch, npix) float32 tensors, on their device.

    ``f`` must already be 0 where the 0/1 weight ``w`` is 0.
    """
    n_bins = -(-f.shape[-1] // CONTINUUM_BIN)
    bins = _continuum_bins(_bin_sum(f, n_bins), _bin_sum(w, n_bins), half_width=half_width,
                           n_iter=n_iter, low_sigma=low_sigma, high_sigma=high_sigma)
    return _upsample_bins(bins, f.shape[-1])


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
    import torch

    f = np.atleast_2d(np.asarray(flux, dtype=np.float32))
    w = ((np.atleast_2d(np.asarray(ivar)) > 0) & np.isfinite(f)).astype(np.float32)
    f = np.where(w > 0, f, 0.0).astype(np.float32)
    cont = continuum_torch(torch.from_numpy(f), torch.from_numpy(w), half_width=half_width,
                           n_iter=n_iter, low_sigma=low_sigma, high_sigma=high_sigma).numpy()
    return cont[0] if np.ndim(flux) == 1 else cont


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

    :func:`prepare_model_input` returns numpy arrays; :func:`prepare_model_input_torch`
    returns tensors on the input's device.
    """

    flux: Any
    weight: Any
    scale: Any
    good: Any


BATCH_PIXELS = 4 * 1024 * 1024
"""Pixels per batch when a batch size is automatic: a few tens of MB per array (on a CPU
larger batches stop helping once they fall out of the caches)."""
GPU_BATCH_FACTOR = 8
"""A GPU gets batches this many times larger."""


def default_batch_size(modality: str, *, gpu: bool = False) -> int:
    """Spectra per batch for ``modality``: about ``BATCH_PIXELS`` pixels, a multiple of 256
    (1024 LAMOST or 12,032 XP spectra; 8448 / 97,792 on a GPU)."""
    pixels = BATCH_PIXELS * (GPU_BATCH_FACTOR if gpu else 1)
    return max(256, (pixels // grid_for(modality).npix) // 256 * 256)


MIN_GOOD_FRACTION = 0.2
"""A spectrum needs at least this fraction of good pixels on its grid to be encoded."""


def _check_input_shape(modality: str, flux_shape, ivar_shape) -> Grid:
    grid = grid_for(modality)
    if (len(flux_shape) != 2 or flux_shape[-1] != grid.npix
            or tuple(flux_shape) != tuple(ivar_shape)):
        raise SpectrumError(
            f"{modality} spectra must have {grid.npix} pixels on the canonical grid; "
            f"got flux {tuple(flux_shape)} and ivar {tuple(ivar_shape)}")
    return grid


def as_tensor(array: np.ndarray):
    """A CPU tensor sharing ``array``'s memory (read-only arrays, e.g. zero-copy views of
    Arrow buffers, are shared too: the preprocessing never writes to its inputs)."""
    import torch

    array = np.ascontiguousarray(array)
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable", category=UserWarning)
        return torch.from_numpy(array)


def prepare_model_input_torch(flux, ivar, modality: str) -> ModelInput:
    """:func:`prepare_model_input` on (batch, npix) tensors, on their device (CPU or GPU).

    The embedding builder calls this on the model's device, so that on a GPU the
    preprocessing runs there too; :func:`prepare_model_input` is this function on CPU.
    Written with float arithmetic only and few full-size passes (each pass over a LAMOST
    batch costs about as much as the encoder's first layer on a CPU).
    """
    import torch

    grid = _check_input_shape(modality, flux.shape, ivar.shape)
    # A pixel is good when ivar > 0 and both values are finite and the flux is not 0.
    f = torch.nan_to_num(flux.to(torch.float32), nan=0.0, posinf=0.0, neginf=0.0)
    iv = torch.nan_to_num(ivar.to(torch.float32), nan=0.0, posinf=0.0, neginf=0.0)
    ok = torch.sign(iv.clamp_(min=0.0))             # 1.0 where ivar > 0, else 0.0
    ok.mul_(torch.abs(f).sign_())                    # ... and the flux is not 0
    f.mul_(ok)
    iv.mul_(ok)
    n_ok = ok.sum(-1)
    good = n_ok >= MIN_GOOD_FRACTION * grid.npix
    if modality == "lamost":
        n_bins = -(-grid.npix // CONTINUUM_BIN)
        bins = _continuum_bins(_bin_sum(f, n_bins), _bin_sum(ok, n_bins))
        cont = _upsample_bins(bins, grid.npix)
        x = torch.div(f, cont).clamp_(-0.5, 2.5)    # 0 where masked: f is 0 there
        w = iv.mul_(cont).mul_(cont)                 # ivar of the normalised flux
        scale = torch.log10(bins.mean(-1))
    else:
        mean = (f.sum(-1) / n_ok.clamp_min(1)).abs()
        mean = torch.where(mean > 0, mean, torch.ones_like(mean))
        x = f.div_(mean[:, None])
        w = iv.mul_((mean * mean)[:, None])
        scale = torch.log10(mean)
    scale = torch.where(torch.isfinite(scale), scale, torch.zeros_like(scale))
    return ModelInput(flux=x, weight=w, scale=scale, good=good)


def prepare_model_input(flux: np.ndarray, ivar: np.ndarray, modality: str) -> ModelInput:
    """Scale a batch of canonical-grid spectra the way every encoder expects.

    ``lamost``: continuum-normalised (:func:`continuum`), clipped to [-0.5, 2.5];
    ``xp``: divided by the ivar-unweighted mean of the good pixels (the SED shape is kept:
    at XP resolution it carries most of the information).

    Rows with non-finite values are cleaned (bad pixels get weight 0); rows with fewer than
    ``MIN_GOOD_FRACTION`` good pixels are flagged ``good=False`` rather than raising, so a
    batch job can skip and count them. Returns numpy arrays (float32 flux, weight, scale;
    bool good).
    """
    f = np.atleast_2d(np.asarray(flux, dtype=np.float32))
    iv = np.atleast_2d(np.asarray(ivar, dtype=np.float32))
    _check_input_shape(modality, f.shape, iv.shape)
    mi = prepare_model_input_torch(as_tensor(f), as_tensor(iv), modality)
    return ModelInput(flux=mi.flux.numpy(), weight=mi.weight.numpy(),
                      scale=mi.scale.numpy(), good=mi.good.numpy())
