"""Vector indexes over embeddings: FAISS (flat, IVF-Flat, IVF-PQ, HNSW) and hnswlib backends,
sharded by source_id, with manifests, atomic writes, tuning and incremental updates.

Build with :func:`build_index`, open with :func:`open_index`; the query API on top is
:class:`specsearch.query.SearchEngine`. Nothing is imported from FAISS/hnswlib until used.
"""

from specsearch.index.build import BuildOptions, build_index
from specsearch.index.config import (KINDS, FlatConfig, HNSWConfig, HnswlibConfig, IndexConfig,
                                     IVFFlatConfig, IVFPQConfig, SearchKnobs, make_config)
from specsearch.index.embedding_sources import ArrayEmbeddings
from specsearch.index.reader import IndexDirectory, ModalityIndex, open_index
from specsearch.index.threads import ThreadPolicy
from specsearch.index.updates import UpdateReport, add_embeddings, compact, delete_sources

__all__ = [
    "ArrayEmbeddings", "BuildOptions", "build_index", "KINDS", "FlatConfig", "HNSWConfig",
    "HnswlibConfig", "IndexConfig", "IVFFlatConfig", "IVFPQConfig", "SearchKnobs",
    "make_config", "IndexDirectory", "ModalityIndex", "open_index", "ThreadPolicy",
    "UpdateReport", "add_embeddings", "compact", "delete_sources",
]
