"""The aligned two-modality network: encoders, decoders, parameter heads, temperature.

Inputs are what :func:`specsearch.preprocess.prepare_model_input` returns (``flux``,
``weight``), as tensors. The network never sees raw survey flux. In-place conversions of a
trained network (new inputs, heads, classes, identity encoders) are in
:mod:`specsearch.model.conversions`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from specsearch.model.config import EncoderConfig, ModelConfig
from specsearch.model.layers import (Decoder, Head, Normaliser, build_encoder,
                                     coverage_features, sed_features)
from specsearch.preprocess.grids import band_mask, grid_for
from specsearch.preprocess.model_input import sed_columns, split_sed


def decoder_key(source: str, target: str, shared: bool = False) -> str:
    return target if shared else f"{source}_to_{target}"


@dataclass
class ModelOutputs:
    """Everything the network says about a batch of one modality (tensors).

    Attributes:
        embedding: (B, D) L2-normalised embedding.
        quality: (B, Q) log10(1 + mean S/N per pixel), good-pixel fraction, then (with
            ``head.coverage_bins``) the good fraction per stretch of the grid.
        label_mu: (B, L) standardised label means (see :meth:`SpecCLIPNet.labels_physical`).
        label_log_sigma: (B, L) standardised log uncertainties (before calibration).
        class_logits: (B, C) rare-population classifier logits (C may be 0).
        recon: (B, N_own) reconstructed own spectrum in prepared-flux units, or None.
        translation: (B, N_other) predicted other-modality spectrum, or None.
    """

    embedding: torch.Tensor
    quality: torch.Tensor
    label_mu: torch.Tensor
    label_log_sigma: torch.Tensor
    class_logits: torch.Tensor
    recon: torch.Tensor | None = None
    translation: torch.Tensor | None = None


class SpecCLIPNet(nn.Module):
    """Per-modality encoders into one embedding space, decoders for every source->target
    pair, one parameter head per modality, and the learnable InfoNCE temperature.

    Buffers ``label_mean`` / ``label_std`` (L,) map standardised head outputs to physical
    units (K for teff, dex for the rest).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        D, L, C = cfg.embedding_dim, len(cfg.label_names), len(cfg.class_names)
        mods = cfg.modalities
        self.normalisers = nn.ModuleDict(
            {m: Normaliser(cfg.encoders[m].npix, shrinkage=cfg.input_shrinkage,
                           fixed_snr=cfg.shrinkage_snr) for m in mods})
        self.encoders = nn.ModuleDict({m: build_encoder(cfg.encoders[m], D) for m in mods})
        self.decoders = nn.ModuleDict(
            {decoder_key(s, t, cfg.shared_decoders): Decoder(cfg.decoders[t], D,
                                                             cfg.encoders[t].npix)
             for s in mods for t in mods})
        self.heads = nn.ModuleDict({m: Head(cfg.head, D, L, C) for m in mods})
        if cfg.identity_encoders:     # absent (no parameters) in models without them
            self.identity_encoders = nn.ModuleDict(
                {m: build_encoder(c, cfg.identity_dim)
                 for m, c in cfg.identity_encoders.items()})
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
        self.register_buffer("label_mean", torch.zeros(L))
        self.register_buffer("label_std", torch.ones(L))

    # ------------------------------------------------------------------ pieces
    def other(self, modality: str) -> str:
        others = [m for m in self.cfg.modalities if m != modality]
        return others[0] if others else modality

    def encode_with_quality(self, modality: str, x: torch.Tensor, w: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, width) prepared flux and weight -> (B, D) normalised embedding, (B, Q) quality.

        The quality is (log S/N, good fraction) and, with ``head.coverage_bins``, the good
        fraction per stretch of the grid (what the heads read; the encoders' FiLM reads the
        first two columns only).

        ``width`` is the modality's pixels, optionally followed by its SED columns
        (:func:`specsearch.preprocess.prepared_width`): an encoder without ``sed_bins``
        ignores them, one with ``sed_bins`` treats a spectrum without them (e.g. a
        translated one) as one whose SED is unknown.
        """
        enc = self.cfg.encoders[modality]
        if x.shape[-1] not in (enc.npix, enc.npix + sed_columns(modality)):
            raise ValueError(f"{modality} input has {x.shape[-1]} columns; expected "
                             f"{enc.npix} pixels, optionally + {sed_columns(modality)} SED "
                             f"values")
        xp, xs = split_sed(x, enc.npix)
        wp, ws = split_sed(w, enc.npix)
        norm = self.normalisers[modality]
        z, good = norm.features(xp, wp)
        quality = norm.quality(wp, good)
        if self.cfg.head.coverage_bins:     # what the head reads besides (log S/N, good)
            quality = torch.cat([quality, coverage_features(good, self.cfg.head.coverage_bins)
                                 .to(quality.dtype)], dim=-1)
        sed = None
        if enc.sed_bins:
            if xs.shape[-1] != enc.sed_bins:    # not given: unknown
                xs = x.new_zeros(x.shape[0], enc.sed_bins)
                ws = xs
            sed = sed_features(xs, ws)
        emb = self.encoders[modality](z, good, self._encoder_quality(modality, quality),
                                      sed)
        return F.normalize(emb.float(), dim=-1), quality

    def _encoder_quality(self, modality: str, quality: torch.Tensor,
                         enc: EncoderConfig | None = None) -> torch.Tensor:
        """What an encoder's FiLM sees (``enc``, default the modality's embedding encoder):
        the spectrum's quality, or with ``film_snr`` set a fixed S/N next to the spectrum's
        good-pixel fraction."""
        snr = (enc or self.cfg.encoders[modality]).film_snr
        if snr is None:
            return quality[:, :2]
        fixed = torch.full_like(quality[:, :1], math.log10(1.0 + snr))
        return torch.cat([fixed, quality[:, 1:2]], dim=-1)

    def encode(self, modality: str, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.encode_with_quality(modality, x, w)[0]

    def has_identity(self, modality: str) -> bool:
        """Whether the model has an identity encoder for ``modality``."""
        return modality in self.cfg.identity_encoders

    def identity(self, modality: str, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """(B, width) prepared flux and weight -> (B, identity_dim) L2-normalised identity
        vectors (``ModelConfig.identity_encoders``): the same standardised input and
        quality the embedding's encoder reads (noise-blind when the model is), SED columns
        ignored. ValueError when the model has none for ``modality``."""
        if not self.has_identity(modality):
            raise ValueError(f"this model has no {modality} identity encoder (train one with "
                             f"specsearch train-identity)")
        enc = self.cfg.identity_encoders[modality]
        xp, _ = split_sed(x, enc.npix)
        wp, _ = split_sed(w, enc.npix)
        if enc.ignore_bands:        # pixels the encoder never reads enter as masked ones
            keep = torch.from_numpy(_kept_pixels(modality, enc.ignore_bands)).to(
                device=wp.device, dtype=wp.dtype)
            xp, wp = xp * keep, wp * keep
        norm = self.normalisers[modality]
        z, good = norm.features(xp, wp, own_noise=enc.own_noise)
        quality = self._encoder_quality(modality, norm.quality(wp, good), enc)
        vec = self.identity_encoders[modality](z, good, quality)
        return F.normalize(vec.float(), dim=-1)

    def decode(self, source: str, target: str, emb: torch.Tensor) -> torch.Tensor:
        """(B, D) embedding of ``source`` -> (B, N_target) spectrum in prepared-flux units."""
        norm = self.normalisers[target]
        decoder = self.decoders[decoder_key(source, target, self.cfg.shared_decoders)]
        return norm.mean + norm.std * decoder(emb).float()

    def head(self, modality: str, emb: torch.Tensor, quality: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, log_sigma, logits = self.heads[modality](emb, quality)
        return mu.float(), log_sigma.float(), logits.float()

    def labels_physical(self, modality: str, mu: torch.Tensor, log_sigma: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised head outputs -> (value, calibrated 1-sigma) in physical units."""
        head = self.heads[modality]
        sigma = torch.hypot(torch.exp(log_sigma) * head.sigma_scale, head.sigma_floor)
        return self.label_mean + self.label_std * mu, self.label_std * sigma

    def filled_embedding(self, modality: str, x: torch.Tensor, w: torch.Tensor,
                         emb: torch.Tensor) -> torch.Tensor:
        """(B, D) the embedding the heads read: ``emb`` (the embedding of ``x, w``), with
        the rows that lack the stretch ``ModelConfig.head_fill`` names re-embedded after
        their masked pixels there are filled with the model's own reconstruction
        (:class:`~specsearch.model.config.FillConfig`). The fill rounds run without
        gradients; the last encoding keeps them (for an encoder being trained)."""
        fill = self.cfg.head_fill.get(modality)
        if fill is None:
            return emb
        npix = self.cfg.encoders[modality].npix
        hole = w[:, :npix] <= 0
        hole[:, :fill.start] = False
        rows = torch.nonzero(hole[:, fill.start:].float().mean(1) >= fill.min_missing
                             ).squeeze(1)
        if rows.numel() == 0:
            return emb
        xs, ws, hole = x[rows].clone(), w[rows].clone(), hole[rows]
        seen = ws[:, :npix] > 0
        level = torch.where(seen, ws[:, :npix], torch.full_like(ws[:, :npix], float("nan"))
                            ).nanmedian(dim=1).values.nan_to_num(1.0)[:, None]
        e = emb[rows].detach()
        with torch.no_grad():
            for r in range(fill.rounds):
                rec = self.decode(modality, modality, e).to(xs.dtype)
                xs[:, :npix] = torch.where(hole, rec, xs[:, :npix])
                ws[:, :npix] = torch.where(hole, level.to(ws.dtype).expand_as(hole),
                                           ws[:, :npix])
                if r + 1 < fill.rounds:
                    e = self.encode(modality, xs, ws)
        filled = self.encode(modality, xs, ws)
        return emb.index_copy(0, rows, filled.to(emb.dtype))

    def head_features(self, modality: str, x: torch.Tensor, w: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embedding, the embedding the heads read (:meth:`filled_embedding`), quality) of
        prepared flux and weight."""
        emb, quality = self.encode_with_quality(modality, x, w)
        return emb, self.filled_embedding(modality, x, w, emb), quality

    # ------------------------------------------------------------------ all at once
    def forward_outputs(self, modality: str, x: torch.Tensor, w: torch.Tensor, *,
                        decode: bool = True) -> ModelOutputs:
        emb, head_emb, quality = self.head_features(modality, x, w)
        mu, log_sigma, logits = self.head(modality, head_emb, quality)
        out = ModelOutputs(embedding=emb, quality=quality, label_mu=mu,
                           label_log_sigma=log_sigma, class_logits=logits)
        if decode:
            out.recon = self.decode(modality, modality, emb)
            other = self.other(modality)
            if other != modality:
                out.translation = self.decode(modality, other, emb)
        return out

    def temperature(self) -> float:
        return float(1.0 / self.logit_scale.detach().exp())


@functools.lru_cache(maxsize=8)
def _kept_pixels(modality: str, bands: tuple[tuple[float, float], ...]) -> np.ndarray:
    """(npix,) float32: 0 on ``modality``'s grid pixels inside ``bands``, 1 elsewhere."""
    return (~band_mask(grid_for(modality).wavelength, bands)).astype(np.float32)
