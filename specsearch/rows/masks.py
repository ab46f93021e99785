"""Metadata filters (the query engine's syntax) evaluated on row tables."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from specsearch.rows.sources import EmbeddingTable


def row_masks(tables: dict[str, EmbeddingTable], filters: Sequence[str] | None
              ) -> dict[str, np.ndarray]:
    """Evaluate metadata filters (e.g. ``snr>=20``, ``feh_pred<-2``, ``cone=45,1,0.5``) on
    each table's rows: modality -> (n,) bool rows kept; {} without filters.

    Raises:
        QueryError: a filter that does not parse or names no column of the rows.
    """
    if not filters:
        return {}
    from specsearch.query.filters import Filter

    flt = Filter.parse(list(filters))
    out = {}
    for m, t in tables.items():
        mask = flt.mask(_RowsView(t))
        if flt.modality and flt.modality != m:
            mask = np.zeros(len(t), bool)
        out[m] = np.ones(len(t), bool) if mask is None else mask
    return out


class _RowsView:
    """What :meth:`specsearch.query.filters.Filter.mask` reads: ``count`` and ``column``."""

    def __init__(self, table: EmbeddingTable) -> None:
        self.table = table
        self.count = len(table)

    def column(self, name: str) -> np.ndarray:
        return self.table.column(name)
