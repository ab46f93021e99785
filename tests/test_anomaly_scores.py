"""Outlier scores: determinism, injected outliers, cross-modal disagreement, index search."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from specsearch.anomaly import (FaissNeighbours, NeighbourConfig, ScoreConfig, combine_scores,
                                robust_z, score_modality, score_tables, self_knn)
from specsearch.rows import EmbeddingTable
from specsearch.errors import ConfigError

DIM = 32


def clustered(n: int, seed: int, *, n_clusters: int = 8, subspace: int = 6) -> np.ndarray:
    """Unit vectors in clusters living in the first ``subspace`` dimensions (so that a
    vector along the last dimension is far from everything)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, subspace))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    lab = rng.integers(0, n_clusters, n)
    x = np.zeros((n, DIM))
    x[:, :subspace] = centres[lab] + 0.15 * rng.standard_normal((n, subspace))
    x[:, subspace:DIM - 1] = 0.02 * rng.standard_normal((n, DIM - 1 - subspace))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def make_table(vectors: np.ndarray, modality: str = "lamost", *, seed: int = 0,
               recon: np.ndarray | None = None, source_id: np.ndarray | None = None
               ) -> EmbeddingTable:
    n = len(vectors)
    rng = np.random.default_rng(seed)
    sid = np.arange(n, dtype=np.int64) + 10_000 if source_id is None else source_id
    cols = {
        "spectrum_id": pa.array([f"{modality}-{s}" for s in sid]),
        "source_id": pa.array(sid),
        "snr": pa.array(rng.uniform(5, 200, n).astype(np.float32)),
        "recon_residual": pa.array((rng.lognormal(0, 0.1, n) if recon is None
                                    else recon).astype(np.float32)),
        "teff_pred": pa.array(rng.uniform(4000, 7000, n).astype(np.float32)),
    }
    return EmbeddingTable(modality, vectors, pa.table(cols), ("teff",), "hash-test")


def test_scores_are_deterministic():
    x = clustered(3000, seed=1)
    a = score_modality(make_table(x, seed=2))
    b = score_modality(make_table(x.copy(), seed=2))
    for comp in a.z:
        np.testing.assert_array_equal(a.z[comp], b.z[comp])
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.rank(), b.rank())
    np.testing.assert_array_equal(a.knn.rows, b.knn.rows)


def test_injected_embedding_outlier_ranks_first():
    x = clustered(4000, seed=3)
    odd = 1234
    x[odd] = 0.0
    x[odd, DIM - 1] = 1.0               # orthogonal to every cluster
    s = score_modality(make_table(x, seed=4))
    assert s.rank()[0] == odd
    assert s.driver[odd] in ("knn", "lof")
    assert s.score[odd] > 10


def test_reconstruction_outlier_is_driven_by_recon():
    x = clustered(3000, seed=5)
    recon = np.random.default_rng(6).lognormal(0, 0.1, 3000)
    recon[77] = 25.0
    s = score_modality(make_table(x, seed=7, recon=recon))
    assert s.rank()[0] == 77
    assert s.driver[77] == "recon"


def test_crossmodal_disagreement_flags_the_mismatched_star():
    n = 2000
    x_l = clustered(n, seed=8)
    noise = np.random.default_rng(9).standard_normal(x_l.shape) * 0.01
    x_x = x_l + noise
    x_x /= np.linalg.norm(x_x, axis=1, keepdims=True)
    bad = 500
    far = np.argmin(x_l @ x_l[bad])        # the XP spectrum looks like a different star
    x_x[bad] = x_l[far]
    sid = np.arange(n, dtype=np.int64)
    tables = {"lamost": make_table(x_l, "lamost", seed=10, source_id=sid),
              "xp": make_table(x_x.astype(np.float32), "xp", seed=11, source_id=sid)}
    cfg = ScoreConfig(components=("crossmodal",))
    scores = score_tables(tables, config=cfg)
    for m in ("lamost", "xp"):
        assert scores[m].rank()[0] == bad
        assert scores[m].driver[bad] == "crossmodal"


def test_self_knn_excludes_self_and_repeat_visits():
    x = clustered(500, seed=12)
    x[1] = x[0]                          # a repeat visit of star 0
    sid = np.arange(500, dtype=np.int64)
    sid[1] = sid[0]
    knn = self_knn(x, FaissNeighbours(x), k=5, source_id=sid)
    assert 0 not in knn.rows[0] and 1 not in knn.rows[0]
    assert 0 not in knn.rows[1] and 1 not in knn.rows[1]
    assert np.all(knn.rows[2] != 2)
    exact = 1.0 - np.sort(x[2:] @ x[2])[::-1][5]   # 5th other star (row 2 itself first)
    assert knn.kdist[2] == pytest.approx(exact, abs=1e-5)


