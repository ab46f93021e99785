"""Training augmentations on prepared (flux, weight) batches: the nuisances a real survey
adds and the embedding should ignore.

* noise at another S/N: extra Gaussian noise so the S/N drops by a factor of 1..``max_snr_drop``
  (the weight is divided by that factor squared), so one clean synthetic star teaches the
  model all its noisier versions;
* small radial-velocity shifts (residual errors of the rest-frame correction; LAMOST
  only: an XP pixel is ~20 A, a 100 km/s shift is ~1/10 of a pixel): fractional pixel
  shifts by linear interpolation, pixels next to a masked one are masked;
* masked segments (bad columns, sky residuals, a dead arm): contiguous runs set to weight 0;
* missing red end (LAMOST only, off by default): everything redward of a random wavelength
  masked, as in MILES (to 7410 A) or a spectrum that lost its red arm;
* flux-calibration tilt: a multiplicative linear slope across the spectrum (after the LAMOST
  continuum normalisation only a residual tilt survives, so it is small there; XP keeps the
  SED, so it is re-normalised to unit mean afterwards like ``prepare_model_input`` does);
* SED calibration (LAMOST SED columns, off by default): a slope and curvature added to the
  log SED, as a flux calibration error of the whole spectrum would; and SED values whose
  stretch lost most of its pixels to the augmentations above become unmeasured, as
  ``prepare_model_input`` would have made them.

A LAMOST batch may carry SED columns after its pixels (:func:`specsearch.preprocess.
prepared_width`): the pixel augmentations see the pixels only.

All randomness comes from the generator passed in (reproducible runs). Each function picks
its rows, modifies those rows of ``x`` and ``w`` in place and returns them; :func:`augment`
works on a copy.
"""

from __future__ import annotations

import torch

from specsearch.model.training.configs import AugmentConfig
from specsearch.preprocess import grid_for, sed_columns
from specsearch.preprocess.model_input import SED_MIN_GOOD, sed_pixel_fraction


def _pick(p: float, n: int, gen: torch.Generator, device) -> torch.Tensor:
    """Indices of the rows (each with probability p) an augmentation is applied to."""
    return torch.nonzero(torch.rand(n, generator=gen, device=device) < p).squeeze(1)


def _uniform(n: int, lo: float, hi: float, gen, like: torch.Tensor) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, 1, generator=gen, device=like.device,
                                       dtype=like.dtype)


def add_noise(x, w, p, max_drop, gen):
    """Lower the S/N of a random subset of rows by a factor in [1, max_drop]."""
    rows = _pick(p, x.shape[0], gen, x.device)
    if rows.numel() == 0:
        return x, w
    factor = _uniform(rows.numel(), 1.0, max_drop, gen, x)[:, 0]
    x[rows], w[rows] = add_noise_to_snr(x[rows], w[rows], factor, gen)
    return x, w


def _pixels(modality: str, x) -> int:
    """Pixel columns of a batch (see :func:`split_pixels`)."""
    k = sed_columns(modality)
    n = x.shape[-1]
    return n - k if k and n == grid_for(modality).npix + k else n


def split_pixels(modality: str, x, w):
    """(pixels x, pixels w, SED x, SED w) of a prepared batch: copies. The batch has SED
    columns when it is exactly the modality's pixels + SED columns wide; otherwise every
    column is a pixel and the SED parts are (B, 0)."""
    npix = _pixels(modality, x)
    return (x[:, :npix].clone(), w[:, :npix].clone(), x[:, npix:].clone(),
            w[:, npix:].clone())


def add_noise_to_snr(x, w, factor, gen, modality: str | None = None):
    """Lower the S/N of every row by its own ``factor`` (B,) >= 1 with independent Gaussian
    noise (in place; the weight is divided by factor squared). With ``modality``, SED
    columns after the pixels are left alone (their weight is a measured flag, not an
    inverse variance)."""
    if modality is not None and (npix := _pixels(modality, x)) < x.shape[-1]:
        xp, wp = add_noise_to_snr(x[:, :npix].clone(), w[:, :npix].clone(), factor, gen)
        x[:, :npix], w[:, :npix] = xp, wp
        return x, w
    k2 = factor.clamp_min(1.0).to(x.dtype)[:, None] ** 2
    sigma = torch.rsqrt(w.clamp_min(1e-30)) * (w > 0)
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    x += noise * sigma * torch.sqrt(k2 - 1.0)
    w /= k2
    return x, w


