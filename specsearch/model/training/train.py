"""``specsearch train``: the trainer (knows the loss and the data, not the model's insides).

A run writes into OUT/: ``config.json`` + ``model.safetensors`` (the best model so far,
always a loadable model directory; calibrated at the end), ``checkpoint-last/`` (weights,
optimizer state and ``state.json`` after every epoch: ``--resume`` continues from it after
an interruption, reproducibly since every epoch's randomness is seeded by (seed, epoch)),
``train_log.csv`` / ``train_log.json`` (losses per epoch) and, while it runs, ``cache/``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from specsearch.model.training.configs import TrainConfig
from specsearch.errors import ConfigError
from specsearch.fsutil import write_bytes_atomic, write_json_atomic
from specsearch.model.api import resolve_device
from specsearch.model.training.augment import augment
from specsearch.model.training.cache import PairCache, pixel_statistics
from specsearch.model.training.calibrate import CalibrationReport, calibrate, iterate, to_device
from specsearch.model.checkpoint import (optimizer_from_tensors, optimizer_to_tensors,
                                         read_model_dir, save_model_dir, save_tensors_atomic)
from specsearch.model.config import model_config
from specsearch.model.training.data import other_visit
from specsearch.model.training.identity import identity_terms, second_visits
from specsearch.model.training.pairs import PreparedPairs, prepare_pairs
from specsearch.model.training.loss import SpecCLIPLoss
from specsearch.model.conversions import noise_blind_config, sed_inputs_config
from specsearch.model.network import SpecCLIPNet


@dataclass
class TrainResult:
    """What a training run produced."""

    out: str
    model_hash: str
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    stopped: str
    seconds: float
    n_train: int
    n_val: int
    label_names: list[str]
    class_names: list[str]
    calibration: CalibrationReport
    history: list[dict[str, float]]


def autocast_context(device: torch.device, amp: str):
    use = (amp == "bf16") or (amp == "auto" and device.type == "cuda")
    if amp not in ("auto", "bf16", "off"):
        raise ConfigError(f"amp must be auto, bf16 or off; got {amp!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use)


def param_groups(net: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        (decay if p.ndim >= 2 and "pos" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))
    return f


def init_constants(net: SpecCLIPNet, cache: PairCache, train_pos: np.ndarray,
                   seed: int) -> None:
    """Input statistics and label scaling from (a subset of) the training pairs."""
    rng = np.random.default_rng(seed)
    sub = np.sort(rng.permutation(train_pos)[:50_000])
    for m in net.cfg.modalities:
        stats = pixel_statistics(cache, sub, m)
        npix = net.cfg.encoders[m].npix     # the SED columns are not normalised per pixel
        for k, v in stats.items():
            getattr(net.normalisers[m], k).copy_(torch.from_numpy(v[:npix]))
    labels = cache.labels[train_pos]
    if labels.shape[1]:
        with np.errstate(all="ignore"):
            mean = np.nanmean(labels, axis=0)
            std = np.nanstd(labels, axis=0)
        net.label_mean.copy_(torch.from_numpy(np.nan_to_num(mean).astype(np.float32)))
        net.label_std.copy_(torch.from_numpy(np.where(np.isfinite(std) & (std > 0), std, 1.0)
                                             .astype(np.float32)))


@torch.no_grad()
def validate(net: SpecCLIPNet, loss_fn: SpecCLIPLoss, cache: PairCache, pos: np.ndarray,
             device: torch.device, amp: str) -> dict[str, float]:
    """Validation loss terms (un-augmented inputs) and in-set retrieval top-1."""
    net.eval()
    sums: dict[str, float] = {}
    n = 0
    embs: dict[str, list[torch.Tensor]] = {m: [] for m in net.cfg.modalities}
    for batch, tb in iterate(cache, pos, device, batch_size=1024):
        with autocast_context(device, amp):
            outs = {m: net.forward_outputs(m, tb["x"][m], tb["w"][m], decode=True)
                    for m in net.cfg.modalities}
        y = (tb["labels"] - net.label_mean) / net.label_std
        terms = loss_fn(outs, {m: (tb["x"][m], tb["w"][m]) for m in outs}, net.logit_scale,
                        labels=y, classes=tb["classes"], source_id=tb["source_id"])
        k = len(batch.source_id)
        for name, v in terms.parts.items():
            sums[name] = sums.get(name, 0.0) + v * k
        sums["total"] = sums.get("total", 0.0) + float(terms.total.detach()) * k
        n += k
        for m in outs:
            embs[m].append(outs[m].embedding.float())
    result = {f"val_{k}": v / max(n, 1) for k, v in sums.items()}
    if len(embs) == 2:
        a, b = (torch.cat(embs[m]) for m in net.cfg.modalities)
        sim = a @ b.T
        target = torch.arange(sim.shape[0], device=sim.device)
        result["val_top1_l2x"] = float((sim.argmax(1) == target).float().mean())
        result["val_top1_x2l"] = float((sim.argmax(0) == target).float().mean())
    return result


def _write_log(out: Path, history: list[dict[str, float]]) -> None:
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "epoch", k))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    write_bytes_atomic(out / "train_log.csv", buf.getvalue().encode())
    write_json_atomic(out / "train_log.json", history)


def _resume_state(out: Path, cfg: TrainConfig, resume: bool, overwrite: bool
                  ) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The configuration to run and the saved state of OUT/checkpoint-last (None: fresh)."""
    ckpt = out / "checkpoint-last"
    if resume and (ckpt / "state.json").is_file():
        state = json.loads((ckpt / "state.json").read_text())
        saved = TrainConfig.from_dict(state["train_config"])
        return dataclasses.replace(saved, epochs=max(saved.epochs, cfg.epochs),
                                   max_minutes=cfg.max_minutes), state
    if not overwrite and (ckpt.exists() or (out / "config.json").exists()):
        raise ConfigError(f"{out} already holds a training run; pass --resume to continue "
                          f"it, --overwrite to start again, or choose another --out")
    return cfg, None