def test_hnsw_and_exact_neighbours_agree_on_kdist():
    x = clustered(4000, seed=13)
    exact = self_knn(x, FaissNeighbours(x, NeighbourConfig(kind="flat")), k=10)
    approx = self_knn(x, FaissNeighbours(x, NeighbourConfig(kind="hnsw")), k=10)
    # A missed neighbour can only make the k-distance larger.
    assert np.all(approx.kdist >= exact.kdist - 1e-5)
    assert np.median(approx.kdist / exact.kdist) < 1.01


def test_robust_z_within_bins_removes_a_trend():
    rng = np.random.default_rng(14)
    snr = rng.uniform(1, 100, 20_000)
    x = -np.log(snr) + 0.1 * rng.standard_normal(snr.size)   # noisier stars sit further out
    z_global = robust_z(x)
    z_binned = robust_z(x, by=snr, n_bins=20)
    assert np.mean(np.abs(z_global) > 3) > 0.03
    assert np.mean(np.abs(z_binned) > 3) < 0.01


def test_combine_scores_max_and_driver():
    comps = {"a": np.array([1.0, 5.0, np.nan]), "b": np.array([2.0, -3.0, np.nan])}
    score, driver = combine_scores(comps)
    np.testing.assert_array_equal(score[:2], [2.0, 5.0])
    assert list(driver) == ["b", "a", ""]
    assert np.isnan(score[2])
    rms, _ = combine_scores(comps, method="rms")
    assert rms[0] == pytest.approx(np.sqrt(2.5))
    with pytest.raises(ValueError):
        combine_scores(comps, method="median")


def test_unknown_component_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown score component"):
        ScoreConfig(components=("knn", "vibes"))


def test_scoring_through_a_built_index_matches_in_memory(tmp_path):
    from specsearch.rows import table_from_index
    from specsearch.index import ArrayEmbeddings, BuildOptions, build_index, open_index

    x = clustered(1500, seed=15)
    x[3] = 0.0
    x[3, DIM - 1] = 1.0
    sid = np.arange(1500, dtype=np.int64) * 7 + 1
    src = ArrayEmbeddings({"lamost": {"embedding": x, "source_id": sid,
                                      "snr": np.full(1500, 50.0, np.float32)}},
                          model_hash="hash-test")
    build_index(src, tmp_path / "idx", BuildOptions(kind="flat", shards=3,
                                                    target_recall=None))
    table, searcher = table_from_index(open_index(tmp_path / "idx"), "lamost")
    via_index = score_modality(table, searcher=searcher,
                               config=ScoreConfig(neighbour_method="index"))
    exact = score_modality(table, config=ScoreConfig(
        neighbour_method="faiss", neighbours=NeighbourConfig(kind="flat")))
    np.testing.assert_allclose(via_index.knn.kdist, exact.knn.kdist, atol=1e-5)
    assert table.source_id[via_index.rank()[0]] == sid[3]


def test_selfjoin_finds_nearly_all_true_neighbours():
    from specsearch.anomaly.selfjoin import CellSelfJoin, SelfJoinConfig

    x = clustered(8000, seed=16)
    exact = self_knn(x, FaissNeighbours(x, NeighbourConfig(kind="flat")), k=20)
    join = CellSelfJoin(x, SelfJoinConfig(cell_size=256))
    approx = self_knn(x, join, k=20)
    recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(approx.rows, exact.rows)])
    assert recall > 0.9
    assert np.all(approx.kdist >= exact.kdist - 1e-5)
    assert np.median(approx.kdist / exact.kdist) < 1.01
    # Arbitrary queries probe their own cells.
    sims, rows = join.search(x[:5], 3)
    assert list(rows[:, 0]) == [0, 1, 2, 3, 4]


def test_unset_scoring_fields_come_from_the_model_choice_then_the_library():
    from specsearch.anomaly.scoring import LIBRARY_SCORING
    lib = ScoreConfig().resolved()
    assert (lib.components, lib.combine, lib.residual_reference) == (
        LIBRARY_SCORING["components"], LIBRARY_SCORING["combine"],
        LIBRARY_SCORING["residual_reference"])
    choice = {"components": ["knn", "lof"], "combine": "rank_max",
              "residual_reference": "neighbours"}
    got = ScoreConfig(combine="max").resolved(choice)
    assert got.components == ("knn", "lof") and got.combine == "max"
    assert got.residual_reference == "neighbours"
    with pytest.raises(ConfigError, match="combine"):
        ScoreConfig(combine="median")
