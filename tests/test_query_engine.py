"""SearchEngine: by source_id (in-modality and cross-modal), pagination, big k, filters,
range search, spectrum queries through an attached encoder."""

from __future__ import annotations

import numpy as np
import pytest

import specsearch.index.shard as shard_mod
from specsearch.errors import ModelError, QueryError
from specsearch.index import ArrayEmbeddings, BuildOptions, HNSWConfig, build_index
from specsearch.index.synthetic import clustered_unit_vectors, synthetic_embeddings
from specsearch.preprocess import XP_GRID
from specsearch.query import Filter, SearchEngine
from specsearch.spectrum import Spectrum


@pytest.fixture(scope="module")
def emb(tmp_path_factory):
    return synthetic_embeddings(tmp_path_factory.mktemp("emb") / "emb", n=3000, dim=32)


@pytest.fixture(scope="module", params=["flat", "hnsw", "hnswlib"])
def engine(request, emb, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "idx"
    config = HNSWConfig(m=16, ef_construction=40) if request.param == "hnsw" else None
    build_index(emb.root, out, BuildOptions(kind=request.param, config=config, shards=3,
                                            target_recall=0.95, tune_queries=200))
    return SearchEngine.open(out)


def _all(engine, modality):
    """(vectors, source_id, table) of every row of a modality, from the shards' own files."""
    import pyarrow as pa
    mi = engine.index[modality]
    vecs = np.concatenate([np.asarray(s.vectors) for s in mi.shards])
    table = pa.concat_tables([s.rows for s in mi.shards])
    return vecs, table.column("source_id").to_numpy(), table


def test_search_by_source_id_in_modality(engine):
    vecs, sid, _ = _all(engine, "lamost")
    hits = engine.search_source(int(sid[10]), k=20)
    assert len(hits) == 20 and int(sid[10]) not in set(hits.source_id)
    assert np.all(np.diff(hits.similarity) <= 1e-6)
    truth = np.argsort(-(vecs @ vecs[10]))[1:21]
    assert len(set(hits.source_id) & set(sid[truth])) >= 18
    row = hits.to_dicts()[0]
    assert {"rank", "similarity", "source_id", "spectrum_id", "ra", "dec", "snr",
            "feh_pred", "feh_err", "class_pred"} <= set(row)
    assert hits.to_arrow().num_rows == 20 and hits.query["kind"] == "source_id"


def test_cross_modal_finds_the_partner(engine, emb):
    lamost_ids = emb.read_vectors("lamost")[0]
    xp_ids = set(emb.read_vectors("xp")[0])
    paired = [s for s in lamost_ids[:300] if s in xp_ids][:100]
    found = sum(engine.search_source(int(s), target_modality="xp", k=1).source_id[0] == s
                for s in paired)
    assert found >= 95
    back = engine.search_source(int(paired[0]), modality="xp", target_modality="lamost", k=1)
    assert back.source_id[0] == paired[0] and back.modality == "lamost"


def test_pagination_and_limits(engine):
    _, sid, _ = _all(engine, "lamost")
    full = engine.search_source(int(sid[3]), k=60)
    pages = [engine.search_source(int(sid[3]), k=60, offset=o, limit=20) for o in (0, 20, 40)]
    assert np.array_equal(np.concatenate([p.source_id for p in pages]), full.source_id)
    assert list(pages[2].rank) == list(range(40, 60)) and pages[1].total == 60
    with pytest.raises(QueryError, match="maximum"):
        engine.search_source(int(sid[3]), k=10_001)
    with pytest.raises(QueryError, match="offset"):
        engine.search_source(int(sid[3]), k=10, offset=5, limit=10)
    with pytest.raises(QueryError, match="not in"):
        engine.search_source(12345)
    with pytest.raises(QueryError, match="dimension"):
        engine.search(np.ones(5), modality="lamost")


def test_batch_equals_single_queries(engine):
    vecs, _, _ = _all(engine, "lamost")
    batch = engine.search(vecs[:20], modality="lamost", k=10)
    for i in (0, 7, 19):
        one = engine.search(vecs[i], modality="lamost", k=10)
        assert np.array_equal(one.source_id, batch[i].source_id)


def test_k_10000_on_sharded_flat_matches_numpy(tmp_path):
    vectors = clustered_unit_vectors(12_000, 16, n_clusters=30, seed=5)
    sid = np.arange(12_000, dtype=np.int64) * 7919
    build_index(ArrayEmbeddings({"xp": {"embedding": vectors, "source_id": sid}},
                                model_hash="m"), tmp_path / "idx",
                BuildOptions(kind="flat", shards=4, target_recall=None))
    engine = SearchEngine.open(tmp_path / "idx")
    q = clustered_unit_vectors(1, 16, n_clusters=30, seed=6)[0]
    hits = engine.search(q, k=10_000)
    sims = vectors @ q
    order = np.argsort(-sims, kind="stable")[:10_000]
    assert len(hits) == 10_000
    np.testing.assert_allclose(hits.similarity, sims[order], atol=1e-5)
    assert len(set(hits.source_id) ^ set(sid[order])) <= 2  # ties at the boundary only


@pytest.mark.parametrize("scan_rows", [20_000, 10], ids=["exact-scan", "id-selector"])
def test_selective_filter_returns_true_topk_among_passing_rows(engine, monkeypatch,
                                                              scan_rows):
    """1% of rows pass: the result is the exact top-k among them (exact-scan path), and the
    ID-selector path (forced by lowering the scan threshold) keeps recall too."""
    monkeypatch.setattr(shard_mod, "EXACT_SCAN_ROWS", scan_rows)
    monkeypatch.setattr(shard_mod, "EXACT_SCAN_FRACTION", 0.0 if scan_rows == 10 else 0.02)
    engine._mask_cache.clear()
    vecs, _, table = _all(engine, "lamost")
    feh = table.column("feh_pred").to_numpy()
    cut = float(np.quantile(feh, 0.01))
    passing = np.flatnonzero(feh < cut)
    assert 20 <= len(passing) <= 40
    recalls = []
    for q in vecs[:30]:
        hits = engine.search(q, modality="lamost", k=10, filter=f"feh_pred<{cut}")
        truth = passing[np.argsort(-(vecs[passing] @ q))[:10]]
        assert np.all(hits.metadata.column("feh_pred").to_numpy() < cut)
        recalls.append(len(set(hits.spectrum_id)
                           & set(table.column("spectrum_id").to_numpy()[truth])) / 10)
        if scan_rows == 20_000:
            np.testing.assert_allclose(hits.similarity, np.sort(vecs[truth] @ q)[::-1],
                                       atol=1e-5)
    assert np.mean(recalls) >= (1.0 if scan_rows == 20_000 else 0.9)
    engine._mask_cache.clear()


def test_filters_on_sky_cone_snr_and_strings(engine):
    from astropy.coordinates import SkyCoord
    _, _, table = _all(engine, "lamost")
    ra, dec = table.column("ra").to_numpy(), table.column("dec").to_numpy()
    c = SkyCoord(ra, dec, unit="deg")
    sep = c.separation(SkyCoord(ra[0], dec[0], unit="deg")).deg
    radius = float(np.mean(np.sort(sep)[40:42]))  # not on a boundary object
    flt = Filter.parse([f"cone={ra[0]},{dec[0]},{radius}", "snr>=5", "class_pred=normal|carbon"])
    hits = engine.search(np.ones(32), modality="lamost", k=200, filter=flt)
    inside = (sep <= radius) & (table.column("snr").to_numpy() >= 5) & np.isin(
        table.column("class_pred").to_numpy(zero_copy_only=False), ["normal", "carbon"])
    assert set(hits.spectrum_id) == set(table.column("spectrum_id").to_numpy()[inside])
    none = engine.search(np.ones(32), modality="lamost", k=5, filter="mag_g>100")
    assert len(none) == 0 and none.total == 0


def test_filter_parsing():
    f = Filter.parse(["feh_pred<-2", "snr>=20;cone=45.1,0.9,0.5", "modality=xp",
                      "is_artefact=false", "population=halo|thick"])
    assert [str(c) for c in f.conditions] == ["feh_pred<-2", "snr>=20",
                                              "is_artefact=False", "population=halo|thick"]
    assert f.cone.ra == 45.1 and f.cone.radius == 0.5 and f.modality == "xp"
    for bad in ("snr>>3", "cone=1,2", "snr<high", "cone=1,95,1"):
        with pytest.raises(QueryError):
            Filter.parse(bad)
    assert Filter.parse(None).empty


def test_integer_filters_are_exact_for_gaia_size_source_ids():
    # 2**60 and 2**60 + 1 are the same float64: an integer literal must stay an integer.
    ids = np.array([2 ** 60, 2 ** 60 + 1, 7], dtype=np.int64)
    (cond,) = Filter.parse(f"source_id={2 ** 60 + 1}").conditions
    assert cond.mask(ids).tolist() == [False, True, False]
    (cond,) = Filter.parse(f"source_id>{2 ** 60}").conditions
    assert cond.mask(ids).tolist() == [False, True, False]
    (cond,) = Filter.parse("snr>=20").conditions
    assert cond.mask(np.array([19.5, 20.0, np.nan])).tolist() == [False, True, False]


def test_unknown_source_id_is_not_found(engine):
    from specsearch.errors import NotFoundError

    with pytest.raises(NotFoundError, match="not in"):
        engine.lookup(-12345)
    with pytest.raises(NotFoundError, match="-12345"):
        engine.search_source(-12345, k=3)


def test_range_search_matches_numpy(engine):
    vecs, sid, table = _all(engine, "lamost")
    q = vecs[100]
    sims = vecs @ q
    threshold = float(np.sort(sims)[-25])
    hits = engine.range_search(q, threshold, modality="lamost")
    expected = set(table.column("spectrum_id").to_numpy()[sims >= threshold])
    assert len(set(hits.spectrum_id) & expected) >= 0.95 * len(expected)
    assert np.all(hits.similarity >= threshold - 1e-6)
    filtered = engine.range_search(q, threshold, modality="lamost", filter="snr>=40")
    assert np.all(filtered.metadata.column("snr").to_numpy() >= 40)


class StandInEncoder:
    """A tiny deterministic 'model': a fixed random projection of the XP-grid flux."""

    label_names = ("teff", "logg", "feh")

    def __init__(self, model_hash, dim=32):
        self.model_hash = model_hash
        self.matrix = np.random.default_rng(0).standard_normal((XP_GRID.npix, dim))

    def embed_numpy(self, modality, flux, ivar):
        assert modality == "xp" and flux.shape[1] == XP_GRID.npix
        emb = flux @ self.matrix
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)

        class Batch:
            pass
        b = Batch()
        b.embedding, b.good = emb.astype(np.float32), np.ones(len(flux), bool)
        b.predictions = np.tile([5000.0, 4.0, -1.0], (len(flux), 1))
        b.uncertainties = np.full((len(flux), 3), 0.1)
        b.label_names = self.label_names
        return b