@dataclass
class _Run:
    """What a training run carries from epoch to epoch."""

    net: SpecCLIPNet
    mcfg: Any
    loss_fn: SpecCLIPLoss
    opt: torch.optim.Optimizer
    sched: Any = None
    step: int = 0
    start_epoch: int = 0
    best: float = math.inf
    best_epoch: int = -1
    bad: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    partner: np.ndarray | None = None
    """Per cache position, another training visit of the same star (-1: none); None
    when the identity objective is off or the catalog has no repeat visits."""


def _start_run(cfg: TrainConfig, data: PreparedPairs, device: torch.device,
               state: dict[str, Any] | None, ckpt: Path) -> _Run:
    """Network, loss, optimiser and schedule, restored from ``state`` when resuming."""
    mcfg = model_config(cfg.arch, embedding_dim=cfg.embedding_dim).with_data(
        label_names=data.labels, class_names=data.classes)
    if cfg.noise_blind is not None:
        mcfg = noise_blind_config(mcfg, cfg.noise_blind)
    if cfg.sed_inputs:
        mcfg = sed_inputs_config(mcfg)
    net = SpecCLIPNet(mcfg)
    init_constants(net, data.cache, data.train_pos, cfg.seed)
    net.to(device)
    opt = torch.optim.AdamW(param_groups(net, cfg.weight_decay), lr=cfg.lr)
    run = _Run(net=net, mcfg=mcfg, loss_fn=SpecCLIPLoss(cfg.loss), opt=opt)
    if state:
        net.load_state_dict(load_file(str(ckpt / "model.safetensors"), device=str(device)))
        opt.load_state_dict(optimizer_from_tensors(
            load_file(str(ckpt / "optimizer.safetensors")), state["optimizer"]))
        run.start_epoch, run.step = state["epoch"] + 1, state["step"]
        run.best, run.best_epoch, run.bad = state["best"], state["best_epoch"], state["bad_epochs"]
        run.history = state["history"]
    steps_per_epoch = max(1, round(data.train_pos.size / cfg.batch_size))
    run.sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(cfg.warmup_steps, cfg.epochs * steps_per_epoch),
        last_epoch=run.step - 1)
    return run


