"""The single-query fast path of :meth:`specsearch.query.SearchEngine.search`.

An interactive query (one unit vector, no filter, the index's own knobs, first page) on a
one-shard index without tombstones needs none of the general path's per-query Python:
filter parsing, result windows, batch normalisation, shard fan-out, the merge. On a slow
core that Python cost as much as the graph search itself. :class:`SingleQueryPlan` holds
what such a query needs, resolved once per modality, and answers it with one backend call
and one small result object: the same ids, similarities and metadata as the general path
(tested), or None where the general path must answer (it also raises the errors).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from specsearch.index.backends import Backend
from specsearch.index.reader import ModalityIndex
from specsearch.index.threads import faiss_threads
from specsearch.query.filters import Filter
from specsearch.query.results import Neighbours

NO_FILTER = str(Filter())
"""What a result's ``query["filter"]`` says for an unfiltered query."""
_FLOAT32 = np.dtype(np.float32)   # compared by identity: ``dtype != np.float32`` costs ~1 us


@dataclass(frozen=True)
class SingleQueryPlan:
    """A one-shard, tombstone-free modality, resolved for single queries."""

    index: ModalityIndex
    backend: Backend
    source_id: np.ndarray
    dim: int
    max_k: int

    @classmethod
    def of(cls, mi: ModalityIndex, max_k: int) -> "SingleQueryPlan | None":
        """The plan of ``mi``, or None when its queries need the general path."""
        if not isinstance(mi, ModalityIndex) or len(mi.shards) != 1:
            return None
        shard = mi.shards[0]
        if shard.number != 0 or not shard.count or shard.deleted is not None:
            return None
        return cls(mi, shard.backend, shard.column("source_id"), mi.dim,
                   min(shard.count, max_k))

    def search(self, embedding: Any, k: int, threads: int, query: dict[str, Any] | None,
               fetch_rows: Callable[[ModalityIndex, np.ndarray], pa.Table]
               ) -> Neighbours | None:
        """Top-``k`` of one (D,) float32 embedding, or None when the general path must
        answer (another type or shape, a zero or non-finite vector, k beyond the rows,
        knobs changed since the plan)."""
        mi = self.index
        if (type(embedding) is not np.ndarray or embedding.ndim != 1
                or embedding.dtype is not _FLOAT32 or embedding.shape[0] != self.dim
                or not 1 <= k <= self.max_k or mi.knobs is not self.backend.default_knobs):
            return None
        norm2 = float(embedding @ embedding)
        if not (norm2 > 0 and math.isfinite(norm2)):
            return None
        # The same arithmetic as SearchEngine._queries, so the same query vector.
        q = embedding.reshape(1, -1) / np.float32(math.sqrt(norm2))
        with faiss_threads(threads):
            sims, ids = self.backend.search_one(q, k, threads)
        # Fewer than k found (FAISS and hnswlib put the missing rows, -1, last): the
        # general path's padding rules apply.
        if ids[0, k - 1] < 0:
            return None
        ids = ids[0]
        return Neighbours(modality=mi.modality, source_id=self.source_id[ids],
                          similarity=sims[0], rank=np.arange(k),
                          query={"kind": "embedding", "filter": NO_FILTER, **(query or {})},
                          total=k, fetch=lambda: fetch_rows(mi, ids))
