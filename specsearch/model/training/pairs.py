"""The paired-catalog set-up shared by ``train`` and ``train-heads``: open the catalog,
join LAMOST and XP rows by star, choose labels and classes, stream the prepared pairs into
an on-disk cache, and check there is enough to learn from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specsearch.errors import ConfigError
from specsearch.io.catalog import Catalog, open_catalog
from specsearch.model.training.cache import PairCache, build_cache, population_classes
from specsearch.model.training.data import (PairTable, catalog_fingerprint, choose_labels,
                                            join_pairs)


@dataclass
class PreparedPairs:
    """A catalog's training pairs, cached and split (``val_pos`` may be capped later)."""

    catalog: Catalog
    fingerprint: str
    pairs: PairTable
    labels: list[str]
    classes: list[str]
    cache: PairCache
    train_pos: np.ndarray
    val_pos: np.ndarray


def prepare_pairs(catalog: str | Path, cache_dir: Path, *, labels, val_fraction: float,
                  test_fraction: float, progress: bool = True,
                  expect_fingerprint: str | None = None, require_targets: bool = False,
                  purpose: str = "train") -> PreparedPairs:
    """Open, join, cache and split ``catalog`` (see the module docstring).

    ``expect_fingerprint``: the catalog a resumed run started on (a mismatch is an error);
    ``require_targets``: refuse a catalog with neither labels nor population classes.
    """
    cat = open_catalog(catalog)
    fingerprint = catalog_fingerprint(cat)
    if expect_fingerprint is not None and expect_fingerprint != fingerprint:
        raise ConfigError(f"{catalog} is not the catalog this run started on (fingerprint "
                          f"{fingerprint} != {expect_fingerprint}); cannot resume")
    pairs = join_pairs(cat, val_fraction=val_fraction, test_fraction=test_fraction)
    trainval = np.flatnonzero(pairs.split != 2)
    chosen = choose_labels(cat, labels)
    classes = population_classes(cat, pairs, trainval)
    if require_targets and not chosen and not classes:
        raise ConfigError(f"{catalog}: no label column and no population classes to fit")
    cache = build_cache(cat, pairs, trainval, cache_dir, label_names=chosen,
                        class_names=classes, fingerprint=fingerprint, progress=progress)
    train_pos, val_pos = cache.positions("train"), cache.positions("val")
    if train_pos.size < 2 or val_pos.size < 2:
        raise ConfigError(f"{catalog}: too few usable pairs to {purpose} ({train_pos.size} "
                          f"train, {val_pos.size} validation); need a larger catalog")
    return PreparedPairs(cat, fingerprint, pairs, chosen, classes, cache, train_pos, val_pos)