def _train_epoch(run: _Run, data: PreparedPairs, cfg: TrainConfig, epoch: int,
                 device: torch.device, *, progress: bool, crash_at_step: int | None,
                 deadline: float | None) -> tuple[dict[str, float], int, bool]:
    """One pass over the training pairs: (summed loss terms, pairs seen, out of time)."""
    net, cache = run.net, data.cache
    rng = np.random.default_rng([cfg.seed, epoch])
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 100_003 + epoch)
    torch.manual_seed(cfg.seed * 7919 + epoch)
    net.train()
    sums: dict[str, float] = {}
    n_seen = 0
    bar = tqdm(total=data.train_pos.size, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="pair",
               disable=not progress, leave=False)
    out_of_time = False
    for pos in cache.batches(data.train_pos, cfg.batch_size, rng=rng):
        pos = np.sort(pos)                                 # the order cache.load returns
        tb = to_device(cache.load(pos), device)
        targets = {m: (tb["x"][m], tb["w"][m]) for m in run.mcfg.modalities}
        inputs = {m: augment(m, *targets[m], cfg.augment, gen) for m in run.mcfg.modalities}
        with autocast_context(device, cfg.amp):
            outs = {m: net.forward_outputs(m, *inputs[m], decode=True) for m in inputs}
        y = (tb["labels"] - net.label_mean) / net.label_std
        terms = run.loss_fn(outs, targets, net.logit_scale, labels=y, classes=tb["classes"],
                            source_id=tb["source_id"])
        second = second_visits(cache, run.partner, pos, device)
        if second is not None:
            with autocast_context(device, cfg.amp):
                ident, slope, _ = identity_terms(net, outs, second, tb["source_id"],
                                                 augment_cfg=cfg.augment,
                                                 temperature=cfg.identity_temperature,
                                                 gen=gen)
            terms.total = terms.total + cfg.identity * ident + cfg.snr_slope * slope
            terms.parts.update(identity=float(ident.detach()), snr_slope=float(slope.detach()))
        run.opt.zero_grad(set_to_none=True)
        terms.total.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        run.opt.step()
        run.sched.step()
        run.step += 1
        k = len(pos)
        n_seen += k
        for name, v in terms.parts.items():
            sums[name] = sums.get(name, 0.0) + v * k
        sums["total"] = sums.get("total", 0.0) + float(terms.total.detach()) * k
        bar.update(k)
        bar.set_postfix(loss=f"{float(terms.total.detach()):.3f}", T=f"{net.temperature():.3f}")
        if crash_at_step is not None and run.step >= crash_at_step:
            raise RuntimeError(f"injected crash at step {run.step}")
        if deadline is not None and time.time() > deadline:
            out_of_time = True
            break
    bar.close()
    return sums, n_seen, out_of_time


def _end_epoch(run: _Run, row: dict[str, float], epoch: int, out: Path,
               provenance: dict[str, Any], cfg: TrainConfig, fingerprint: str) -> None:
    """Log the epoch, keep the best model, write the resumable checkpoint."""
    run.history.append(row)
    _write_log(out, run.history)
    best = run.best
    if row["val_total"] < best - 1e-4 * abs(best if math.isfinite(best) else 1.0):
        run.best, run.best_epoch, run.bad = row["val_total"], epoch + 1, 0
        save_model_dir(out, run.net, run.mcfg, training={**provenance, "calibrated": False})
    else:
        run.bad += 1
    ckpt = out / "checkpoint-last"
    opt_tensors, skeleton = optimizer_to_tensors(run.opt.state_dict())
    save_tensors_atomic(ckpt / "optimizer.safetensors", opt_tensors)
    save_tensors_atomic(ckpt / "model.safetensors", run.net.state_dict())
    write_json_atomic(ckpt / "state.json", {
        "epoch": epoch, "step": run.step, "best": run.best, "best_epoch": run.best_epoch,
        "bad_epochs": run.bad, "history": run.history, "optimizer": skeleton,
        "train_config": cfg.to_dict(), "fingerprint": fingerprint})


