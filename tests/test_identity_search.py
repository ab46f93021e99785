"""Identity vectors through the engine: the embedding builder writes them, the index keeps
them per shard beside the vectors, same-instrument searches re-rank by them (and only those), and no
result table, lookup or JSON shows them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from specsearch.embed import EmbedConfig, build_embeddings
from specsearch.errors import QueryError
from specsearch.index import BuildOptions, build_index
from specsearch.io.catalog import open_catalog
from specsearch.io.embeddings import open_embeddings
from specsearch.io.parquet import list_column_to_numpy
from specsearch.model import load_model
from specsearch.model.checkpoint import save_model_dir
from specsearch.model.conversions import add_identity_encoder
from specsearch.preprocess import grid_for
from specsearch.query import SearchEngine
from specsearch.query.identity import RERANK_MIN
from specsearch.spectrum import Spectrum

from test_model_data import make_paired_catalog

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A model with a (randomly initialised) LAMOST identity encoder, a toy catalog with
    repeat visits, its embeddings and an exact (flat) index."""
    root = tmp_path_factory.mktemp("identity-search")
    base = load_model()
    torch.manual_seed(0)
    add_identity_encoder(base.net, "lamost", hidden=32, depth=1, dim=16)
    save_model_dir(root / "model", base.net, base.net.cfg,
                   training=base.full_config.get("training"))
    return embed_and_index(root, load_model(root / "model"), 120, revisits=60)


def embed_and_index(root, model, n_stars: int, *, revisits: int):
    """A toy paired catalog of ``n_stars`` (``revisits`` second LAMOST visits) under
    ``root``, ``model``'s embeddings of it and an exact (flat) index of them. Returns
    (root, model, catalog, embeddings) paths and model."""
    cat = make_paired_catalog(root / "cat", n_stars, revisits=revisits, unpaired=0)
    emb = root / "emb"
    build_embeddings(cat, model, emb, EmbedConfig(progress=False))
    build_index(emb, root / "index", BuildOptions(kind="flat", target_recall=None))
    return root, model, cat, emb


def _rows(emb, modality):
    """Every row of one modality of an embeddings dataset."""
    return pa.concat_tables(pq.read_table(p) for p in open_embeddings(emb).files(modality))


