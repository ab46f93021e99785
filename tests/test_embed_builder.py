"""The embedding builder against a small deterministic encoder (the real model has its own
tests; here the builder's streaming, skipping, resume and engines are under test)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
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


def test_rows_of_the_wrong_length_are_skipped_and_counted(tmp_path):
    """A catalog file written by another tool may hold variable-length lists."""
    import pyarrow as pa

    root = _catalog(tmp_path / "cat", n=40, rows_per_file=40)
    path = sorted((root / "xp").glob("*.parquet"))[0]
    t = pq.read_table(path)
    flux = t.column("flux").to_pylist()
    ivar = t.column("ivar").to_pylist()
    flux[3] = flux[3][:100]             # too short
    ivar[5] = ivar[5] + [1.0]           # too long
    flux[8] = None                      # missing
    t = t.set_column(t.schema.get_field_index("flux"), "flux",
                     pa.array(flux, pa.list_(pa.float32())))
    t = t.set_column(t.schema.get_field_index("ivar"), "ivar",
                     pa.array(ivar, pa.list_(pa.float32())))
    pq.write_table(t, path)
    rep = build_embeddings(root, ProjectionEncoder(), tmp_path / "emb",
                           EmbedConfig(batch_size=16, progress=False))
    assert rep.rows_in == 40 and rep.rows_written == 40 - 3 - 2   # + rows 7 and 11
    assert rep.rows_skipped["flux/ivar missing or not 343 pixels"] == 3
    ids, _ = open_embeddings(tmp_path / "emb").read_vectors("xp")
    assert not {3, 5, 7, 8, 11} & set(ids.tolist())


def test_real_model_through_the_builder_equals_a_direct_call(tmp_path):
    from specsearch.io.catalog import list_column_to_numpy, open_catalog
    from specsearch.model import load_model

    model = load_model()
    cat = _catalog(tmp_path / "cat", n=120, rows_per_file=50)
    rep = build_embeddings(cat, model, tmp_path / "emb",
                           EmbedConfig(batch_size=32, progress=False, dtype="float16"))
    assert rep.rows_written == 118 and rep.files_written == 3
    c = open_catalog(cat)
    emb = open_embeddings(tmp_path / "emb")
    for cat_file, emb_file in zip(c.files("xp"), emb.files("xp")):
        t = pq.read_table(cat_file)
        direct = model.embed_numpy("xp", list_column_to_numpy(t.column("flux")),
                                   list_column_to_numpy(t.column("ivar")))
        got = pq.read_table(emb_file)
        keep = direct.good
        assert got.column("spectrum_id").to_pylist() == [
            s for s, g in zip(t.column("spectrum_id").to_pylist(), keep) if g]
        assert str(got.schema.field("embedding").type.value_type) == "halffloat"
        vec = list_column_to_numpy(got.column("embedding"))
        assert np.allclose(vec, direct.embedding[keep], atol=1e-3)   # float16 storage
        teff, _ = direct.label("teff")
        assert np.allclose(got.column("teff_pred").to_numpy(), teff[keep], rtol=1e-6)
        assert got.column("class_pred").to_pylist()[0] in model.class_names


_KILL_CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from test_embed_builder import ProjectionEncoder
from specsearch.embed import EmbedConfig, build_embeddings

class Slow(ProjectionEncoder):
    def embed_numpy(self, *a, **k):
        time.sleep(0.2)
        return super().embed_numpy(*a, **k)

build_embeddings({cat!r}, Slow(), {out!r}, EmbedConfig(batch_size=25, progress=False))
"""


