"""Training augmentations on prepared (flux, weight) batches: the nuisances a real survey
adds and the embedding should ignore.

* noise at another S/N: extra Gaussian noise so the S/N drops by a factor of 1..``max_snr_drop``
  (the weight is divided by that factor squared), so one clean synthetic star teaches the
  model all its noisier versions;
* small radial-velocity shifts (LAMOST only: an XP pixel is ~20 A, a 100 km/s shift is
  ~1/10 of a pixel): fractional pixel shifts by linear interpolation, pixels next to a
  masked one are masked;
* masked segments (bad columns, sky residuals, a dead arm): contiguous runs set to weight 0;
* flux-calibration tilt: a multiplicative linear slope across the spectrum (after the LAMOST
  continuum normalisation only a residual tilt survives, so it is small there; XP keeps the
  SED, so it is re-normalised to unit mean afterwards like ``prepare_model_input`` does).

All randomness comes from the generator passed in (reproducible runs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and amplitudes of each augmentation (0 disables one).

    Attributes:
        p_noise, max_snr_drop: probability of degrading the S/N, and the largest factor.
        p_shift, max_shift_px: probability and largest |shift| in pixels (LAMOST: 69 km/s/px).
        p_mask, max_segments, max_segment_frac: masked segments (count, fraction of npix).
        p_tilt, tilt_lamost, tilt_xp: probability and largest end-to-end slope amplitude.
    """

    p_noise: float = 0.5
    max_snr_drop: float = 4.0
    p_shift: float = 0.5
    max_shift_px: float = 1.5
    p_mask: float = 0.3
    max_segments: int = 2
    max_segment_frac: float = 0.15
    p_tilt: float = 0.5
    tilt_lamost: float = 0.02
    tilt_xp: float = 0.03


def _rows(p: float, n: int, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) < p


def add_noise(x, w, p, max_drop, gen):
    """Lower the S/N of a random subset of rows by a factor in [1, max_drop]."""
    rows = _rows(p, x.shape[0], gen, x.device)
    k = 1.0 + (max_drop - 1.0) * torch.rand(x.shape[0], 1, generator=gen, device=x.device)
    k = torch.where(rows[:, None], k, torch.ones_like(k))
    sigma = torch.where(w > 0, torch.rsqrt(w.clamp_min(1e-30)), torch.zeros_like(w))
    noise = torch.randn(x.shape, generator=gen, device=x.device) * sigma * torch.sqrt(k * k - 1)
    return x + noise, w / (k * k)


def shift(x, w, p, max_px, gen):
    """Shift a random subset of rows by a fractional number of pixels (linear interpolation)."""
    n, npix = x.shape
    rows = _rows(p, n, gen, x.device)
    d = (2 * torch.rand(n, 1, generator=gen, device=x.device) - 1) * max_px
    d = torch.where(rows[:, None], d, torch.zeros_like(d))
    pos = torch.arange(npix, device=x.device, dtype=x.dtype)[None, :] - d   # source position
    i0 = torch.floor(pos)
    t = pos - i0
    i0 = i0.long()
    inside = (i0 >= 0) & (i0 + 1 < npix)
    j0 = i0.clamp(0, npix - 1)
    j1 = (i0 + 1).clamp(0, npix - 1)
    x0, x1 = x.gather(1, j0), x.gather(1, j1)
    w0, w1 = w.gather(1, j0), w.gather(1, j1)
    good = inside & (w0 > 0) & (w1 > 0)
    xs = torch.where(good, (1 - t) * x0 + t * x1, torch.zeros_like(x))
    # Variance of the interpolated value; exact pixels (t = 0) keep their weight.
    var = (1 - t) ** 2 / w0.clamp_min(1e-30) + t ** 2 / w1.clamp_min(1e-30)
    ws = torch.where(good, 1.0 / var, torch.zeros_like(w))
    # Rows that were not shifted stay bit-identical.
    keep = ~rows[:, None]
    return torch.where(keep, x, xs), torch.where(keep, w, ws)


def mask_segments(x, w, p, max_segments, max_frac, gen):
    """Zero the weight (and flux) of up to ``max_segments`` random runs per chosen row."""
    n, npix = x.shape
    rows = _rows(p, n, gen, x.device)
    idx = torch.arange(npix, device=x.device)[None, :]
    masked = torch.zeros_like(w, dtype=torch.bool)
    for _ in range(max_segments):
        length = (torch.rand(n, 1, generator=gen, device=x.device) * max_frac * npix).long()
        start = (torch.rand(n, 1, generator=gen, device=x.device) * npix).long()
        use = rows[:, None] & (torch.rand(n, 1, generator=gen, device=x.device) < 0.7)
        masked |= use & (idx >= start) & (idx < start + length)
    return x.masked_fill(masked, 0.0), w.masked_fill(masked, 0.0)


def tilt(x, w, p, amplitude, gen, *, renormalise: bool):
    """Multiply a random subset of rows by (1 + a t), t in [-1, 1] across the grid."""
    n, npix = x.shape
    rows = _rows(p, n, gen, x.device)
    a = (2 * torch.rand(n, 1, generator=gen, device=x.device) - 1) * amplitude
    a = torch.where(rows[:, None], a, torch.zeros_like(a))
    t = torch.linspace(-1.0, 1.0, npix, device=x.device, dtype=x.dtype)[None, :]
    f = 1.0 + a * t
    xt, wt = x * f, w / (f * f)
    if renormalise:
        good = (w > 0).to(x.dtype)
        mean = (xt * good).sum(-1, keepdim=True) / good.sum(-1, keepdim=True).clamp_min(1)
        mean = torch.where(mean.abs() > 0, mean.abs(), torch.ones_like(mean))
        xt, wt = xt / mean, wt * mean * mean
    return xt, wt


def augment(modality: str, x: torch.Tensor, w: torch.Tensor, cfg: AugmentConfig,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the configured augmentations to a (B, N) batch of one modality."""
    if cfg.p_tilt:
        amp = cfg.tilt_lamost if modality == "lamost" else cfg.tilt_xp
        x, w = tilt(x, w, cfg.p_tilt, amp, gen, renormalise=modality != "lamost")
    if cfg.p_shift and modality == "lamost":
        x, w = shift(x, w, cfg.p_shift, cfg.max_shift_px, gen)
    if cfg.p_noise:
        x, w = add_noise(x, w, cfg.p_noise, cfg.max_snr_drop, gen)
    if cfg.p_mask:
        x, w = mask_segments(x, w, cfg.p_mask, cfg.max_segments, cfg.max_segment_frac, gen)
    return x, w
