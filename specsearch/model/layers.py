"""Building blocks: input normalisation, encoders, decoders and heads (nanoGPT style).

Shapes: B = batch, N = pixels of a modality's canonical grid, D = embedding dimension,
H = hidden width, L = labels, C = classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from specsearch.model.config import DecoderConfig, EncoderConfig, HeadConfig


class Normaliser(nn.Module):
    """Per-pixel normalisation constants of one modality, estimated on the training set.

    Buffers (all (N,), in the units of ``prepare_model_input`` flux):
        mean, std: mean and standard deviation of the flux over good training pixels.
        signal_var: the star-to-star variance (total variance minus the mean noise variance),
            used for the input shrinkage s*w/(s*w+1).
        recon_floor: the model's own reconstruction error per pixel (from validation),
            added in quadrature to the noise when residuals become reduced chi values.
        trans_floor: the same for spectra of this modality predicted from the other one.
    """

    def __init__(self, npix: int, *, shrinkage: bool, fixed_snr: float | None = None) -> None:
        super().__init__()
        self.shrinkage = shrinkage
        self.fixed_snr = fixed_snr
        self.register_buffer("mean", torch.ones(npix))
        self.register_buffer("std", torch.ones(npix))
        self.register_buffer("signal_var", torch.ones(npix))
        self.register_buffer("recon_floor", torch.full((npix,), 0.01))
        self.register_buffer("trans_floor", torch.full((npix,), 0.02))

    def features(self, x: torch.Tensor, w: torch.Tensor, own_noise: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised, noise-shrunk flux (B, N) and the good-pixel mask (B, N) as 0./1.

        z = (x - mean) / std * s w / (s w + 1), written as (x - mean) / (std + std / (s w))
        so that a masked pixel (w = 0) divides by infinity and gives exactly 0 without a
        mask operation: masked pixels do not count. (Few element-wise passes: on a CPU
        they, not the matrix products, would otherwise dominate the encoder's time.)
        Inputs must be finite (``prepare_model_input`` guarantees it); a NaN in a good pixel
        propagates to the embedding rather than being silently ignored.

        With ``fixed_snr`` set, w in the shrinkage is that S/N squared for every pixel of
        every spectrum (a fixed Wiener filter): masked pixels still give 0, but nothing else
        depends on the spectrum's noise level. ``own_noise`` shrinks by the spectrum's own
        w whatever ``shrinkage`` and ``fixed_snr`` say (``EncoderConfig.own_noise``).
        """
        good = (w > 0).to(x.dtype)
        if self.shrinkage and self.fixed_snr is not None and not own_noise:
            sw = self.signal_var * float(self.fixed_snr) ** 2
            z = (x - self.mean).mul_((sw / (sw + 1.0) / self.std) * good)
        elif self.shrinkage or own_noise:
            denom = (self.std / self.signal_var) / w
            denom.add_(self.std)
            z = (x - self.mean).div_(denom)
        else:
            z = ((x - self.mean) / self.std) * good
        return z, good

    @staticmethod
    def quality(w: torch.Tensor, good: torch.Tensor) -> torch.Tensor:
        """(B, 2): log10(1 + sqrt(mean over good pixels of w)) and the good-pixel fraction.

        sqrt(w) is the per-pixel S/N in units of the prepared flux (~1 on the continuum for
        LAMOST, ~1 on average for XP). The heads see these next to the embedding so that
        their uncertainties can grow at low S/N without the embedding encoding the noise.
        """
        n_good = good.sum(-1)
        snr = torch.sqrt(w.sum(-1) / n_good.clamp_min(1.0))
        return torch.stack([torch.log10(1.0 + snr), n_good / w.shape[-1]], dim=-1)


def _mask_summary(good: torch.Tensor, pool: int) -> torch.Tensor:
    """(B, ceil(N/pool)) fraction of masked pixels in consecutive blocks."""
    return 1.0 - F.avg_pool1d(good.unsqueeze(1), pool, stride=pool, ceil_mode=True).squeeze(1)


