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
the noise level (:func:`specsearch.model.conversions.make_noise_blind`) and fine-tuning adapts
them; with ``clean_anchor`` a noisier copy of each clean spectrum must embed where the clean
one does (:func:`specsearch.model.training.identity.clean_anchor_loss`).

After training, the heads are calibrated twice: ``sigma_scale`` on synthetic validation
pairs (as ``train`` does) and then a real-data scale and ``sigma_floor`` (the
model-versus-reality term) on the ``cal`` split of the real labelled stars, so that z-scores
on held-out real stars have unit width in each calibration group at once (LAMOST at
S/N >= 30 and below, hot LAMOST stars, MILES). The ``test`` split is never read here.

The data a run reads are prepared in :mod:`specsearch.model.training.finetune_data`, and the
loss of one step is computed in :mod:`specsearch.model.training.finetune_loss`.
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

from specsearch.model.training.configs import FinetuneConfig
from specsearch.errors import ConfigError
from specsearch.fsutil import write_json_atomic
from specsearch.model.api import SpecModel, load_model, resolve_device
from specsearch.model.training.calibrate import calibrate, calibrate_real_floor
from specsearch.model.checkpoint import save_model_dir
from specsearch.model.training.finetune_data import prepare_data
from specsearch.model.training.finetune_loss import step_loss
from specsearch.model.training.identity import SnrAdversary
from specsearch.model.training.loss import SpecCLIPLoss
from specsearch.model.conversions import (add_coverage_inputs, add_sed_inputs, has_sed_inputs,
                                          make_noise_blind, set_head_fill)
from specsearch.model.network import SpecCLIPNet

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


def _lr(step: int, total: int, warmup: int = 50) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))


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
    data = prepare_data(net, training, catalog, real_data, cfg, cache_root, real_cache,
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
        total, parts = step_loss(net, loss_fn, data, cfg, rng, gen, view_scale, device,
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
