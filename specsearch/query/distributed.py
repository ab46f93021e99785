"""A search engine whose shards are served by shard groups in other processes or machines.

    index = open_manifests("indexes/survey")
    specs = plan_shard_groups(index, n_groups=4)
    engine = DistributedEngine(index, specs, calls)   # calls: how each group is reached
    hits = engine.search_source(1234567890, k=20)     # the SearchEngine API, same results

:class:`DistributedEngine` is a :class:`~specsearch.query.SearchEngine`: windows, filters,
exclusion of the query star, cross-modal targets and pagination are SearchEngine's own code.
Only its shard reads (``_knn``, ``_range``, ``_fetch_rows``, ``_source_ids``, ...: the
methods of :class:`~specsearch.query.shard_access.LocalShardAccess`) are replaced by calls
to the :class:`~specsearch.query.shard_groups.ShardGroup` holding each shard; per-shard
top-k lists are merged in shard order with the same FAISS heap as
:meth:`~specsearch.index.reader.ModalityIndex.knn`, so ids and similarities are identical
to the single-process engine over the same directory.

How a group is reached is a :class:`GroupCalls` (Ray Serve deployment handles in
:mod:`service.ray_serve`; :class:`LocalGroups` in this process). A group that fails or does
not answer within ``timeout_s`` fails the query with :class:`ShardsUnavailableError`, which
names the missing shards (HTTP 503): a partial answer is never returned.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from specsearch.errors import ConfigError, SearchIndexError, SpecsearchError
from specsearch.index.config import SearchKnobs
from specsearch.index.reader import IndexDirectory, highest_snr, merge_topk, split_ids
from specsearch.index.threads import ThreadPolicy
from specsearch.query.engine import MAX_K, Encoder, SearchEngine
from specsearch.query.filters import Filter
from specsearch.query.shard_groups import RemoteModality, ShardGroup, ShardGroupSpec

SHARD_TIMEOUT_S = 10.0
"""Default time a query waits for all of its shard groups before failing with 503."""
SOURCE_ID_CACHE = 1_000_000
"""global id -> source_id pairs remembered from k-NN answers (ids never change while an
index generation is served), so result pages need no extra round trip for their ids."""
SOURCE_CACHE = 4096
"""Sources whose vector, row count and rows are kept after a by-source lookup."""


class Pending(Protocol):
    """An answer on its way from a shard group."""

    def result(self, timeout_s: float) -> Any:
        """The value; raises the group's exception, or TimeoutError."""


class GroupCalls(Protocol):
    """How the engine reaches shard groups: call ``method`` of group ``group``."""

    def submit(self, group: int, method: str, kwargs: dict[str, Any]) -> Pending:
        """Start the call; do not wait for it."""


class _Done:
    __slots__ = ("value", "error")

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error

    def result(self, timeout_s: float) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class LocalGroups:
    """Shard groups in this process, called synchronously (tests; one machine)."""

    def __init__(self, groups: Sequence[ShardGroup]) -> None:
        self.groups = list(groups)

    def submit(self, group: int, method: str, kwargs: dict[str, Any]) -> Pending:
        try:
            return _Done(getattr(self.groups[group], method)(**kwargs))
        except Exception as exc:  # delivered by result(), as a remote call would
            return _Done(error=exc)


class ShardsUnavailableError(SearchIndexError):
    """Shard groups failed or timed out: the query has no complete answer (HTTP 503).

    Attributes:
        shards: ``modality/number`` of every shard that did not answer.
        groups: their group numbers.
    """

    def __init__(self, failures: dict[int, tuple[ShardGroupSpec, str]]) -> None:
        self.groups = sorted(failures)
        self.shards = [name for g in self.groups for name in failures[g][0].names]
        why = "; ".join(f"shard group {g}: {failures[g][1]}" for g in self.groups)
        super().__init__(
            f"shards {', '.join(self.shards)} are unavailable ({why}); no partial result is "
            f"returned: retry when the shard group is back (Ray Serve restarts failed "
            f"replicas; `serve status` shows their state)")


