"""Paired training data: join LAMOST and XP rows on source_id, split by star, cache.

Nothing here holds a catalog in memory. The join reads only the ``source_id`` columns
(8 bytes a row). The spectra are streamed file by file, passed once through
:func:`specsearch.preprocess.prepare_model_input` and written to an on-disk cache of
memory-mapped ``.npy`` arrays (LAMOST flux as float16 residuals about the continuum, XP as
float32, sqrt(weight) as float16), so that each epoch costs no Parquet decoding and no
continuum fitting. Epochs read the cache in shuffled blocks (a shuffle buffer), which
stays fast when the cache is larger than RAM.

Train / validation / test membership is a pure function of ``source_id`` (a 64-bit hash),
so all visits of a star fall in one split and ``evaluate`` finds the same held-out stars.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from specsearch.errors import CatalogError
from specsearch.io.catalog import Catalog, list_column_to_numpy
from specsearch.preprocess import grid_for

KNOWN_LABELS: tuple[str, ...] = ("teff", "logg", "feh", "alpha_fe", "vmic", "vsini", "c_fe",
                                 "n_fe", "mg_fe", "ebv", "mass", "age")
"""Label columns the heads learn when present (``--labels`` overrides)."""
SPLITS = {"train": 0, "val": 1, "test": 2}
CACHE_VERSION = 2
FLUX_OFFSET = {"lamost": 1.0, "xp": 0.0}      # stored flux = prepared flux - offset
CACHE_DTYPE = {"lamost": np.float16, "xp": np.float32}


def split_of(source_id: np.ndarray, *, val_fraction: float, test_fraction: float) -> np.ndarray:
    """(n,) uint8 split code per star (0 train, 1 val, 2 test) from a splitmix64 hash."""
    z = np.asarray(source_id, dtype=np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.where(u < test_fraction, 2, np.where(u < test_fraction + val_fraction, 1, 0)
                    ).astype(np.uint8)


def catalog_fingerprint(cat: Catalog) -> str:
    """A short hash of a catalog's files (names, sizes, row counts) and grids."""
    h = hashlib.sha256(json.dumps(cat.manifest.get("grids", {}), sort_keys=True).encode())
    for m in cat.modalities:
        for p in cat.files(m):
            h.update(f"{m}/{p.name}:{p.stat().st_size}".encode())
    return h.hexdigest()[:16]


def choose_labels(cat: Catalog, requested: list[str] | tuple[str, ...] | None, *,
                  min_coverage: float = 0.5) -> list[str]:
    """Label columns the heads learn: ``requested`` (checked), or every known label
    (:data:`KNOWN_LABELS`) present in the LAMOST rows with finite values for at least
    ``min_coverage`` of them (a label known only for a rare class, e.g. [C/Fe] of carbon
    stars, would make a head that extrapolates for every other star)."""
    names = set(cat.schema("lamost").names) | set(cat.schema("xp").names)
    if requested:
        missing = [c for c in requested if c not in names]
        if missing:
            raise CatalogError(f"{cat.root}: label column(s) {missing} not in the catalog; "
                               f"columns present: {sorted(names)}")
        return list(requested)
    chosen = []
    lamost = set(cat.schema("lamost").names)
    for c in KNOWN_LABELS:
        if c not in lamost:
            continue
        values = cat.read_column("lamost", c).to_numpy(zero_copy_only=False)
        values = np.asarray(values, dtype=np.float64)
        if values.size and np.isfinite(values).mean() >= min_coverage:
            chosen.append(c)
    return chosen


@dataclass
class PairTable:
    """All LAMOST-XP pairs of a catalog (LAMOST row order; one pair per LAMOST visit).

    Attributes:
        source_id, lamost_row, xp_row: (n,) the star and its global row index in each
            modality's files (file order, then row order).
        split: (n,) uint8 split code (see :data:`SPLITS`).
    """

    source_id: np.ndarray
    lamost_row: np.ndarray
    xp_row: np.ndarray
    split: np.ndarray

    def __len__(self) -> int:
        return int(self.source_id.shape[0])

    def select(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == SPLITS[split])


