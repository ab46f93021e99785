"""The query side: :class:`SearchEngine` over an index directory, filters and results."""

from specsearch.query.engine import MAX_K, Encoder, SearchEngine
from specsearch.query.filters import Cone, Condition, Filter
from specsearch.query.results import Neighbours

__all__ = ["MAX_K", "Encoder", "SearchEngine", "Cone", "Condition", "Filter", "Neighbours"]
