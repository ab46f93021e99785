"""Model directories: round trip, hash verification, refusal of tampered/foreign files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from specsearch.errors import ConfigError, ModelError
from specsearch.model import list_models, load_model, model_config
from specsearch.model.checkpoint import (CONFIG_FILE, WEIGHTS_FILE, optimizer_from_tensors,
                                         optimizer_to_tensors, save_model_dir)
from specsearch.model.network import SpecCLIPNet
from specsearch.model.evaluation.speed import fake_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def tiny_model_dir(path, *, labels=("teff", "feh"), classes=("normal", "vmp"), seed=0):
    """An untrained small model with made-up constants, saved to ``path``."""
    torch.manual_seed(seed)
    cfg = model_config("small", embedding_dim=16).with_data(label_names=labels,
                                                             class_names=classes)
    net = SpecCLIPNet(cfg)
    net.label_mean.copy_(torch.tensor([5000.0, -0.5][:len(labels)]))
    net.label_std.copy_(torch.tensor([800.0, 0.6][:len(labels)]))
    save_model_dir(path, net, cfg, training={"note": "test"})
    return path


def test_round_trip_gives_identical_outputs(tmp_path):
    d = tiny_model_dir(tmp_path / "m")
    a, b = load_model(d), load_model(d)
    assert a.model_hash == b.model_hash == json.loads((d / CONFIG_FILE).read_text())["model_hash"]
    flux, ivar = fake_inputs("xp", 5)
    ea, eb = a.embed_numpy("xp", flux, ivar), b.embed_numpy("xp", flux, ivar)
    assert np.array_equal(ea.embedding, eb.embedding)
    assert a.label_names == ("teff", "feh") and a.class_names == ("normal", "vmp")
    assert a.embedding_dim == 16 and a.modalities == ("lamost", "xp")
    grids = json.loads((d / CONFIG_FILE).read_text())["grids"]
    assert grids["lamost"]["npix"] == 3909 and grids["xp"]["npix"] == 343
    # saving the loaded network again reproduces the same hash (hash is content-only)
    assert save_model_dir(tmp_path / "m2", a.net.cpu(), a.config,
                          training={"note": "test"}) == a.model_hash


def test_tampered_weights_are_refused(tmp_path):
    d = tiny_model_dir(tmp_path / "m")
    raw = bytearray((d / WEIGHTS_FILE).read_bytes())
    raw[-5] ^= 0x01                                   # flip one bit of one weight
    (d / WEIGHTS_FILE).write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="hash mismatch"):
        load_model(d)


def test_truncated_weights_are_refused(tmp_path):
    d = tiny_model_dir(tmp_path / "m")
    raw = (d / WEIGHTS_FILE).read_bytes()
    (d / WEIGHTS_FILE).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelError, match="corrupt or truncated"):
        load_model(d)


def test_edited_config_and_other_versions_are_refused(tmp_path):
    d = tiny_model_dir(tmp_path / "m")
    cfg = json.loads((d / CONFIG_FILE).read_text())
    edited = dict(cfg, label_names=["teff", "logg"])
    (d / CONFIG_FILE).write_text(json.dumps(edited))
    with pytest.raises(ModelError, match="hash mismatch"):
        load_model(d)
    (d / CONFIG_FILE).write_text(json.dumps(dict(cfg, format_version=99)))
    with pytest.raises(ModelError, match="format_version 99"):
        load_model(d)
    (d / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="unreadable JSON"):
        load_model(d)
    # weights of another model next to this config
    other = tiny_model_dir(tmp_path / "o", seed=1)
    (d / CONFIG_FILE).write_text(json.dumps(cfg))
    (d / WEIGHTS_FILE).write_bytes((other / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ModelError, match="hash mismatch"):
        load_model(d)


def test_missing_files(tmp_path):
    with pytest.raises(ModelError, match="no such model directory"):
        load_model(tmp_path / "nope")
    d = tiny_model_dir(tmp_path / "m")
    (d / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelError, match="model.safetensors is missing"):
        load_model(d)


def test_registry_lists_and_rejects_names():
    assert {"small", "medium", "specclip"} <= set(list_models())
    small, medium = model_config("small"), model_config("medium")
    assert medium.encoders["lamost"].hidden == 2 * small.encoders["lamost"].hidden
    assert medium.encoders["xp"] == small.encoders["xp"] and medium.head == small.head
    with pytest.raises(ConfigError, match="valid names: .*small.*specclip"):
        model_config("huge")
    spec = model_config("specclip")
    assert spec.embedding_dim == 768
    assert spec.encoders["lamost"].patch == 20 and spec.encoders["lamost"].depth == 6
    assert spec.encoders["lamost"].heads == 6 and spec.encoders["xp"].hidden == 1290


def test_optimizer_state_round_trip_without_pickle():
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    tensors, skeleton = optimizer_to_tensors(opt.state_dict())
    opt2 = torch.optim.AdamW(net.parameters())
    opt2.load_state_dict(optimizer_from_tensors(tensors, skeleton))
    s1, s2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and float(s1["step"]) == float(s2["step"])


def test_no_pickle_in_model_code():
    from pathlib import Path
    import specsearch.model as pkg
    for p in Path(pkg.__file__).parent.glob("*.py"):
        text = p.read_text()
        assert "torch.load" not in text and "import pickle" not in text, p


def test_model_of_another_grid_is_refused(tmp_path):
    from specsearch.model.checkpoint import content_hash
    from safetensors.torch import load_file
    d = tiny_model_dir(tmp_path / "m")
    cfg = json.loads((d / CONFIG_FILE).read_text())
    cfg["grids"]["xp"]["npix"] = 300                 # a model of another XP sampling...
    cfg["model_hash"] = content_hash(cfg, load_file(str(d / WEIGHTS_FILE)))  # ...hashed
    (d / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="differs from this specsearch's canonical grid"):
        load_model(d)
