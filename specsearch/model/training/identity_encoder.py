"""``specsearch train-identity``: teach a trained model to tell a star from its look-alikes.

The shared embedding is trained for several jobs at once (cross-modal alignment with XP,
reconstruction, translation, the heads): it keeps "what kind of star", and a LAMOST visit
finds its own star's other visit among 10,000 for 72% of queries, while searchers that know
the stars' spectra find it for every one (BENCHMARKS.md, "Identity retrieval": the
other-visit ceiling). No linear read-out of the encoder's hidden layers does better than
0.75: its first layer already keeps too little of the star.

So the identity vectors come from an encoder of their own (``ModelConfig.
identity_encoders``), trained here for one job: the two independent visits of a synthetic
star (``specsearch synth --repeat-fraction``; independent noise, S/N, velocity residual,
telluric residual and flux calibration) must find each other among every visit of the
batch (symmetric NT-Xent at a fixed temperature). Each visit also gets the training
augmentations (lower S/N, sub-pixel shifts, masked segments, calibration tilt), and part of
each batch is made of groups of look-alike stars (nearest in standardised labels:
:mod:`specsearch.model.training.hard_negatives`), so that the encoder must learn what tells
neighbours apart, as a search among millions must. The rest of the model is frozen and
unchanged: embeddings, predictions and calibrations stay as they were (the model's hash
changes: it carries more weights).

The validation pairs (the catalog's ``val`` split, the same stars the model never trained
on) give the other-visit top-1 of the identity vectors against the embedding's, in the
training record. What a run trains, and its result, are
:mod:`specsearch.model.training.identity_config`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from specsearch.errors import ConfigError
from specsearch.model.training.finetune import open_base
from specsearch.model.checkpoint import save_model_dir
from specsearch.model.conversions import add_identity_encoder
from specsearch.model.network import SpecCLIPNet
from specsearch.model.training.augment import add_noise_to_snr, augment
from specsearch.model.training.cache import PairCache, model_cache
from specsearch.model.training.data import other_visit
from specsearch.model.training.hard_negatives import label_neighbours
from specsearch.model.training.identity_config import (IdentityTrainConfig,
                                                      IdentityTrainResult)

log = logging.getLogger(__name__)


@dataclass
class _Pairs:
    cache: PairCache
    pos: np.ndarray            # cache positions of training visits that have a partner
    partner: np.ndarray        # (len(cache),) the other visit's position, -1 none
    groups: np.ndarray | None  # (len(pos), hard_group - 1) look-alikes' positions
    val_pos: np.ndarray        # validation visits with a partner
    fingerprint: str
    fit_pos: np.ndarray | None = None   # as many training stars, scored alike at the end


def _pairs(net: SpecCLIPNet, training: dict[str, Any], catalog: str | Path,
           cache_root: Path, cfg: IdentityTrainConfig, progress: bool) -> _Pairs:
    """The model's own training split of ``catalog`` (its pair cache), and the visits in it
    that have another visit of the same star."""
    cache, fingerprint = model_cache(catalog, cache_root,
                                     label_names=list(net.cfg.label_names),
                                     class_names=list(net.cfg.class_names),
                                     training=training, progress=progress)
    sid = cache.index["source_id"]
    train_pos, val_pos = cache.positions("train"), cache.positions("val")
    partner = other_visit(sid, train_pos, len(cache))
    val_partner = other_visit(sid, val_pos, len(cache))
    partner = np.where(partner >= 0, partner, val_partner)
    snr = np.asarray(cache.index[f"snr_{cfg.modality}"], np.float64)
    bright = np.where(partner >= 0, np.minimum(snr, snr[np.maximum(partner, 0)]), 0.0)
    partner = np.where(bright >= cfg.min_snr, partner, -1)
    pos = train_pos[partner[train_pos] >= 0]
    if pos.size < cfg.batch:
        raise ConfigError(f"{catalog}: {pos.size} training visits have another visit of "
                          f"their star (both at S/N >= {cfg.min_snr:g}); the identity encoder "
                          f"needs at least a batch ({cfg.batch}): make the survey with "
                          f"specsearch synth --repeat-fraction 0.5")
    groups = None
    if cfg.hard_fraction > 0:
        groups = label_neighbours(cache.labels, net.cfg.label_names,
                                  net.label_std.cpu().numpy(), pos, sid, cfg.hard_group - 1)
    vpos = val_pos[partner[val_pos] >= 0]
    # one visit per validation star as the query
    _, first = np.unique(sid[vpos], return_index=True)
    vpos = np.sort(np.random.default_rng(0).permutation(vpos[first])[:cfg.val_pairs])
    _, first = np.unique(sid[pos], return_index=True)
    fpos = np.sort(np.random.default_rng(1).permutation(pos[first])[:vpos.size])
    return _Pairs(cache=cache, pos=pos, partner=partner, groups=groups, val_pos=vpos,
                  fingerprint=fingerprint, fit_pos=fpos)


def _batch_positions(data: _Pairs, cfg: IdentityTrainConfig, rng: np.random.Generator
                     ) -> np.ndarray:
    """Positions of one batch's first visits: look-alike groups plus random visits, one
    visit per star."""
    picked = []
    if data.groups is not None:
        n_groups = int(cfg.hard_fraction * cfg.batch) // cfg.hard_group
        seeds = rng.choice(data.pos.size, n_groups, replace=False)
        picked += [data.pos[seeds], data.groups[seeds].ravel()]
    picked.append(data.pos[rng.choice(data.pos.size, cfg.batch, replace=False)])
    pos = np.concatenate(picked)
    sid = data.cache.index["source_id"][pos]
    _, first = np.unique(sid, return_index=True)       # one visit per star, groups first
    return pos[np.sort(first)][:cfg.batch]     # every one has a second visit (data.pos)


def _resample_snr(x: torch.Tensor, w: torch.Tensor, snr: np.ndarray,
                  cfg: IdentityTrainConfig, rng: np.random.Generator, gen: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's S/N lowered to a log-uniform draw between ``cfg.min_snr`` and its own
    (``IdentityTrainConfig.resample_snr``)."""
    own = np.maximum(np.asarray(snr, np.float64), 1e-3)
    low = np.minimum(cfg.min_snr, own) if cfg.min_snr > 0 else own
    target = np.exp(rng.uniform(np.log(low), np.log(own)))
    factor = torch.from_numpy((own / target).astype(np.float32)).to(x.device)
    return add_noise_to_snr(x, w, factor, gen, cfg.modality)


