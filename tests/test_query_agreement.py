"""Cross-modal re-ranking by parameter agreement (specsearch.query.agreement): the score,
the engine's ranking (by source_id, by spectrum, distributed, the service) against a
by-hand computation, and when it stays out of the way."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from specsearch.errors import QueryError
from specsearch.index import BuildOptions, build_index
from specsearch.io.catalog import open_catalog
from specsearch.io.parquet import list_column_to_numpy
from specsearch.model import load_model
from specsearch.preprocess import grid_for
from specsearch.query import SearchEngine
from specsearch.query import agreement as agree
from specsearch.query.identity import RERANK_MIN
from specsearch.spectrum import Spectrum

from test_identity_search import _rows, embed_and_index

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def test_log_agreement_is_the_gaussian_probability_of_lying_within_tolerance():
    query = {"teff": (5000.0, 60.0), "feh": (-0.5, 0.05)}
    values = {"teff": np.array([5000.0, 5100.0, 5600.0]), "feh": np.array([-0.5, -0.3, 0.5])}
    errors = {"teff": np.array([80.0, 40.0, 30.0]), "feh": np.array([0.1, 0.02, 0.1])}
    got = agree.log_agreement(query, values, errors)
    want = np.zeros(3)
    for name, (q, qe) in query.items():
        s = np.hypot(qe, errors[name])
        d = values[name] - q
        tol = agree.TOLERANCE[name]
        p = norm.cdf((tol - d) / s) - norm.cdf((-tol - d) / s)
        want += np.maximum(np.log(p), agree.LOG_P_FLOOR)
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert got[0] > got[1] > got[2]
    assert got[2] == 2 * agree.LOG_P_FLOOR    # 600 K and 1 dex off: each label at the floor


def test_a_candidate_without_a_parameter_scores_the_floor():
    query = {"feh": (0.0, 0.1)}
    got = agree.log_agreement(query, {"feh": np.array([0.0, np.nan, 0.0])},
                              {"feh": np.array([0.1, 0.1, np.nan])})
    assert got[0] > agree.LOG_P_FLOOR
    assert got[1] == got[2] == agree.LOG_P_FLOOR


def test_query_parameters_keep_the_finite_labels_with_a_positive_uncertainty():
    row = {"teff_pred": 5800.0, "teff_err": 70.0, "logg_pred": 4.4, "logg_err": 0.0,
           "feh_pred": float("nan"), "feh_err": 0.1, "alpha_fe_pred": 0.1,
           "alpha_fe_err": 0.02, "ra": 10.0}
    assert agree.query_parameters(row) == {"teff": (5800.0, 70.0)}
    assert agree.usable({"teff": (5800.0, 70.0), "mass": (1.0, 0.1)},
                        ["teff_pred", "teff_err", "mass_pred"]) == ["teff"]


def test_rerank_orders_by_cosine_plus_weighted_agreement_and_puts_empty_slots_last():
    sims = np.array([0.95, 0.94, 0.5, 0.0], np.float32)
    ids = np.array([10, 11, 12, -1])
    query = {"feh": (0.0, 0.05)}
    values, errors = {"feh": np.array([0.3, 0.0, 0.0])}, {"feh": np.full(3, 0.05)}
    score, order = agree.rerank(sims, ids, query, values, errors)
    assert list(order) == [11, 10, 12, -1]
    lp = agree.log_agreement(query, values, errors)
    np.testing.assert_allclose(score[:3], [0.94 + agree.WEIGHT * lp[1],
                                           0.95 + agree.WEIGHT * lp[0],
                                           0.5 + agree.WEIGHT * lp[2]], rtol=1e-6)
    assert score[3] == -np.inf


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The shipped model's embeddings of a toy paired catalog, in an exact (flat) index."""
    return embed_and_index(tmp_path_factory.mktemp("agreement"), load_model(), 150,
                           revisits=10)


def _params(table, i):
    return {n: (float(table.column(f"{n}_pred")[i].as_py()),
                float(table.column(f"{n}_err")[i].as_py())) for n in agree.TOLERANCE}


