"""Typed search results: the neighbours of one query, with their stored metadata."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa


@dataclass
class Neighbours:
    """The neighbours of one query, best first.

    Attributes:
        modality: the modality searched (the neighbours' modality).
        source_id: (m,) int64 Gaia/survey source ids.
        similarity: (m,) float32 cosine similarity (1 = same direction).
        rank: (m,) int64 0-based rank in the full result list (``offset`` + position).
        query: what the query was (kind, source_id, modality, predictions for spectra...).
        total: how many neighbours the search produced before pagination (<= k).
        fetch: loads the m rows' stored columns; called on first use of :attr:`metadata`
            (hot loops that only need ids and similarities never pay for it).
    """

    modality: str
    source_id: np.ndarray
    similarity: np.ndarray
    rank: np.ndarray
    query: dict[str, Any] = field(default_factory=dict)
    total: int = 0
    fetch: Callable[[], pa.Table] | None = field(default=None, repr=False)
    _metadata: pa.Table | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.source_id.shape[0])

    @property
    def metadata(self) -> pa.Table:
        """Arrow table of the rows' stored columns (spectrum_id, ra, dec, snr, head
        predictions ``*_pred``/``*_err``, class_pred, ...), row-aligned with the ids."""
        if self._metadata is None:
            self._metadata = self.fetch() if self.fetch else pa.table(
                {"source_id": pa.array(self.source_id, pa.int64())})
        return self._metadata

    @property
    def spectrum_id(self) -> np.ndarray:
        """(m,) spectrum ids (object array of str)."""
        return np.asarray(self.metadata.column("spectrum_id").to_pylist(), dtype=object)

    @property
    def distance(self) -> np.ndarray:
        """Cosine distance, 1 - similarity (0 = identical direction, 2 = opposite)."""
        return 1.0 - self.similarity

    def to_arrow(self) -> pa.Table:
        """One table: rank, similarity, then every stored column."""
        table = self.metadata
        for name in ("similarity", "rank"):
            if name in table.column_names:
                table = table.drop_columns([name])
        table = table.add_column(0, "similarity", pa.array(self.similarity, pa.float32()))
        return table.add_column(0, "rank", pa.array(self.rank, pa.int64()))

    def to_pandas(self):
        """A pandas DataFrame (needs pandas)."""
        return self.to_arrow().to_pandas()

    def to_dicts(self) -> list[dict[str, Any]]:
        """One JSON-able dict a neighbour (NaN -> None)."""
        rows = self.to_arrow().to_pylist()
        for row in rows:
            for key, value in row.items():
                if isinstance(value, float) and value != value:
                    row[key] = None
        return rows

    def __repr__(self) -> str:
        head = ", ".join(f"{s}:{v:.3f}" for s, v in zip(self.source_id[:3],
                                                          self.similarity[:3]))
        return (f"Neighbours({self.modality}, {len(self)} of {self.total}, "
                f"[{head}{', ...' if len(self) > 3 else ''}])")
