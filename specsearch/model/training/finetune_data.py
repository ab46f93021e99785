"""What a fine-tuning run reads, prepared once (:func:`prepare_data`): the synthetic pairs of
the training catalog and the real spectra split by star; and the row sampling and catalogue
offsets a step applies to them. :mod:`specsearch.model.training.finetune` runs the steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specsearch.model.training.configs import FinetuneConfig
from specsearch.errors import ConfigError
from specsearch.model.training.cache import model_cache
from specsearch.model.training.data import other_visit
from specsearch.model.training.hard_negatives import label_neighbours
from specsearch.model.conversions import add_population_classes
from specsearch.model.network import SpecCLIPNet
from specsearch.model.training.real_sets import PreparedReal, RealSet, load_all, prepare_real


@dataclass
class FinetuneData:
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


def prepare_data(net: SpecCLIPNet, training: dict[str, Any], catalog: str | Path,
                  real_data: str | Path, cfg: FinetuneConfig, cache_root: Path,
                  real_cache: str | Path | None, progress: bool) -> FinetuneData:
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
    return FinetuneData(neighbours=neighbours, cache=cache, train_pos=train_pos, val_pos=val_pos,
                 partner=partner if (partner >= 0).any() else None,
                 fingerprint=fingerprint, used=used, real_train=r_train,
                 real_p=r_train.sampling_p(weights if len(weights) == len(used) else None),
                 real_cal=r_cal, offsets=offsets, offset_rows=rows, offset_rows_cal=rows_cal,
                 xp_train=prepare_real([xp_set], [], "train") if xp_set is not None else None)


def catalogue_shift(data: FinetuneData, rows: np.ndarray, device: torch.device,
                     like: torch.Tensor) -> torch.Tensor:
    """(len(rows), L) the learnt catalogue offset of each real training row (0 where its
    set keeps the heads' scale), standardised units."""
    k = torch.from_numpy(data.offset_rows[rows]).to(device)
    return torch.where((k >= 0)[:, None], data.offsets.to(device)[k.clamp_min(0)],
                       torch.zeros_like(like))


def sample_rows(rng: np.random.Generator, n: int, k: int, p: np.ndarray | None = None
          ) -> np.ndarray:
    """k row indices out of n (with replacement when weighted or when n < k)."""
    return rng.choice(n, k, p=p, replace=p is not None or n < k)
