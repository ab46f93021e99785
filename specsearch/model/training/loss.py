"""The training objective, separate from the model (open_clip style).

Total loss = contrastive * symmetric InfoNCE (learnable temperature)
           + recon * reconstruction (embedding -> own spectrum)
           + translation * translation (embedding -> the other modality's spectrum)
           + labels * Gaussian NLL of the parameter heads (beta-NLL)
           + classes * cross-entropy of the rare-population classifier.

Spectral terms are reduced chi^2 values: per pixel (pred - flux)^2 * w_c with the clipped
weight w_c = 1 / (1/ivar + floor^2), i.e. the pixel's noise plus a floor (``floor_*``: the
precision we ask of the model), so a few very high-S/N spectra cannot dominate; masked
pixels (ivar = 0) have w_c = 0 and do not count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from specsearch.model.training.configs import LossConfig
from specsearch.model.network import ModelOutputs


def clipped_weight(w: torch.Tensor, floor: float) -> torch.Tensor:
    """1 / (1/w + floor^2), written so that w = 0 gives 0 without a division by zero."""
    return w / (1.0 + w * floor * floor)


def reduced_chi2(pred: torch.Tensor, flux: torch.Tensor, w: torch.Tensor,
                 floor: float) -> torch.Tensor:
    """(B,) mean over good pixels of (pred - flux)^2 * clipped weight; 0 for empty rows."""
    wc = clipped_weight(w, floor)
    n_good = (w > 0).sum(-1).clamp_min(1)
    return (wc * (pred - flux).square()).sum(-1) / n_good


def info_nce(emb_a: torch.Tensor, emb_b: torch.Tensor, logit_scale: torch.Tensor,
             source_id: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between row-aligned (B, D) normalised embeddings.

    Off-diagonal pairs of the same star (several visits in one batch) are masked out: they
    are not negatives.
    """
    scale = logit_scale.clamp(max=4.6052).exp()          # temperature >= 0.01
    logits = scale * emb_a @ emb_b.T                     # (B, B)
    if source_id is not None:
        same = source_id[:, None] == source_id[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def view_nt_xent(emb_a: torch.Tensor, emb_b: torch.Tensor, scale: float | torch.Tensor,
                 source_id: torch.Tensor | None = None) -> torch.Tensor:
    """NT-Xent (SimCLR) over two row-aligned views (B, D) of the same B stars.

    Every view must pick its partner among all 2B - 1 other views: unlike a cross-view
    InfoNCE, the candidates include the other stars' views of *both* kinds, so views that
    share a nuisance (e.g. all strongly degraded views) are pushed apart when they belong to
    different stars, and neighbours come to be chosen by the star, not by the noise.
    Other views of the same star (several visits in one batch) are not negatives.
    """
    z = torch.cat([emb_a, emb_b])                                  # (2B, D)
    n = emb_a.shape[0]
    logits = (z @ z.T) * scale
    idx = torch.arange(2 * n, device=z.device)
    exclude = idx[:, None] == idx[None, :]
    if source_id is not None:
        sid = torch.cat([source_id, source_id])
        exclude = exclude | (sid[:, None] == sid[None, :])
    partner = torch.cat([idx[n:], idx[:n]])
    exclude[idx, partner] = False
    logits = logits.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(logits, partner)


def snr_slope(emb_a: torch.Tensor, emb_b: torch.Tensor, q_a: torch.Tensor,
              q_b: torch.Tensor) -> torch.Tensor:
    """Squared norm of the least-squares slope of (emb_b - emb_a) on the views' difference
    in log S/N (``q[:, 0]`` of :meth:`Normaliser.quality`), over the batch.

    Two views of one star differ by noise and nuisances; a move of the embedding that
    follows S/N the same way for every star is a systematic one, which a within-batch
    contrastive term barely sees (it shifts all candidates alike) but which makes
    low-S/N spectra each other's nearest neighbours.
    """
    dq = (q_b[:, 0] - q_a[:, 0]).float()
    de = (emb_b - emb_a).float()
    beta = (de * dq[:, None]).sum(0) / dq.square().sum().clamp_min(1e-6)
    return beta.square().sum()


def identity_loss(emb_a: torch.Tensor, emb_b: torch.Tensor, q_a: torch.Tensor,
                  q_b: torch.Tensor, log_scale: torch.Tensor | float,
                  source_id: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(NT-Xent of the two views at inverse temperature exp(log_scale), S/N slope)."""
    scale = torch.as_tensor(log_scale).exp()
    return view_nt_xent(emb_a, emb_b, scale, source_id), snr_slope(emb_a, emb_b, q_a, q_b)


def gaussian_nll(mu: torch.Tensor, log_sigma: torch.Tensor, target: torch.Tensor,
                 beta: float = 0.0) -> torch.Tensor:
    """Mean beta-NLL over the finite entries of ``target`` (B, L); 0 if there are none."""
    valid = torch.isfinite(target)
    if not bool(valid.any()):
        return mu.sum() * 0.0
    y = torch.where(valid, target, mu.detach())
    nll = 0.5 * ((y - mu) * torch.exp(-log_sigma)).square() + log_sigma
    if beta:
        nll = nll * torch.exp(2.0 * beta * log_sigma).detach()
    return (nll * valid).sum() / valid.sum()


def class_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over rows with a class (target >= 0); 0 if none or no classifier."""
    valid = target >= 0
    if logits.shape[-1] == 0 or not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[valid], target[valid])


@dataclass
class LossTerms:
    """The total (a scalar tensor to backpropagate) and each weighted-in term as a float."""

    total: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)