def shift(x, w, p, max_px, gen):
    """Shift a random subset of rows by a fractional number of pixels (linear interpolation;
    the interpolated pixel keeps the smaller weight of its two parents, conservatively)."""
    n, npix = x.shape
    rows = _pick(p, n, gen, x.device)
    if rows.numel() == 0:
        return x, w
    d = _uniform(rows.numel(), -max_px, max_px, gen, x)
    pos = torch.arange(npix, device=x.device, dtype=x.dtype)[None, :] - d   # source position
    i0f = torch.floor(pos)
    t = pos - i0f
    i0 = i0f.long()
    inside = (i0 >= 0) & (i0 < npix - 1)
    j0 = i0.clamp(0, npix - 2)
    xr, wr = x[rows], w[rows]
    x0, x1 = xr.gather(1, j0), xr.gather(1, j0 + 1)
    ws = torch.minimum(wr.gather(1, j0), wr.gather(1, j0 + 1)) * inside
    x[rows] = torch.lerp(x0, x1, t) * (ws > 0)
    w[rows] = ws
    return x, w


def mask_segments(x, w, p, max_segments, max_frac, gen):
    """Zero the weight (and flux) of 1..``max_segments`` random runs in chosen rows."""
    n, npix = x.shape
    rows = _pick(p, n, gen, x.device)
    if rows.numel() == 0:
        return x, w
    idx = torch.arange(npix, device=x.device)[None, :]
    masked = torch.zeros(rows.numel(), npix, dtype=torch.bool, device=x.device)
    for i in range(max_segments):
        length = (_uniform(rows.numel(), 0.0, max_frac * npix, gen, x)).long()
        start = (_uniform(rows.numel(), 0.0, npix, gen, x)).long()
        if i:   # later segments only in some rows
            length = length * (torch.rand(rows.numel(), 1, generator=gen,
                                          device=x.device) < 0.5)
        masked |= (idx >= start) & (idx < start + length)
    x[rows] = x[rows].masked_fill(masked, 0.0)
    w[rows] = w[rows].masked_fill(masked, 0.0)
    return x, w


def tilt(x, w, p, amplitude, gen, *, renormalise: bool):
    """Multiply a random subset of rows by (1 + a t), t in [-1, 1] across the grid."""
    n, npix = x.shape
    rows = _pick(p, n, gen, x.device)
    if rows.numel() == 0:
        return x, w
    a = _uniform(rows.numel(), -amplitude, amplitude, gen, x)
    t = torch.linspace(-1.0, 1.0, npix, device=x.device, dtype=x.dtype)[None, :]
    f = 1.0 + a * t
    xr, wr = x[rows] * f, w[rows] / (f * f)
    if renormalise:
        good = (wr > 0).to(x.dtype)
        mean = (xr * good).sum(-1, keepdim=True) / good.sum(-1, keepdim=True).clamp_min(1)
        mean = torch.where(mean.abs() > 0, mean.abs(), torch.ones_like(mean))
        xr, wr = xr / mean, wr * mean * mean
    x[rows], w[rows] = xr, wr
    return x, w


def red_cut(x, w, p, lo_a, hi_a, gen):
    """Mask every pixel redward of a wavelength drawn in [lo_a, hi_a] in chosen rows
    (LAMOST grid)."""
    from specsearch.preprocess import grid_for

    n, npix = x.shape
    rows = _pick(p, n, gen, x.device)
    if rows.numel() == 0:
        return x, w
    wave = torch.as_tensor(grid_for("lamost").wavelength, device=x.device, dtype=x.dtype)
    cut = _uniform(rows.numel(), lo_a, hi_a, gen, x)
    masked = wave[None, :] > cut
    x[rows] = x[rows].masked_fill(masked, 0.0)
    w[rows] = w[rows].masked_fill(masked, 0.0)
    return x, w


