"""``specsearch finetune``: adapt a trained model to real spectra and train it for identity.

Starting from a model trained on the synthetic survey (``specsearch train``), each step
combines three batches:

* synthetic pairs (the training catalog): the usual objective (cross-modal InfoNCE,
  reconstruction, translation, heads, classes) on one augmented view of each spectrum;
* real LAMOST-grid spectra (the ``train`` split of LAMOST DR10/DR1 and MILES, by star, see
  :mod:`specsearch.model.training.real_sets`): the LAMOST head learns their catalogue
  labels with the labels' own uncertainty added in quadrature in the likelihood;
* real Gaia XP spectra (the ``train`` split of the real sky patch), unlabelled, for the
  optional real-view term (``real_views``);

and the *identity* term of ``train`` (:mod:`specsearch.model.training.identity`): the
synthetic stars' independent second visits must find their first visits among the batch's
views (NT-Xent at a fixed temperature), and the embedding must not move with S/N between
them. The optional real-view term asks the same of two augmented views of one real
spectrum; those share the spectrum's noise, which an encoder can learn to match instead of
the star, so it is off by default.

With ``noise_blind`` (the shipped recipe) the base model's encoders are first made blind to
the noise level (:func:`specsearch.model.network.make_noise_blind`) and fine-tuning adapts
them; with ``clean_anchor`` a noisier copy of each clean spectrum must embed where the clean
one does (:func:`specsearch.model.training.identity.clean_anchor_loss`).

After training, the heads are calibrated twice: ``sigma_scale`` on synthetic validation
pairs (as ``train`` does) and then a real-data scale and ``sigma_floor`` (the
model-versus-reality term) on the ``cal`` split of the real labelled stars, so that z-scores
on held-out real stars have unit width in each calibration group at once (LAMOST at
S/N >= 30 and below, hot LAMOST stars, MILES). The ``test`` split is never read here.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specsearch.model.training.configs import VIEW_AUGMENT, FinetuneConfig
from specsearch.errors import ConfigError
from specsearch.fsutil import write_json_atomic
from specsearch.model.api import SpecModel, load_model, resolve_device
from specsearch.model.training.augment import AugmentConfig, augment, red_cut_view
from specsearch.model.training.cache import model_cache
from specsearch.model.training.calibrate import calibrate, calibrate_real_floor, to_device
from specsearch.model.checkpoint import save_model_dir
from specsearch.model.training.data import other_visit
from specsearch.model.training.hard_negatives import label_neighbours, sample_batch
from specsearch.model.training.identity import (SnrAdversary, clean_anchor_loss,
                                                 identity_terms, second_visits)
from specsearch.model.training.loss import SpecCLIPLoss, identity_loss
from specsearch.model.network import (SpecCLIPNet, add_coverage_inputs,
                                      add_population_classes, add_sed_inputs,
                                      has_sed_inputs, make_noise_blind, set_head_fill)
from specsearch.model.training.real_sets import PreparedReal, RealSet, load_all, prepare_real

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    out: str
    model_hash: str
    steps: int
    seconds: float
    n_real_train: dict[str, int]
    sigma_floor: dict[str, dict[str, float]]
    real_z_width_cal: dict[str, float]
    history: list[dict[str, float]]


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


def _lr(step: int, total: int, warmup: int = 50) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))


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



def open_base(model_path: str | Path, out: Path, *, device: str, seed: int,
              overwrite: bool) -> tuple[SpecModel, torch.device]:
    """(the starting model on ``device``, the device) for a stage that writes a new model
    into ``out`` (refused when ``out`` already holds one, unless ``overwrite``); seeds torch."""
    if (out / "config.json").exists() and not overwrite:
        raise ConfigError(f"{out} already holds a model; pass --overwrite or choose another "
                          f"--out")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    return load_model(model_path, device=dev), dev

def finetune(model_path: str | Path, catalog: str | Path, real_data: str | Path,
             out: str | Path, cfg: FinetuneConfig = FinetuneConfig(), **kwargs: Any
             ) -> FinetuneResult:
    """Fine-tune ``model_path`` (see :func:`_finetune` for the arguments).

    Denormal floats are flushed to zero while it runs (small gradients of fine-tuned layers
    become denormal and are ~100x slower on a CPU) and the process-wide setting is restored
    afterwards (other code, e.g. hypothesis, relies on IEEE subnormals).
    """
    torch.set_flush_denormal(True)
    try:
        return _finetune(model_path, catalog, real_data, out, cfg, **kwargs)
    finally:
        torch.set_flush_denormal(False)


@dataclass
class _Data:
    """Everything a fine-tuning run reads: synthetic pairs and the prepared real spectra."""

    cache: Any
    train_pos: np.ndarray
    val_pos: np.ndarray
    fingerprint: str
    used: list[RealSet]
    real_train: PreparedReal
    real_p: np.ndarray | None
    real_cal: PreparedReal
    xp_train: PreparedReal | None
    partner: np.ndarray | None = None
    offsets: torch.nn.Parameter | None = None
    """(len(catalogue_offsets), L) learnt catalogue offsets (standardised units)."""
    offset_rows: np.ndarray | None = None
    """(len(real_train),) row of ``offsets`` each real training spectrum's labels take
    (-1: none); ``offset_rows_cal`` the same for ``real_cal``."""
    offset_rows_cal: np.ndarray | None = None
    neighbours: np.ndarray | None = None
    """(len(train_pos), hard_group - 1) look-alikes of each training row, with
    ``hard_negatives``."""


def _prepare_data(net: SpecCLIPNet, training: dict[str, Any], catalog: str | Path,
                  real_data: str | Path, cfg: FinetuneConfig, cache_root: Path,
                  real_cache: str | Path | None, progress: bool) -> _Data:
    names = list(net.cfg.label_names)
    cache, fingerprint = model_cache(catalog, cache_root, label_names=names,
                                     class_names=list(net.cfg.class_names),
                                     training=training, progress=progress,
                                     new_classes=cfg.new_classes)
    if list(cache.meta["class_names"]) != list(net.cfg.class_names):   # only with new_classes
        add_population_classes(net, cache.meta["class_names"])
    val_pos = cache.positions("val")
    val_pos = np.sort(np.random.default_rng(0).permutation(val_pos)[:4096])
    real = Path(real_data)
    all_sets = load_all(real, real_cache)
    used = [all_sets[k] for k in cfg.real_sets if k in all_sets]
    weights = tuple(w for k, w in zip(cfg.real_sets, cfg.real_set_weights) if k in all_sets)
    if not used:
        raise ConfigError(f"{real}: none of the real sets {list(cfg.real_sets)} found; "
                          f"expected the layout of the shared real-data folder")
    r_train = prepare_real(used, names, "train", hot_noise=dict(cfg.hot_label_noise) or None)
    xp_set = all_sets.get("xp_patch")
    train_pos = cache.positions("train")
    partner = other_visit(cache.index["source_id"], train_pos, len(cache))
    neighbours = None
    if not (0.0 <= cfg.hard_negatives <= 1.0 and cfg.hard_group >= 2):
        raise ConfigError(f"hard_negatives must be in [0, 1] and hard_group >= 2; got "
                          f"{cfg.hard_negatives} and {cfg.hard_group}")
    if cfg.hard_negatives > 0:
        neighbours = label_neighbours(cache.labels, names, net.label_std.cpu().numpy(),
                                      train_pos, cache.index["source_id"], cfg.hard_group - 1)
    r_cal = prepare_real(used, names, "cal")
    offsets = rows = rows_cal = None
    if cfg.catalogue_offsets:
        missing = sorted(set(cfg.catalogue_offsets) - {s.name for s in used})
        if missing:
            raise ConfigError(f"catalogue_offsets names {missing}, which {real} does not "
                              f"hold (found {[s.name for s in used]})")
        # row of the offsets table per used set (-1: the set keeps the heads' scale)
        of_set = np.array([cfg.catalogue_offsets.index(s.name) if s.name in
                           cfg.catalogue_offsets else -1 for s in used], np.int64)
        rows, rows_cal = of_set[r_train.set_index], of_set[r_cal.set_index]
        offsets = torch.nn.Parameter(torch.zeros(len(cfg.catalogue_offsets), len(names)))
    return _Data(neighbours=neighbours, cache=cache, train_pos=train_pos, val_pos=val_pos,
                 partner=partner if (partner >= 0).any() else None,
                 fingerprint=fingerprint, used=used, real_train=r_train,
                 real_p=r_train.sampling_p(weights if len(weights) == len(used) else None),
                 real_cal=r_cal, offsets=offsets, offset_rows=rows, offset_rows_cal=rows_cal,
                 xp_train=prepare_real([xp_set], [], "train") if xp_set is not None else None)


def _catalogue_shift(data: _Data, rows: np.ndarray, device: torch.device,
                     like: torch.Tensor) -> torch.Tensor:
    """(len(rows), L) the learnt catalogue offset of each real training row (0 where its
    set keeps the heads' scale), standardised units."""
    k = torch.from_numpy(data.offset_rows[rows]).to(device)
    return torch.where((k >= 0)[:, None], data.offsets.to(device)[k.clamp_min(0)],
                       torch.zeros_like(like))


def _rows(rng: np.random.Generator, n: int, k: int, p: np.ndarray | None = None
          ) -> np.ndarray:
    """k row indices out of n (with replacement when weighted or when n < k)."""
    return rng.choice(n, k, p=p, replace=p is not None or n < k)


def _step_loss(net: SpecCLIPNet, loss_fn: SpecCLIPLoss, data: _Data, cfg: FinetuneConfig,
               rng: np.random.Generator, gen: torch.Generator, view_scale: torch.Tensor,
               device: torch.device, adversary: SnrAdversary | None = None,
               teacher: SpecCLIPNet | None = None
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one step (see the module docstring) and its terms as floats."""
    mods = net.cfg.modalities
    label_mean, label_std = net.label_mean, net.label_std
    # --- synthetic pairs: the usual objective on view A
    if data.neighbours is not None:
        pos = sample_batch(rng, data.train_pos, data.neighbours, data.cache.index["source_id"],
                           cfg.synth_batch, cfg.hard_negatives, cfg.hard_group)
    else:
        pos = np.sort(data.train_pos[_rows(rng, data.train_pos.size, cfg.synth_batch)])
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
    ri = _rows(rng, rt.x.shape[0], cfg.real_batch, data.real_p)
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
        r_mu = r_mu + _catalogue_shift(data, ri, device, r_mu)
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


def _real_views(net: SpecCLIPNet, data: _Data, cfg: FinetuneConfig, rng: np.random.Generator,
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
        xi = _rows(rng, xt.x.shape[0], cfg.xp_batch)
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


def _teacher_from(path: str | Path, net: SpecCLIPNet, device: torch.device
                  ) -> tuple[SpecCLIPNet, str]:
    """Another model as the distillation teacher, checked to read the student's inputs:
    the same modalities, labels, label standardisation and per-pixel input normalisation
    (models fine-tuned from one base share them)."""
    teacher = load_model(path, device=device)
    tnet = teacher.net
    if tuple(tnet.cfg.label_names) != tuple(net.cfg.label_names) or \
            tuple(tnet.cfg.modalities) != tuple(net.cfg.modalities):
        raise ConfigError(f"teacher {path} predicts {list(tnet.cfg.label_names)} from "
                          f"{list(tnet.cfg.modalities)}; the model being fine-tuned predicts "
                          f"{list(net.cfg.label_names)} from {list(net.cfg.modalities)}")
    buffers = {"label_mean": (tnet.label_mean, net.label_mean),
               "label_std": (tnet.label_std, net.label_std)}
    for m in net.cfg.modalities:
        for b in ("mean", "std"):
            buffers[f"normalisers.{m}.{b}"] = (getattr(tnet.normalisers[m], b),
                                               getattr(net.normalisers[m], b))
    for name, (a, b) in buffers.items():
        if a.shape != b.shape or not torch.allclose(a.to(b.device), b, rtol=1e-5, atol=1e-6):
            raise ConfigError(f"teacher {path} prepares its inputs differently ({name} "
                              f"differs): a teacher must share the fine-tuned model's base")
    return tnet, teacher.model_hash


def _optimiser(net: torch.nn.Module, cfg: FinetuneConfig,
               extra: torch.nn.Parameter | None = None):
    """AdamW (no weight decay on biases and norms) with the warm-up + cosine schedule; the
    SED input weights (new, zero-initialised, see ``sed_inputs``) at ``sed_lr_factor``
    times the learning rate; ``extra`` (the catalogue offsets) without weight decay."""
    sed = {id(p) for n, p in net.named_parameters() if ".inp_sed." in f".{n}"}
    params = [p for p in net.parameters() if p.requires_grad and id(p) not in sed]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    new = [p for p in net.parameters() if p.requires_grad and id(p) in sed]
    if new:
        groups.append({"params": new, "weight_decay": cfg.weight_decay,
                       "lr": cfg.lr * cfg.sed_lr_factor})
    if extra is not None:
        groups.append({"params": [extra], "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr(s, cfg.steps))


def _finetune(model_path: str | Path, catalog: str | Path, real_data: str | Path,
              out: str | Path, cfg: FinetuneConfig = FinetuneConfig(), *,
              progress: bool = True, overwrite: bool = False, command: str = "",
              real_cache: str | Path | None = None,
              cache_dir: str | Path | None = None,
              teacher_model: str | Path | None = None) -> FinetuneResult:
    """Fine-tune ``model_path`` on the synthetic ``catalog`` plus the real spectra under
    ``real_data``; write the calibrated model to ``out`` (see the module docstring).

    ``cache_dir`` keeps the prepared synthetic pairs for later runs (default: OUT/cache,
    removed at the end); ``real_cache`` an ``.npz`` of the real sets (read once).
    ``teacher_model``: the model whose head predictions ``cfg.head_distill`` holds the
    student to (default: a frozen copy of ``model_path``); it must read the same prepared
    inputs and predict the same labels on the same scale (:func:`_teacher_from`).
    """
    from tqdm.auto import tqdm

    t0 = time.time()
    out = Path(out)
    base, device = open_base(model_path, out, device=cfg.device, seed=cfg.seed,
                             overwrite=overwrite)
    net = base.net
    unknown = sorted({k for k, _ in cfg.hot_label_noise} - set(net.cfg.label_names))
    if unknown:
        raise ConfigError(f"hot_label_noise names {unknown}, which {model_path} does not "
                          f"predict; its labels are {list(net.cfg.label_names)}")
    if cfg.noise_blind is not None:
        make_noise_blind(net, cfg.noise_blind)
    if cfg.sed_inputs:
        add_sed_inputs(net)
    if cfg.coverage_bins:
        add_coverage_inputs(net, cfg.coverage_bins)
    if cfg.head_fill_a:
        set_head_fill(net, "lamost", cfg.head_fill_a, cfg.head_fill_rounds)
    if has_sed_inputs(net.cfg):     # the SED flux-calibration augmentation
        cfg = dataclasses.replace(cfg, augment=dataclasses.replace(
            cfg.augment, p_sed_tilt=cfg.sed_tilt_p))
    # the distillation teacher (checked before any data is read)
    if teacher_model is not None and not cfg.head_distill:
        raise ConfigError("a teacher model is only read by head_distill; set it > 0")
    teacher, teacher_hash = None, None
    if cfg.head_distill:
        if teacher_model is None:
            teacher, teacher_hash = copy.deepcopy(net), base.model_hash
        else:
            teacher, teacher_hash = _teacher_from(teacher_model, net, device)
        teacher = teacher.to(device).eval()
        teacher.requires_grad_(False)
    training = dict(base.full_config.get("training", {}))
    if "finetune" in training:      # the base was fine-tuned itself: keep that record
        training["finetune_stages"] = [*training.get("finetune_stages", []),
                                       training.pop("finetune")]
    cache_root = Path(cache_dir) if cache_dir is not None else out / "cache"
    data = _prepare_data(net, training, catalog, real_data, cfg, cache_root, real_cache,
                         progress)
    net.to(device).train()
    if cfg.heads_only:      # frozen encoders (eval mode: the embedding inference sees)
        net.eval().requires_grad_(False)
        net.heads.train().requires_grad_(True)
    loss_fn = SpecCLIPLoss(cfg.loss)
    opt, sched = _optimiser(net, cfg, data.offsets)
    adversary, adv_opt = None, None
    if cfg.snr_adversary:
        adversary = SnrAdversary(net.cfg.modalities, net.cfg.embedding_dim).to(device)
        adv_opt = torch.optim.Adam(adversary.parameters(), lr=1e-3)
    view_scale = torch.tensor(math.log(1.0 / cfg.identity_temperature))
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    sums: dict[str, float] = {}
    n_acc = 0
    bar = tqdm(total=cfg.steps, desc="finetune", unit="step", disable=not progress)
    for step in range(cfg.steps):
        total, parts = _step_loss(net, loss_fn, data, cfg, rng, gen, view_scale, device,
                                  adversary, teacher)
        opt.zero_grad(set_to_none=True)
        if adv_opt is not None:
            adv_opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        if adv_opt is not None:
            adv_opt.step()
        sched.step()
        n_acc += 1
        for k, v in {**parts, "total": float(total.detach())}.items():
            sums[k] = sums.get(k, 0.0) + v
        bar.update(1)
        if (step + 1) % 100 == 0 or step + 1 == cfg.steps:
            history.append({"step": step + 1, "lr": opt.param_groups[0]["lr"],
                            "elapsed_seconds": time.time() - t0,
                            **{k: v / n_acc for k, v in sums.items()}})
            sums, n_acc = {}, 0
            bar.set_postfix(loss=f"{history[-1]['total']:.3f}")
            if not progress and (step + 1) % 500 == 0:
                log.info("finetune step %d/%d: loss %.3f (%.0f s)", step + 1, cfg.steps,
                         history[-1]["total"], history[-1]["elapsed_seconds"])
    bar.close()
    net.eval()
    report = calibrate(net, data.cache, data.val_pos, device)
    cal_labels, offsets = data.real_cal.labels, {}
    if data.offsets is not None:        # the catalogues' labels on the heads' scale
        phys = (data.offsets.detach().cpu() * net.label_std.cpu()).numpy()
        offsets = {name: dict(zip(net.cfg.label_names, map(float, phys[i])))
                   for i, name in enumerate(cfg.catalogue_offsets)}
        k = data.offset_rows_cal
        cal_labels = cal_labels - np.where((k >= 0)[:, None], phys[np.maximum(k, 0)], 0.0)
    floors, scales, widths = calibrate_real_floor(net, data.real_cal.x, data.real_cal.w,
                                                 cal_labels, data.real_cal.group)
    seconds = time.time() - t0
    n_real = {s.name: int(s.in_split("train").sum()) for s in data.used}
    digest = save_model_dir(out, net, net.cfg, training={
        **training, "finetune": {
            "command": command, "base_model": str(model_path), "base_hash": base.model_hash,
            "teacher_hash": teacher_hash,
            "catalog_fingerprint": data.fingerprint, "config": cfg.to_dict(),
            "real_train": n_real,
            "real_cal": {s.name: int(s.in_split("cal").sum()) for s in data.used},
            "xp_patch_train": 0 if data.xp_train is None else int(data.xp_train.x.shape[0]),
            "seconds": seconds, "sigma_floor": floors, "real_sigma_scale": scales,
            "real_z_width_cal": widths, "catalogue_offsets": offsets,
            "history_last": history[-1] if history else {}},
        "calibration": dataclasses.asdict(report), "calibrated": True})
    write_json_atomic(out / "finetune_log.json", history)
    if cache_dir is None:
        shutil.rmtree(cache_root, ignore_errors=True)
    return FinetuneResult(out=str(out), model_hash=digest, steps=cfg.steps, seconds=seconds,
                          n_real_train=n_real, sigma_floor={"lamost": floors},
                          real_z_width_cal=widths, history=history)