class SpecCLIPLoss(nn.Module):
    """Combines the terms for one batch of pairs (see the module docstring)."""

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, outputs: dict[str, ModelOutputs],
                targets: dict[str, tuple[torch.Tensor, torch.Tensor]],
                logit_scale: torch.Tensor, *, labels: torch.Tensor | None = None,
                classes: torch.Tensor | None = None,
                source_id: torch.Tensor | None = None) -> LossTerms:
        """Args:
            outputs: per modality, the network's outputs on the (augmented) inputs.
            targets: per modality, the un-augmented (flux, weight) the decoders must match.
            logit_scale: the network's learnable log inverse temperature.
            labels: (B, L) standardised labels, NaN where unknown.
            classes: (B,) class index, -1 where unknown.
            source_id: (B,) star ids (masks same-star negatives).
        """
        cfg = self.cfg
        mods = list(outputs)
        parts: dict[str, torch.Tensor] = {}
        if len(mods) == 2 and cfg.contrastive:
            parts["contrastive"] = cfg.contrastive * info_nce(
                outputs[mods[0]].embedding, outputs[mods[1]].embedding, logit_scale,
                source_id)
        for m in mods:
            out = outputs[m]
            if cfg.recon and out.recon is not None:
                x, w = pixels_of(targets[m], out.recon)
                parts[f"recon_{m}"] = cfg.recon * reduced_chi2(
                    out.recon, x, w, cfg.floor(m)).mean()
            other = [o for o in mods if o != m]
            if cfg.translation and out.translation is not None and other:
                x, w = pixels_of(targets[other[0]], out.translation)
                parts[f"trans_{m}_to_{other[0]}"] = cfg.translation * reduced_chi2(
                    out.translation, x, w, cfg.floor(other[0])).mean()
            if cfg.labels and labels is not None and labels.shape[-1]:
                parts[f"labels_{m}"] = cfg.labels * gaussian_nll(
                    out.label_mu, out.label_log_sigma, labels, cfg.nll_beta)
            if cfg.classes and classes is not None:
                parts[f"classes_{m}"] = cfg.classes * class_cross_entropy(
                    out.class_logits, classes)
        total = sum(parts.values()) if parts else logit_scale * 0.0
        return LossTerms(total=total, parts={k: float(v.detach()) for k, v in parts.items()})


def pixels_of(target: tuple[torch.Tensor, torch.Tensor], decoded: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixel columns of a prepared (flux, weight) target that a decoder's output
    ``decoded`` (B, npix) predicts: the SED columns after them are not decoded."""
    n = decoded.shape[-1]
    return target[0][..., :n], target[1][..., :n]