def _expected(emb, query_vec, params, k):
    """The re-rank by hand over the XP rows: the embedding's top max(50, 5k), ordered by
    cosine + WEIGHT x log agreement."""
    t = _rows(emb, "xp")
    e = list_column_to_numpy(t.column("embedding"))
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    sims = e @ (query_vec / np.linalg.norm(query_vec))
    window = np.argsort(-sims, kind="stable")[:max(RERANK_MIN, 5 * k)]
    values = {n: t.column(f"{n}_pred").to_numpy()[window] for n in agree.TOLERANCE}
    errors = {n: t.column(f"{n}_err").to_numpy()[window] for n in agree.TOLERANCE}
    score = sims[window] + agree.WEIGHT * agree.log_agreement(params, values, errors)
    order = np.argsort(-score, kind="stable")[:k]
    return t.column("source_id").to_numpy()[window[order]], score[order]


@pytest.mark.parametrize("k", [5, 20])
def test_cross_modal_source_search_reranks_by_parameter_agreement(built, k):
    root, model, cat, emb = built
    engine = SearchEngine.open(root / "index")
    lam = _rows(emb, "lamost")
    star = int(lam.column("source_id")[40].as_py())     # one visit (the revisits are 0-9)
    params = _params(lam, 40)
    got = engine.source_parameters(star, "lamost")
    assert got.keys() == params.keys()
    for name, value in params.items():
        assert got[name] == pytest.approx(value)
    res = engine.search_source(star, modality="lamost", target_modality="xp", k=k)
    assert res.query["ranked_by"] == "embedding+parameters"
    _, vec = engine.vector_of(star, "lamost")
    want_ids, want_score = _expected(emb, vec, params, k)
    assert list(res.source_id) == list(want_ids)
    np.testing.assert_allclose(res.similarity, want_score, atol=1e-5)
    # the ranking differs from the embedding's alone (else the test would prove nothing)
    plain = engine.search_source(star, modality="lamost", target_modality="xp", k=k,
                                 agreement=False)
    assert "ranked_by" not in plain.query
    assert list(plain.source_id) != list(res.source_id)
    page = engine.search_source(star, modality="lamost", target_modality="xp", k=k,
                                offset=2, limit=3)
    assert list(page.source_id) == list(want_ids[2:5])
    # in-modality searches are not re-ranked by parameters
    same = engine.search_source(star, modality="lamost", k=k)
    assert same.query.get("ranked_by") != "embedding+parameters"


def test_spectrum_query_uses_the_models_predictions(built):
    root, model, cat, emb = built
    engine = SearchEngine.open(root / "index", encoder=model)
    c = open_catalog(cat)
    flux = np.asarray(c.read_column("lamost", "flux")[40].as_py(), np.float32)
    ivar = np.asarray(c.read_column("lamost", "ivar")[40].as_py(), np.float32)
    spec = Spectrum(wavelength=grid_for("lamost").wavelength, flux=flux, ivar=ivar,
                    mask=ivar <= 0, modality="lamost", spectrum_id="q")
    res = engine.search_spectrum(spec, target_modality="xp", k=8)
    assert res.query["ranked_by"] == "embedding+parameters"
    preds = {n: tuple(res.query["predictions"][n]) for n in agree.TOLERANCE}
    _, vec, _ = engine.embed_spectrum(spec)
    want_ids, want_score = _expected(emb, vec, preds, 8)
    assert list(res.source_id) == list(want_ids)
    np.testing.assert_allclose(res.similarity, want_score, atol=1e-5)
    off = engine.search_spectrum(spec, target_modality="xp", k=8, agreement=False)
    assert "ranked_by" not in off.query


def test_parameters_the_rows_do_not_store_leave_the_embedding_order(built):
    root, model, cat, emb = built
    engine = SearchEngine.open(root / "index")
    _, vec = engine.vector_of(int(_rows(emb, "lamost").column("source_id")[0].as_py()),
                              "lamost")
    plain = engine.search(vec, modality="xp", k=6)
    for params in ({"mass": (1.0, 0.1)}, {"teff": (float("nan"), 50.0)},
                   {"feh": (0.0, 0.0)}):
        res = engine.search(vec, modality="xp", k=6, parameters=params)
        assert "ranked_by" not in res.query
        assert list(res.source_id) == list(plain.source_id)
    with pytest.raises(QueryError, match="one query at a time"):
        engine.search(np.stack([vec, vec]), modality="xp", k=6,
                      parameters={"feh": (0.0, 0.1)})
    assert engine.has_identity("lamost")     # the shipped model has LAMOST identity vectors
    with pytest.raises(QueryError, match="not both"):
        engine.search(vec, modality="lamost", k=6, parameters={"feh": (0.0, 0.1)},
                      identity=np.ones(engine.index["lamost"].manifest.identity_dim,
                                       np.float32))


