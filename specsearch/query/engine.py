"""The search engine over an index directory: k-NN, cross-modal, filtered and range queries.

    engine = SearchEngine.open("indexes/survey")
    hits = engine.search_source(1234567890, k=20)                 # LAMOST -> LAMOST
    partner = engine.search_source(1234567890, target_modality="xp", k=5)   # cross-modal
    hits = engine.search(vectors, modality="xp", k=100, filter="feh_pred<-2; snr>=20")
    engine.attach_encoder(load_model(None))
    hits = engine.search_spectrum(spectrum, target_modality="xp")

Same-star searches (a stored star, or a spectrum, against its own instrument) of an index
built with identity vectors (the embeddings' ``identity`` column, :mod:`specsearch.io.
embeddings`, kept per shard beside the vectors) are re-ranked by them (:mod:`specsearch.query.identity`; ``query["ranked_by"]`` says so, and
the ``similarity`` is then the mean of the embedding and identity cosines). Cross-modal
searches of a stored star or a spectrum are re-ranked by how well the candidates' predicted
parameters agree with the query's (:mod:`specsearch.query.agreement`; ``ranked_by``
``embedding+parameters``, the ``similarity`` then the cosine plus the weighted log
agreement).

Queries are L2-normalised float32 embeddings. Every modality's index was checked at open to
come from one model (:mod:`specsearch.index.manifest`), so cross-modal search compares
like with like; an attached encoder (spectrum queries, :mod:`specsearch.query.
spectrum_queries`) must have that model's hash too.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from specsearch.embed.encode import Encoder
from specsearch.errors import NotFoundError, QueryError
from specsearch.index.config import SearchKnobs
from specsearch.index.reader import IndexDirectory, ModalityIndex, open_index
from specsearch.index.threads import ThreadPolicy
from specsearch.query import agreement as agree
from specsearch.query.direct import SingleQueryPlan
from specsearch.query.filters import Filter
from specsearch.query.identity import rerank_by_identity, rerank_window
from specsearch.query.results import Neighbours
from specsearch.query.shard_access import LocalShardAccess
from specsearch.query.spectrum_queries import SpectrumQueries

MAX_K = 10_000
"""Largest result window (k, or offset + limit) a query may ask for."""


FilterLike = Filter | str | list[str] | tuple[str, ...] | None


class SearchEngine(SpectrumQueries, LocalShardAccess):
    """Search an opened index directory (see module docstring).

    Args:
        index: an :class:`IndexDirectory` (:func:`specsearch.index.open_index`).
        encoder: optional model for spectrum queries (see :meth:`attach_encoder`).
        threads: FAISS/hnswlib thread policy (1 thread for single queries, all cores for
            batches by default).
        max_k: the largest k / offset+limit accepted.
    """

    def __init__(self, index: IndexDirectory, *, encoder: Encoder | None = None,
                 threads: ThreadPolicy | None = None, max_k: int = MAX_K) -> None:
        self.index = index
        self.threads = threads or ThreadPolicy()
        self.max_k = max_k
        self.encoder: Encoder | None = None
        self._mask_cache: OrderedDict[tuple[str, Filter], list] = OrderedDict()
        self._mask_lock = threading.Lock()      # the service queries from many threads
        self._plans: dict[str | None, SingleQueryPlan | None] = {}
        if encoder is not None:
            self.attach_encoder(encoder)

    @classmethod
    def open(cls, index_dir: str | Path, *, encoder: Encoder | None = None, mmap: bool = True,
             verify: bool = True, knobs: SearchKnobs | None = None,
             threads: ThreadPolicy | None = None, max_k: int = MAX_K) -> "SearchEngine":
        """Open ``index_dir`` (checks manifests, model hashes and shard checksums)."""
        return cls(open_index(index_dir, mmap=mmap, verify=verify, knobs=knobs),
                   encoder=encoder, threads=threads, max_k=max_k)

    # ----------------------------------------------------------------- properties

    @property
    def model_hash(self) -> str:
        return self.index.manifest.model_hash

    @property
    def modalities(self) -> list[str]:
        return list(self.index.modalities)

    @property
    def embedding_dim(self) -> int:
        return self.index.manifest.embedding_dim

    def info(self) -> dict[str, Any]:
        """Sizes, backends, knobs and measured recall per modality (JSON-able)."""
        out: dict[str, Any] = {"root": str(self.index.root), "model_hash": self.model_hash,
                               "embedding_dim": self.embedding_dim,
                               "generation": self.index.manifest.generation, "modalities": {}}
        for name, mi in self.index.modalities.items():
            m = mi.manifest
            out["modalities"][name] = {
                "count": m.count, "deleted": sum(s.deleted for s in m.shards),
                "shards": m.n_shards, "backend": m.backend.to_dict(),
                "search": m.search.to_dict(),
                "measured_recall": m.tuning.measured_recall if m.tuning else None,
                "bytes": sum(f.bytes for s in m.shards for f in s.files()),
                "columns": m.columns, "identity": m.has_identity,
                "identity_dim": m.identity_dim}
        return out

    # ----------------------------------------------------------------- helpers

    def _modality(self, modality: str | None, flt: Filter) -> ModalityIndex:
        if flt.modality and modality and flt.modality != modality:
            raise QueryError(f"filter asks for modality {flt.modality!r} but the query "
                             f"targets {modality!r}")
        name = modality or flt.modality
        if name is None:
            if len(self.index.modalities) != 1:
                raise QueryError(f"say which modality to search (one of "
                                 f"{self.modalities})")
            name = self.modalities[0]
        return self.index[name]

    def _masks(self, mi: ModalityIndex, flt: Filter) -> list[np.ndarray | None] | None:
        if flt.empty:
            return None
        key = (mi.modality, flt)
        with self._mask_lock:
            masks = self._mask_cache.get(key)
            if masks is not None:
                self._mask_cache.move_to_end(key)
                return masks
        masks = [flt.mask(shard) for shard in mi.shards]   # outside the lock: can be slow
        with self._mask_lock:
            self._mask_cache[key] = masks
            while len(self._mask_cache) > 32:
                self._mask_cache.popitem(last=False)
        return masks

    def _window(self, k: int, offset: int, limit: int | None) -> tuple[int, int]:
        limit = k - offset if limit is None else limit
        if k < 1 or offset < 0 or limit < 0 or offset + limit > k:
            raise QueryError(f"need k >= 1, offset >= 0, limit >= 0 and offset + limit <= k;"
                             f" got k={k}, offset={offset}, limit={limit}")
        if k > self.max_k:
            raise QueryError(f"k={k} exceeds the maximum of {self.max_k}; page through "
                             f"results with offset/limit within that window")
        return offset, limit

    def _queries(self, embedding: np.ndarray) -> np.ndarray:
        q = np.asarray(embedding, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.embedding_dim:
            raise QueryError(f"query embedding(s) must have dimension {self.embedding_dim}; "
                             f"got shape {np.shape(embedding)}")
        if q.shape[0] == 1:  # scalar path: a few numpy calls cost more than the search
            norm2 = float(q[0] @ q[0])
            if not (norm2 > 0 and math.isfinite(norm2)):
                raise QueryError("query embedding must be finite and non-zero")
            return q / np.float32(math.sqrt(norm2))
        norms = np.sqrt(np.einsum("ij,ij->i", q, q))
        if not (np.isfinite(norms).all() and norms.min() > 0):
            raise QueryError("query embeddings must be finite and non-zero")
        return np.ascontiguousarray(q / norms[:, None])

    def _neighbours(self, mi: ModalityIndex, sims: np.ndarray, ids: np.ndarray,
                    offset: int, limit: int | None, query: dict[str, Any]) -> Neighbours:
        valid = ids >= 0
        total = int(valid.sum())
        stop = None if limit is None else offset + limit
        ids, sims = ids[valid][offset:stop], sims[valid][offset:stop]

        return Neighbours(modality=mi.modality, source_id=self._source_ids(mi, ids),
                          similarity=sims.astype(np.float32),
                          rank=np.arange(offset, offset + len(ids)), query=query,
                          total=total, fetch=lambda: self._result_rows(mi, ids))

    def _result_rows(self, mi: ModalityIndex, ids: np.ndarray):
        """The rows results show (the identity vectors are not among them)."""
        return self._fetch_rows(mi, ids)

    def has_identity(self, modality: str) -> bool:
        """Whether ``modality``'s index stores identity vectors (same-star re-ranking)."""
        return self.index[modality].manifest.has_identity

    def identity_of(self, source_id: int, modality: str) -> np.ndarray | None:
        """The stored identity vector of a source's preferred row in ``modality`` (the one
        :meth:`vector_of` gives), or None (no identity vectors, no row, a missing one)."""
        if not self.has_identity(modality):
            return None
        return self._source_identity(self.index[modality], source_id)

    def source_parameters(self, source_id: int, modality: str
                          ) -> dict[str, tuple[float, float]]:
        """(value, uncertainty) of the :data:`~specsearch.query.agreement.TOLERANCE` labels
        stored for a source's preferred row in ``modality`` (highest S/N, as
        :meth:`vector_of`); empty when the rows store none."""
        return agree.stored_parameters(self, self.index[modality], source_id)

    # ----------------------------------------------------------------- k-NN

    def search(self, embedding: np.ndarray, *, modality: str | None = None, k: int = 10,
               offset: int = 0, limit: int | None = None, filter: FilterLike = None,
               knobs: SearchKnobs | None = None,
               exclude_source_ids: np.ndarray | list[int] | None = None,
               query: dict[str, Any] | None = None,
               identity: np.ndarray | None = None,
               parameters: dict[str, tuple[float, float]] | None = None
               ) -> Neighbours | list[Neighbours]:
        """k-NN of embedding(s) in ``modality``'s index.

        Args:
            embedding: (D,) for one query (returns :class:`Neighbours`) or (n, D) for a batch
                (returns a list).
            modality: the index to search (the neighbours' modality); may come from a
                ``modality=`` filter; optional when the index has one modality.
            k: result window (<= max_k); ``offset``/``limit`` select a page of it.
            filter: a :class:`Filter` or filter strings (see :mod:`specsearch.query.filters`).
            knobs: per-query nprobe/ef_search/refine_factor instead of the tuned ones.
            exclude_source_ids: sources never returned (e.g. the query star itself); handled
                by over-fetching, so the top-k of the other rows stays exact.
            identity: the query's (identity_dim,) identity vector (one query only): when
                ``modality``'s index stores identity vectors, the embedding's top
                candidates are re-ranked by them (:mod:`specsearch.query.identity`);
                ignored otherwise.
            parameters: the query's predicted (value, uncertainty) per label (one query
                only; not with ``identity``): the embedding's top candidates are re-ranked
                by how well their stored predictions agree (:mod:`specsearch.query.
                agreement`); ignored when the rows store none of them.

        One float32 (D,) query without filter, knobs, exclusions or paging on a one-shard
        index takes a direct path (:mod:`specsearch.query.direct`): same result, ~10-15 us
        of Python on a slow core instead of 130-180.
        """
        if (filter is None and knobs is None and exclude_source_ids is None and offset == 0
                and limit is None and identity is None and parameters is None):
            plan = self._single_plan(modality)
            hit = plan and plan.search(embedding, k, self.threads.threads_for(1), query,
                                       self._result_rows)
            if hit is not None:
                return hit
        flt = filter if isinstance(filter, Filter) else Filter.parse(filter)
        mi = self._modality(modality, flt)
        offset, limit = self._window(k, offset, limit)
        single = np.ndim(embedding) == 1
        q = self._queries(np.atleast_2d(embedding))
        n_excl = 0
        if exclude_source_ids is not None and len(exclude_source_ids):
            excluded = np.unique(np.asarray(exclude_source_ids, dtype=np.int64))
            n_excl = self._count_rows(mi, excluded)
        query_identity = None
        if identity is not None and self.has_identity(mi.modality):
            if not single:
                raise QueryError("an identity re-rank takes one query at a time")
            query_identity = np.asarray(identity, np.float32).ravel()
            if not np.isfinite(query_identity).all():
                query_identity = None
        if parameters is not None and not single:
            raise QueryError("a parameter re-rank takes one query at a time")
        if parameters is not None and query_identity is not None:
            raise QueryError("a search re-ranks by identity vectors or by parameters, not both")
        params = dict(parameters) if parameters else None
        window = (k if query_identity is None and params is None
                  else rerank_window(k, self.max_k))
        fetch = min(window + n_excl, max(mi.count, 1))
        sims, ids = self._knn(mi, q, fetch, knobs=knobs, flt=flt,
                              threads=self.threads.threads_for(len(q)))
        if n_excl:
            sid = self._source_ids(mi, ids)
            drop = np.isin(sid, excluded) | (ids < 0)
            sims = np.where(drop, -np.inf, sims)
            ids = np.where(drop, -1, ids)
            order = np.argsort(-sims, axis=1, kind="stable")
            sims = np.take_along_axis(sims, order, 1)
            ids = np.take_along_axis(ids, order, 1)
        base = {"kind": "embedding", "filter": str(flt), **(query or {})}
        if query_identity is not None:
            sims, ids = rerank_by_identity(self, mi, query_identity, sims[:, :window],
                                           ids[:, :window])
            base["ranked_by"] = "embedding+identity"
        elif params is not None:
            got = agree.rerank_by_agreement(self, mi, params, sims[:, :window],
                                            ids[:, :window])
            if got is not None:
                sims, ids = got
                base["ranked_by"] = "embedding+parameters"
        sims, ids = sims[:, :k], ids[:, :k]
        out = [self._neighbours(mi, sims[i], ids[i], offset, limit, base)
               for i in range(len(q))]
        return out[0] if single else out

    def search_many(self, embeddings: list[np.ndarray], *, modality: str | None = None,
                    k: int = 10, filter: FilterLike = None, knobs: SearchKnobs | None = None,
                    pages: list[tuple[int, int | None]] | None = None
                    ) -> list[Neighbours | QueryError]:
        """Up to 16 single queries in one index call, each answered as :meth:`search`
        answers it alone, or with its QueryError (:func:`specsearch.query.batched.search_many`)."""
        from specsearch.query.batched import search_many
        return search_many(self, embeddings, modality=modality, k=k, filter=filter,
                           knobs=knobs, pages=pages)

    def _single_plan(self, modality: str | None) -> SingleQueryPlan | None:
        """The single-query plan of ``modality`` (None: the only one), or None where the
        general path is needed, always so when a subclass reads shards its own way
        (shards in other processes)."""
        if modality in self._plans:
            return self._plans[modality]
        names = self.index.modalities
        name = modality if modality is not None else (
            next(iter(names)) if len(names) == 1 else None)
        mi = names.get(name) if name is not None else None
        if mi is None:   # the general path reports it; unknown names are not cached
            return None
        local = all(getattr(type(self), method) is getattr(SearchEngine, method)
                    for method in ("_knn", "_source_ids", "_fetch_rows"))
        plan = SingleQueryPlan.of(mi, self.max_k) if local else None
        self._plans[modality] = plan
        return plan

    def vector_of(self, source_id: int, modality: str | None = None) -> tuple[str, np.ndarray]:
        """(modality, (D,) stored vector) of a source; with several spectra of the star in
        that modality, the highest-S/N one (else the first). Without ``modality``, the first
        modality (in manifest order) that holds the source."""
        names = [modality] if modality else self.modalities
        for name in names:
            vec = self._source_vector(self.index[name], source_id)
            if vec is not None:
                return name, vec
        raise NotFoundError(f"source_id {source_id} is not in the "
                            f"{'/'.join(names)} index of {self.index.root}")

    def search_source(self, source_id: int, *, modality: str | None = None,
                      target_modality: str | None = None, k: int = 10, offset: int = 0,
                      limit: int | None = None, filter: FilterLike = None,
                      knobs: SearchKnobs | None = None,
                      exclude_self: bool | None = None, identity: bool = True,
                      agreement: bool = True) -> Neighbours:
        """Neighbours of a star by its source_id, using its stored embedding.

        ``modality`` is the modality of the query spectrum (default: the first that has the
        star), ``target_modality`` the one searched (default: the same). ``exclude_self``
        (default: True in-modality, False cross-modal, where finding the star's own partner
        spectrum is the point) drops the star's own rows. ``identity``: in-modality, re-rank
        by the stored identity vectors where the index has them; ``agreement``:
        cross-modal, re-rank by the agreement of the stored parameters (module docstring).
        """
        flt = filter if isinstance(filter, Filter) else Filter.parse(filter)
        query_modality, vec = self.vector_of(source_id, modality)
        target = target_modality or flt.modality or query_modality
        if exclude_self is None:
            exclude_self = target == query_modality
        id_vec = (self.identity_of(source_id, query_modality)
                  if identity and target == query_modality else None)
        params = (self.source_parameters(source_id, query_modality)
                  if agreement and target != query_modality else None)
        return self.search(vec, modality=target, k=k, offset=offset, limit=limit, filter=flt,
                           knobs=knobs, exclude_source_ids=[source_id] if exclude_self else None,
                           query={"kind": "source_id", "source_id": int(source_id),
                                  "query_modality": query_modality}, identity=id_vec,
                           parameters=params or None)

    # ----------------------------------------------------------------- range / lookup

    def range_search(self, embedding: np.ndarray, threshold: float, *,
                     modality: str | None = None, filter: FilterLike = None,
                     max_results: int | None = None,
                     knobs: SearchKnobs | None = None) -> Neighbours:
        """Every row with cosine similarity >= ``threshold`` to one (D,) embedding, best
        first, at most ``max_results`` (default max_k). Exact for flat indexes; see
        :meth:`specsearch.index.shard.Shard.range` for the others."""
        if not -1.0 <= threshold <= 1.0:
            raise QueryError(f"cosine threshold must be in [-1, 1], got {threshold}")
        flt = filter if isinstance(filter, Filter) else Filter.parse(filter)
        mi = self._modality(modality, flt)
        cap = min(max_results or self.max_k, self.max_k)
        q = self._queries(np.atleast_2d(embedding))[:1]
        sims, ids = self._range(mi, q, threshold, knobs=knobs, flt=flt, max_results=cap)
        return self._neighbours(mi, sims, ids, 0, None, {"kind": "range", "threshold": threshold,
                                                   "filter": str(flt)})

    def lookup(self, source_id: int, modality: str | None = None):
        """The stored rows (pyarrow Table, all modalities unless given) of one source."""
        import pyarrow as pa
        tables = []
        for name in ([modality] if modality else self.modalities):
            table = self._source_table(self.index[name], source_id)
            if table is not None:
                tables.append(table)
        if not tables:
            raise NotFoundError(f"source_id {source_id} is not in this index")
        return pa.concat_tables(tables, promote_options="permissive")
