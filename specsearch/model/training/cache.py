"""The on-disk training cache of prepared pairs (see :mod:`specsearch.model.training.data`).

Layout of CACHE/: ``meta.json`` (written last: its presence marks a complete cache),
``index.npz`` (per pair: source_id, split, usable, labels, class index, S/N per modality),
and per modality ``<m>_x.npy`` (prepared flux minus an offset, SED columns included:
:func:`specsearch.preprocess.prepared_width`) and ``<m>_sw.npy`` (sqrt of the weight,
float16), memory-mapped when read.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from specsearch.errors import CatalogError, ConfigError
from specsearch.io.catalog import Catalog, list_column_to_numpy, open_catalog
from specsearch.fsutil import write_json_atomic
from specsearch.model.training.data import (CACHE_DTYPE, CACHE_VERSION, FLUX_OFFSET, SPLITS,
                                            PairTable, catalog_fingerprint, float_column,
                                            join_pairs, stream_rows)
from specsearch.preprocess import prepare_model_input, prepared_width

MODS = ("lamost", "xp")


@dataclass
class PairBatch:
    """One batch of prepared pairs (numpy; float32 flux and weight per modality)."""

    x: dict[str, np.ndarray]
    w: dict[str, np.ndarray]
    labels: np.ndarray
    classes: np.ndarray
    source_id: np.ndarray


class PairCache:
    """Prepared, paired spectra of a set of pairs, memory-mapped from disk."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.meta = json.loads((self.root / "meta.json").read_text())
        with np.load(self.root / "index.npz", allow_pickle=False) as idx:
            self.index = {k: idx[k] for k in idx.files}
        self.x = {m: np.load(self.root / f"{m}_x.npy", mmap_mode="r") for m in MODS}
        self.sw = {m: np.load(self.root / f"{m}_sw.npy", mmap_mode="r") for m in MODS}

    def __len__(self) -> int:
        return int(self.index["source_id"].shape[0])

    @property
    def labels(self) -> np.ndarray:
        return self.index["labels"]

    def positions(self, split: str) -> np.ndarray:
        """Cache positions of the usable pairs of one split."""
        return np.flatnonzero((self.index["split"] == SPLITS[split]) & self.index["usable"])

    def load(self, pos: np.ndarray) -> PairBatch:
        pos = np.sort(np.asarray(pos, dtype=np.int64))
        x = {m: self.x[m][pos].astype(np.float32) + np.float32(FLUX_OFFSET[m]) for m in MODS}
        w = {}
        for m in MODS:
            sw = self.sw[m][pos].astype(np.float32)
            w[m] = sw * sw
            x[m][w[m] <= 0] = 0.0
        return PairBatch(x=x, w=w, labels=self.index["labels"][pos],
                         classes=self.index["classes"][pos].astype(np.int64),
                         source_id=self.index["source_id"][pos])

    def batches(self, pos: np.ndarray, batch_size: int, *, rng: np.random.Generator | None,
                block: int = 512, buffer_blocks: int = 16) -> Iterator[np.ndarray]:
        """Cache positions in batches; with ``rng``, shuffled through a block shuffle buffer
        (random order of contiguous blocks, then rows shuffled within a buffer of blocks),
        dropping a last batch smaller than half ``batch_size``."""
        pos = np.asarray(pos, dtype=np.int64)
        if rng is None:
            for i in range(0, pos.size, batch_size):
                yield pos[i:i + batch_size]
            return
        blocks = [pos[i:i + block] for i in range(0, pos.size, block)]
        order = rng.permutation(len(blocks))
        carry = np.zeros(0, np.int64)
        for g in range(0, len(order), buffer_blocks):
            buf = np.concatenate([carry, *[blocks[i] for i in order[g:g + buffer_blocks]]])
            buf = buf[rng.permutation(buf.size)]
            n_full = buf.size // batch_size * batch_size
            for i in range(0, n_full, batch_size):
                yield buf[i:i + batch_size]
            carry = buf[n_full:]
        if carry.size >= batch_size // 2 and carry.size:
            yield carry


def _matches(meta_path: Path, key: dict) -> bool:
    """Whether a complete cache with this key is already there."""
    try:
        return meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key
    except (OSError, json.JSONDecodeError):
        return False