def test_distributed_engine_reranks_the_same(built):
    from test_distributed_engine import distributed

    root, model, cat, emb = built
    build_index(emb, root / "index3", BuildOptions(kind="flat", target_recall=None, shards=3))
    star = int(_rows(emb, "lamost").column("source_id")[7].as_py())
    local = SearchEngine.open(root / "index3").search_source(star, modality="lamost",
                                                             target_modality="xp", k=10)
    remote = distributed(root / "index3", 2).search_source(star, modality="lamost",
                                                           target_modality="xp", k=10)
    assert remote.query["ranked_by"] == local.query["ranked_by"] == "embedding+parameters"
    assert list(remote.source_id) == list(local.source_id)
    np.testing.assert_allclose(remote.similarity, local.similarity, atol=1e-6)


def test_service_reranks_cross_modal_searches_and_can_be_told_not_to(built):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    root, model, cat, emb = built
    star = int(_rows(emb, "lamost").column("source_id")[40].as_py())
    app = create_app(Settings(index_dir=root / "index", model_dir=None))
    with TestClient(app) as client:
        got = client.get(f"/v1/search/source/{star}",
                         params={"k": 5, "modality": "lamost", "target": "cross"}).json()
        assert got["ranked_by"] == "embedding+parameters", got
        want = SearchEngine.open(root / "index").search_source(
            star, modality="lamost", target_modality="xp", k=5)
        assert [n["source_id"] for n in got["neighbours"]] == list(want.source_id)
        off = client.get(f"/v1/search/source/{star}",
                         params={"k": 5, "modality": "lamost", "target": "cross",
                                 "agreement": "false"}).json()
        assert off["ranked_by"] == "embedding"


def test_embedding_route_reranks_cross_modal_with_the_requests_parameters(built):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    root, model, cat, emb = built
    lam = _rows(emb, "lamost")
    vec = list_column_to_numpy(lam.column("embedding"))[40]
    params = _params(lam, 40)
    want = SearchEngine.open(root / "index").search(vec, modality="xp", k=6,
                                                    parameters=params)
    assert want.query["ranked_by"] == "embedding+parameters"
    app = create_app(Settings(index_dir=root / "index", model_dir=None))
    with TestClient(app) as client:
        body = {"embedding": vec.tolist(), "modality": "lamost", "target": "cross", "k": 6}
        plain = client.post("/v1/search/embedding", json=body).json()
        assert plain["ranked_by"] == "embedding"
        sent = {n: {"value": v, "err": e} for n, (v, e) in params.items()}
        got = client.post("/v1/search/embedding", json={**body, "parameters": sent}).json()
        assert got["ranked_by"] == "embedding+parameters", got
        assert [n["source_id"] for n in got["neighbours"]] == list(want.source_id)
        off = client.post("/v1/search/embedding",
                          json={**body, "parameters": sent, "agreement": False}).json()
        assert off["ranked_by"] == "embedding"
        # in-modality: parameters do not re-rank (the identity vectors' job)
        same = client.post("/v1/search/embedding",
                           json={**body, "target": "same", "parameters": sent}).json()
        assert same["ranked_by"] == "embedding"
        bad = client.post("/v1/search/embedding",
                          json={**body, "parameters": {"feh": {"value": "low", "err": 1}}})
        assert bad.status_code == 422


def test_source_parameters_come_from_the_best_visit_locally_and_remotely(built):
    """A star seen twice queries with its highest-S/N row's predictions, read from the
    shards' columns here and from the source's cached rows in the distributed engine."""
    from test_distributed_engine import distributed

    root, model, cat, emb = built
    lam = _rows(emb, "lamost")
    sid = lam.column("source_id").to_numpy()
    star = int(sid[3])                                   # the revisits are rows 0-9
    rows = np.flatnonzero(sid == star)
    assert rows.size == 2
    snr = lam.column("snr").to_numpy()[rows]
    assert snr[0] != snr[1]
    want = _params(lam, int(rows[np.argmax(snr)]))
    build_index(emb, root / "index-sp", BuildOptions(kind="flat", target_recall=None, shards=3))
    for engine in (SearchEngine.open(root / "index-sp"), distributed(root / "index-sp", 2)):
        got = engine.source_parameters(star, "lamost")
        assert got.keys() == want.keys()
        for name, value in want.items():
            assert got[name] == pytest.approx(value)
