"""Shard groups: an index's shards spread over processes or machines, each group opening
only its own shards.

    index = open_manifests("indexes/survey")          # manifests only: no shard file read
    specs = plan_shard_groups(index, n_groups=4)      # any N shards over 1..N groups
    group = ShardGroup("indexes/survey", specs[g], generation=index.manifest.generation)

A :class:`ShardGroup` answers per-shard k-NN, range, row and source lookups over its shards
(memory-mapped, as the single-process engine opens them); every replica of a group serves
the same shards, so replicas are added without rebuilding anything.
:class:`specsearch.query.distributed.DistributedEngine` fans queries out to the groups.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from specsearch.errors import ConfigError, SearchIndexError
from specsearch.index.config import SearchKnobs
from specsearch.index.hashing import shard_of
from specsearch.index.manifest import (ModalityManifest, read_index_manifest,
                                       read_modality_manifest)
from specsearch.index.reader import (IndexDirectory, global_ids, preferred_identity,
                                     preferred_vector, read_manifests, split_ids,
                                     stored_columns, stored_identity, stored_rows)
from specsearch.index.shard import Shard
from specsearch.index.threads import faiss_threads
from specsearch.query.filters import Filter


# ----------------------------------------------------------------------------- placement


@dataclass(frozen=True)
class ShardGroupSpec:
    """Which shards one group serves: ``(modality, shard number)`` pairs and their rows."""

    group: int
    shards: tuple[tuple[str, int], ...]
    rows: int

    @property
    def names(self) -> list[str]:
        """``modality/shard`` names, as error messages and logs show them."""
        return [f"{m}/{s}" for m, s in self.shards]

    def numbers(self, modality: str) -> list[int]:
        return sorted(s for m, s in self.shards if m == modality)

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "shards": [list(p) for p in self.shards],
                "rows": self.rows}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ShardGroupSpec":
        return cls(group=int(d["group"]), shards=tuple((str(m), int(s)) for m, s in
                                                       d["shards"]), rows=int(d["rows"]))


def plan_shard_groups(index: IndexDirectory, n_groups: int) -> list[ShardGroupSpec]:
    """Spread every shard of every modality over ``n_groups`` groups, balancing rows.

    Each modality's shards are spread evenly over the groups (a query searches one
    modality, so all groups share its work): largest shard first into the group with the
    fewest shards of that modality, then the fewest rows overall, then the lowest number
    (deterministic). Any number of groups from 1 to the number of shards works; a group's
    replicas all serve the same shards.

    Raises:
        ConfigError: ``n_groups`` is below 1 or above the number of shards.
    """
    n_pairs = sum(len(mi.manifest.shards) for mi in index.modalities.values())
    if not 1 <= n_groups <= n_pairs:
        per = ", ".join(f"{m}: {mi.manifest.n_shards}" for m, mi in index.modalities.items())
        raise ConfigError(f"--shard-groups {n_groups}: {index.root} has {n_pairs} shards "
                          f"({per}); use 1 to {n_pairs} groups")
    load = [0] * n_groups
    members: list[list[tuple[str, int]]] = [[] for _ in range(n_groups)]
    for modality, mi in sorted(index.modalities.items()):
        own = [0] * n_groups
        for entry in sorted(mi.manifest.shards, key=lambda e: (-e.count, e.shard)):
            g = min(range(n_groups), key=lambda i: (own[i], load[i], i))
            own[g] += 1
            load[g] += entry.count
            members[g].append((modality, entry.shard))
    return [ShardGroupSpec(group=g, shards=tuple(sorted(members[g])), rows=load[g])
            for g in range(n_groups)]


@dataclass
class RemoteModality:
    """One modality of an index whose shards are elsewhere: its manifest, no shard data.

    Stands in for :class:`~specsearch.index.reader.ModalityIndex` inside
    :class:`DistributedEngine` (same ``modality``/``manifest``/``count``/``knobs``).
    """

    root: Path
    manifest: ModalityManifest

    @property
    def modality(self) -> str:
        return self.manifest.modality

    @property
    def count(self) -> int:
        return self.manifest.count

    @property
    def knobs(self) -> SearchKnobs:
        return self.manifest.search

    @property
    def dim(self) -> int:
        return self.manifest.embedding_dim

    def shard_of(self, source_id: int) -> int:
        """The shard number holding every row of ``source_id``."""
        return int(shard_of(np.array([source_id]), self.manifest.n_shards)[0])

    @property
    def shards(self):
        # Whole-index passes (the anomaly / metal-poor lists read every vector) need the
        # shards in this process; say so instead of failing on a missing attribute.
        raise SearchIndexError(
            f"{self.root}: this server's shards are served by shard groups in other "
            f"processes, and a whole-index pass (anomaly or metal-poor list) needs them all "
            f"in one: run `specsearch anomalies` / `specsearch hunt` on the index directory, "
            f"or serve it with the local engine")


def open_manifests(root: str | Path, *, knobs: SearchKnobs | None = None) -> IndexDirectory:
    """An :class:`IndexDirectory` of manifests only (:class:`RemoteModality` values): what
    a :class:`DistributedEngine` needs; reads no shard file.

    Raises:
        SearchIndexError: missing or inconsistent manifests.
    """
    root = Path(root)
    top, manifests = read_manifests(root, knobs=knobs)
    modalities: dict[str, Any] = {m: RemoteModality(root / m, manifest)
                                  for m, manifest in manifests.items()}
    if not modalities:
        raise SearchIndexError(f"{root}: the manifest lists no modality")
    return IndexDirectory(root=root, manifest=top, modalities=modalities)


# ----------------------------------------------------------------------------- group side


class ShardGroup:
    """The shards of one group, opened from the index directory: only their files are read.

    Args:
        root: the index directory (the same path on every machine: shared storage or a
            copy per node).
        spec: which shards (:func:`plan_shard_groups`).
        generation: the index generation the ingress serves; another one on disk (the
            index was updated since) refuses to load, so a restarted replica never mixes
            generations.
        mmap, verify, knobs: as :func:`specsearch.index.open_index`.
    """

    def __init__(self, root: str | Path, spec: ShardGroupSpec, *, generation: int | None = None,
                 mmap: bool = True, verify: bool = False, knobs: SearchKnobs | None = None
                 ) -> None:
        self.root = Path(root)
        self.spec = spec
        top = read_index_manifest(self.root)
        if generation is not None and top.generation != generation:
            raise SearchIndexError(
                f"{self.root}: index generation {top.generation} on disk, the service was "
                f"deployed for generation {generation}; redeploy after an index update")
        self.manifests: dict[str, ModalityManifest] = {}
        self.shards: dict[tuple[str, int], Shard] = {}
        for modality in sorted({m for m, _ in spec.shards}):
            m = read_modality_manifest(self.root, modality, top)
            if knobs is not None:
                m.search = knobs
            self.manifests[modality] = m
            for number in spec.numbers(modality):
                entry = m.shards[number]
                for f in entry.files():
                    f.verify(self.root / modality, checksum=verify)
                self.shards[modality, number] = Shard(self.root / modality, entry, m, mmap=mmap)
        self._masks: OrderedDict[tuple[str, Filter], dict[int, np.ndarray | None]] = \
            OrderedDict()
        self._lock = threading.Lock()

    def _shard(self, modality: str, number: int) -> Shard:
        try:
            return self.shards[modality, int(number)]
        except KeyError:
            raise SearchIndexError(f"shard {modality}/{number} is not in shard group "
                                   f"{self.spec.group} ({', '.join(self.spec.names)})") from None

    def _filter_masks(self, modality: str, flt: Filter) -> dict[int, np.ndarray | None]:
        """Per-shard masks of a filter, cached like SearchEngine's (same objects on a
        repeat, so the shards' query plans are reused)."""
        numbers = self.spec.numbers(modality)
        if flt.empty:
            return dict.fromkeys(numbers)
        key = (modality, flt)
        with self._lock:
            if key in self._masks:
                self._masks.move_to_end(key)
                return self._masks[key]
        masks = {n: flt.mask(self.shards[modality, n]) for n in numbers}
        with self._lock:
            self._masks[key] = masks
            while len(self._masks) > 32:
                self._masks.popitem(last=False)
        return masks

    def _searchable(self, modality: str, flt: Filter):
        """(number, shard, filter mask) of each shard here with a row that may match."""
        for number, mask in self._filter_masks(modality, flt).items():
            shard = self.shards[modality, number]
            if shard.count and (mask is None or mask.any()):
                yield number, shard, mask

    def knn(self, modality: str, queries: np.ndarray, k: int, knobs: SearchKnobs | None,
            flt: Filter, threads: int) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """Per shard of ``modality`` here: (number, (nq, k) similarities, global ids,
        source_ids), skipping empty shards and shards no row of which passes the filter
        (as :meth:`~specsearch.index.reader.ModalityIndex.knn` does)."""
        knobs = knobs or self.manifests[modality].search
        out = []
        with faiss_threads(threads):
            for number, shard, mask in self._searchable(modality, flt):
                sims, rows = shard.knn(queries, k, knobs, filter_mask=mask, threads=threads)
                sids = np.where(rows >= 0, shard.column("source_id")[np.maximum(rows, 0)], -1)
                out.append((number, sims, global_ids(number, rows), sids.astype(np.int64)))
        return out

    def range(self, modality: str, queries: np.ndarray, threshold: float,
              knobs: SearchKnobs | None, flt: Filter, max_results: int, threads: int
              ) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Per shard here: (number, similarities, global ids) of the first query's rows
        with similarity >= ``threshold``."""
        knobs = knobs or self.manifests[modality].search
        out = []
        with faiss_threads(threads):
            for number, shard, mask in self._searchable(modality, flt):
                ((sims, rows),) = shard.range(queries[:1], threshold, knobs, filter_mask=mask,
                                              max_results=max_results)
                out.append((number, sims, global_ids(number, rows)))
        return out

    def source_ids(self, modality: str, ids: np.ndarray) -> np.ndarray:
        """source_id of global ids (all in this group's shards)."""
        shard, row = split_ids(ids)
        out = np.full(len(ids), -1, np.int64)
        for s in np.unique(shard[shard >= 0]):
            sel = shard == s
            out[sel] = self._shard(modality, s).column("source_id")[row[sel]]
        return out

    def rows(self, modality: str, ids: np.ndarray) -> pa.Table:
        """Stored rows of global ids, in their order (empty: the modality's schema)."""
        if not len(ids):
            return self.shards[modality, self.spec.numbers(modality)[0]].rows.schema \
                .empty_table()
        return stored_rows(lambda s: self._shard(modality, s), ids)

    def columns(self, modality: str, ids: np.ndarray, names: list[str]
                ) -> dict[str, np.ndarray]:
        """Numeric stored columns ``names`` of global ids (all in this group's shards), in
        their order."""
        return stored_columns(lambda s: self._shard(modality, s), ids, names)

    def identity(self, modality: str, ids: np.ndarray) -> np.ndarray | None:
        """Identity vectors of global ids (all in this group's shards), in their order (NaN
        rows: none), or None when the shards hold none."""
        return stored_identity(lambda s: self._shard(modality, s), ids)

    def source_info(self, modality: str, source_id: int
                    ) -> tuple[np.ndarray | None, int, pa.Table | None, np.ndarray | None]:
        """(stored vector of the preferred row, live rows, stored rows table, identity
        vector of the preferred row) of a source whose shard is in this group; (None, 0,
        None, None) when it has no row."""
        n_shards = self.manifests[modality].n_shards
        number = int(shard_of(np.array([source_id], np.int64), n_shards)[0])
        shard = self._shard(modality, number)
        rows = shard.rows_of_source(int(source_id))
        if not len(rows):
            return None, 0, None, None
        return (preferred_vector(shard, rows), len(rows), shard.rows.take(pa.array(rows)),
                preferred_identity(shard, rows))

    def describe(self) -> dict[str, Any]:
        return {"group": self.spec.group, "shards": self.spec.names, "rows": self.spec.rows}
