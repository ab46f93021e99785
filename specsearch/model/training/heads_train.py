"""``specsearch train-heads``: new parameter heads and classifier on frozen encoders.

The encoders, decoders and temperature of a trained model are kept bit for bit; the
embeddings (and quality features) of the catalog's training and validation pairs are
computed once (clean, plus one augmented copy so that the heads see the S/N range), new
heads are fitted with the Gaussian beta-NLL (+ cross-entropy for the population classes),
early-stopped on validation, calibrated, and written with the rest of the model to OUT.
Use it to add a label column (e.g. ``ebv``) or re-fit heads on another labelled catalog.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from specsearch.model.training.configs import HeadsConfig
from specsearch.model.api import load_model, resolve_device
from specsearch.model.training.augment import AugmentConfig, augment
from specsearch.model.training.calibrate import CalibrationReport, calibrate, iterate
from specsearch.model.checkpoint import save_model_dir
from specsearch.model.layers import Head
from specsearch.model.training.loss import class_cross_entropy, gaussian_nll
from specsearch.model.network import SpecCLIPNet
from specsearch.model.training.pairs import prepare_pairs


@dataclass
class HeadsResult:
    model_hash: str
    label_names: list[str]
    class_names: list[str]
    calibration: CalibrationReport
    best_val: float


@torch.no_grad()
def _features(net: SpecCLIPNet, cache, pos, device, gen=None) -> dict[str, torch.Tensor]:
    feats = {m: [] for m in net.cfg.modalities}
    for _, tb in iterate(cache, pos, device, batch_size=2048):
        for m in feats:
            x, w = tb["x"][m], tb["w"][m]
            if gen is not None:
                x, w = augment(m, x, w, AugmentConfig(), gen)
            _, emb, q = net.head_features(m, x, w)
            feats[m].append(torch.cat([emb, q], dim=-1))
    return {m: torch.cat(v) for m, v in feats.items()}


def _fit_head(head: Head, f_train: torch.Tensor, train_targets, f_val: torch.Tensor,
              val_targets, D: int, cfg: HeadsConfig, device: torch.device, *, desc: str,
              progress: bool) -> float:
    """Fit one head on (embedding, quality) features with early stopping; it keeps its best
    state; returns the best validation loss."""
    y_tr, c_tr = train_targets
    y_va, c_va = val_targets
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=1e-4)
    best, best_state, bad = float("inf"), None, 0
    rng = np.random.default_rng(cfg.seed)
    for _ in tqdm(range(cfg.epochs), desc=desc, disable=not progress):
        head.train()
        order = torch.from_numpy(rng.permutation(y_tr.shape[0])).to(device)
        for s in range(0, order.numel(), cfg.batch_size):
            i = order[s:s + cfg.batch_size]
            f = f_train[i]
            mu, ls, logits = head(f[:, :D], f[:, D:])
            loss = gaussian_nll(mu, ls, y_tr[i], cfg.nll_beta) + \
                cfg.class_weight * class_cross_entropy(logits, c_tr[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            mu, ls, logits = head(f_val[:, :D], f_val[:, D:])
            val = float(gaussian_nll(mu, ls, y_va) +
                        cfg.class_weight * class_cross_entropy(logits, c_va))
        if val < best - 1e-4:
            best, bad = val, 0
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    head.load_state_dict(best_state)
    return best


def train_heads(model_path: str | Path, catalog: str | Path, out: str | Path,
                cfg: HeadsConfig = HeadsConfig(), *, progress: bool = True) -> HeadsResult:
    """Fit new heads on the frozen encoders of ``model_path``; write the model to ``out``."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = load_model(model_path, device=device)
    old = model.net
    training = dict(model.full_config.get("training", {}))
    tcfg = training.get("train_config", {})
    out = Path(out)
    data = prepare_pairs(catalog, out / "heads-cache", labels=cfg.labels,
                         val_fraction=tcfg.get("val_fraction", 0.05),
                         test_fraction=tcfg.get("test_fraction", 0.05), progress=progress,
                         require_targets=True, purpose="fit heads")
    cache, labels, classes = data.cache, data.labels, data.classes
    train_pos, val_pos = data.train_pos, data.val_pos
    new_cfg = old.cfg.with_data(label_names=labels, class_names=classes)
    net = SpecCLIPNet(new_cfg).to(device)
    keep = {k: v for k, v in old.state_dict().items()
            if not k.startswith("heads.") and not k.startswith("label_")}
    net.load_state_dict(keep, strict=False)
    y_all = cache.labels
    with np.errstate(all="ignore"):
        mean = np.nan_to_num(np.nanmean(y_all[train_pos], 0)) if labels else np.zeros(0)
        std = np.nanstd(y_all[train_pos], 0) if labels else np.ones(0)
    net.label_mean.copy_(torch.from_numpy(mean.astype(np.float32)))
    net.label_std.copy_(torch.from_numpy(np.where(std > 0, std, 1).astype(np.float32)))
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    f_train = {m: torch.cat([a, b]) for (m, a), b in zip(
        _features(net, cache, train_pos, device).items(),
        _features(net, cache, train_pos, device, gen).values())}
    f_val = _features(net, cache, val_pos, device)

    def targets(pos):
        y = (torch.from_numpy(cache.labels[pos]).to(device) - net.label_mean) / net.label_std
        c = torch.from_numpy(cache.index["classes"][pos].astype(np.int64)).to(device)
        return y, c
    y_tr, c_tr = targets(np.concatenate([train_pos, train_pos]))
    y_va, c_va = targets(val_pos)
    D = new_cfg.embedding_dim
    best_val = float("inf")
    for m in new_cfg.modalities:
        head = Head(new_cfg.head, D, len(labels), len(classes)).to(device)
        best = _fit_head(head, f_train[m], (y_tr, c_tr), f_val[m], (y_va, c_va), D, cfg,
                         device, desc=f"heads {m}", progress=progress)
        net.heads[m] = head
        best_val = min(best_val, best)
    report = calibrate(net, cache, val_pos, device)
    training["heads"] = {"catalog_fingerprint": data.fingerprint,
                         "config": dataclasses.asdict(cfg), "labels": labels,
                         "classes": classes, "calibration": dataclasses.asdict(report)}
    digest = save_model_dir(out, net, new_cfg, training=training)
    shutil.rmtree(out / "heads-cache", ignore_errors=True)
    return HeadsResult(model_hash=digest, label_names=labels, class_names=classes,
                       calibration=report, best_val=best_val)
