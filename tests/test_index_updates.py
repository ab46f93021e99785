"""Add / delete / compact without a full rebuild, persisted atomically."""

from __future__ import annotations

import numpy as np
import pytest

from specsearch.errors import SearchIndexError
from specsearch.index import (ArrayEmbeddings, BuildOptions, HNSWConfig, IVFFlatConfig,
                              IVFPQConfig, add_embeddings, build_index, compact,
                              delete_sources, open_index)
from specsearch.index.atomic import SimulatedCrash
from specsearch.index.synthetic import clustered_unit_vectors
from specsearch.query import SearchEngine

DIM = 16


def _arrays(n, seed, start=0):
    vectors = clustered_unit_vectors(n, DIM, n_clusters=20, intrinsic_dim=6, seed=seed)
    rng = np.random.default_rng(seed)
    return {"embedding": vectors,
            "source_id": rng.choice(2 ** 60, n, replace=False).astype(np.int64),
            "spectrum_id": [f"s{start + i}" for i in range(n)],
            "snr": rng.uniform(1, 100, n).astype(np.float32)}


def _recall(engine, queries, k=10):
    """Mean recall@k of the engine against brute force over the live stored rows."""
    hits = [len(set(h.spectrum_id) & _exact(engine, q, k))
            for h, q in zip(engine.search(queries, modality="lamost", k=k), queries)]
    return np.mean(hits) / k


def _exact(engine, q, k):
    """Brute force over every live stored row of the lamost index."""
    mi = engine.index["lamost"]
    vecs, ids = [], []
    for shard in mi.shards:
        live = shard.live_mask()
        rows = np.arange(shard.count) if live is None else np.flatnonzero(live)
        vecs.append(np.asarray(shard.vectors[rows]))
        ids.append(shard.column("spectrum_id")[rows])
    vecs, ids = np.concatenate(vecs), np.concatenate(ids)
    return set(ids[np.argsort(-(vecs @ q))[:k]])


@pytest.fixture(params=["hnsw", "ivf_flat", "ivf_pq", "hnswlib"])
def index_dir(request, tmp_path):
    config = {"hnsw": HNSWConfig(m=16, ef_construction=40),
              "ivf_flat": IVFFlatConfig(nlist=16, nprobe=16),
              "ivf_pq": IVFPQConfig(nlist=8, nprobe=8, pq_m=8, pq_nbits=4)}.get(request.param)
    build_index(ArrayEmbeddings({"lamost": _arrays(2000, 1)}, model_hash="m"),
                tmp_path / "idx", BuildOptions(kind=request.param, config=config, shards=3,
                                               target_recall=0.97, tune_queries=100))
    return tmp_path / "idx"


def test_add_delete_compact_round_trip(index_dir):
    new = _arrays(300, 2, start=2000)
    report = add_embeddings(index_dir, ArrayEmbeddings({"lamost": new}, model_hash="m"))
    assert report.added == {"lamost": 300} and report.replaced == {"lamost": 0}
    engine = SearchEngine.open(index_dir)
    assert engine.info()["modalities"]["lamost"]["count"] == 2300
    assert engine.index.manifest.generation == 2
    # a new vector finds itself first
    hit = engine.search(new["embedding"][5], modality="lamost", k=1)
    assert hit.spectrum_id[0] == "s2005" and hit.similarity[0] == pytest.approx(1, abs=1e-3)

    gone = new["source_id"][:50]
    report = delete_sources(index_dir, gone)
    assert report.deleted == {"lamost": 50} and report.not_found == {"lamost": 0}
    engine = SearchEngine.open(index_dir)
    assert engine.info()["modalities"]["lamost"]["count"] == 2250
    hits = engine.search(new["embedding"][:50], modality="lamost", k=10)
    for h in hits:
        assert not set(h.source_id) & set(gone)
    with pytest.raises(Exception, match="not in"):
        engine.search_source(int(gone[0]))
    # deleted rows do not cost recall: the top-10 of the live rows are still found
    queries = new["embedding"][50:100]
    assert _recall(engine, queries) >= 0.85

    report = compact(index_dir)
    assert report.compacted_shards["lamost"]
    engine = SearchEngine.open(index_dir)
    info = engine.info()["modalities"]["lamost"]
    assert info["count"] == 2250 and info["deleted"] == 0
    assert all(s.deleted is None for s in engine.index["lamost"].shards)
    assert _recall(engine, queries) >= 0.85
    assert engine.search_source(int(new["source_id"][60])).total == 10


def test_add_upserts_by_spectrum_id_and_refuses_other_model(index_dir):
    again = _arrays(2000, 1)
    sub = {k: (v[:10] if not isinstance(v, list) else v[:10]) for k, v in again.items()}
    sub["embedding"] = clustered_unit_vectors(10, DIM, seed=99)
    report = add_embeddings(index_dir, ArrayEmbeddings({"lamost": sub}, model_hash="m"))
    assert report.replaced == {"lamost": 10}
    engine = SearchEngine.open(index_dir)
    assert engine.info()["modalities"]["lamost"]["count"] == 2000
    hit = engine.search(sub["embedding"][3], modality="lamost", k=1)
    assert hit.spectrum_id[0] == "s3" and hit.similarity[0] > 0.999
    with pytest.raises(SearchIndexError, match="model"):
        add_embeddings(index_dir, ArrayEmbeddings({"lamost": sub}, model_hash="other"))


@pytest.mark.parametrize("point", ["after_shard:lamost:0", "before_swap"])
def test_crash_during_update_keeps_old_generation(tmp_path, point):
    build_index(ArrayEmbeddings({"lamost": _arrays(500, 1)}, model_hash="m"),
                tmp_path / "idx", BuildOptions(kind="flat", shards=2, target_recall=None))
    with pytest.raises(SimulatedCrash):
        delete_sources(tmp_path / "idx", _arrays(500, 1)["source_id"][:100], crash_at=point)
    idx = open_index(tmp_path / "idx")
    assert idx["lamost"].count == 500 and idx.manifest.generation == 1
    with pytest.raises(SimulatedCrash):
        add_embeddings(tmp_path / "idx",
                       ArrayEmbeddings({"lamost": _arrays(50, 3, 500)}, model_hash="m"),
                       crash_at=point)
    assert open_index(tmp_path / "idx")["lamost"].count == 500