def augment(modality: str, x: torch.Tensor, w: torch.Tensor, cfg: AugmentConfig,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the configured augmentations to a (B, N) batch of one modality.

    Returns new tensors; ``x`` and ``w`` are left untouched (they are the decoders'
    targets). The individual functions above modify their arguments in place.
    """
    x, w, sx, sw = split_pixels(modality, x, w)
    if cfg.p_tilt:
        amp = cfg.tilt_lamost if modality == "lamost" else cfg.tilt_xp
        x, w = tilt(x, w, cfg.p_tilt, amp, gen, renormalise=modality != "lamost")
    if cfg.p_shift and modality == "lamost":
        x, w = shift(x, w, cfg.p_shift, cfg.max_shift_px, gen)
    if cfg.p_noise:
        x, w = add_noise(x, w, cfg.p_noise, cfg.max_snr_drop, gen)
    if cfg.p_mask:
        x, w = mask_segments(x, w, cfg.p_mask, cfg.max_segments, cfg.max_segment_frac, gen)
    if sx.shape[-1]:
        if cfg.p_sed_tilt:
            sx = sed_tilt(sx, sw, cfg.p_sed_tilt, cfg.sed_tilt, cfg.sed_curve, gen)
        sx, sw = sed_follow_mask(sx, sw, w)
        x, w = torch.cat([x, sx], dim=-1), torch.cat([w, sw], dim=-1)
    if cfg.p_red_cut and modality == "lamost":
        x, w = red_cut_view(modality, x, w, cfg, gen)   # last: its SED follows the cut
    return x, w


def red_cut_view(modality: str, x: torch.Tensor, w: torch.Tensor, cfg: AugmentConfig,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The red cut of ``augment`` (its last step), on copies of a view: ``augment`` calls
    it, and so does a caller that also needs the view before the cut (``finetune``'s head
    distillation)."""
    x, w, sx, sw = split_pixels(modality, x, w)
    if cfg.p_red_cut and modality == "lamost":
        x, w = red_cut(x, w, cfg.p_red_cut, *cfg.red_cut_a, gen)
    if sx.shape[-1]:
        sx, sw = sed_follow_mask(sx, sw, w)
        x, w = torch.cat([x, sx], dim=-1), torch.cat([w, sw], dim=-1)
    return x, w


def sed_tilt(sx, sw, p, slope, curve, gen):
    """Add a slope and a curvature (up to +-``slope`` and +-``curve`` in log10 at the ends,
    drawn uniformly) to the log SED of a random subset of rows, re-centred on the measured
    values like ``prepare_model_input`` centres them."""
    n, k = sx.shape
    rows = _pick(p, n, gen, sx.device)
    if rows.numel() == 0:
        return sx
    t = torch.linspace(-1.0, 1.0, k, device=sx.device, dtype=sx.dtype)[None, :]
    a = _uniform(rows.numel(), -slope, slope, gen, sx)
    b = _uniform(rows.numel(), -curve, curve, gen, sx)
    m = (sw[rows] > 0).to(sx.dtype)
    v = (sx[rows] + a * t + b * (t * t - 0.4)) * m
    v = v - m * (v.sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp_min(1.0))
    sx[rows] = v
    return sx


def sed_follow_mask(sx, sw, w):
    """SED values whose stretch has fewer than ``SED_MIN_GOOD`` good pixels left (``w``: the
    augmented pixel weights) become unmeasured; the rest are re-centred."""
    keep = (sed_pixel_fraction((w > 0).to(sx.dtype)) >= SED_MIN_GOOD).to(sx.dtype)
    m = (sw > 0).to(sx.dtype) * keep
    v = sx * m
    v = v - m * (v.sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp_min(1.0))
    return v, sw * keep
