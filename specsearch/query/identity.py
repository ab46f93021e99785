"""Same-star re-ranking by identity vectors (:meth:`specsearch.query.SearchEngine.search`).

The embedding says "what kind of star"; a model's identity vectors (``SpecModel.
identity_numpy``, stored as the index rows' ``identity`` column) say "which star". A
same-instrument search of an index that stores them takes the embedding's top
:func:`rerank_window` candidates and orders them by the mean of the two cosines
(:func:`rerank`): a star's other visits come before its look-alikes, and the rest keep
close to the embedding's order. Measured on the synthetic repeat visits (BENCHMARKS.md,
"Identity retrieval"), re-ranking the top 50 finds the other visit as often as ranking
every row by the mean cosine (0.916 against 0.917 among 10,000), and the neighbours'
S/N does not follow the query's (Spearman +0.078).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from specsearch.errors import QueryError

if TYPE_CHECKING:
    from specsearch.index.reader import ModalityIndex
    from specsearch.query.shard_access import LocalShardAccess

RERANK_MIN = 50
RERANK_FACTOR = 5
"""An identity re-rank orders the embedding's top max(RERANK_MIN, RERANK_FACTOR * k)."""


def rerank_window(k: int, max_k: int) -> int:
    """Candidates the embedding search fetches for a re-ranked top-``k``."""
    return min(max(RERANK_MIN, RERANK_FACTOR * k), max_k)


def rerank(sims: np.ndarray, ids: np.ndarray, query: np.ndarray,
           candidates: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """One query's candidates ordered by the mean of embedding and identity cosines.

    Args:
        sims, ids: (m,) embedding cosines and global ids of the candidates (id -1: none).
        query: (d,) the query's unit identity vector.
        candidates: (number of valid ids, d) their identity vectors in the order of the
            valid ids (NaN rows: none; then the candidate keeps its embedding cosine), or
            None when the rows have no identity column.
    Returns:
        (m,) scores and ids, best first (the missing ids last, at -inf).
    """
    valid = ids >= 0
    score = sims.astype(np.float32).copy()
    if candidates is not None and valid.any():
        id_sims = candidates @ query
        score[valid] = np.where(np.isfinite(id_sims), 0.5 * (score[valid] + id_sims),
                                score[valid])
    score[~valid] = -np.inf
    order = np.argsort(-score, kind="stable")
    return score[order], ids[order]


def rerank_by_identity(access: "LocalShardAccess", mi: "ModalityIndex", identity: np.ndarray,
                       sims: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1, m) candidates in :func:`rerank` order, their identity vectors read from ``mi``'s
    shards through ``access`` (the engine's shard reads)."""
    valid = ids[0] >= 0
    vecs = access._fetch_identity(mi, ids[0][valid]) if valid.any() else None
    if vecs is not None and vecs.shape[1] != identity.size:
        raise QueryError(f"the query's identity vector has dimension {identity.size}; "
                         f"the {mi.modality} index stores {vecs.shape[1]}-d ones")
    score, order = rerank(sims[0], ids[0], identity, vecs)
    return score[None], order[None]
