"""Index build: exactness, recall floors vs exact IndexFlat, sharding, manifests, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from specsearch.errors import ConfigError, SearchIndexError
from specsearch.index import (ArrayEmbeddings, BuildOptions, FlatConfig, HNSWConfig,
                              HnswlibConfig, IVFFlatConfig, IVFPQConfig, SearchKnobs,
                              build_index, open_index)
from specsearch.index.atomic import SimulatedCrash
from specsearch.index.hashing import shard_of, splitmix64
from specsearch.index.synthetic import clustered_unit_vectors, held_out_queries
from specsearch.index.tuning import choose_config, parse_bytes, recall_at_k

DIM = 32
N = 4000


@pytest.fixture(scope="module")
def data():
    vectors = clustered_unit_vectors(N, DIM, n_clusters=40, intrinsic_dim=8, seed=3)
    rng = np.random.default_rng(3)
    source_id = rng.choice(2 ** 62, N, replace=False).astype(np.int64)
    queries = held_out_queries(vectors, 200, seed=4)
    exact = faiss.IndexFlatIP(DIM)
    exact.add(vectors)
    truth_sims, truth = exact.search(queries, 10)
    return vectors, source_id, queries, truth_sims, truth


def _source(vectors, source_id, model_hash="model-a"):
    return ArrayEmbeddings({"lamost": {"embedding": vectors, "source_id": source_id,
                                       "snr": np.linspace(1, 100, len(vectors))}},
                           model_hash=model_hash)


def _rows_to_input(index, ids):
    """Map global ids back to input positions via the stored spectrum_id ('lamost-<i>')."""
    from specsearch.index.reader import split_ids
    shard, row = split_ids(ids.ravel())
    out = np.full(ids.size, -1)
    for j, (s, r) in enumerate(zip(shard, row)):
        if s >= 0:
            out[j] = int(index.shards[s].column("spectrum_id")[r].split("-")[1])
    return out.reshape(ids.shape)


def test_splitmix64_is_stable_and_balanced():
    # Reference values of splitmix64 (state + golden gamma, then the finaliser).
    assert int(splitmix64(np.array([0]))[0]) == 0xE220A8397B1DCDAF
    ids = np.arange(100_000, dtype=np.int64) * 4096  # Gaia-like: structured low bits
    counts = np.bincount(shard_of(ids, 8), minlength=8)
    assert counts.min() > 0.9 * counts.mean()


def test_flat_is_exact_against_numpy(tmp_path, data):
    vectors, source_id, queries, _, _ = data
    build_index(_source(vectors, source_id), tmp_path / "idx",
                BuildOptions(config=FlatConfig(), shards=3, target_recall=None))
    index = open_index(tmp_path / "idx")["lamost"]
    sims, ids = index.knn(queries, 25)
    full = queries @ vectors.T
    order = np.argsort(-full, axis=1)[:, :25]
    np.testing.assert_allclose(sims, np.take_along_axis(full, order, 1), atol=1e-5)
    assert np.array_equal(_rows_to_input(index, ids), order)


@pytest.mark.parametrize("config, floor", [
    (IVFFlatConfig(nlist=64), 0.95),
    (IVFPQConfig(nlist=64, pq_m=8, pq_nbits=6, train_size=4000), 0.93),
    (IVFPQConfig(nlist=64, pq_m=8, pq_nbits=6, train_size=4000, pca_dim=16), 0.88),
    (HNSWConfig(m=16, ef_construction=64, storage="sq8"), 0.95),
    (HNSWConfig(m=16, ef_construction=64, storage="fp16"), 0.95),
    (HNSWConfig(m=16, ef_construction=64, storage="flat"), 0.95),
    (HNSWConfig(m=16, ef_construction=64, storage="sq8", pca_dim=16), 0.95),
    (HnswlibConfig(m=16, ef_construction=100), 0.95),
], ids=lambda v: getattr(v, "kind", "") + getattr(v, "storage", "") if not isinstance(
    v, float) else str(v))
def test_approximate_backends_reach_recall_floor(tmp_path, data, config, floor):
    vectors, source_id, queries, _, truth = data
    target = 0.9 if config.kind == "ivf_pq" else 0.95
    manifest = build_index(_source(vectors, source_id), tmp_path / "idx",
                           BuildOptions(config=config, shards=2, target_recall=target,
                                        tune_queries=100, threads=2))
    idx = open_index(tmp_path / "idx")
    tuning = idx["lamost"].manifest.tuning
    assert manifest.modalities == ["lamost"]
    assert tuning.measured_recall >= target
    _, ids = idx["lamost"].knn(queries, 10)
    recall = recall_at_k(_rows_to_input(idx["lamost"], ids), truth)
    assert recall >= floor, (config, recall, idx["lamost"].knobs)


def test_pca_graph_filters_and_per_query_knobs(tmp_path, data):
    """A PCA graph (FAISS ``PCA16,HNSW16_SQ8`` + exact re-ranking) takes per-call knobs and
    ID selectors through its pre-transform, and refuses a PCA wider than the vectors."""
    vectors, source_id, queries, _, truth = data
    config = HNSWConfig(m=16, ef_construction=64, pca_dim=16)
    build_index(_source(vectors, source_id), tmp_path / "idx",
                BuildOptions(config=config, target_recall=None, threads=2))
    mi = open_index(tmp_path / "idx")["lamost"]
    graph = faiss.downcast_index(mi.shards[0].backend.index.base_index)
    assert isinstance(graph, faiss.IndexPreTransform) and graph.index.d == 16
    stored = np.asarray(mi.shards[0].vectors)          # shard rows (the filter's space)
    allowed = np.zeros(N, bool)
    allowed[::3] = True
    _, ids = mi.knn(queries, 10, filter_masks=[allowed])
    assert (ids >= 0).all() and allowed[ids].all()
    exact = faiss.knn(queries, stored[allowed], 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    assert recall_at_k(ids, np.flatnonzero(allowed)[exact]) >= 0.95
    # These vectors keep only 2/3 of their variance in 16 components: deep re-ranking.
    deep = mi.knn(queries, 10, knobs=SearchKnobs(ef_search=400, refine_factor=16))[1]
    assert recall_at_k(_rows_to_input(mi, deep), truth) >= 0.95
    with pytest.raises(SearchIndexError, match="pca_dim 64"):
        build_index(_source(vectors, source_id), tmp_path / "bad",
                    BuildOptions(config=HNSWConfig(pca_dim=64), target_recall=None))


def test_shard_merge_equals_single_index(tmp_path, data):
    vectors, source_id, queries, _, _ = data
    src = _source(vectors, source_id)
    build_index(src, tmp_path / "one", BuildOptions(kind="flat", shards=1, target_recall=None))
    build_index(src, tmp_path / "many", BuildOptions(kind="flat", shards=5,
                                                     target_recall=None))
    one, many = open_index(tmp_path / "one")["lamost"], open_index(tmp_path / "many")["lamost"]
    assert [s.count for s in many.shards] != [N]
    s1, i1 = one.knn(queries, 50)
    s5, i5 = many.knn(queries, 50)
    np.testing.assert_allclose(s1, s5, atol=1e-6)
    assert np.array_equal(_rows_to_input(one, i1), _rows_to_input(many, i5))
    # every star lives in the shard its source_id hashes to
    for shard in many.shards:
        assert np.all(shard_of(shard.column("source_id"), 5) == shard.number)


def test_manifest_records_files_checksums_and_tuning(tmp_path, data):
    vectors, source_id, *_ = data
    build_index(_source(vectors, source_id), tmp_path / "idx",
                BuildOptions(config=HNSWConfig(m=16, ef_construction=40), shards=2,
                             target_recall=0.9, tune_queries=100))
    top = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert top["model_hash"] == "model-a" and top["embedding_dim"] == DIM
    m = json.loads((tmp_path / "idx" / "lamost" / "manifest.json").read_text())
    assert m["metric"] == "cosine" and m["shard_hash"] == "splitmix64"
    assert m["backend"]["kind"] == "hnsw" and m["tuning"]["measured_recall"] >= 0.9
    assert sum(s["count"] for s in m["shards"]) == N
    for s in m["shards"]:
        assert len(s["index"]["sha256"]) == 64 and s["rows"]["name"].endswith(".parquet")
    assert not list((tmp_path / "idx").rglob("*.pkl"))


def test_corrupt_shard_and_foreign_model_give_clear_errors(tmp_path, data):
    vectors, source_id, *_ = data
    build_index(_source(vectors, source_id), tmp_path / "idx",
                BuildOptions(kind="flat", shards=2, target_recall=None))
    shard_file = next((tmp_path / "idx" / "lamost").glob("shard-00001.faiss"))
    raw = bytearray(shard_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard_file.write_bytes(bytes(raw))
    with pytest.raises(SearchIndexError, match="sha256.*corrupt"):
        open_index(tmp_path / "idx")
    shard_file.write_bytes(bytes(raw[:-10]))
    with pytest.raises(SearchIndexError, match="truncated"):
        open_index(tmp_path / "idx", verify=False)

    build_index(_source(vectors, source_id), tmp_path / "ok",
                BuildOptions(kind="flat", target_recall=None))
    path = tmp_path / "ok" / "lamost" / "manifest.json"
    m = json.loads(path.read_text())
    m["model_hash"] = "another-model"
    path.write_text(json.dumps(m))
    with pytest.raises(SearchIndexError, match="another-model|different models|model"):
        open_index(tmp_path / "ok")


@pytest.mark.parametrize("point", ["after_vectors:lamost", "after_shard:lamost:1",
                                   "before_manifest", "before_swap"])
def test_crash_mid_build_leaves_previous_index_loadable(tmp_path, data, point):
    vectors, source_id, queries, *_ = data
    out = tmp_path / "idx"
    build_index(_source(vectors[:3000], source_id[:3000]), out,
                BuildOptions(kind="flat", shards=2, target_recall=None))
    before = open_index(out)["lamost"].knn(queries[:5], 5)
    with pytest.raises(SimulatedCrash):
        build_index(_source(vectors, source_id), out,
                    BuildOptions(kind="flat", shards=3, target_recall=None), crash_at=point)
    idx = open_index(out)
    assert idx["lamost"].count == 3000 and idx.manifest.generation == 1
    after = idx["lamost"].knn(queries[:5], 5)
    np.testing.assert_array_equal(before[1], after[1])
    # the next build succeeds and replaces it
    build_index(_source(vectors, source_id), out,
                BuildOptions(kind="flat", shards=3, target_recall=None))
    assert open_index(out)["lamost"].count == N
    assert open_index(out).manifest.generation == 2


def test_faiss_shards_are_memory_mapped(tmp_path, data):
    vectors, source_id, *_ = data
    build_index(_source(vectors, source_id), tmp_path / "idx",
                BuildOptions(kind="ivf_flat", target_recall=None))
    shard = open_index(tmp_path / "idx", mmap=True)["lamost"].shards[0]
    assert isinstance(shard.vectors, np.memmap)
    maps = Path("/proc/self/maps")
    if maps.exists():  # the kernel lists every file mapped into this process
        assert str(shard.folder / shard.entry.index.name) in maps.read_text()
    private = open_index(tmp_path / "idx", mmap=False)["lamost"].shards[0]
    assert not isinstance(private.vectors, np.memmap)


def test_auto_kind_follows_size_and_memory_budget():
    assert choose_config(50_000, 128, parse_bytes("8G")).kind == "flat"
    assert choose_config(5_000_000, 128, parse_bytes("8G")).kind == "hnsw"
    small = choose_config(220_000_000, 128, parse_bytes("16G"))
    assert small.kind == "ivf_pq" and small.pq_m * 220e6 < 16e9
    with pytest.raises(ConfigError, match="memory budget"):
        choose_config(10**9, 128, parse_bytes("1G"))
    assert parse_bytes("512MiB") == 512 * 2 ** 20 and parse_bytes(" 2G ") == 2e9
    from specsearch.index.build import resolve_config
    tuned = resolve_config(BuildOptions(kind="auto", backend_options={"m": 16}), 2_000_000, 128)
    assert tuned.kind == "hnsw" and tuned.m == 16
    with pytest.raises(ConfigError):
        parse_bytes("lots")


def test_auto_build_uses_flat_for_small_data(tmp_path, data):
    vectors, source_id, *_ = data
    build_index(_source(vectors, source_id), tmp_path / "idx", BuildOptions(kind="auto"))
    m = open_index(tmp_path / "idx")["lamost"].manifest
    assert m.backend.kind == "flat" and m.tuning.measured_recall == 1.0


def test_bad_embeddings_are_refused(tmp_path, data):
    vectors, source_id, *_ = data
    bad = vectors.copy()
    bad[7] = 0
    with pytest.raises(SearchIndexError, match="zero or non-finite"):
        build_index(_source(bad, source_id), tmp_path / "idx", BuildOptions(kind="flat"))
    assert not (tmp_path / "idx").exists()
    assert not list(tmp_path.glob(".idx.tmp-*"))


@pytest.mark.parametrize("n", [7, 32, 33, 500])
def test_stored_rows_come_back_in_the_order_asked_for_across_shards(n):
    """A few rows are sliced one by one, more are taken once per shard and reordered:
    either way the table lists the ids' rows in their order, duplicates included."""
    import pyarrow as pa

    from specsearch.index.reader import ROW_BITS, stored_rows

    class _Shard:
        def __init__(self, number):
            self.rows = pa.table({"shard": np.full(1000, number), "row": np.arange(1000),
                                  "label": [f"{number}:{i}" for i in range(1000)]})

    shards = [_Shard(s) for s in range(4)]
    rng = np.random.default_rng(n)
    number, row = rng.integers(0, 4, n), rng.integers(0, 1000, n)
    row[-1], number[-1] = row[0], number[0]              # a duplicate
    ids = (number.astype(np.int64) << ROW_BITS) | row
    got = stored_rows(lambda s: shards[s], ids)
    assert got.column("shard").to_numpy().tolist() == number.tolist()
    assert got.column("row").to_numpy().tolist() == row.tolist()
    assert got.column("label").to_pylist() == [f"{s}:{r}" for s, r in zip(number, row)]