class DistributedEngine(SearchEngine):
    """:class:`SearchEngine` over shard groups reached through ``calls``.

    Args:
        index: the manifests (:func:`~specsearch.query.shard_groups.open_manifests`).
        specs: the shard groups (:func:`~specsearch.query.shard_groups.plan_shard_groups`);
            together they must hold every shard exactly once.
        calls: how each group is reached (group number = index in ``specs``).
        timeout_s: how long one fan-out waits for all its groups.
        encoder, threads, max_k: as :class:`SearchEngine` (``threads`` is sent with each
            k-NN call and applies inside the groups).
    Raises:
        ConfigError: the groups miss a shard or hold one twice.
    """

    def __init__(self, index: IndexDirectory, specs: Sequence[ShardGroupSpec],
                 calls: GroupCalls, *, timeout_s: float = SHARD_TIMEOUT_S,
                 encoder: Encoder | None = None, threads: ThreadPolicy | None = None,
                 max_k: int = MAX_K) -> None:
        super().__init__(index, encoder=encoder, threads=threads, max_k=max_k)
        self.specs = list(specs)
        self.calls = calls
        self.timeout_s = timeout_s
        self._owner: dict[tuple[str, int], int] = {}
        for spec in self.specs:
            for pair in spec.shards:
                if pair in self._owner:
                    raise ConfigError(f"shard {pair[0]}/{pair[1]} is in shard groups "
                                      f"{self._owner[pair]} and {spec.group}")
                self._owner[pair] = spec.group
        missing = [f"{m}/{e.shard}" for m, mi in index.modalities.items()
                   for e in mi.manifest.shards if (m, e.shard) not in self._owner]
        if missing:
            raise ConfigError(f"{index.root}: no shard group serves shards "
                              f"{', '.join(missing)}; plan groups with plan_shard_groups")
        self._sids: dict[str, dict[int, int]] = {m: {} for m in index.modalities}
        self._sources: OrderedDict[tuple[str, int], tuple] = OrderedDict()
        self._lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        out = super().info()
        out["shard_groups"] = [spec.to_dict() for spec in self.specs]
        return out

    # ----------------------------------------------------------------- fan-out

    def _call(self, method: str, requests: dict[int, dict[str, Any]]) -> dict[int, Any]:
        """Call ``method`` on several groups at once; every answer or an error.

        A query error inside a group (e.g. a filter on a missing column) is raised as is;
        a group that fails otherwise or misses the deadline -> ShardsUnavailableError.
        """
        deadline = time.monotonic() + self.timeout_s
        pending = {g: self.calls.submit(g, method, kw) for g, kw in requests.items()}
        results: dict[int, Any] = {}
        failures: dict[int, tuple[ShardGroupSpec, str]] = {}
        query_error: SpecsearchError | None = None
        for g, answer in pending.items():
            try:
                results[g] = answer.result(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                failures[g] = (self.specs[g], f"no answer within {self.timeout_s:g} s")
            except SearchIndexError as exc:
                failures[g] = (self.specs[g], str(exc)[:300])
            except SpecsearchError as exc:
                query_error = query_error or exc
            except Exception as exc:  # replica died, deployment gone, transport error
                failures[g] = (self.specs[g], f"{type(exc).__name__}: {str(exc)[:300]}")
        if failures:
            raise ShardsUnavailableError(failures)
        if query_error is not None:
            raise query_error
        return results

    def _groups_of(self, modality: str) -> list[int]:
        return sorted({g for (m, _), g in self._owner.items() if m == modality})

    def _by_owner(self, modality: str, numbers: np.ndarray) -> dict[int, np.ndarray]:
        """Positions of ``numbers`` (shard numbers) grouped by the group that owns them."""
        owners = np.array([self._owner[modality, int(n)] for n in numbers], dtype=np.int64)
        return {int(g): np.flatnonzero(owners == g) for g in np.unique(owners)}

    # ----------------------------------------------------------------- shard access

    def _knn(self, mi: RemoteModality, q: np.ndarray, k: int, *, knobs: SearchKnobs | None,
             flt: Filter, threads: int) -> tuple[np.ndarray, np.ndarray]:
        kw = dict(modality=mi.modality, queries=q, k=k, knobs=knobs, flt=flt, threads=threads)
        answers = self._call("knn", {g: kw for g in self._groups_of(mi.modality)})
        parts = sorted((p for parts in answers.values() for p in parts), key=lambda p: p[0])
        self._remember(mi.modality, parts)
        if not parts:
            return (np.full((len(q), k), -np.inf, np.float32),
                    np.full((len(q), k), -1, np.int64))
        return merge_topk([(sims, ids) for _, sims, ids, _ in parts], k)

    def _remember(self, modality: str, parts: list) -> None:
        cache = self._sids[modality]
        if len(cache) > SOURCE_ID_CACHE:
            cache.clear()
        for _, _, ids, sids in parts:
            valid = ids >= 0
            cache.update(zip(ids[valid].tolist(), sids[valid].tolist()))

    def _range(self, mi: RemoteModality, q: np.ndarray, threshold: float, *,
               knobs: SearchKnobs | None, flt: Filter, max_results: int
               ) -> tuple[np.ndarray, np.ndarray]:
        kw = dict(modality=mi.modality, queries=q, threshold=threshold, knobs=knobs, flt=flt,
                  max_results=max_results, threads=self.threads.single)
        answers = self._call("range", {g: kw for g in self._groups_of(mi.modality)})
        parts = sorted((p for parts in answers.values() for p in parts), key=lambda p: p[0])
        if not parts:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        sims = np.concatenate([p[1] for p in parts])
        ids = np.concatenate([p[2] for p in parts])
        order = np.argsort(-sims, kind="stable")[:max_results]
        return sims[order], ids[order]

    def _source_ids(self, mi: RemoteModality, ids: np.ndarray) -> np.ndarray:
        flat = np.asarray(ids, np.int64).ravel()
        cache = self._sids[mi.modality]
        out = np.array([cache.get(i, -1) if i >= 0 else -1 for i in flat.tolist()], np.int64)
        todo = np.flatnonzero((out < 0) & (flat >= 0))
        if len(todo):
            shard, _ = split_ids(flat[todo])
            where = self._by_owner(mi.modality, shard)
            answers = self._call("source_ids", {g: dict(modality=mi.modality,
                                                        ids=flat[todo[pos]])
                                                for g, pos in where.items()})
            for g, pos in where.items():
                out[todo[pos]] = answers[g]
        return out.reshape(np.shape(ids))

    def _fetch_rows(self, mi: RemoteModality, ids: np.ndarray) -> pa.Table:
        ids = np.asarray(ids, np.int64)
        if not len(ids):
            first = self._owner[mi.modality, mi.manifest.shards[0].shard]
            return self._call("rows", {first: dict(modality=mi.modality, ids=ids)})[first]
        shard, _ = split_ids(ids)
        where = self._by_owner(mi.modality, shard)
        answers = self._call("rows", {g: dict(modality=mi.modality, ids=ids[pos])
                                      for g, pos in where.items()})
        if len(where) == 1:
            return next(iter(answers.values()))
        order = np.concatenate(list(where.values()))
        table = pa.concat_tables([answers[g] for g in where])
        return table.take(pa.array(np.argsort(order, kind="stable")))

    def _source_info(self, mi: RemoteModality, source_id: int
                     ) -> tuple[np.ndarray | None, int, pa.Table | None, np.ndarray | None]:
        """(vector, live rows, rows table, identity vector) of a source, from its group
        once, then cached: a by-source query needs them all (query vector, exclusion,
        predictions, re-rank)."""
        key = (mi.modality, int(source_id))
        with self._lock:
            if key in self._sources:
                self._sources.move_to_end(key)
                return self._sources[key]
        g = self._owner[mi.modality, mi.shard_of(source_id)]
        info = self._call("source_info", {g: dict(modality=mi.modality,
                                                  source_id=int(source_id))})[g]
        with self._lock:
            self._sources[key] = info
            while len(self._sources) > SOURCE_CACHE:
                self._sources.popitem(last=False)
        return info

    def _count_rows(self, mi: RemoteModality, source_ids: np.ndarray) -> int:
        return sum(self._source_info(mi, s)[1] for s in np.asarray(source_ids).tolist())

    def _source_vector(self, mi: RemoteModality, source_id: int) -> np.ndarray | None:
        return self._source_info(mi, source_id)[0]

    def _source_table(self, mi: RemoteModality, source_id: int) -> pa.Table | None:
        return self._source_info(mi, source_id)[2]

    def _source_values(self, mi: RemoteModality, source_id: int, names: list[str]
                       ) -> dict[str, float] | None:
        table = self._source_table(mi, source_id)      # cached with the source's vector
        if table is None or not len(table):
            return None
        row = highest_snr(table.column("snr").to_numpy(zero_copy_only=False)) \
            if len(table) > 1 and "snr" in table.column_names else 0
        return {n: float(table.column(n).to_numpy(zero_copy_only=False)[row]) for n in names}

    def _source_identity(self, mi: RemoteModality, source_id: int) -> np.ndarray | None:
        return self._source_info(mi, source_id)[3]

    def _gather(self, method: str, mi: RemoteModality, ids: np.ndarray, **kw: Any
                ) -> list[tuple[np.ndarray, Any]]:
        """``method`` called on each group holding some of the global ``ids`` (with its
        own ids and ``kw``): (positions of its ids in ``ids``, its answer) per group."""
        ids = np.asarray(ids, np.int64)
        shard, _ = split_ids(ids)
        where = self._by_owner(mi.modality, shard)
        answers = self._call(method, {g: dict(modality=mi.modality, ids=ids[pos], **kw)
                                      for g, pos in where.items()})
        return [(pos, answers[g]) for g, pos in where.items()]

    def _fetch_columns(self, mi: RemoteModality, ids: np.ndarray, names: list[str]
                       ) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for pos, got in self._gather("columns", mi, ids, names=list(names)):
            for name, col in got.items():
                if name not in out:
                    out[name] = np.empty(len(ids), col.dtype)
                out[name][pos] = col
        return out

    def _fetch_identity(self, mi: RemoteModality, ids: np.ndarray) -> np.ndarray | None:
        out = None
        for pos, got in self._gather("identity", mi, ids):
            if got is None:
                continue
            if out is None:
                out = np.full((len(ids), got.shape[1]), np.nan, np.float32)
            out[pos] = got
        return out
