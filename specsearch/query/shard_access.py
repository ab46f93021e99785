"""Where the search engine reads shard data: the one seam between its query logic and its
shards.

Every read of shard data by :class:`specsearch.query.SearchEngine` goes through the methods
of :class:`LocalShardAccess` (shards opened in this process), so an engine whose shards live
in other processes (:class:`specsearch.query.distributed.DistributedEngine`) overrides these
and nothing else: the query logic is shared, and so are its results.
"""

from __future__ import annotations

import numpy as np

from specsearch.index.config import SearchKnobs
from specsearch.index.reader import (ModalityIndex, preferred_identity, preferred_position,
                                     preferred_vector, stored_columns, stored_identity,
                                     stored_rows)
from specsearch.index.threads import faiss_threads
from specsearch.query.filters import Filter


class LocalShardAccess:
    """Shard reads over an opened :class:`~specsearch.index.reader.IndexDirectory`'s
    shards (the engine supplies ``threads`` and ``_masks``)."""

    def _knn(self, mi: ModalityIndex, q: np.ndarray, k: int, *, knobs: SearchKnobs | None,
             flt: Filter, threads: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (similarity, global id) of (nq, D) unit queries over all shards."""
        with faiss_threads(threads):
            return mi.knn(q, k, knobs=knobs, filter_masks=self._masks(mi, flt),
                          threads=threads)

    def _range(self, mi: ModalityIndex, q: np.ndarray, threshold: float, *,
               knobs: SearchKnobs | None, flt: Filter, max_results: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, global ids) of one query's rows above ``threshold``."""
        with faiss_threads(self.threads.single):
            ((sims, ids),) = mi.range(q, threshold, knobs=knobs,
                                      filter_masks=self._masks(mi, flt),
                                      max_results=max_results)
        return sims, ids

    def _count_rows(self, mi: ModalityIndex, source_ids: np.ndarray) -> int:
        """Live rows of these (unique) sources."""
        return sum(len(mi.locate(int(s))[1]) for s in source_ids)

    def _fetch_rows(self, mi: ModalityIndex, ids: np.ndarray):
        """The stored rows (pyarrow Table) of global ids, in their order."""
        if not len(ids):
            return mi.shards[0].rows.schema.empty_table()
        return stored_rows(lambda s: mi.shards[s], ids)

    def _fetch_columns(self, mi: ModalityIndex, ids: np.ndarray, names: list[str]
                       ) -> dict[str, np.ndarray]:
        """Numeric stored columns ``names`` of non-empty global ids, in their order."""
        return stored_columns(lambda s: mi.shards[s], ids, names)

    def _fetch_identity(self, mi: ModalityIndex, ids: np.ndarray) -> np.ndarray | None:
        """(n, d) identity vectors of non-empty global ids in their order (NaN rows: none),
        or None when the shards hold none."""
        return stored_identity(lambda s: mi.shards[s], ids)

    def _source_identity(self, mi: ModalityIndex, source_id: int) -> np.ndarray | None:
        """The identity vector of a source's preferred row, or None."""
        s, rows = mi.locate(int(source_id))
        return preferred_identity(mi.shards[s], rows) if len(rows) else None

    def _source_vector(self, mi: ModalityIndex, source_id: int) -> np.ndarray | None:
        """The stored vector of a source's preferred row, or None."""
        s, rows = mi.locate(int(source_id))
        return preferred_vector(mi.shards[s], rows) if len(rows) else None

    def _source_values(self, mi: ModalityIndex, source_id: int, names: list[str]
                       ) -> dict[str, float] | None:
        """Numeric stored columns ``names`` of a source's preferred row (highest S/N), or
        None when it has no row."""
        s, rows = mi.locate(int(source_id))
        if not len(rows):
            return None
        shard = mi.shards[s]
        row = preferred_position(shard, rows)
        return {n: float(shard.column(n)[row]) for n in names}

    def _source_table(self, mi: ModalityIndex, source_id: int):
        """The stored rows (pyarrow Table) of one source, or None."""
        import pyarrow as pa
        s, rows = mi.locate(int(source_id))
        return mi.shards[s].rows.take(pa.array(rows)) if len(rows) else None

    def _source_ids(self, mi: ModalityIndex, ids: np.ndarray) -> np.ndarray:
        """source_id of global ids."""
        return mi.source_ids(ids)
