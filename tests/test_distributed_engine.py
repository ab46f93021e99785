"""DistributedEngine over in-process shard groups: identical results to SearchEngine for
every query kind, any number of groups, and a failed group -> an error naming its shards.
(The same engine behind Ray Serve deployments: tests/test_ray_serve.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from specsearch.errors import ConfigError, QueryError, SearchIndexError
from specsearch.index import BuildOptions, HNSWConfig, build_index
from specsearch.index.synthetic import synthetic_embeddings
from specsearch.query import SearchEngine
from specsearch.query.distributed import (DistributedEngine, LocalGroups,
                                          ShardsUnavailableError)
from specsearch.query.shard_groups import ShardGroup, open_manifests, plan_shard_groups


@pytest.fixture(scope="module", params=["flat", "hnsw"])
def index_dir(request, tmp_path_factory):
    emb = synthetic_embeddings(tmp_path_factory.mktemp("emb") / "emb", n=1500, dim=32)
    out = tmp_path_factory.mktemp(request.param) / "idx"
    config = HNSWConfig(m=16, ef_construction=40) if request.param == "hnsw" else None
    build_index(emb.root, out, BuildOptions(kind=request.param, config=config, shards=3,
                                            target_recall=0.95, tune_queries=100))
    return out


def distributed(index_dir, n_groups: int, calls=None) -> DistributedEngine:
    index = open_manifests(index_dir)
    specs = plan_shard_groups(index, n_groups)
    groups = [ShardGroup(index_dir, s, generation=index.manifest.generation) for s in specs]
    return DistributedEngine(index, specs, calls or LocalGroups(groups), max_k=500)


def same(a, b) -> None:
    """Identical neighbours: ids, similarities (bit for bit), ranks and stored rows."""
    assert np.array_equal(a.source_id, b.source_id)
    assert np.array_equal(a.similarity, b.similarity)
    assert np.array_equal(a.rank, b.rank) and a.total == b.total
    assert a.to_dicts() == b.to_dicts()


def queries(engine: SearchEngine):
    sid = engine.index["lamost"].shards[1].column("source_id")
    xp = engine.index["xp"].shards[2].column("source_id")
    vec = engine.vector_of(int(sid[0]), "lamost")[1]
    batch = np.random.default_rng(0).standard_normal((3, 32))
    yield "plain", lambda e: e.search(vec, modality="lamost", k=25)
    yield "batch", lambda e: e.search(batch, modality="xp", k=7)
    yield "filtered", lambda e: e.search(vec, modality="lamost", k=20,
                                         filter=["snr>=20", "feh_pred<-0.5"])
    yield "selective", lambda e: e.search(vec, modality="lamost", k=20, filter="feh_pred<-1.8")
    yield "cone", lambda e: e.search(vec, modality="xp", k=10, filter="cone=180,0,40")
    yield "nothing passes", lambda e: e.search(vec, modality="lamost", k=5,
                                               filter="snr>1e9")
    yield "page", lambda e: e.search_source(int(sid[3]), k=60, offset=20, limit=20)
    yield "by source", lambda e: e.search_source(int(sid[5]), k=15)
    yield "cross-modal", lambda e: e.search_source(int(xp[1]), modality="xp",
                                                   target_modality="lamost", k=10)
    yield "big k", lambda e: e.search_source(int(xp[2]), k=400, filter="snr>=10")
    yield "range", lambda e: e.range_search(vec, 0.8, modality="lamost")


@pytest.mark.parametrize("n_groups", [1, 2, 6])
def test_identical_to_single_process(index_dir, n_groups):
    local = SearchEngine.open(index_dir, max_k=500)
    dist = distributed(index_dir, n_groups)
    for name, run in queries(local):
        a, b = run(local), run(dist)
        for x, y in zip(a, b) if isinstance(a, list) else [(a, b)]:
            same(x, y)
        assert len(a) > 0 or name == "nothing passes", name
    sid = int(local.index["xp"].shards[0].column("source_id")[4])
    assert np.array_equal(local.vector_of(sid)[1], dist.vector_of(sid)[1])
    assert local.lookup(sid).to_pylist() == dist.lookup(sid).to_pylist()
    assert dist.info()["modalities"] == local.info()["modalities"]
    assert len(dist.info()["shard_groups"]) == n_groups


def test_plan_balances_any_number_of_groups(index_dir):
    index = open_manifests(index_dir)
    for n in range(1, 7):
        specs = plan_shard_groups(index, n)
        pairs = [p for s in specs for p in s.shards]
        assert sorted(pairs) == sorted({(m, e.shard) for m, mi in index.modalities.items()
                                        for e in mi.manifest.shards})
        assert all(s.shards for s in specs)
    with pytest.raises(ConfigError, match="1 to 6 groups"):
        plan_shard_groups(index, 7)


def test_group_loads_only_its_shards_and_checks_generation(index_dir):
    index = open_manifests(index_dir)
    spec = plan_shard_groups(index, 4)[0]
    group = ShardGroup(index_dir, spec)
    assert sorted(group.shards) == sorted(spec.shards)
    with pytest.raises(SearchIndexError, match="generation"):
        ShardGroup(index_dir, spec, generation=index.manifest.generation + 1)


class FailingGroup:
    """LocalGroups with one group whose calls fail like a dead replica."""

    def __init__(self, inner: LocalGroups, dead: int) -> None:
        self.inner, self.dead = inner, dead

    def submit(self, group, method, kwargs):
        if group == self.dead:
            return self.inner.submit(group, "no_such_method_replica_died", {})
        return self.inner.submit(group, method, kwargs)


def test_failed_group_names_its_shards(index_dir):
    healthy = distributed(index_dir, 3)
    dist = distributed(index_dir, 3, FailingGroup(healthy.calls, dead=1))
    sid = int(SearchEngine.open(index_dir).index["lamost"].shards[0].column("source_id")[0])
    vec = healthy.vector_of(sid)[1]
    with pytest.raises(ShardsUnavailableError) as err:
        dist.search(vec, modality="lamost", k=10)
    names = healthy.specs[1].names
    assert err.value.shards == names and all(n in str(err.value) for n in names)
    assert "partial" in str(err.value)
    # A query error inside a healthy group is the client's, not an outage.
    with pytest.raises(QueryError, match="no column"):
        healthy.search(vec, modality="lamost", k=10, filter="no_such_column>1")
    # Whole-index passes say why they cannot run here.
    with pytest.raises(SearchIndexError, match="anomalies"):
        healthy.index["lamost"].shards