def _finish(run: _Run, data: PreparedPairs, val_pos: np.ndarray, out: Path,
            device: torch.device, provenance: dict[str, Any], stopped: str,
            cfg: TrainConfig, t_start: float) -> TrainResult:
    """Reload the best epoch, calibrate its uncertainties, save the model directory."""
    net = run.net
    _, _, tensors = read_model_dir(out)
    net.load_state_dict({k: v.to(device) for k, v in tensors.items()})
    report = calibrate(net, data.cache, val_pos, device)
    seconds = time.time() - t_start
    history = run.history
    best_row = next((r for r in history if r["epoch"] == run.best_epoch), history[-1])
    digest = save_model_dir(out, net, run.mcfg, training={
        **provenance, "calibrated": True, "epochs_run": len(history),
        "best_epoch": run.best_epoch, "stopped": stopped,
        "val": {k: v for k, v in best_row.items() if k.startswith("val_")},
        "calibration": dataclasses.asdict(report)})
    if not cfg.keep_cache:
        shutil.rmtree(out / "cache", ignore_errors=True)
    return TrainResult(out=str(out), model_hash=digest, epochs_run=len(history),
                       best_epoch=run.best_epoch, best_val_loss=run.best, stopped=stopped,
                       seconds=seconds, n_train=int(data.train_pos.size),
                       n_val=int(val_pos.size), label_names=data.labels,
                       class_names=data.classes, calibration=report, history=history)


def train(catalog: str | Path, out: str | Path, cfg: TrainConfig, *, resume: bool = False,
          overwrite: bool = False, progress: bool = True,
          crash_at_step: int | None = None, command: str = "") -> TrainResult:
    """Train a model on a paired catalog into the directory ``out`` (see module docstring).

    Args:
        resume: continue from OUT/checkpoint-last (its stored configuration is used; a
            larger ``cfg.epochs`` or a new ``cfg.max_minutes`` extend the run).
        overwrite: allow training into a directory that already holds a run.
        crash_at_step: raise RuntimeError after this many optimizer steps (tests of resume).
        command: the command line, recorded in the model's provenance.
    """
    t_start = time.time()
    out = Path(out)
    cfg, state = _resume_state(out, cfg, resume, overwrite)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = prepare_pairs(catalog, out / "cache", labels=cfg.labels,
                         val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                         progress=progress,
                         expect_fingerprint=state["fingerprint"] if state else None)
    val_pos = data.val_pos
    if val_pos.size > cfg.max_val_pairs:
        val_pos = np.sort(np.random.default_rng(0).permutation(val_pos)[:cfg.max_val_pairs])
    run = _start_run(cfg, data, device, state, out / "checkpoint-last")
    if cfg.identity or cfg.snr_slope:
        run.partner = other_visit(data.cache.index["source_id"], data.train_pos,
                                  len(data.cache))
        n_rep = int((run.partner >= 0).sum())
        if progress:
            tqdm.write(f"identity objective: {n_rep:,} of {data.train_pos.size:,} training "
                       f"pairs have another visit of their star"
                       + ("" if n_rep else " (none: make the catalog with "
                          "`specsearch synth --repeat-fraction`)"))
        if not n_rep:
            run.partner = None
    provenance = {"command": command, "catalog_fingerprint": data.fingerprint,
                  "train_config": cfg.to_dict(), "n_train": int(data.train_pos.size),
                  "n_val": int(val_pos.size), "device": str(device),
                  "torch_threads": torch.get_num_threads()}
    deadline = None if cfg.max_minutes is None else t_start + 60 * cfg.max_minutes
    stopped = "epochs done"
    for epoch in range(run.start_epoch, cfg.epochs):
        t_epoch = time.time()
        sums, n_seen, out_of_time = _train_epoch(run, data, cfg, epoch, device,
                                                 progress=progress,
                                                 crash_at_step=crash_at_step,
                                                 deadline=deadline)
        row = {"epoch": epoch + 1, "step": run.step, "lr": run.opt.param_groups[0]["lr"],
               "temperature": run.net.temperature(), "train_pairs": n_seen,
               **{f"train_{k}": v / max(n_seen, 1) for k, v in sums.items()},
               **validate(run.net, run.loss_fn, data.cache, val_pos, device, cfg.amp),
               "epoch_seconds": time.time() - t_epoch,
               "elapsed_seconds": time.time() - t_start}
        _end_epoch(run, row, epoch, out, provenance, cfg, data.fingerprint)
        if progress:
            tqdm.write(f"epoch {epoch + 1}: train {row.get('train_total', float('nan')):.4f} "
                       f"val {row['val_total']:.4f} top1 L->X "
                       f"{row.get('val_top1_l2x', float('nan')):.3f} "
                       f"({row['epoch_seconds']:.0f} s)")
        if out_of_time:
            stopped = "time limit"
            break
        if run.bad >= cfg.patience:
            stopped = "early stopping"
            break
    return _finish(run, data, val_pos, out, device, provenance, stopped, cfg, t_start)