def _destinations(srows: np.ndarray, order: np.ndarray, got: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Cache positions and batch rows for the catalog rows ``got``: a row may serve several
    pairs (a star's XP row and its LAMOST visits); ``srows`` = rows sorted by ``order``."""
    lo = np.searchsorted(srows, got, side="left")
    hi = np.searchsorted(srows, got, side="right")
    counts = hi - lo
    starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    return order[starts + np.arange(counts.sum())], np.repeat(np.arange(got.size), counts)


def build_cache(cat: Catalog, pairs: PairTable, sel: np.ndarray, root: str | Path, *,
                label_names: list[str], class_names: list[str], fingerprint: str,
                progress: bool = True) -> PairCache:
    """Prepare the spectra of pairs ``sel`` (indices into ``pairs``) into a cache at ``root``.

    An existing complete cache with the same fingerprint, pairs and labels is reused.
    """
    root = Path(root)
    sel = np.sort(np.asarray(sel, dtype=np.int64))
    key = {"version": CACHE_VERSION, "fingerprint": fingerprint, "n": int(sel.size),
           "labels": list(label_names), "classes": list(class_names),
           "pairs_hash": int(np.bitwise_xor.reduce(pairs.source_id[sel] * 31 + sel))
           if sel.size else 0}
    meta_path = root / "meta.json"
    if _matches(meta_path, key):
        return PairCache(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    n = sel.size
    lrow, xrow = pairs.lamost_row[sel], pairs.xp_row[sel]
    arrays = {}
    for m in MODS:
        npix = prepared_width(m)
        arrays[f"{m}_x"] = np.lib.format.open_memmap(root / f"{m}_x.npy", "w+", CACHE_DTYPE[m],
                                                     (n, npix))
        arrays[f"{m}_sw"] = np.lib.format.open_memmap(root / f"{m}_sw.npy", "w+", np.float16,
                                                      (n, npix))
    L = len(label_names)
    labels = {m: np.full((n, L), np.nan, np.float32) for m in MODS}
    snr = {m: np.full(n, np.nan, np.float32) for m in MODS}
    good = {m: np.zeros(n, bool) for m in MODS}
    population = np.full(n, -1, np.int16)
    class_index = {c: i for i, c in enumerate(class_names)}
    bar = tqdm(total=2 * n, desc="preparing pairs", unit="spec", disable=not progress)
    for m, rows in (("lamost", lrow), ("xp", xrow)):
        # A star's XP row may serve several LAMOST visits: group pair positions by row.
        order = np.argsort(rows, kind="stable")
        srows = rows[order]
        wanted = np.unique(rows)
        present = set(cat.schema(m).names)
        cols = ["flux", "ivar", *[c for c in (*label_names, "snr", "population")
                                  if c in present]]
        for got, batch in stream_rows(cat, m, wanted, cols):
            dest, src = _destinations(srows, order, got)
            mi = prepare_model_input(list_column_to_numpy(batch.column("flux")),
                                     list_column_to_numpy(batch.column("ivar")), m)
            ok = mi.good[src]
            flux = mi.flux[src] - np.float32(FLUX_OFFSET[m])
            flux[mi.weight[src] <= 0] = 0.0
            dsort = np.argsort(dest)
            d = dest[dsort]
            arrays[f"{m}_x"][d] = flux[dsort].astype(CACHE_DTYPE[m])
            arrays[f"{m}_sw"][d] = np.sqrt(np.minimum(mi.weight[src][dsort], 6.5e4 ** 2)
                                           ).astype(np.float16)
            good[m][dest] = ok
            for j, name in enumerate(label_names):
                labels[m][dest, j] = float_column(batch, name)[src]
            snr[m][dest] = float_column(batch, "snr")[src]
            if m == "lamost" and class_names and "population" in present:
                pop = batch.column("population").to_pylist()
                population[dest] = np.array([class_index.get(pop[i] or "normal", -1)
                                             for i in src], dtype=np.int16)
            bar.update(dest.size)
    bar.close()
    for a in arrays.values():
        a.flush()
    merged = np.where(np.isfinite(labels["lamost"]), labels["lamost"], labels["xp"])
    np.savez(root / "index.npz", source_id=pairs.source_id[sel], split=pairs.split[sel],
             usable=good["lamost"] & good["xp"], labels=merged, classes=population,
             snr_lamost=snr["lamost"], snr_xp=snr["xp"])
    del arrays
    write_json_atomic(meta_path, {"key": key, "label_names": list(label_names),
                                  "class_names": list(class_names)})
    if not (good["lamost"] & good["xp"]).any():
        raise CatalogError(f"{cat.root}: no usable pair: every pair has a spectrum that "
                           f"prepare_model_input rejects (too few good pixels)")
    return PairCache(root)


def population_classes(cat: Catalog, pairs: PairTable, sel: np.ndarray) -> list[str]:
    """Class names of the rare-population classifier (empty if no population column or a
    single class). A null population on a catalog that has the column means ``normal``."""
    if "population" not in cat.schema("lamost").names:
        return []
    rows = np.unique(pairs.lamost_row[sel])
    seen: set[str] = set()
    for _, batch in stream_rows(cat, "lamost", rows, ["population"]):
        seen.update(v or "normal" for v in batch.column("population").to_pylist())
    return sorted(seen) if len(seen) > 1 else []


def pixel_statistics(cache: PairCache, pos: np.ndarray, modality: str, *,
                     chunk: int = 4096) -> dict[str, np.ndarray]:
    """Per-pixel mean, std and signal variance of prepared flux over good pixels of ``pos``."""
    npix = cache.x[modality].shape[1]
    s0, s1, s2, sn = (np.zeros(npix) for _ in range(4))
    for i in range(0, pos.size, chunk):
        p = np.sort(pos[i:i + chunk])
        x = cache.x[modality][p].astype(np.float64) + FLUX_OFFSET[modality]
        sw = cache.sw[modality][p].astype(np.float64)
        g = sw > 0
        s0 += g.sum(0)
        s1 += np.where(g, x, 0).sum(0)
        s2 += np.where(g, x * x, 0).sum(0)
        sn += np.where(g, 1.0 / np.where(g, sw * sw, 1.0), 0).sum(0)
    n = np.maximum(s0, 1)
    mean = np.where(s0 > 0, s1 / n, FLUX_OFFSET[modality] or 1.0)
    var = np.maximum(s2 / n - (s1 / n) ** 2, 0)
    std = np.sqrt(np.maximum(var, 1e-8))
    signal = np.maximum(var - sn / n, 0.05 * var)
    return {"mean": mean.astype(np.float32), "std": std.astype(np.float32),
            "signal_var": np.maximum(signal, 1e-10).astype(np.float32)}


def model_cache(catalog: str | Path, root: str | Path, *, label_names: list[str],
                class_names: list[str], training: dict, progress: bool = True,
                new_classes: bool = False) -> tuple[PairCache, str]:
    """The pair cache of a trained model's catalog, split as the model's training split it
    (``training['train_config']``: the val/test fractions), for the stages that continue
    a model (``finetune``, ``train-identity``). Returns (cache, catalog fingerprint).

    ``new_classes``: the catalog may also hold classes the model lacks (the cache keeps
    the catalog's classes, ``cache.meta["class_names"]``; the caller grows the model's heads).

    Raises:
        ConfigError: the catalog's population classes are not the model's (it is not the
            catalog the model was trained on), or with ``new_classes`` lack one of them.
    """
    tcfg = training.get("train_config", {})
    cat = open_catalog(catalog)
    fingerprint = catalog_fingerprint(cat)
    pairs = join_pairs(cat, val_fraction=tcfg.get("val_fraction", 0.05),
                       test_fraction=tcfg.get("test_fraction", 0.05))
    trainval = np.flatnonzero(pairs.split != 2)
    classes = population_classes(cat, pairs, trainval)
    grows = new_classes and set(class_names) <= set(classes)
    if list(classes) != list(class_names) and not grows:
        raise ConfigError(f"{catalog}: population classes {classes} differ from the model's "
                          f"{list(class_names)}; continue a model on the catalog it was "
                          f"trained on")
    cache = build_cache(cat, pairs, trainval, root, label_names=label_names,
                        class_names=classes, fingerprint=fingerprint, progress=progress)
    return cache, fingerprint
