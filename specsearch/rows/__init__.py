"""Row tables of an index or embeddings dataset, and list files written from them.

The plumbing that anomaly lists, the metal-poor hunt, "more like this" and the service
share: one modality's rows as an :class:`EmbeddingTable` (vectors + predictions +
metadata), from an index directory or an embeddings dataset (:func:`load_source`), the
catalog they came from (:func:`find_catalog`), metadata filters on them
(:func:`row_masks`), and ranked lists written as Parquet/CSV/VOTable/FITS
(:func:`write_table`).

    loaded = load_source("indexes/synth")             # or an embeddings dataset
    masks = row_masks(loaded.tables, ["snr>=20"])
    write_table(some_ranked_table, "list.vot", meta={"model_hash": ...})
"""

from specsearch.rows.loading import Loaded, find_catalog, load_source
from specsearch.rows.masks import row_masks
from specsearch.rows.sources import (EmbeddingTable, IndexNeighbours, NeighbourSearch,
                                     table_from_embeddings, table_from_index)
from specsearch.rows.writers import write_table

__all__ = [
    "EmbeddingTable", "IndexNeighbours", "Loaded", "NeighbourSearch", "find_catalog",
    "load_source", "row_masks", "table_from_embeddings", "table_from_index", "write_table",
]
