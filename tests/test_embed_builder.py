"""The embedding builder against a small deterministic encoder (the real model has its own
tests; here the builder's streaming, skipping, resume and engines are under test)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import pytest

from specsearch.embed import EmbedConfig, build_embeddings
from specsearch.errors import CatalogError
from specsearch.io.catalog import CatalogWriter
from specsearch.io.embeddings import open_embeddings
from specsearch.preprocess import prepare_model_input


@dataclass
class _Batch:
    embedding: np.ndarray
    good: np.ndarray
    predictions: np.ndarray
    uncertainties: np.ndarray


class ProjectionEncoder:
    """A fixed random projection of the prepared spectrum: deterministic, fast."""

    label_names = ("teff", "feh")
    class_names = ()
    embedding_dim = 16

    def __init__(self, model_hash="proj-1"):
        self.model_hash = model_hash
        self.calls = 0

    def embed_numpy(self, modality, flux, ivar, *, with_residual=False):
        self.calls += 1
        x = prepare_model_input(flux, ivar, modality)
        proj = np.random.default_rng(0).standard_normal((x.flux.shape[1], self.embedding_dim))
        emb = x.flux @ proj
        emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12
        pred = np.stack([emb[:, 0] * 1000 + 5000, emb[:, 1]], axis=1)
        return _Batch(emb.astype(np.float32), x.good, pred, np.ones_like(pred))


def _catalog(root, n=250, rows_per_file=100, seed=0):
    rng = np.random.default_rng(seed)
    flux = (1 + 0.1 * rng.standard_normal((n, 343))).astype(np.float32)
    ivar = np.full((n, 343), 100.0, np.float32)
    ivar[7] = 0.0                       # all masked: must be skipped, not fatal
    flux[11] = np.nan                   # NaN-only flux
    with CatalogWriter(root, "xp", rows_per_file=rows_per_file) as w:
        w.write({"spectrum_id": [f"xp-{i}" for i in range(n)],
                 "source_id": np.arange(n, dtype=np.int64), "flux": flux, "ivar": ivar,
                 "ra": rng.uniform(0, 360, n), "snr": np.full(n, 50.0),
                 "population": ["normal"] * n})
    return root


def _read_all(root):
    emb = open_embeddings(root)
    return {p.name: pq.read_table(p) for p in emb.files("xp")}


def test_builder_matches_direct_model_call_and_skips_bad_rows(tmp_path):
    cat = _catalog(tmp_path / "cat")
    enc = ProjectionEncoder()
    rep = build_embeddings(cat, enc, tmp_path / "emb", EmbedConfig(batch_size=64,
                                                                   progress=False))
    assert rep.rows_in == 250 and rep.rows_written == 248
    assert sum(rep.rows_skipped.values()) == 2
    emb = open_embeddings(tmp_path / "emb")
    assert emb.model_hash == "proj-1" and emb.count("xp") == 248
    ids, vecs = emb.read_vectors("xp")
    assert 7 not in ids and 11 not in ids
    from specsearch.io.catalog import list_column_to_numpy, open_catalog

    c = open_catalog(cat)
    t = pq.read_table(c.files("xp")[0])
    direct = enc.embed_numpy("xp", list_column_to_numpy(t.column("flux")),
                             list_column_to_numpy(t.column("ivar"))).embedding
    assert np.allclose(vecs[:5], direct[:5], atol=1e-6)
    # metadata for filters and the head predictions travel along
    table = pq.read_table(emb.files("xp")[0])
    assert {"ra", "snr", "population", "teff_pred", "feh_err"} <= set(table.column_names)


def test_resume_after_crash_gives_identical_dataset(tmp_path):
    cat = _catalog(tmp_path / "cat")
    cfg = EmbedConfig(batch_size=64, progress=False)
    build_embeddings(cat, ProjectionEncoder(), tmp_path / "full", cfg)
    with pytest.raises(RuntimeError, match="crash_at"):
        build_embeddings(cat, ProjectionEncoder(), tmp_path / "resumed",
                         EmbedConfig(batch_size=64, progress=False, crash_at=1))
    assert len(list((tmp_path / "resumed" / "xp").glob("*.parquet"))) == 1
    enc = ProjectionEncoder()
    rep = build_embeddings(cat, enc, tmp_path / "resumed", cfg)
    assert rep.files_reused == 1 and rep.files_written == 2
    full, resumed = _read_all(tmp_path / "full"), _read_all(tmp_path / "resumed")
    assert full.keys() == resumed.keys()
    for name in full:
        assert full[name].equals(resumed[name])


def test_other_model_refuses_to_mix_unless_overwrite(tmp_path):
    cat = _catalog(tmp_path / "cat", n=50)
    cfg = EmbedConfig(progress=False)
    build_embeddings(cat, ProjectionEncoder("m1"), tmp_path / "emb", cfg)
    with pytest.raises(CatalogError, match="refusing to add rows of model 'm2'"):
        build_embeddings(cat, ProjectionEncoder("m2"), tmp_path / "emb", cfg)
    rep = build_embeddings(cat, ProjectionEncoder("m2"), tmp_path / "emb",
                           EmbedConfig(progress=False, overwrite=True))
    assert rep.files_written == 1
    assert open_embeddings(tmp_path / "emb").model_hash == "m2"


def test_unknown_modality_is_a_clear_error(tmp_path):
    cat = _catalog(tmp_path / "cat", n=20)
    with pytest.raises(CatalogError, match="no 'lamost' spectra to embed"):
        build_embeddings(cat, ProjectionEncoder(), tmp_path / "emb",
                         EmbedConfig(modalities=["lamost"], progress=False))


def test_ray_engine_gives_the_local_output(tmp_path):
    ray = pytest.importorskip("ray")
    import sys

    from specsearch.embed.ray_engine import build_embeddings_ray

    # Ray workers cannot import this test module: ship the encoder class by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    cat = _catalog(tmp_path / "cat")
    cfg = EmbedConfig(batch_size=64, progress=False)
    build_embeddings(cat, ProjectionEncoder(), tmp_path / "local", cfg)
    rep = build_embeddings_ray(cat, ProjectionEncoder, tmp_path / "ray", cfg, num_cpus=2)
    assert rep.rows_written == 248 and rep.files_written == 3
    local, ray_out = _read_all(tmp_path / "local"), _read_all(tmp_path / "ray")
    assert local.keys() == ray_out.keys()
    for name in local:
        a, b = local[name], ray_out[name]
        assert a.column("spectrum_id").equals(b.column("spectrum_id"))
        assert a.column("embedding").equals(b.column("embedding"))
        assert a.column("teff_pred").equals(b.column("teff_pred"))
    # a rerun of either engine reuses the finished files
    again = build_embeddings(cat, ProjectionEncoder(), tmp_path / "ray", cfg)
    assert again.files_reused == 3 and again.files_written == 0
