"""The identity objective shared by ``train`` and ``finetune``: a star's *independent*
second visit must find its first among all views of the batch.

Two augmented views of one noisy spectrum share its noise realisation, and with ~4,000
pixels an encoder can match that shared noise instead of the star (measured: trained that
way, a model found a star's other visit *less* often than without the term, top-1 0.12 vs
0.35 among 4,000). So the views here are two observations of the star with independent
noise, S/N, RV residual, calibration and artefacts: the repeat visits of a synthetic survey
made with ``specsearch synth --repeat-fraction`` (rows with the same ``source_id``), each
with the usual training augmentations on top.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from specsearch.model.network import ModelOutputs, SpecCLIPNet
from specsearch.model.training.augment import add_noise_to_snr, augment
from specsearch.model.training.cache import PairCache
from specsearch.model.training.calibrate import to_device
from specsearch.model.training.configs import AugmentConfig
from specsearch.model.training.loss import identity_loss


@dataclass
class SecondVisits:
    """The other visits of the rows of one (sorted) batch that have one.

    Attributes:
        rows: (k,) indices into the batch of the rows with another visit.
        x, w: per modality (k, N) prepared flux and weight of those other visits, row-aligned.
    """

    rows: np.ndarray
    x: dict[str, torch.Tensor]
    w: dict[str, torch.Tensor]


def second_visits(cache: PairCache, partner: np.ndarray | None, pos_sorted: np.ndarray,
                  device: torch.device) -> SecondVisits | None:
    """Load the partner visits (``partner``: see :func:`..data.other_visit`) of a batch
    whose cache positions are ``pos_sorted``; None when fewer than two rows have one."""
    if partner is None:
        return None
    pp = partner[pos_sorted]
    rows = np.flatnonzero(pp >= 0)
    if rows.size < 2:
        return None
    want = pp[rows]
    batch = to_device(cache.load(want), device)          # comes back sorted by position
    back = torch.from_numpy(np.searchsorted(np.sort(want), want)).to(device)
    return SecondVisits(rows=rows, x={m: v[back] for m, v in batch["x"].items()},
                        w={m: v[back] for m, v in batch["w"].items()})


class _ReverseGrad(torch.autograd.Function):
    """Identity forward; the gradient times ``-scale`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:   # noqa: D102
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):                              # noqa: D102
        return -ctx.scale * grad, None


class SnrAdversary(nn.Module):
    """A training-only critic that tries to tell which of two visits of one star is the
    noisier from their embeddings, while the encoders, through a gradient reversal, learn
    to make that impossible.

    It reads each embedding through a small MLP ``f`` and predicts the difference of the
    visits' log S/N as ``f(e_b) - f(e_a)``. The two visits are the same star, so whatever
    the stellar labels put into the embedding cancels in the difference: only a noise
    signature can predict it (``snr_slope`` is the linear, fixed-direction case of this).
    One critic per modality; it is not part of the saved model.
    """

    def __init__(self, modalities: tuple[str, ...] | list[str], dim: int,
                 hidden: int = 64) -> None:
        super().__init__()
        self.f = nn.ModuleDict({m: nn.Sequential(nn.Linear(dim, hidden), nn.GELU(),
                                                 nn.Linear(hidden, hidden), nn.GELU(),
                                                 nn.Linear(hidden, 1))
                                for m in modalities})

    def loss(self, modality: str, emb_a: torch.Tensor, emb_b: torch.Tensor,
             q_a: torch.Tensor, q_b: torch.Tensor, scale: float) -> torch.Tensor:
        """Mean squared error of the predicted log-S/N difference, standardised by the
        batch's spread (the critic minimises it; the encoders, reversed by ``scale``,
        maximise it)."""
        f = self.f[modality]
        za, zb = _ReverseGrad.apply(emb_a, scale), _ReverseGrad.apply(emb_b, scale)
        target = (q_b[:, 0] - q_a[:, 0]).float()
        target = target / target.std().clamp_min(1e-3)
        pred = (f(zb) - f(za))[:, 0]
        return (pred - target).square().mean()


def identity_terms(net: SpecCLIPNet, outs: dict[str, ModelOutputs], second: SecondVisits,
                   source_id: torch.Tensor, *, augment_cfg: AugmentConfig,
                   temperature: float, gen: torch.Generator,
                   adversary: SnrAdversary | None = None, adversary_scale: float = 1.0
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(NT-Xent, S/N slope, S/N critic loss) averaged over the modalities: the first
    visits' embeddings (``outs``, as the main objective saw them) against the augmented
    second visits. The critic loss is 0 without an ``adversary``; its gradient reaches the
    encoders reversed and scaled by ``adversary_scale``."""
    log_scale = math.log(1.0 / temperature)
    rows = torch.from_numpy(second.rows).to(source_id.device)
    ident, slope, critic = [], [], []
    for m, out in outs.items():
        xb, wb = augment(m, second.x[m], second.w[m], augment_cfg, gen)
        eb, qb = net.encode_with_quality(m, xb, wb)
        ea, qa = out.embedding[rows], out.quality[rows]
        i, s = identity_loss(ea, eb, qa, qb, log_scale, source_id[rows])
        ident.append(i)
        slope.append(s)
        if adversary is not None:
            critic.append(adversary.loss(m, ea, eb, qa, qb, adversary_scale))
    n = len(ident)
    zero = ident[0] * 0.0
    return sum(ident) / n, sum(slope) / n, (sum(critic) / n if critic else zero)


def clean_anchor_loss(net: SpecCLIPNet, modality: str, x: torch.Tensor, w: torch.Tensor,
                      *, augment_cfg: AugmentConfig, min_snr: float, snr_floor: float,
                      gen: torch.Generator) -> torch.Tensor | None:
    """Noise invariance: a star's spectrum made noisier must embed where its clean
    spectrum embeds.

    Rows of the (un-augmented) batch ``x, w`` whose S/N (``Normaliser.quality``) is at least
    ``min_snr`` are the anchors: their embedding, without gradient, is the target. Each is
    degraded by independent Gaussian noise to an S/N drawn log-uniformly between
    ``snr_floor`` and its own, then given the usual training augmentations; the loss is the
    mean of 1 - cos(noisy, clean). The target is fixed and there are no negatives, so unlike
    two views of one noisy spectrum in a contrastive term, matching the shared noise earns
    nothing. Measured (``finetune --clean-anchor``, BENCHMARKS.md): it barely changed how
    much a query's neighbours follow its S/N; the noise level reached the embedding through
    the noise-dependent inputs, which ``make_noise_blind`` removes. Returns None when no row
    is clean enough.
    """
    norm = net.normalisers[modality]
    wp = w[:, :net.cfg.encoders[modality].npix]     # pixels (not SED columns)
    snr = 10.0 ** norm.quality(wp, (wp > 0).to(x.dtype))[:, 0] - 1.0
    rows = torch.nonzero(snr >= min_snr).squeeze(1)
    if rows.numel() == 0:
        return None
    xc, wc = x[rows], w[rows]
    with torch.no_grad():
        target = net.encode(modality, xc, wc)
    s = snr[rows]
    u = torch.rand(rows.numel(), generator=gen, device=x.device, dtype=x.dtype)
    lo, hi = math.log(snr_floor), torch.log(s)
    want = torch.exp(lo + (hi - lo) * u)
    xn, wn = add_noise_to_snr(xc.clone(), wc.clone(), s / want, gen, modality)
    xn, wn = augment(modality, xn, wn, dataclasses.replace(augment_cfg, p_noise=0.0), gen)
    noisy = net.encode(modality, xn, wn)
    return (1.0 - (noisy * target).sum(-1)).mean()
