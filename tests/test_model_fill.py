"""Heads that read a spectrum's missing red end filled in by the model's own reconstruction
(ModelConfig.head_fill, SpecCLIPNet.filled_embedding, set_head_fill)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from specsearch.errors import ConfigError
from specsearch.model import load_model
from specsearch.model.checkpoint import save_model_dir
from specsearch.model.config import FillConfig, ModelConfig
from specsearch.model.conversions import set_head_fill
from specsearch.preprocess import grid_for
from specsearch.preprocess.model_input import prepare_model_input_torch

from test_model_data import toy_labels, toy_lamost

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def spectra():
    """Eight toy LAMOST spectra, whole and with everything beyond 7400 A masked."""
    rng = np.random.default_rng(4)
    flux, ivar = toy_lamost(toy_labels(rng, 8), rng, np.full(8, 60.0, np.float32))
    cut = ivar.copy()
    cut[:, grid_for("lamost").wavelength >= 7400] = 0.0
    return flux.astype(np.float32), ivar.astype(np.float32), cut.astype(np.float32)


def test_fill_config_round_trips_and_is_checked():
    cfg = load_model().net.cfg
    filled = dataclasses.replace(cfg, head_fill={"lamost": FillConfig(start=2000, rounds=2)})
    back = ModelConfig.from_dict(filled.to_dict())
    assert back.head_fill == {"lamost": FillConfig(start=2000, rounds=2, min_missing=0.1)}
    assert ModelConfig.from_dict(cfg.to_dict()).head_fill == {}     # older models: none
    for bad in ({"lamost": FillConfig(start=99_999)}, {"lamost": FillConfig(0, rounds=0)},
                {"lamost": FillConfig(0, min_missing=0.0)}, {"gaia": FillConfig(0)}):
        with pytest.raises(ConfigError, match="head_fill"):
            dataclasses.replace(cfg, head_fill=bad).validate()
    with pytest.raises(ConfigError, match="outside"):
        set_head_fill(load_model().net, "lamost", 20_000.0)


def test_filled_embedding_is_the_decode_fill_encode_rounds(spectra):
    flux, ivar, cut = spectra
    model = load_model()
    set_head_fill(model.net, "lamost", 6000.0, rounds=2)
    net = model.net
    fill = net.cfg.head_fill["lamost"]
    assert grid_for("lamost").wavelength[fill.start] >= 6000.0
    mi = prepare_model_input_torch(torch.from_numpy(flux), torch.from_numpy(cut), "lamost")
    x, w = mi.flux, mi.weight
    with torch.no_grad():
        emb = net.encode("lamost", x, w)
        got = net.filled_embedding("lamost", x, w, emb)
        # by hand: two rounds of decode, fill the masked red pixels, encode
        npix = net.cfg.encoders["lamost"].npix
        hole = (w[:, :npix] <= 0) & (torch.arange(npix) >= fill.start)
        level = torch.stack([row[row > 0].median() for row in w[:, :npix]])[:, None]
        xs, ws, e = x.clone(), w.clone(), emb
        for _ in range(2):
            rec = net.decode("lamost", "lamost", e)
            xs[:, :npix] = torch.where(hole, rec, xs[:, :npix])
            ws[:, :npix] = torch.where(hole, level.expand_as(hole), ws[:, :npix])
            e = net.encode("lamost", xs, ws)
    torch.testing.assert_close(got, e, atol=1e-5, rtol=1e-5)
    assert (got - emb).abs().max() > 1e-3        # the fill moved them


def test_only_predictions_of_spectra_missing_the_red_end_change(spectra):
    flux, ivar, cut = spectra
    plain = load_model()
    model = load_model()
    set_head_fill(model.net, "lamost", 6000.0)
    whole_a, whole_b = (m.embed_numpy("lamost", flux, ivar) for m in (plain, model))
    np.testing.assert_array_equal(whole_a.predictions, whole_b.predictions)
    cut_a, cut_b = (m.embed_numpy("lamost", flux, cut, with_identity=True)
                    for m in (plain, model))
    np.testing.assert_array_equal(cut_a.embedding, cut_b.embedding)   # search unchanged
    np.testing.assert_array_equal(cut_a.identity, cut_b.identity)
    assert np.abs(cut_a.predictions - cut_b.predictions).max() > 0
    # the heads still see what was observed: the filled spectrum is not read as whole
    assert np.all(cut_b.uncertainties >= 0) and np.isfinite(cut_b.predictions).all()


def test_a_saved_model_keeps_its_fill(spectra, tmp_path):
    flux, ivar, cut = spectra
    model = load_model()
    set_head_fill(model.net, "lamost", 6000.0, rounds=1)
    save_model_dir(tmp_path / "m", model.net, model.net.cfg,
                   training=model.full_config.get("training"))
    back = load_model(tmp_path / "m")
    assert back.net.cfg.head_fill == model.net.cfg.head_fill
    np.testing.assert_array_equal(back.embed_numpy("lamost", flux, cut).predictions,
                                  model.embed_numpy("lamost", flux, cut).predictions)