def test_search_by_spectrum_with_attached_encoder(tmp_path):
    rng = np.random.default_rng(1)
    wave = XP_GRID.wavelength
    flux = 1 + 0.3 * np.sin(np.outer(rng.uniform(1, 5, 200), wave / 1000.0)) \
        + 0.05 * rng.standard_normal((200, wave.size))
    encoder = StandInEncoder("model-x")
    emb = encoder.embed_numpy("xp", flux, np.ones_like(flux)).embedding
    build_index(ArrayEmbeddings({"xp": {"embedding": emb, "source_id": np.arange(200) + 10}},
                                model_hash="model-x"), tmp_path / "idx",
                BuildOptions(kind="flat", target_recall=None))
    engine = SearchEngine.open(tmp_path / "idx")
    spec = Spectrum(wavelength=wave, flux=flux[42], ivar=np.ones(wave.size),
                    mask=np.zeros(wave.size, bool), modality="xp", spectrum_id="query")
    with pytest.raises(QueryError, match="model"):
        engine.search_spectrum(spec)
    with pytest.raises(ModelError, match="not the one"):
        engine.attach_encoder(StandInEncoder("another-model"))
    engine.attach_encoder(encoder)
    hits = engine.search_spectrum(spec, k=3)
    assert hits.source_id[0] == 52 and hits.similarity[0] > 0.999
    assert hits.query["predictions"]["feh"] == (-1.0, 0.1)
    assert "domain" not in hits.query                  # this encoder has no domain check
    checked = CheckedEncoder("model-x")
    engine.attach_encoder(checked)
    hits = engine.search_spectrum(spec, k=3)
    assert hits.query["domain"] == {"recon_relative": 0.9, "threshold": 0.5,
                                    "out_of_domain": True}
    assert hits.source_id[0] == 52                     # a flag, not a filter


class CheckedEncoder(StandInEncoder):
    """The stand-in with a domain check that flags everything (relative error 0.9)."""

    def __init__(self, model_hash):
        from specsearch.model.domain import DomainCheck
        super().__init__(model_hash)
        self.domain_check = DomainCheck(model_hash, {"xp": 0.5})

    def embed_numpy(self, modality, flux, ivar, *, with_domain=False):
        b = super().embed_numpy(modality, flux, ivar)
        assert with_domain
        b.recon_relative = np.full(len(flux), 0.9)
        b.out_of_domain = self.domain_check.flags(modality, b.recon_relative)
        return b


def test_lookup_returns_every_row_of_a_star(engine, emb):
    lamost_ids = emb.read_vectors("lamost")[0]
    xp_ids = set(emb.read_vectors("xp")[0])
    paired = next(int(s) for s in lamost_ids if s in xp_ids)
    rows = engine.lookup(paired)
    assert sorted(rows.column("modality").to_pylist()) == ["lamost", "xp"]
    assert set(rows.column("source_id").to_pylist()) == {paired}
    modality, vec = engine.vector_of(paired, "xp")
    assert modality == "xp" and vec.shape == (32,) and abs(np.linalg.norm(vec) - 1) < 1e-5
