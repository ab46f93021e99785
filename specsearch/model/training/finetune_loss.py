"""The loss of one fine-tuning step (:func:`step_loss`): the synthetic pairs' objective on
augmented views, the real LAMOST labels with their own uncertainty (:func:`noisy_label_nll`),
head distillation, the clean anchor, the identity terms and the optional real-view term.
:mod:`specsearch.model.training.finetune` describes the objective and runs the steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from specsearch.model.training.configs import VIEW_AUGMENT, FinetuneConfig
from specsearch.model.training.augment import AugmentConfig, augment, red_cut_view
from specsearch.model.training.calibrate import to_device
from specsearch.model.training.finetune_data import FinetuneData, catalogue_shift, sample_rows
from specsearch.model.training.hard_negatives import sample_batch
from specsearch.model.training.identity import (SnrAdversary, clean_anchor_loss,
                                                 identity_terms, second_visits)
from specsearch.model.training.loss import SpecCLIPLoss, identity_loss
from specsearch.model.network import SpecCLIPNet


def noisy_label_nll(mu: torch.Tensor, log_sigma: torch.Tensor, target: torch.Tensor,
                    noise: torch.Tensor, beta: float) -> torch.Tensor:
    """Gaussian beta-NLL with the label's own uncertainty ``noise`` (same standardised units)
    added in quadrature; mean over the finite targets."""
    valid = torch.isfinite(target)
    if not bool(valid.any()):
        return mu.sum() * 0.0
    y = torch.where(valid, target, mu.detach())
    var = torch.exp(2.0 * log_sigma) + noise.square()
    nll = 0.5 * (y - mu).square() / var + 0.5 * torch.log(var)
    if beta:
        nll = nll * var.detach().pow(beta)
    return (nll * valid).sum() / valid.sum()


def _views(modality: str, x: torch.Tensor, w: torch.Tensor, gen: torch.Generator,
           cfg: AugmentConfig = AugmentConfig()
           ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """View A with the training augmentations (what the cross-modal, reconstruction and
    head terms see, as in ``train``) and view B with the stronger nuisances of the optional
    real-view term. View B is drawn even when that term is off, so that the random stream,
    and with it the shipped model, stays what the documented command reproduces."""
    return (augment(modality, x, w, cfg, gen),
            augment(modality, x, w, VIEW_AUGMENT, gen))


def _views_for_teacher(modality: str, x: torch.Tensor, w: torch.Tensor, gen: torch.Generator,
                       cfg: AugmentConfig, uncut_teacher: bool):
    """:func:`_views` plus the view the distillation teacher reads: view A itself, or with
    ``uncut_teacher`` (a teacher and a red cut) view A before its red cut, so that
    distillation holds the heads where the starting model puts whole spectra and leaves
    the cut ones free to move where the labels (and the clean anchor) want them.
    Returns (view A, view B, teacher's view)."""
    if not uncut_teacher:
        a, b = _views(modality, x, w, gen, cfg)
        return a, b, a
    whole, b = _views(modality, x, w, gen, dataclasses.replace(cfg, p_red_cut=0.0))
    return red_cut_view(modality, *whole, cfg, gen), b, whole


def step_loss(net: SpecCLIPNet, loss_fn: SpecCLIPLoss, data: FinetuneData, cfg: FinetuneConfig,
               rng: np.random.Generator, gen: torch.Generator, view_scale: torch.Tensor,
               device: torch.device, adversary: SnrAdversary | None = None,
               teacher: SpecCLIPNet | None = None
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one step (see :mod:`specsearch.model.training.finetune`) and its terms as
    floats."""
    mods = net.cfg.modalities
    label_mean, label_std = net.label_mean, net.label_std
    # --- synthetic pairs: the usual objective on view A
    if data.neighbours is not None:
        pos = sample_batch(rng, data.train_pos, data.neighbours, data.cache.index["source_id"],
                           cfg.synth_batch, cfg.hard_negatives, cfg.hard_group)
    else:
        pos = np.sort(data.train_pos[sample_rows(rng, data.train_pos.size, cfg.synth_batch)])
    tb = to_device(data.cache.load(pos), device)
    targets = {m: (tb["x"][m], tb["w"][m]) for m in mods}
    va, vb, ta = {}, {}, {}     # ta: the synthetic views the teacher reads
    uncut = teacher is not None and cfg.distill_synthetic and bool(cfg.augment.p_red_cut)
    for m in mods:
        va[m], vb[m], ta[m] = _views_for_teacher(m, *targets[m], gen, cfg.augment, uncut)
    outs = {m: net.forward_outputs(m, *va[m], decode=True) for m in mods}
    y = (tb["labels"] - label_mean) / label_std
    terms = loss_fn(outs, targets, net.logit_scale, labels=y, classes=tb["classes"],
                    source_id=tb["source_id"])
    parts = dict(terms.parts)
    total = terms.total
    # --- real LAMOST: labels with their noise, and views
    rt = data.real_train
    ri = sample_rows(rng, rt.x.shape[0], cfg.real_batch, data.real_p)
    rx, rw = torch.from_numpy(rt.x[ri]).to(device), torch.from_numpy(rt.w[ri]).to(device)
    real_aug = (dataclasses.replace(cfg.augment, p_red_cut=cfg.real_red_cut)
                if cfg.real_red_cut else cfg.augment)
    (rxa, rwa), (rxb, rwb), (tx, tw) = _views_for_teacher(
        "lamost", rx, rw, gen, real_aug, teacher is not None and bool(real_aug.p_red_cut))
    r_out = net.forward_outputs("lamost", rxa, rwa, decode=False)
    ry = (torch.from_numpy(rt.labels[ri]).to(device) - label_mean) / label_std
    rn = torch.from_numpy(rt.label_noise[ri]).to(device) / label_std
    r_mu = r_out.label_mu
    if data.offsets is not None:        # catalogue labels = the heads' scale + offset
        r_mu = r_mu + catalogue_shift(data, ri, device, r_mu)
    real_nll = cfg.real_labels * noisy_label_nll(r_mu, r_out.label_log_sigma,
                                                 ry, rn, cfg.loss.nll_beta)
    parts["real_labels"] = float(real_nll.detach())
    total = total + real_nll
    if teacher is not None:
        # the starting model's head predictions on the same real (and, with
        # distill_synthetic, synthetic) views: what the other terms may not move
        # (standardised label units)
        pairs = [(r_out.label_mu, "lamost", tx, tw)]
        if cfg.distill_synthetic:
            pairs += [(outs[m].label_mu, m, *ta[m]) for m in mods]
        with torch.no_grad():
            t_mu = [teacher.forward_outputs(m, x, w, decode=False).label_mu
                    for _, m, x, w in pairs]
        distill = sum((mu - t).square().mean() for (mu, *_), t in zip(pairs, t_mu)) / len(pairs)
        parts["head_distill"] = float(distill.detach())
        total = total + cfg.head_distill * distill
    if cfg.clean_anchor:
        anchored = [m for m in mods if m in cfg.anchor_modalities]
        total = total + cfg.clean_anchor * _anchor(
            net, cfg, gen, parts, [(m, *targets[m]) for m in anchored]
            + ([("lamost", rx, rw)] if "lamost" in anchored and cfg.anchor_real else []))
    if cfg.heads_only or not (cfg.identity or cfg.snr_slope):
        return total, parts
    # --- identity: the synthetic stars' independent second visits (see training.identity)
    ident = slope = critic = total * 0.0
    second = second_visits(data.cache, data.partner, pos, device)
    if second is not None:
        ident, slope, critic = identity_terms(net, outs, second, tb["source_id"],
                                              augment_cfg=cfg.augment,
                                              temperature=cfg.identity_temperature, gen=gen,
                                              adversary=adversary,
                                              adversary_scale=cfg.snr_adversary)
    if cfg.real_views:      # optional: two views of one real spectrum (they share its noise)
        total = total + cfg.real_views * _real_views(net, data, cfg, rng, gen, view_scale,
                                                     device, tb, outs, vb, r_out,
                                                     ((rxb, rwb), ri), parts)
    parts["identity"] = float(ident.detach())
    parts["snr_slope"] = float(slope.detach())
    if adversary is not None:
        # the critic's own loss at full weight; the encoders see it reversed (identity.py)
        parts["snr_critic"] = float(critic.detach())
        total = total + critic
    return total + cfg.identity * ident + cfg.snr_slope * slope, parts


def _anchor(net: SpecCLIPNet, cfg: FinetuneConfig, gen: torch.Generator,
            parts: dict[str, float], batches: list[tuple[str, torch.Tensor, torch.Tensor]]
            ) -> torch.Tensor:
    """The clean-anchor term (see ``clean_anchor_loss``) averaged over ``batches`` of
    (modality, un-augmented flux, weight)."""
    terms = [t for m, x, w in batches
             if (t := clean_anchor_loss(net, m, x, w, augment_cfg=cfg.augment,
                                        min_snr=cfg.anchor_min_snr,
                                        snr_floor=cfg.anchor_snr_floor, gen=gen)) is not None]
    if not terms:
        return torch.zeros((), device=batches[0][1].device)
    loss = sum(terms) / len(terms)
    parts["clean_anchor"] = float(loss.detach())
    return loss


def _real_views(net: SpecCLIPNet, data: FinetuneData, cfg: FinetuneConfig, rng: np.random.Generator,
                gen: torch.Generator, view_scale: torch.Tensor, device: torch.device,
                tb: dict, outs: dict, vb: dict, r_out: Any, real_b: tuple,
                parts: dict[str, float]) -> torch.Tensor:
    """Two views of each real (and synthetic) spectrum must find each other, per modality
    (the real spectra's self-supervised term; off by default, see ``real_views``)."""
    (rxb, rwb), ri = real_b
    rt = data.real_train
    sid_l = torch.cat([tb["source_id"], torch.from_numpy(rt.star_id[ri])])
    ea = torch.cat([outs["lamost"].embedding, r_out.embedding])
    qa = torch.cat([outs["lamost"].quality, r_out.quality])
    eb, qb = (torch.cat(t) for t in zip(net.encode_with_quality("lamost", *vb["lamost"]),
                                         net.encode_with_quality("lamost", rxb, rwb)))
    loss, _ = identity_loss(ea, eb, qa, qb, view_scale, sid_l)
    xt = data.xp_train
    if xt is not None and "xp" in net.cfg.modalities:
        xi = sample_rows(rng, xt.x.shape[0], cfg.xp_batch)
        xx, xw = torch.from_numpy(xt.x[xi]).to(device), torch.from_numpy(xt.w[xi]).to(device)
        (xxa, xwa), (xxb, xwb) = _views("xp", xx, xw, gen, cfg.augment)
        sid_x = torch.cat([tb["source_id"], torch.from_numpy(xt.star_id[xi])])
        ea_x, qa_x = (torch.cat(t) for t in zip((outs["xp"].embedding, outs["xp"].quality),
                                                 net.encode_with_quality("xp", xxa, xwa)))
        eb_x, qb_x = (torch.cat(t) for t in zip(net.encode_with_quality("xp", *vb["xp"]),
                                                 net.encode_with_quality("xp", xxb, xwb)))
        loss = 0.5 * (loss + identity_loss(ea_x, eb_x, qa_x, qb_x, view_scale, sid_x)[0])
    parts["real_views"] = float(loss.detach())
    return loss
