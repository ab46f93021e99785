"""Several independent k-NN queries answered by one index call (the service's micro-batches).

:func:`search_many` takes queries that share the searched modality, ``k``, filter and knobs
(each with its own page), normalises each one exactly as a single query is normalised, runs
one ``(n, D)`` search and one metadata gather for all of them, and returns one
:class:`Neighbours` a query: the same ids, similarities and rows as
``engine.search(query, ...)`` called alone (tested), or, in the query's place, the
:class:`QueryError` that call would raise. FAISS computes the coarse/flat distances of fewer
than 20 queries one query at a time (its BLAS path starts at
``faiss.cvar.distance_compute_blas_threshold`` = 20 and rounds differently), so batches are
kept below that: :data:`MAX_BATCH`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from specsearch.errors import QueryError
from specsearch.index.config import SearchKnobs
from specsearch.query.filters import Filter
from specsearch.query.results import Neighbours

if TYPE_CHECKING:
    from specsearch.query.engine import FilterLike, SearchEngine

MAX_BATCH = 16
"""Most queries :func:`search_many` answers in one index call (see the module docstring)."""


class _SharedRows:
    """The stored rows of every query of a batch, gathered once on first use."""

    def __init__(self, engine: "SearchEngine", mi: Any, ids: list[np.ndarray]) -> None:
        self.engine, self.mi = engine, mi
        self.ids = ids
        self.starts = np.concatenate([[0], np.cumsum([len(i) for i in ids])])
        self.table = None

    def rows_of(self, i: int):
        if self.table is None:
            self.table = self.engine._result_rows(self.mi, np.concatenate(self.ids))
        return self.table.slice(int(self.starts[i]), len(self.ids[i]))


def search_many(engine: "SearchEngine", embeddings: Sequence[np.ndarray], *,
                modality: str | None = None, k: int = 10, filter: "FilterLike" = None,
                knobs: SearchKnobs | None = None,
                pages: Sequence[tuple[int, int | None]] | None = None,
                ) -> list[Neighbours | QueryError]:
    """Top-``k`` of each (D,) embedding, as :meth:`SearchEngine.search` would answer it.

    Args:
        embeddings: at most :data:`MAX_BATCH` queries.
        pages: ``(offset, limit)`` of each query (default: the whole window).

    Returns:
        per query, its :class:`Neighbours` or its :class:`QueryError` (bad vector or page).

    Raises:
        QueryError: a problem every query shares (filter, modality, k above max_k), as
            ``search`` would raise it for each of them; or more than MAX_BATCH queries.
    """
    if len(embeddings) > MAX_BATCH:
        raise QueryError(f"search_many answers at most {MAX_BATCH} queries in one call; got "
                         f"{len(embeddings)} (use engine.search with an (n, D) array)")
    flt = filter if isinstance(filter, Filter) else Filter.parse(filter)
    mi = engine._modality(modality, flt)
    engine._window(k, 0, None)
    pages = pages or [(0, None)] * len(embeddings)
    out: list[Neighbours | QueryError | None] = [None] * len(embeddings)
    todo, vectors, windows = [], [], []
    for i, (vec, (offset, limit)) in enumerate(zip(embeddings, pages)):
        try:
            window = engine._window(k, offset, limit)
            # One (1, D) query at a time: the same arithmetic as a single search.
            vectors.append(engine._queries(np.atleast_2d(vec)))
        except QueryError as exc:
            out[i] = exc
            continue
        todo.append(i)
        windows.append(window)
    if not todo:
        return out
    q = np.ascontiguousarray(np.concatenate(vectors))
    fetch = min(k, max(mi.count, 1))
    sims, ids = engine._knn(mi, q, fetch, knobs=knobs, flt=flt,
                            threads=engine.threads.threads_for(len(q)))
    sims, ids = sims[:, :k], ids[:, :k]
    kept = []
    for row, (offset, limit) in enumerate(windows):
        valid = ids[row] >= 0
        stop = None if limit is None else offset + limit
        kept.append((int(valid.sum()), ids[row][valid][offset:stop],
                     sims[row][valid][offset:stop]))
    shared = _SharedRows(engine, mi, [row_ids for _, row_ids, _ in kept])
    query = {"kind": "embedding", "filter": str(flt)}
    for j, (i, (total, row_ids, row_sims), (offset, _)) in enumerate(zip(todo, kept, windows)):
        out[i] = Neighbours(modality=mi.modality, source_id=engine._source_ids(mi, row_ids),
                            similarity=row_sims.astype(np.float32),
                            rank=np.arange(offset, offset + len(row_ids)), query=dict(query),
                            total=total, fetch=lambda j=j: shared.rows_of(j))
    return out