@pytest.mark.parametrize("one_shard", [False, True])
def test_stored_columns_match_the_stored_rows(one_shard):
    """A re-rank reads a few numeric columns of its window from each shard's numpy copy:
    the same values, order, duplicates and NaN (null) as taking the rows would give."""
    import pyarrow as pa

    from specsearch.index.reader import ROW_BITS, stored_columns, stored_rows
    from specsearch.index.shard import Shard

    class _Shard:
        column = Shard.column          # the numpy column cache under test

        def __init__(self, number):
            v = np.arange(1000, dtype=np.float32) + 1000 * number
            self._columns = {}
            self.rows = pa.table({"a": v, "b": pa.array(np.where(v % 7 == 0, None, -v),
                                                        pa.float32()), "c": v * 2})

    shards = [_Shard(s) for s in range(4)]
    rng = np.random.default_rng(3)
    number = np.zeros(300, np.int64) if one_shard else rng.integers(0, 4, 300)
    row = rng.integers(0, 1000, 300)
    row[-1], number[-1] = row[0], number[0]
    ids = (number.astype(np.int64) << ROW_BITS) | row
    got = stored_columns(lambda s: shards[s], ids, ["a", "b"])
    want = stored_rows(lambda s: shards[s], ids)
    assert set(got) == {"a", "b"}
    for name in ("a", "b"):
        np.testing.assert_array_equal(got[name],
                                      want.column(name).to_numpy(zero_copy_only=False))
    assert np.isnan(got["b"]).any()