class Block(nn.Module):
    """Pre-norm residual MLP block: h + W2 gelu(W1 LN(h))."""

    def __init__(self, width: int, ratio: float, dropout: float) -> None:
        super().__init__()
        inner = max(1, int(round(width * ratio)))
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, inner)
        self.fc2 = nn.Linear(inner, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.drop(self.fc2(F.gelu(self.fc1(self.norm(h)))))


class MLPEncoder(nn.Module):
    """Dense input layer over all pixels (+ coarse mask summary), residual MLP blocks,
    projection to the embedding (not yet normalised)."""

    def __init__(self, cfg: EncoderConfig, embedding_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Linear(cfg.npix, cfg.hidden)
        self.inp_mask = (nn.Linear(math.ceil(cfg.npix / cfg.mask_pool), cfg.hidden, bias=False)
                         if cfg.mask_pool else None)
        self.film = nn.Linear(2, 2 * cfg.hidden) if cfg.snr_film else None
        if self.film is not None:           # starts as the identity transformation
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        self.inp_sed = _sed_input(cfg)      # SED features (zero-initialised)
        self.norm0 = nn.LayerNorm(cfg.hidden)
        self.blocks = nn.ModuleList(Block(cfg.hidden, cfg.mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, embedding_dim)

    def forward(self, z: torch.Tensor, good: torch.Tensor,
                quality: torch.Tensor | None = None,
                sed: torch.Tensor | None = None) -> torch.Tensor:
        """``quality`` (B, 2) from :meth:`Normaliser.quality`, used when ``snr_film``;
        ``sed`` (B, 2 sed_bins) from :func:`sed_features`, used when ``sed_bins``."""
        h = self.inp(z)                                          # (B, H)
        if self.inp_mask is not None:
            h = h + self.inp_mask(_mask_summary(good, self.cfg.mask_pool))
        if self.inp_sed is not None:
            h = h + self.inp_sed(_need_sed(sed, self.cfg).to(h.dtype))
        if self.film is not None:
            if quality is None:
                raise ValueError("this encoder is conditioned on quality; pass it")
            gain, bias = self.film(quality.to(h.dtype)).chunk(2, dim=-1)
            h = h * (1.0 + gain) + bias
        h = F.gelu(self.norm0(h))
        for block in self.blocks:
            h = block(h)
        return self.proj(self.norm_out(h))                       # (B, D)


class TransformerEncoder(nn.Module):
    """ViT-style encoder over non-overlapping pixel patches (SpecCLIP's LAMOST encoder).

    Each patch token is the patch's standardised flux plus its masked fraction; learned
    position embeddings; pre-norm transformer layers; mean pooling; linear projection.
    """

    def __init__(self, cfg: EncoderConfig, embedding_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_patch = math.ceil(cfg.npix / cfg.patch)
        self.tokens = nn.Linear(cfg.patch + 1, cfg.hidden)
        self.pos = nn.Parameter(torch.zeros(1, self.n_patch, cfg.hidden))
        nn.init.normal_(self.pos, std=0.02)
        self.inp_sed = _sed_input(cfg)      # added to every token (zero: no effect)
        layer = nn.TransformerEncoderLayer(
            cfg.hidden, cfg.heads, dim_feedforward=int(cfg.hidden * cfg.mlp_ratio),
            dropout=cfg.dropout, activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm_out = nn.LayerNorm(cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, embedding_dim)

    def forward(self, z: torch.Tensor, good: torch.Tensor,
                quality: torch.Tensor | None = None,
                sed: torch.Tensor | None = None) -> torch.Tensor:
        pad = self.n_patch * self.cfg.patch - z.shape[-1]
        zp = F.pad(z, (0, pad)).view(z.shape[0], self.n_patch, self.cfg.patch)
        bad = F.pad(1.0 - good, (0, pad), value=1.0)
        bad = bad.view(z.shape[0], self.n_patch, self.cfg.patch).mean(-1, keepdim=True)
        h = self.tokens(torch.cat([zp, bad], dim=-1)) + self.pos  # (B, P, H)
        if self.inp_sed is not None:
            h = h + self.inp_sed(_need_sed(sed, self.cfg).to(h.dtype))[:, None, :]
        h = self.layers(h)
        return self.proj(self.norm_out(h.mean(dim=1)))           # (B, D)


SED_FEATURE_SCALE = 4.0
"""SED values (log10, typically +-0.3) are multiplied by this before the encoder reads them,
so that they vary about as much as the standardised pixels do."""


def sed_features(values: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
    """(B, 2K) encoder input from the SED columns of a prepared spectrum (values, measured):
    the scaled values (0 where not measured) next to the measured flags."""
    m = (measured > 0).to(values.dtype)
    return torch.cat([values * (SED_FEATURE_SCALE * m), m], dim=-1)


def _sed_input(cfg: EncoderConfig) -> nn.Linear | None:
    """The zero-initialised input weights of the SED features (None without ``sed_bins``):
    an encoder given them later starts out computing what it computed before."""
    if not cfg.sed_bins:
        return None
    layer = nn.Linear(2 * cfg.sed_bins, cfg.hidden, bias=False)
    nn.init.zeros_(layer.weight)
    return layer


def _need_sed(sed: torch.Tensor | None, cfg: EncoderConfig) -> torch.Tensor:
    if sed is None or sed.shape[-1] != 2 * cfg.sed_bins:
        raise ValueError(f"this encoder reads {cfg.sed_bins} SED values; pass sed features "
                         f"(B, {2 * cfg.sed_bins})")
    return sed


def build_encoder(cfg: EncoderConfig, embedding_dim: int) -> nn.Module:
    return (TransformerEncoder if cfg.kind == "transformer" else MLPEncoder)(cfg, embedding_dim)


def _mlp(n_in: int, hidden: int, depth: int, n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(max(1, depth)):
        layers += [nn.Linear(width, hidden), nn.GELU()]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class Decoder(nn.Module):
    """Embedding (B, D) -> standardised spectrum (B, N) of the target modality."""

    def __init__(self, cfg: DecoderConfig, embedding_dim: int, npix: int) -> None:
        super().__init__()
        self.net = _mlp(embedding_dim, cfg.hidden, cfg.depth, npix)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.net(emb)


def coverage_features(good: torch.Tensor, bins: int) -> torch.Tensor:
    """(B, bins) good-pixel fraction in ``bins`` equal stretches of the pixel grid (the
    head's coverage inputs, ``HeadConfig.coverage_bins``)."""
    edges = torch.linspace(0, good.shape[-1], bins + 1).round().long().tolist()
    return torch.stack([good[:, a:b].mean(-1) for a, b in zip(edges[:-1], edges[1:])], -1)


class Head(nn.Module):
    """Embedding + quality features -> label means, log sigmas (standardised) and class logits.

    The quality features are (log S/N, good fraction), followed by ``cfg.coverage_bins``
    coverage fractions when the config asks for them.

    Buffers: ``sigma_scale`` (L,) is the post-hoc calibration factor of each label's
    uncertainty, fitted on validation data so that z-scores have unit width;
    ``sigma_floor`` (L,, standardised units) is the model-versus-reality term added in
    quadrature, fitted on held-out real spectra (0 for a model calibrated on synthetic
    stars only).
    """

    def __init__(self, cfg: HeadConfig, embedding_dim: int, n_labels: int,
                 n_classes: int) -> None:
        super().__init__()
        self.n_labels, self.n_classes = n_labels, n_classes
        self.net = _mlp(embedding_dim + 2 + cfg.coverage_bins, cfg.hidden, cfg.depth,
                        2 * n_labels + n_classes)
        self.register_buffer("sigma_scale", torch.ones(n_labels))
        self.register_buffer("sigma_floor", torch.zeros(n_labels))

    def forward(self, emb: torch.Tensor, quality: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net(torch.cat([emb, quality], dim=-1))
        L = self.n_labels
        mu, log_sigma, logits = out[:, :L], out[:, L:2 * L], out[:, 2 * L:]
        return mu, log_sigma.clamp(-7.0, 3.0), logits