def test_builder_writes_identity_for_the_modalities_that_have_it(built):
    root, model, cat, emb = built
    ds = open_embeddings(emb)
    assert ds.identity_dim("lamost") == 16 and ds.identity_dim("xp") == 0
    lamost, xp = _rows(emb, "lamost"), _rows(emb, "xp")
    assert "identity" in lamost.column_names and "identity" not in xp.column_names
    assert lamost.schema.field("identity").type.list_size == 16
    # the stored vectors are the model's own, row for row
    c = open_catalog(cat)
    flux, ivar = (np.stack(c.read_column("lamost", k).to_numpy(zero_copy_only=False))
                  .astype(np.float32) for k in ("flux", "ivar"))
    want = model.identity_numpy("lamost", flux, ivar)
    got = list_column_to_numpy(lamost.column("identity"))
    order = {s: i for i, s in enumerate(c.read_column("lamost", "spectrum_id").to_pylist())}
    rows = [order[s] for s in lamost.column("spectrum_id").to_pylist()]
    np.testing.assert_allclose(got, want[rows], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def _expected(emb, source_id, k):
    """The re-rank by hand: the embedding's top max(50, 5k) other rows, ordered by the mean
    of the two cosines to the query star's preferred (highest S/N) row."""
    t = _rows(emb, "lamost")
    sid = t.column("source_id").to_numpy()
    e = list_column_to_numpy(t.column("embedding"))
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    ident = list_column_to_numpy(t.column("identity"))
    own = np.flatnonzero(sid == source_id)
    q = own[np.argmax(t.column("snr").to_numpy()[own])]
    emb_sim = e @ e[q]
    emb_sim[own] = -np.inf
    window = np.argsort(-emb_sim, kind="stable")[:max(RERANK_MIN, 5 * k)]
    score = 0.5 * (emb_sim[window] + ident[window] @ ident[q])
    best = window[np.argsort(-score, kind="stable")[:k]]
    return t.column("spectrum_id").to_numpy(zero_copy_only=False)[best], np.sort(score)[::-1][:k]


@pytest.mark.parametrize("k", [5, 40])
def test_same_instrument_search_reranks_by_identity(built, k):
    root, model, cat, emb = built
    engine = SearchEngine.open(root / "index")
    assert engine.has_identity("lamost") and not engine.has_identity("xp")
    revisited = int(_rows(emb, "lamost").column("source_id").to_numpy()[-1])
    res = engine.search_source(revisited, k=k)
    assert res.query["ranked_by"] == "embedding+identity"
    want_ids, want_score = _expected(emb, revisited, k)
    assert list(res.spectrum_id) == list(want_ids)
    np.testing.assert_allclose(res.similarity, want_score, atol=1e-5)
    assert "identity" not in res.metadata.column_names
    assert "identity" not in engine.lookup(revisited).column_names
    assert all("identity" not in row for row in res.to_dicts())
    # paging a re-ranked window gives its slices
    page = engine.search_source(revisited, k=k, offset=2, limit=3)
    assert list(page.spectrum_id) == list(want_ids[2:5])


def test_identity_off_and_cross_modal_rank_by_the_embedding(built):
    root, model, cat, emb = built
    engine = SearchEngine.open(root / "index")
    star = int(_rows(emb, "lamost").column("source_id").to_numpy()[-1])
    plain = engine.search_source(star, k=8, identity=False)
    _, vec = engine.vector_of(star, "lamost")
    direct = engine.search(vec, modality="lamost", k=8, exclude_source_ids=[star])
    assert "ranked_by" not in plain.query
    assert list(plain.spectrum_id) == list(direct.spectrum_id)
    with pytest.raises(QueryError, match="dimension 3"):
        engine.search(vec, modality="lamost", k=8, identity=np.ones(3, np.float32))
    cross = engine.search_source(star, target_modality="xp", k=5)
    assert cross.query["ranked_by"] == "embedding+parameters" and cross.modality == "xp"
    cross = engine.search_source(star, target_modality="xp", k=5, agreement=False)
    assert "ranked_by" not in cross.query and cross.modality == "xp"


def test_spectrum_query_reranks_with_the_models_identity_vector(built):
    root, model, cat, emb = built
    engine = SearchEngine.open(root / "index", encoder=model)
    c = open_catalog(cat)
    flux = np.asarray(c.read_column("lamost", "flux")[0].as_py(), np.float32)
    ivar = np.asarray(c.read_column("lamost", "ivar")[0].as_py(), np.float32)
    spec = Spectrum(wavelength=grid_for("lamost").wavelength, flux=flux, ivar=ivar,
                    mask=ivar <= 0, modality="lamost", spectrum_id="q")
    res = engine.search_spectrum(spec, k=5)
    assert res.query["ranked_by"] == "embedding+identity"
    # the query's own row (same spectrum): both cosines 1
    assert res.similarity[0] == pytest.approx(1.0, abs=1e-4)
    assert "ranked_by" not in engine.search_spectrum(spec, k=5, identity=False).query
    assert engine.search_spectrum(spec, k=5, target_modality="xp").query["ranked_by"] == \
        "embedding+parameters"


def test_service_reports_the_ranking_and_hides_the_vectors(built):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    root, model, cat, emb = built
    star = int(_rows(emb, "lamost").column("source_id").to_numpy()[-1])
    app = create_app(Settings(index_dir=root / "index", model_dir=root / "model"))
    with TestClient(app) as client:
        body = client.get(f"/v1/search/source/{star}", params={"k": 5}).json()
        assert body["ranked_by"] == "embedding+identity"
        assert all("identity" not in n for n in body["neighbours"])
        off = client.get(f"/v1/search/source/{star}",
                         params={"k": 5, "identity": "false"}).json()
        assert off["ranked_by"] == "embedding"
        obj = client.get(f"/v1/objects/{star}").json()
        assert "identity" not in str(obj)
        c = open_catalog(cat)
        flux = np.asarray(c.read_column("lamost", "flux")[0].as_py(), np.float64)
        ivar = np.asarray(c.read_column("lamost", "ivar")[0].as_py(), np.float64)
        good = ivar > 0
        body = {"wavelength": grid_for("lamost").wavelength[good].tolist(),
                "flux": flux[good].tolist(), "ivar": ivar[good].tolist(),
                "modality": "lamost", "k": 5}
        got = client.post("/v1/search/spectrum", json=body).json()
        assert got["ranked_by"] == "embedding+identity", got
        cross = client.post("/v1/search/spectrum", json={**body, "target": "cross"}).json()
        assert cross["ranked_by"] == "embedding+parameters"
        cross = client.post("/v1/search/spectrum",
                            json={**body, "target": "cross", "agreement": False}).json()
        assert cross["ranked_by"] == "embedding"


def test_distributed_engine_reranks_the_same(built):
    from test_distributed_engine import distributed

    root, model, cat, emb = built
    build_index(emb, root / "index4", BuildOptions(kind="flat", target_recall=None, shards=4))
    star = int(_rows(emb, "lamost").column("source_id").to_numpy()[-1])
    local = SearchEngine.open(root / "index4").search_source(star, k=10)
    remote = distributed(root / "index4", 2).search_source(star, k=10)
    assert remote.query["ranked_by"] == local.query["ranked_by"] == "embedding+identity"
    assert list(remote.source_id) == list(local.source_id)
    np.testing.assert_allclose(remote.similarity, local.similarity, atol=1e-6)
    assert "identity" not in remote.metadata.column_names


def test_float16_embeddings_store_float16_identity_vectors(built, tmp_path):
    root, model, cat, emb = built
    half = tmp_path / "emb16"
    build_embeddings(cat, model, half, EmbedConfig(progress=False, dtype="float16"))
    t16, t32 = _rows(half, "lamost"), _rows(emb, "lamost")
    assert t16.schema.field("identity").type.value_type == pa.float16()
    np.testing.assert_allclose(list_column_to_numpy(t16.column("identity")),
                               list_column_to_numpy(t32.column("identity")), atol=2e-3)
    build_index(half, tmp_path / "index16", BuildOptions(kind="flat", target_recall=None))
    star = int(t16.column("source_id").to_numpy()[-1])
    res = SearchEngine.open(tmp_path / "index16").search_source(star, k=5)
    assert res.query["ranked_by"] == "embedding+identity"
    # an update keeps them: the float32 rows upserted into the float16 index
    from specsearch.index import add_embeddings
    report = add_embeddings(tmp_path / "index16", emb)
    assert report.replaced["lamost"] == t32.num_rows
    after = SearchEngine.open(tmp_path / "index16").search_source(star, k=5)
    assert after.query["ranked_by"] == "embedding+identity"
    assert list(after.source_id) == list(res.source_id)


def test_identity_vectors_live_beside_the_vectors_memory_mapped(built):
    """The shards keep them in their own .npy (memory-mapped like the vectors), not in the
    rows table that is read into memory at open."""
    root, model, cat, emb = built
    folder = root / "index" / "lamost"
    man = SearchEngine.open(root / "index").index["lamost"].manifest
    assert man.identity_dim == 16 and "identity" not in man.columns
    (entry,) = man.shards
    assert entry.identity is not None and entry.identity.name == "shard-00000.identity.npy"
    assert "identity" not in pq.read_schema(folder / entry.rows.name).names
    shard = SearchEngine.open(root / "index").index["lamost"].shards[0]
    assert isinstance(shard.identity, np.memmap) and shard.identity.shape == (entry.count, 16)
    t = _rows(emb, "lamost")
    np.testing.assert_array_equal(
        np.asarray(shard.identity), list_column_to_numpy(t.column("identity")))
    xp = SearchEngine.open(root / "index").index["xp"].manifest
    assert xp.identity_dim == 0 and all(e.identity is None for e in xp.shards)
    info = SearchEngine.open(root / "index").info()["modalities"]
    assert info["lamost"]["identity"] and info["lamost"]["identity_dim"] == 16
    assert not info["xp"]["identity"]


def test_index_info_says_which_modalities_have_identity_vectors(built, capsys):
    from specsearch.cli import main

    root, model, cat, emb = built
    assert main(["index", "info", str(root / "index")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "identity vectors (16-d" in next(ln for ln in lines if "lamost" in ln)
    assert "identity" not in next(ln for ln in lines if ln.strip().startswith("xp"))


def _to_previous_layout(index_dir):
    """Rewrite a built index as the previous release wrote it: identity vectors as a rows
    column, no identity file."""
    import json

    from specsearch.index.manifest import FileEntry
    from specsearch.io.parquet import fixed_list_type

    folder = index_dir / "lamost"
    man = json.loads((folder / "manifest.json").read_text())
    for entry in man["shards"]:
        ident = np.load(folder / entry["identity"]["name"])
        rows = pq.read_table(folder / entry["rows"]["name"])
        col = pa.FixedSizeListArray.from_arrays(pa.array(ident.ravel()), ident.shape[1])
        rows = rows.append_column(pa.field("identity", fixed_list_type(ident.shape[1],
                                                                       pa.float32())), col)
        pq.write_table(rows, folder / entry["rows"]["name"])
        (folder / entry["identity"]["name"]).unlink()
        entry["rows"] = FileEntry.of(folder / entry["rows"]["name"]).__dict__
        entry["identity"] = None
    man["columns"].append("identity")
    man.pop("identity_dim")
    (folder / "manifest.json").write_text(json.dumps(man))


def test_an_index_of_the_previous_layout_reranks_the_same_and_updates_move_them(built,
                                                                                tmp_path):
    import shutil

    from specsearch.index import add_embeddings

    root, model, cat, emb = built
    old = tmp_path / "old"
    shutil.copytree(root / "index", old)
    _to_previous_layout(old)
    star = int(_rows(emb, "lamost").column("source_id").to_numpy()[-1])
    want = SearchEngine.open(root / "index").search_source(star, k=10)
    engine = SearchEngine.open(old)
    assert engine.index["lamost"].manifest.identity_dim == 0
    got = engine.search_source(star, k=10)
    assert got.query["ranked_by"] == "embedding+identity"
    assert list(got.spectrum_id) == list(want.spectrum_id)
    assert "identity" not in got.metadata.column_names
    assert "identity" not in engine.lookup(star).column_names
    # an update rewrites the shard in the current layout
    add_embeddings(old, emb)
    after = SearchEngine.open(old)
    man = after.index["lamost"].manifest
    assert man.identity_dim == 16 and man.shards[0].identity is not None
    assert list(after.search_source(star, k=10).spectrum_id) == list(want.spectrum_id)


def test_deletes_and_compaction_keep_identity_vectors_with_their_rows(built, tmp_path):
    import shutil

    from specsearch.index import compact, delete_sources

    root, model, cat, emb = built
    idx = tmp_path / "idx"
    shutil.copytree(root / "index", idx)
    sids = _rows(emb, "lamost").column("source_id").to_numpy()
    star = int(sids[-1])
    before = SearchEngine.open(idx).search_source(star, k=20)
    gone = [int(s) for s in before.source_id[::3]]
    delete_sources(idx, gone)
    kept = [s for s in before.source_id if int(s) not in gone]
    deleted = SearchEngine.open(idx).search_source(star, k=20)
    assert SearchEngine.open(idx).index["lamost"].manifest.shards[0].identity is not None
    compact(idx)
    compacted = SearchEngine.open(idx)
    assert compacted.index["lamost"].manifest.shards[0].tombstones is None
    res = compacted.search_source(star, k=20)
    assert res.query["ranked_by"] == "embedding+identity"
    assert list(res.source_id) == list(deleted.source_id)
    np.testing.assert_allclose(res.similarity, deleted.similarity, atol=1e-6)
    # the rows that stayed keep their scores (identity vectors still with their rows)
    was = dict(zip(before.spectrum_id, before.similarity))
    stayed = [i for i, s in enumerate(res.spectrum_id) if s in was]
    assert len(stayed) >= len(kept) // 2
    np.testing.assert_allclose(res.similarity[stayed],
                               [was[res.spectrum_id[i]] for i in stayed], atol=1e-6)


def test_embedding_route_reranks_with_an_identity_vector(built):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    root, model, cat, emb = built
    t = _rows(emb, "lamost")
    row = t.num_rows - 1
    vec = list_column_to_numpy(t.column("embedding"))[row]
    ident = list_column_to_numpy(t.column("identity"))[row]
    want = SearchEngine.open(root / "index").search(vec, modality="lamost", k=6,
                                                    identity=ident)
    assert want.query["ranked_by"] == "embedding+identity"
    app = create_app(Settings(index_dir=root / "index", model_dir=root / "model"))
    with TestClient(app) as client:
        body = {"embedding": vec.tolist(), "modality": "lamost", "k": 6}
        plain = client.post("/v1/search/embedding", json=body).json()
        assert plain["ranked_by"] == "embedding"
        got = client.post("/v1/search/embedding",
                          json={**body, "identity_vector": (3 * ident).tolist()}).json()
        assert got["ranked_by"] == "embedding+identity"
        assert [n["spectrum_id"] for n in got["neighbours"]] == list(want.spectrum_id)
        off = client.post("/v1/search/embedding", json={**body, "identity": False,
                                                         "identity_vector": ident.tolist()})
        assert off.json()["ranked_by"] == "embedding"
        for bad, why in (([0.0] * 16, "finite and non-zero"), ([1.0] * 3, "dimension 3")):
            r = client.post("/v1/search/embedding", json={**body, "identity_vector": bad})
            assert r.status_code == 400 and why in r.text, r.text


def test_an_identity_column_of_variable_length_is_refused_by_name(tmp_path):
    from specsearch.errors import CatalogError
    from specsearch.index.embedding_sources import ArrayEmbeddings

    n = 20
    emb = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
    ident = pa.array([[1.0, 0.0]] * n, pa.list_(pa.float32()))
    source = ArrayEmbeddings({"lamost": {"embedding": emb, "source_id": np.arange(n),
                                         "identity": ident}}, model_hash="m")
    with pytest.raises(CatalogError, match="'identity' must be a fixed-size list"):
        build_index(source, tmp_path / "idx", BuildOptions(kind="flat", target_recall=None))
