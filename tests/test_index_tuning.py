"""Knob tuning measures the recall new spectra get: tuning rows are masked out of the search."""

from __future__ import annotations

import numpy as np
import pytest

from specsearch.index import ArrayEmbeddings, BuildOptions, IVFPQConfig, build_index
from specsearch.index.reader import open_index
from specsearch.index.synthetic import clustered_unit_vectors
from specsearch.index.tuning import (held_out_queries, measure_recall, recall_at_k,
                                     without_queries)

N, DIM, NEW = 4000, 32, 300


@pytest.fixture(scope="module")
def vectors():
    return clustered_unit_vectors(N + NEW, DIM, n_clusters=40, intrinsic_dim=8, seed=5)


def _build(path, vectors, config, shards=1, target=None):
    src = ArrayEmbeddings({"xp": {"embedding": vectors[:N],
                                  "source_id": np.arange(N, dtype=np.int64)}},
                          model_hash="test")
    build_index(src, path, BuildOptions(config=config, shards=shards, target_recall=target,
                                        tune_queries=300, threads=1))
    return open_index(path)["xp"]


def test_tuning_rows_never_answer_their_own_queries(tmp_path, vectors):
    mi = _build(tmp_path / "flat", vectors, None, shards=2)
    queries, qids = held_out_queries(mi, 100, seed=2)
    masks = without_queries(mi, qids)
    assert sum(int((~m).sum()) for m in masks) == len(qids)
    _, truth = mi.exact_knn(queries, 10, masks=masks)
    assert not np.isin(truth, qids).any()
    # flat search through the masks is exact: recall 1 against the masked truth
    assert measure_recall(mi, queries, masks, truth, 10, mi.knobs, 1) == 1.0
    _, unmasked = mi.exact_knn(queries, 10)
    assert np.isin(unmasked[:, 0], qids).all()      # without masks each finds itself


def test_tuned_ivf_pq_recall_holds_on_new_vectors(tmp_path, vectors):
    config = IVFPQConfig(nlist=64, pq_m=8, refine_factor=1.0)
    mi = _build(tmp_path / "ivfpq", vectors, config, target=0.9)
    assert mi.manifest.tuning.measured_recall >= 0.9
    new = vectors[N:]
    exact = vectors[:N] @ new.T
    truth = np.argsort(-exact, axis=0)[:10].T
    _, found = mi.knn(new, 10)
    assert recall_at_k(found, truth) >= 0.88, mi.knobs
