"""Model input: the scaling every encoder expects of a batch of canonical-grid spectra."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from specsearch.errors import SpectrumError
from specsearch.preprocess.continuum import CONTINUUM_BIN, _bin_sum, binned_continuum_parts
from specsearch.preprocess.grids import Grid, grid_for


@dataclass
class ModelInput:
    """What an encoder consumes for a batch on a canonical grid.

    Attributes:
        flux: (batch, width) float32 scaled flux (continuum-normalised for ``lamost``,
            mean-normalised for ``xp``); 0 where masked. ``width`` is
            :func:`prepared_width`: for ``lamost`` the ``npix`` normalised pixels are
            followed by ``SED_BINS`` values of the SED the normalisation divided out
            (:func:`sed_of_continuum`); for ``xp`` it is ``npix``.
        weight: (batch, width) float32 inverse variance of ``flux`` (0 where masked); 1 or 0
            (measured or not) in the SED columns.
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


SED_BINS = 16
"""SED values a prepared LAMOST spectrum carries after its pixels: the log10 of its
continuum averaged in 16 equal stretches of the log-wavelength grid (~340 A at 6000 A),
relative to their mean. The continuum normalisation divides the SED out of the pixels;
these columns keep its shape (slope, curvature, reddening, the Balmer jump's neighbourhood)
for the encoders that read them (``EncoderConfig.sed_bins``), at a resolution the flux
calibration can be trusted at."""
SED_MIN_GOOD = 0.5
"""An SED value counts as measured when this fraction of its stretch has good pixels."""
SED_CLIP = 1.5
"""SED values are clipped to +-this (log10 units: a factor ~30 from the mean)."""


def sed_columns(modality: str) -> int:
    """Columns after the pixels in a prepared spectrum of ``modality`` (SED values)."""
    return SED_BINS if modality == "lamost" else 0


def prepared_width(modality: str) -> int:
    """Columns of a prepared spectrum of ``modality``: pixels, then SED values."""
    return grid_for(modality).npix + sed_columns(modality)


def _sed_matrix(n_bins: int, k: int, dtype, device):
    """(n_bins, k) averaging matrix of k equal stretches of n_bins continuum bins."""
    import torch

    edges = np.round(np.linspace(0, n_bins, k + 1)).astype(int)
    a = np.zeros((n_bins, k), np.float32)
    for j in range(k):
        a[edges[j]:edges[j + 1], j] = 1.0 / max(1, edges[j + 1] - edges[j])
    return torch.as_tensor(a, dtype=dtype, device=device)


def sed_of_continuum(bins, ok_bins, k: int = SED_BINS):
    """The SED columns of prepared LAMOST spectra: (values (B, k), measured (B, k) 0./1.).

    ``bins`` (B, n_bins) is the binned continuum and ``ok_bins`` (B, n_bins) the number of
    good pixels in each bin (:func:`binned_continuum_parts`). Each value is the mean log10
    continuum of its stretch minus the mean over the measured stretches (the brightness is
    divided out); stretches with fewer than ``SED_MIN_GOOD`` good pixels are 0 and not
    measured.
    """
    import torch

    a = _sed_matrix(bins.shape[-1], k, bins.dtype, bins.device)
    logc = torch.log10(bins.clamp_min(1e-30)) @ a
    frac = (ok_bins / CONTINUUM_BIN) @ a
    measured = (frac >= SED_MIN_GOOD).to(bins.dtype)
    n = measured.sum(-1, keepdim=True)
    mean = (logc * measured).sum(-1, keepdim=True) / n.clamp_min(1.0)
    values = ((logc - mean) * measured).clamp_(-SED_CLIP, SED_CLIP)
    values = torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    return values, measured


def sed_pixel_fraction(ok, k: int = SED_BINS):
    """(B, k) fraction of good pixels in each SED stretch of (B, npix) 0./1. masks ``ok``."""
    n_bins = -(-ok.shape[-1] // CONTINUUM_BIN)
    a = _sed_matrix(n_bins, k, ok.dtype, ok.device)
    return (_bin_sum(ok, n_bins) / CONTINUUM_BIN) @ a


def split_sed(x, npix: int):
    """(pixels, SED columns) of a prepared batch (B, width); the SED part may be empty."""
    return x[..., :npix], x[..., npix:]


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
    npix, k = grid.npix, sed_columns(modality)
    # The outputs are these two buffers, worked on in place: the pixels first, the SED
    # columns (if any) filled in last (no concatenation, no extra full-size allocation).
    xbuf = torch.empty(flux.shape[0], npix + k, dtype=torch.float32, device=flux.device)
    wbuf = torch.empty_like(xbuf)
    # A pixel is good when ivar > 0 and both values are finite and the flux is not 0.
    f = torch.nan_to_num(flux.to(torch.float32), nan=0.0, posinf=0.0, neginf=0.0,
                         out=xbuf[:, :npix])
    iv = torch.nan_to_num(ivar.to(torch.float32), nan=0.0, posinf=0.0, neginf=0.0,
                          out=wbuf[:, :npix])
    ok = torch.sign(iv.clamp_(min=0.0))             # 1.0 where ivar > 0, else 0.0
    ok.mul_(torch.abs(f).sign_())                    # ... and the flux is not 0
    f.mul_(ok)
    iv.mul_(ok)
    n_ok = ok.sum(-1)
    good = n_ok >= MIN_GOOD_FRACTION * npix
    if modality == "lamost":
        cont, bins, ok_bins = binned_continuum_parts(f, ok)
        f.div_(cont).clamp_(-0.5, 2.5)               # 0 where masked: f is 0 there
        iv.mul_(cont).mul_(cont)                     # ivar of the normalised flux
        xbuf[:, npix:], wbuf[:, npix:] = sed_of_continuum(bins, ok_bins)
        scale = torch.log10(bins.mean(-1))
    else:
        mean = (f.sum(-1) / n_ok.clamp_min(1)).abs()
        mean = torch.where(mean > 0, mean, torch.ones_like(mean))
        f.div_(mean[:, None])
        iv.mul_((mean * mean)[:, None])
        scale = torch.log10(mean)
    x, w = xbuf, wbuf
    scale = torch.where(torch.isfinite(scale), scale, torch.zeros_like(scale))
    return ModelInput(flux=x, weight=w, scale=scale, good=good)


def prepare_model_input(flux: np.ndarray, ivar: np.ndarray, modality: str) -> ModelInput:
    """Scale a batch of canonical-grid spectra the way every encoder expects.

    ``lamost``: continuum-normalised (:func:`continuum`), clipped to [-0.5, 2.5], then the
    ``SED_BINS`` SED columns (:func:`sed_of_continuum`);
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