def _load(cache: PairCache, pos: np.ndarray, modality: str, device: torch.device
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(flux, weight) of cache positions ``pos`` in that order."""
    order = np.argsort(pos, kind="stable")
    got = cache.load(pos[order])
    back = np.empty_like(order)
    back[order] = np.arange(order.size)
    x = torch.from_numpy(got.x[modality][back]).to(device)
    w = torch.from_numpy(got.w[modality][back]).to(device)
    return x, w


@torch.no_grad()
def _val_top1(net: SpecCLIPNet, data: _Pairs, modality: str, device: torch.device,
              queries: np.ndarray | None = None) -> dict[str, float]:
    """Other-visit top-1 among the validation stars (or the stars of ``queries``, one
    visit each): identity vectors and embedding."""
    queries = data.val_pos if queries is None else queries
    out: dict[str, list[np.ndarray]] = {}
    for s in range(0, queries.size, 1024):
        pa = queries[s:s + 1024]
        for tag, pos in (("a", pa), ("b", data.partner[pa])):
            x, w = _load(data.cache, pos, modality, device)
            out.setdefault(f"id_{tag}", []).append(net.identity(modality, x, w).cpu().numpy())
            out.setdefault(f"emb_{tag}", []).append(net.encode(modality, x, w).cpu().numpy())
    v = {k: np.concatenate(a) for k, a in out.items()}
    res = {"n": float(queries.size)}
    for kind in ("id", "emb"):
        sim = v[f"{kind}_a"] @ v[f"{kind}_b"].T
        res[f"{'identity' if kind == 'id' else 'embedding'}_top1"] = float(
            np.mean(np.argmax(sim, axis=1) == np.arange(sim.shape[0])))
    return res


class _Memory:
    """A first-in first-out store of past views' vectors and their stars
    (``IdentityTrainConfig.memory``)."""

    def __init__(self, size: int, dim: int, device: torch.device):
        self.vec = torch.zeros(2, size, dim, device=device)
        self.sid = torch.full((size,), -1, dtype=torch.int64, device=device)
        self.size, self.head, self.filled = size, 0, 0

    def push(self, views: list[torch.Tensor], sid: torch.Tensor) -> None:
        n = min(sid.numel(), self.size)
        at = (self.head + torch.arange(n, device=sid.device)) % self.size
        for v in (0, 1):
            self.vec[v, at] = views[v][-n:].detach()
        self.sid[at] = sid[-n:]
        self.head = (self.head + n) % self.size
        self.filled = min(self.size, self.filled + n)


def _nt_xent(views: list[torch.Tensor], sid: torch.Tensor, temperature: float,
             memory: _Memory | None) -> torch.Tensor:
    """Symmetric NT-Xent between the two views of each star; with a memory, each view's
    negatives also hold the other view of the memory's stars (the star's own left out)."""
    target = torch.arange(sid.numel(), device=sid.device)
    if memory is None or memory.filled == 0:
        logits = views[0] @ views[1].T / temperature
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    own = torch.cat([torch.zeros(sid.numel(), sid.numel(), dtype=torch.bool,
                                 device=sid.device),
                     sid[:, None] == memory.sid[None, :memory.filled]], dim=1)
    loss = torch.zeros((), device=sid.device)
    for q, k in ((0, 1), (1, 0)):
        keys = torch.cat([views[k], memory.vec[k, :memory.filled]])
        logits = (views[q] @ keys.T / temperature).masked_fill(own, float("-inf"))
        loss = loss + 0.5 * F.cross_entropy(logits, target)
    return loss


def train_identity(model_path: str | Path, catalog: str | Path, out: str | Path,
                   cfg: IdentityTrainConfig = IdentityTrainConfig(), *,
                   cache_dir: str | Path | None = None, progress: bool = True,
                   overwrite: bool = False, command: str = "") -> IdentityTrainResult:
    """Add an identity encoder to ``model_path`` and train it on ``catalog``'s repeat
    visits (see the module docstring); write the model to ``out``.

    ``cache_dir`` keeps the prepared pairs for later runs (the fine-tuning cache of the same
    catalog can be reused; default: OUT/cache, removed at the end).
    """
    import math
    import shutil

    from tqdm.auto import tqdm

    from specsearch.fsutil import write_json_atomic

    cfg = cfg.validate()
    t0 = time.time()
    out = Path(out)
    base, device = open_base(model_path, out, device=cfg.device, seed=cfg.seed,
                             overwrite=overwrite)
    net = base.net
    if cfg.modality not in net.cfg.modalities:
        raise ConfigError(f"{model_path} has no {cfg.modality} encoder (modalities "
                          f"{list(net.cfg.modalities)})")
    training = dict(base.full_config.get("training", {}))
    cache_root = Path(cache_dir) if cache_dir is not None else out / "cache"
    if cfg.resume and not net.has_identity(cfg.modality):
        raise ConfigError(f"{model_path} has no {cfg.modality} identity encoder to go on "
                          f"training (train one without resume first)")
    data = _pairs(net, training, catalog, cache_root, cfg, progress)
    if not cfg.resume:
        add_identity_encoder(net, cfg.modality, cfg.hidden, cfg.depth, cfg.dim,
                             own_noise=cfg.own_noise, ignore_bands=cfg.ignore_bands)
    net.to(device).eval().requires_grad_(False)
    encoder = net.identity_encoders[cfg.modality]
    encoder.train().requires_grad_(True)
    opt = torch.optim.AdamW(encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    snr = np.asarray(data.cache.index[f"snr_{cfg.modality}"], np.float64)
    sids = torch.from_numpy(np.asarray(data.cache.index["source_id"], np.int64))
    memory: _Memory | None = None
    history: list[dict[str, float]] = []
    loss_sum, n_acc = 0.0, 0
    bar = tqdm(total=cfg.steps, desc="train-identity", unit="step", disable=not progress)
    for step in range(cfg.steps):
        pos = _batch_positions(data, cfg, rng)
        swap = rng.random(pos.size) < 0.5           # either visit may be the query
        first = np.where(swap, data.partner[pos], pos)
        second = np.where(swap, pos, data.partner[pos])
        views = []
        for p in (first, second):
            x, w = _load(data.cache, p, cfg.modality, device)
            if cfg.resample_snr:
                x, w = _resample_snr(x, w, snr[p], cfg, rng, gen)
            x, w = augment(cfg.modality, x, w, cfg.augment, gen)
            views.append(net.identity(cfg.modality, x, w))
        sid = sids[pos].to(device)
        loss = _nt_xent(views, sid, cfg.temperature,
                        memory if step >= cfg.memory_start else None)
        if cfg.memory > 0:
            if memory is None:
                memory = _Memory(cfg.memory, views[0].shape[1], device)
            memory.push(views, sid)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 5.0)
        opt.step()
        sched.step()
        loss_sum += float(loss.detach())
        n_acc += 1
        bar.update(1)
        last = step + 1 == cfg.steps
        if (step + 1) % 100 == 0 or last:
            entry = {"step": step + 1, "lr": opt.param_groups[0]["lr"],
                     "elapsed_seconds": time.time() - t0, "loss": loss_sum / n_acc}
            if (step + 1) % cfg.val_every == 0 and not last:
                encoder.eval()
                entry |= _val_top1(net, data, cfg.modality, device)
                encoder.train()
            history.append(entry)
            loss_sum, n_acc = 0.0, 0
            bar.set_postfix(loss=f"{entry['loss']:.3f}")
            if not progress and "identity_top1" in entry:
                # a line a log file can show (a progress bar writes carriage returns)
                log.info("train-identity step %d/%d: loss %.3f, validation other-visit "
                         "top-1 %.3f (%.0f s)", step + 1, cfg.steps, entry["loss"],
                         entry["identity_top1"], entry["elapsed_seconds"])
    bar.close()
    net.eval()
    val = _val_top1(net, data, cfg.modality, device)
    # the same score on as many training stars: the gap to ``val`` is what the encoder
    # learnt of the training stars themselves rather than of stars in general (more stars
    # in the catalog narrow it)
    fit = _val_top1(net, data, cfg.modality, device, data.fit_pos) \
        if data.fit_pos is not None and data.fit_pos.size else {}
    seconds = time.time() - t0
    digest = save_model_dir(out, net, net.cfg, training={
        **training, "identity": {
            "command": command, "base_model": str(model_path), "base_hash": base.model_hash,
            "catalog_fingerprint": data.fingerprint, "config": cfg.to_dict(),
            "n_training_visits": int(data.pos.size), "seconds": seconds, "val": val,
            "fit": fit,
            "history_last": history[-1] if history else {},
            **({"previous": training["identity"]}
               if cfg.resume and "identity" in training else {})}})
    write_json_atomic(out / "identity_log.json", history)
    if cache_dir is None:
        shutil.rmtree(cache_root, ignore_errors=True)
    return IdentityTrainResult(out=str(out), model_hash=digest, steps=cfg.steps,
                               seconds=seconds, n_stars=int(data.pos.size), val=val,
                               history=history, fit=fit)
