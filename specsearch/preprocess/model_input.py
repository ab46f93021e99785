"""Model input: the scaling every encoder expects of a batch of canonical-grid spectra."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from specsearch.errors import SpectrumError
from specsearch.preprocess.continuum import binned_continuum_torch
from specsearch.preprocess.grids import Grid, grid_for


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
        cont, bins = binned_continuum_torch(f, ok)
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
