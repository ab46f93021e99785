"""The single-query path of SearchEngine.search: the same results as the general path,
and the general path wherever the direct one does not apply."""

from __future__ import annotations

import numpy as np
import pytest

from specsearch.index import ArrayEmbeddings, BuildOptions, HNSWConfig, build_index
from specsearch.index.synthetic import clustered_unit_vectors
from specsearch.index.updates import delete_sources
from specsearch.query import SearchEngine

N, DIM = 2000, 32
CONFIGS = {"flat": None, "hnsw-pca-fp16": HNSWConfig(m=16, ef_construction=40, storage="fp16",
                                                      pca_dim=8, refine_factor=3.0),
           "hnswlib": None}


def _build(path, kind: str, vectors: np.ndarray, shards: int = 1):
    src = ArrayEmbeddings({"xp": {"embedding": vectors,
                                  "source_id": np.arange(N, dtype=np.int64) * 7 + 3,
                                  "snr": np.linspace(1, 50, N).astype(np.float32)}},
                          model_hash="test")
    config = CONFIGS.get(kind)
    kind = "hnsw" if kind.startswith("hnsw-") else kind
    build_index(src, path, BuildOptions(kind=kind, config=config, shards=shards,
                                        target_recall=None))
    return path


@pytest.fixture(scope="module")
def vectors():
    return clustered_unit_vectors(N + 50, DIM, n_clusters=20, seed=3)


@pytest.fixture(scope="module", params=list(CONFIGS))
def engine(request, vectors, tmp_path_factory):
    return SearchEngine.open(_build(tmp_path_factory.mktemp(request.param) / "idx",
                                    request.param, vectors[:N]))


def _same(a, b) -> None:
    assert np.array_equal(a.source_id, b.source_id)
    assert np.array_equal(a.similarity, b.similarity)
    assert np.array_equal(a.rank, b.rank)
    assert (a.modality, a.total, a.query) == (b.modality, b.total, b.query)
    assert a.metadata.equals(b.metadata)


def test_direct_path_equals_general_path(engine, vectors, monkeypatch):
    queries = vectors[N:]
    general = [engine.search(q, k=10, offset=0, limit=10) for q in queries[:20]]
    batch = engine.search(queries[:20], k=10)
    # The direct path never goes through the general shard access.
    monkeypatch.setattr(engine, "_knn", lambda *a, **kw: pytest.fail("general path used"))
    for q, g, b in zip(queries[:20], general, batch):
        one = engine.search(q, k=10)
        _same(one, g)
        # a batch normalises with einsum, a single query with a dot product: last-ulp
        assert np.array_equal(one.source_id, b.source_id)
        assert np.allclose(one.similarity, b.similarity, rtol=0, atol=1e-6)
        assert one.query == {"kind": "embedding", "filter": "(no filter)"}
    labelled = engine.search(queries[0], k=5, query={"kind": "source_id", "source_id": 1})
    assert labelled.query["source_id"] == 1 and len(labelled) == 5


def test_inputs_the_direct_path_does_not_take(engine, vectors):
    q = vectors[N]
    for query in (q.astype(np.float64), list(q), 3.0 * q, q[::-1][::-1], q.astype(">f4")):
        _same(engine.search(query, k=10), engine.search(query, k=10, offset=0, limit=10))
    with pytest.raises(Exception, match="finite and non-zero"):
        engine.search(np.zeros(DIM, np.float32), k=10)
    with pytest.raises(Exception, match="dimension"):
        engine.search(q[:5], k=10)
    with pytest.raises(Exception, match="no index for modality"):
        engine.search(q, modality="lamost", k=10)
    with pytest.raises(Exception, match="k >= 1"):
        engine.search(q, k=0)
    everything = engine.search(q, k=N + 10)     # k beyond the rows: the general path
    assert len(everything) == everything.total > 0.9 * N


def test_tombstones_and_shards_take_the_general_path(tmp_path, vectors):
    one = _build(tmp_path / "one", "flat", vectors[:N])
    delete_sources(one, [3, 10])          # source_ids of rows 0 and 1
    engine = SearchEngine.open(one)
    hits = engine.search(vectors[0], k=5)
    assert 3 not in set(hits.source_id) and 10 not in set(hits.source_id)
    sharded = SearchEngine.open(_build(tmp_path / "sharded", "flat", vectors[:N], shards=3))
    assert sharded._single_plan(None) is None
    single = SearchEngine.open(_build(tmp_path / "single", "flat", vectors[:N]))
    _same(sharded.search(vectors[N], k=10), single.search(vectors[N], k=10))


def test_subclass_with_its_own_shard_access_is_not_bypassed(tmp_path, vectors):
    calls = []

    class Counting(SearchEngine):
        def _knn(self, *args, **kwargs):
            calls.append(1)
            return super()._knn(*args, **kwargs)

    engine = Counting(SearchEngine.open(_build(tmp_path / "i", "flat", vectors[:N])).index)
    engine.search(vectors[N], k=10)
    assert calls == [1]


def test_fewer_than_k_found_takes_the_general_path(engine, vectors, monkeypatch):
    plan = engine._single_plan(None)
    real = plan.backend.search_one

    def short(q, k, threads=1):     # a backend that found only k - 1 rows
        sims, rows = real(q, k, threads)
        rows[0, -1] = -1
        return sims, rows

    calls = []

    def general(*args, **kwargs):
        calls.append(1)
        return SearchEngine._knn(engine, *args, **kwargs)

    monkeypatch.setattr(plan.backend, "search_one", short)
    monkeypatch.setattr(engine, "_knn", general)
    hits = engine.search(vectors[N], k=10)
    assert calls == [1] and len(hits) == 10