def join_pairs(cat: Catalog, *, val_fraction: float, test_fraction: float) -> PairTable:
    """Join the catalog's modalities on source_id: the k-th LAMOST visit of a star (in row
    order) is paired with its k-th XP row, or its last one when it has fewer XP rows (so
    repeat visits of a synthetic survey pair independent observations)."""
    for m in ("lamost", "xp"):
        if m not in cat.modalities:
            raise CatalogError(f"{cat.root}: a paired catalog needs 'lamost' and 'xp' rows; "
                               f"found {cat.modalities}")
    sid_l = cat.read_column("lamost", "source_id").to_numpy().astype(np.int64)
    sid_x = cat.read_column("xp", "source_id").to_numpy().astype(np.int64)
    order_x = np.argsort(sid_x, kind="stable")
    uniq_x, start_x, count_x = np.unique(sid_x[order_x], return_index=True,
                                         return_counts=True)
    pos = np.clip(np.searchsorted(uniq_x, sid_l), 0, max(len(uniq_x) - 1, 0))
    has = (uniq_x[pos] == sid_l) if len(uniq_x) else np.zeros_like(sid_l, bool)
    lamost_row = np.flatnonzero(has)
    if lamost_row.size == 0:
        raise CatalogError(f"{cat.root}: no source_id is shared by the lamost and xp rows; "
                           f"nothing to pair")
    sid = sid_l[lamost_row]
    p = pos[lamost_row]
    visit = visit_rank(sid)
    xp_row = order_x[start_x[p] + np.minimum(visit, count_x[p] - 1)]
    return PairTable(source_id=sid, lamost_row=lamost_row, xp_row=xp_row,
                     split=split_of(sid, val_fraction=val_fraction,
                                    test_fraction=test_fraction))


def visit_rank(source_id: np.ndarray) -> np.ndarray:
    """(n,) 0 for a star's first row (in the given order), 1 for its second, ..."""
    order = np.argsort(source_id, kind="stable")
    s = source_id[order]
    new = np.r_[True, s[1:] != s[:-1]] if s.size else np.zeros(0, bool)
    run_start = np.maximum.accumulate(np.where(new, np.arange(s.size), 0))
    rank = np.empty(s.size, np.int64)
    rank[order] = np.arange(s.size) - run_start
    return rank


def other_visit(source_id: np.ndarray, pos: np.ndarray, size: int) -> np.ndarray:
    """(size,) for each position in ``pos``, another position in ``pos`` of the same star
    (the next one, cyclically), -1 where the star has no other; -1 outside ``pos``."""
    pos = np.asarray(pos, np.int64)
    out = np.full(size, -1, np.int64)
    order = np.argsort(source_id[pos], kind="stable")
    p, s = pos[order], source_id[pos][order]
    if not p.size:
        return out
    new = np.r_[True, s[1:] != s[:-1]]
    starts = np.flatnonzero(new)
    lengths = np.diff(np.r_[starts, s.size])
    run = np.cumsum(new) - 1
    k = np.arange(s.size) - starts[run]
    nxt = starts[run] + (k + 1) % lengths[run]
    out[p] = np.where(lengths[run] > 1, p[nxt], -1)
    return out


def stream_rows(cat: Catalog, modality: str, rows: np.ndarray, columns: list[str], *,
                batch_size: int = 4096) -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
    """Yield (global row indices, record batch of those rows) for sorted unique ``rows``."""
    rows = np.asarray(rows, dtype=np.int64)
    offset = 0
    for batch in cat.iter_batches(modality, columns=columns, batch_size=batch_size):
        n = batch.num_rows
        lo, hi = np.searchsorted(rows, [offset, offset + n])
        if hi > lo:
            take = rows[lo:hi]
            yield take, batch.take(pa.array(take - offset))
        offset += n
        if lo >= rows.size:
            break


def read_spectra_rows(cat: Catalog, modality: str, rows: np.ndarray,
                      extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Flux, ivar (+ ``extra`` columns) of the given global rows, in the order given.

    Meant for evaluation-sized selections (tens of thousands of rows).
    """
    rows = np.asarray(rows, dtype=np.int64)
    order = np.unique(rows)
    present = set(cat.schema(modality).names)
    cols = ["flux", "ivar", *[c for c in extra if c in present]]
    parts: dict[str, list] = {c: [] for c in cols}
    for _, batch in stream_rows(cat, modality, order, cols):
        for c in cols:
            col = batch.column(c)
            parts[c].append(list_column_to_numpy(col) if c in ("flux", "ivar")
                            else col.to_numpy(zero_copy_only=False))
    npix = grid_for(modality).npix
    out = {c: (np.concatenate(v) if v else np.zeros((0, npix) if c in ("flux", "ivar") else 0))
           for c, v in parts.items()}
    where = np.searchsorted(order, rows)
    return {c: v[where] for c, v in out.items()}


def float_column(batch: pa.RecordBatch, name: str) -> np.ndarray:
    if name not in batch.schema.names:
        return np.full(batch.num_rows, np.nan, np.float32)
    return batch.column(name).to_numpy(zero_copy_only=False).astype(np.float32)