def test_kill_9_then_rerun_gives_the_uninterrupted_dataset(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    cat = _catalog(tmp_path / "cat", n=300, rows_per_file=100)
    out = tmp_path / "killed"
    code = _KILL_CHILD.format(tests=str(Path(__file__).parent), cat=str(cat), out=str(out))
    child = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if list((out / "xp").glob("*.parquet")) if (out / "xp").is_dir() else []:
            break
        time.sleep(0.05)
    time.sleep(0.3)                      # let it get into the middle of the next file
    assert child.poll() is None, "the child finished before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    finished = sorted(p.name for p in (out / "xp").glob("*.parquet"))
    assert 1 <= len(finished) < 3        # complete files only; a temp file may be left
    rep = build_embeddings(cat, ProjectionEncoder(), out,
                           EmbedConfig(batch_size=25, progress=False))
    assert rep.files_reused == len(finished) and rep.files_written == 3 - len(finished)
    build_embeddings(cat, ProjectionEncoder(), tmp_path / "full",
                     EmbedConfig(batch_size=25, progress=False))
    killed, full = _read_all(out), _read_all(tmp_path / "full")
    assert killed.keys() == full.keys()
    for name in full:
        assert killed[name].equals(full[name])


def test_tensor_inputs_precision_and_batch_size_options(tmp_path):
    import torch

    from specsearch.embed.config import auto_batch_size
    from specsearch.errors import ConfigError
    from specsearch.io.catalog import list_column_to_numpy, open_catalog
    from specsearch.model import load_model

    model = load_model()
    cat = _catalog(tmp_path / "cat", n=64, rows_per_file=64)
    t = pq.read_table(open_catalog(cat).files("xp")[0])
    flux = list_column_to_numpy(t.column("flux"))
    ivar = list_column_to_numpy(t.column("ivar"))
    ref = model.embed_numpy("xp", flux, ivar)
    # host tensors (the GPU path hands over pinned ones) give the same embeddings
    as_t = model.embed_numpy("xp", torch.from_numpy(flux.copy()), torch.from_numpy(ivar.copy()))
    assert np.array_equal(ref.good, as_t.good)
    assert np.allclose(ref.embedding[ref.good], as_t.embedding[ref.good], atol=1e-6)
    # bf16 autocast: a lower-precision network, the same directions
    bf = model.embed_numpy("xp", flux, ivar, autocast="bf16")
    cos = np.sum(bf.embedding[ref.good] * ref.embedding[ref.good], axis=1)
    assert cos.min() > 0.98
    with pytest.raises(ConfigError, match="precision"):
        model.embed_numpy("xp", flux, ivar, autocast="int8")
    rep = build_embeddings(cat, model, tmp_path / "emb",
                           EmbedConfig(progress=False, precision="bf16"))
    assert rep.rows_written == 62
    with pytest.raises(ConfigError, match="precision"):
        build_embeddings(cat, model, tmp_path / "emb2",
                         EmbedConfig(progress=False, precision="half"))
    assert auto_batch_size("lamost") == 1024 and auto_batch_size("xp") == 12032
    assert auto_batch_size("lamost", gpu=True) == 8448 and auto_batch_size("xp", 77) == 77
    with pytest.raises(ConfigError, match="batch_size"):
        auto_batch_size("xp", 0)


def test_check_telluric_masks_the_rows_that_carry_the_atmosphere(tmp_path, samples):
    """``check_telluric``: LAMOST rows with the O2 A band left in are found and embedded as
    the same spectra with their telluric bands masked; the others as they are."""
    from specsearch.io.catalog import list_column_to_numpy, open_catalog
    from specsearch.io.ingest import ingest
    from specsearch.model import load_model
    from specsearch.model.telluric import without_telluric
    from specsearch.synth.lamost import telluric_transmission

    src = samples / "lamost" / "format_samples"
    ingest([src], tmp_path / "cat", modality="lamost", progress=False)
    c = open_catalog(tmp_path / "cat")
    (path,) = c.files("lamost")
    t = pq.read_table(path)
    flux = list_column_to_numpy(t.column("flux"))
    ivar = list_column_to_numpy(t.column("ivar"))
    rv = t.column("rv").to_numpy(zero_copy_only=False).astype(np.float64)
    n = len(flux)
    trans = telluric_transmission(rv, np.full(n, 1.5), np.full(n, 2.0)).astype(np.float32)
    left = np.arange(n) == 0                                 # the first row only
    flux2 = np.where(left[:, None], flux * trans, flux).astype(np.float32)
    ivar2 = np.where(left[:, None], ivar / np.maximum(trans, 1e-3) ** 2, ivar)
    t = (t.set_column(t.schema.get_field_index("flux"), "flux",
                      pa.array(list(flux2), t.schema.field("flux").type))
          .set_column(t.schema.get_field_index("ivar"), "ivar",
                      pa.array(list(ivar2.astype(np.float32)), t.schema.field("ivar").type)))
    pq.write_table(t, path)
    model = load_model()
    rep = build_embeddings(tmp_path / "cat", model, tmp_path / "emb",
                           EmbedConfig(progress=False, check_telluric=True))
    assert rep.rows_telluric_masked == 1 and "masked in 1 spectra" in rep.summary()
    got = pq.read_table(open_embeddings(tmp_path / "emb").files("lamost")[0])
    assert got.column("telluric_masked").to_pylist() == left.tolist()
    depth = got.column("telluric_depth").to_numpy()
    assert depth[0] > 0.3 and np.all(depth[1:] < 0.15)
    masked = model.embed_numpy("lamost", flux2[:1], without_telluric(ivar2[:1], rv[:1]))
    vec = list_column_to_numpy(got.column("embedding"))
    assert np.allclose(vec[0], masked.embedding[0], atol=1e-5)
    plain = model.embed_numpy("lamost", flux2[1:], ivar2[1:])
    assert np.allclose(vec[1:], plain.embedding, atol=1e-5)
    off = build_embeddings(tmp_path / "cat", model, tmp_path / "emb-off",
                           EmbedConfig(progress=False))
    assert off.rows_telluric_masked == 0
    assert "telluric_masked" not in pq.read_table(
        open_embeddings(tmp_path / "emb-off").files("lamost")[0]).column_names
