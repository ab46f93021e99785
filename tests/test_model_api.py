"""The public inference API: shapes, bad input, residuals, the tensor path, the default model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specsearch.errors import ConfigError, SpectrumError
from specsearch.model import default_model_path, load_model
from specsearch.model.evaluation.speed import fake_inputs
from specsearch.preprocess import prepare_model_input

from test_model_checkpoint import tiny_model_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(tiny_model_dir(tmp_path_factory.mktemp("api") / "m"))


@pytest.mark.parametrize("modality", ["lamost", "xp"])
def test_batch_of_one_and_many(model, modality):
    flux, ivar = fake_inputs(modality, 3)
    one = model.embed_numpy(modality, flux[0], ivar[0])          # 1-D input: a batch of one
    many = model.embed_numpy(modality, flux, ivar, batch_size=2)  # split over two chunks
    assert one.embedding.shape == (1, 16) and many.embedding.shape == (3, 16)
    assert one.predictions.shape == one.uncertainties.shape == (1, 2)
    assert one.class_prob.shape == (1, 2) and one.good.tolist() == [True]
    assert np.allclose(np.linalg.norm(many.embedding, axis=1), 1.0, atol=1e-5)
    assert np.allclose(one.embedding[0], many.embedding[0], atol=1e-5)
    assert np.all(many.uncertainties > 0)
    value, err = many.label("teff")
    assert value.shape == err.shape == (3,)


def test_bad_rows_are_flagged_not_embedded(model):
    flux, ivar = fake_inputs("xp", 4)
    flux[1] = np.nan                                   # all NaN
    ivar[2] = 0.0                                      # all masked
    flux[3, :100] = np.inf                             # some bad pixels only: still good
    b = model.embed_numpy("xp", flux, ivar)
    assert b.good.tolist() == [True, False, False, True]
    assert np.isnan(b.embedding[1:3]).all() and np.isnan(b.predictions[1:3]).all()
    assert np.isfinite(b.embedding[[0, 3]]).all()


def test_wrong_grid_and_modality_are_errors(model):
    flux, ivar = fake_inputs("xp", 2)
    with pytest.raises(SpectrumError, match="343"):
        model.embed_numpy("lamost", flux, ivar)
    with pytest.raises(SpectrumError):
        model.embed_numpy("xp", flux[:, :300], ivar[:, :300])
    with pytest.raises(ConfigError, match="not 'gaia'"):
        model.embed_numpy("gaia", flux, ivar)


def test_masked_pixels_do_not_count(model):
    flux, ivar = fake_inputs("lamost", 2)
    flux2 = flux.copy()
    flux2[:, 1000:1400] = 1e6                          # garbage under a mask
    ivar2 = ivar.copy()
    ivar2[:, 1000:1400] = 0.0
    flux3 = flux.copy()
    flux3[:, 1000:1400] = -3.0                         # different garbage, same mask
    a = model.embed_numpy("lamost", flux2, ivar2).embedding
    b = model.embed_numpy("lamost", flux3, ivar2).embedding
    assert np.allclose(a, b, atol=1e-6)


def test_residuals_translation_and_tensor_path(model):
    fl, il = fake_inputs("lamost", 3)
    fx, ix = fake_inputs("xp", 3)
    b = model.embed_numpy("lamost", fl, il, with_residual=True)
    assert b.recon_residual.shape == (3,) and b.translation_residual.shape == (3,)
    assert np.all(np.isfinite(b.recon_residual))
    # the domain check's input comes with the residuals, or alone (one decoder pass)
    d = model.embed_numpy("lamost", fl, il, with_domain=True)
    assert d.recon_residual is None and d.translation_residual is None
    np.testing.assert_allclose(d.recon_relative, b.recon_relative, rtol=1e-5)
    assert np.all(b.recon_relative >= 0)
    assert model.embed_numpy("lamost", fl, il).recon_relative is None
    ix_bad = ix.copy()
    ix_bad[1] = 0.0                                    # partner spectrum all masked
    p = model.embed_numpy("lamost", fl, il, partner=(fx, ix_bad))
    assert p.translation_residual.shape == (3,) and np.isnan(p.translation_residual[1])
    assert p.good.all() and np.isfinite(p.translation_residual[[0, 2]]).all()
    assert not np.allclose(p.translation_residual[[0, 2]], b.translation_residual[[0, 2]])
    with pytest.raises(SpectrumError, match="partner"):
        model.embed_numpy("lamost", fl, il, partner=(fx[:2], ix[:2]))
    mi = prepare_model_input(fl, il, "lamost")
    with torch.inference_mode():
        emb = model.encode("lamost", torch.from_numpy(mi.flux), torch.from_numpy(mi.weight))
        out = model.forward_outputs("lamost", torch.from_numpy(mi.flux),
                                    torch.from_numpy(mi.weight), decode=True)
        xp_pred = model.translate("lamost", emb)
    assert emb.shape == (3, 16) and xp_pred.shape == (3, 343)
    assert out.recon.shape == (3, 3909) and out.translation.shape == (3, 343)
    assert np.allclose(emb.numpy(), model.embed_numpy("lamost", fl, il).embedding, atol=1e-5)


def test_shipped_default_model_loads_and_embeds():
    if not (default_model_path() / "config.json").is_file():
        pytest.fail(f"the default model is missing from {default_model_path()}")
    model = load_model()
    assert model.config.name == "small"
    assert {"teff", "logg", "feh", "alpha_fe"} <= set(model.label_names)
    for m in ("lamost", "xp"):
        flux, ivar = fake_inputs(m, 2)
        b = model.embed_numpy(m, flux, ivar)
        assert b.good.all() and b.embedding.shape == (2, model.embedding_dim)
        assert np.all(np.isfinite(b.predictions)) and np.all(b.uncertainties > 0)


def test_embed_speed_rows_time_what_they_say(model):
    from specsearch.model.evaluation.speed import embed_speed, format_speed
    rows = [embed_speed(model, "xp", n=6, batch_size=b, with_domain=d)
            for b in (1, 3) for d in (False, True)]
    assert [r.spectra for r in rows] == [6] * 4 and all(r.spectra_per_s > 0 for r in rows)
    assert [r.what.endswith("+ domain check") for r in rows] == [False, True] * 2
    assert "embed_numpy (with preprocessing) + domain check" in format_speed(rows)
