"""End to end: the real ``specsearch train / train-heads / evaluate`` commands on a tiny
toy catalog on CPU, resume after an injected crash, refusal to clobber a run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from specsearch.cli import main
from specsearch.errors import ConfigError
from specsearch.model import load_model
from specsearch.model.training.train import TrainConfig, train

from test_model_data import make_paired_catalog

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return make_paired_catalog(tmp_path_factory.mktemp("train") / "cat", 240, revisits=10)


TINY = ["--epochs", "2", "--batch-size", "64", "--embedding-dim", "16", "--no-progress"]


def test_train_cli_end_to_end(catalog, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["train", "--catalog", str(catalog), "--config", "small", "--out", str(out),
                 "--seed", "1", "--device", "cpu", *TINY]) == 0
    assert "trained small" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "train_log.csv", "train_log.json",
            "checkpoint-last"} <= {p.name for p in out.iterdir()}
    assert not (out / "cache").exists()
    log = json.loads((out / "train_log.json").read_text())
    assert [r["epoch"] for r in log] == [1, 2]
    assert log[1]["train_total"] < log[0]["train_total"]          # the loss decreases
    assert all(np.isfinite(r["train_identity"]) for r in log)     # repeat visits: identity
    assert (out / "train_log.csv").read_text().startswith("epoch,")
    model = load_model(out)
    cfg = model.full_config["training"]
    assert cfg["calibrated"] and cfg["train_config"]["seed"] == 1
    assert model.label_names == ("teff", "logg", "feh", "alpha_fe")
    assert model.class_names == ("metal_poor", "normal")
    assert set(cfg["calibration"]["sigma_scale"]) == {"lamost", "xp"}
    # a second run into the same folder is refused unless asked
    assert main(["train", "--catalog", str(catalog), "--out", str(out), *TINY]) == 2

    heads = tmp_path / "heads"
    assert main(["train-heads", "--model", str(out), "--catalog", str(catalog), "--out",
                 str(heads), "--labels", "teff,feh", "--epochs", "3", "--device", "cpu",
                 "--no-progress"]) == 0
    h = load_model(heads)
    assert h.label_names == ("teff", "feh") and h.model_hash != model.model_hash
    enc_old = {k: v for k, v in model.net.state_dict().items() if k.startswith("encoders.")}
    enc_new = {k: v for k, v in h.net.state_dict().items() if k.startswith("encoders.")}
    assert all(torch.equal(enc_old[k], enc_new[k]) for k in enc_old)   # frozen encoders

    report = tmp_path / "report"
    assert main(["evaluate", "--model", str(out), "--catalog", str(catalog), "--out",
                 str(report), "--split", "all", "--no-speed"]) == 0
    text = capsys.readouterr().out
    assert "cross-modal retrieval" in text and "parameters from lamost" in text
    rep = json.loads((report / "report.json").read_text())
    assert rep["catalog"]["split"] == "all" and rep["retrieval"]["1000"]["skipped"]
    assert 0 <= rep["retrieval"]["10000"].get("lamost_to_xp", {"top1": 0})["top1"] <= 1
    assert rep["parameters"]["lamost"]["teff"]["all"]["n"] > 100
    assert rep["translation"]["xp_to_lamost"]["median_relative_error"] > 0
    assert (report / "figures" / "parameters_lamost.png").stat().st_size > 1000


def test_train_with_sed_inputs_reads_the_lamost_sed(catalog, tmp_path):
    from specsearch.io.catalog import open_catalog
    from specsearch.model.training.data import read_spectra_rows
    from specsearch.preprocess import SED_BINS, prepare_model_input

    out = tmp_path / "sed"
    assert main(["train", "--catalog", str(catalog), "--out", str(out), "--sed-inputs",
                 "--device", "cpu", "--epochs", "1", "--batch-size", "64",
                 "--embedding-dim", "16", "--no-progress"]) == 0
    model = load_model(out)
    assert model.net.cfg.encoders["lamost"].sed_bins == SED_BINS
    tc = model.full_config["training"]["train_config"]
    assert tc["sed_inputs"] and tc["augment"]["p_sed_tilt"] == 0.8
    assert float(model.net.encoders["lamost"].inp_sed.weight.detach().abs().max()) > 0
    raw = read_spectra_rows(open_catalog(catalog), "lamost", np.arange(8))
    mi = prepare_model_input(raw["flux"], raw["ivar"], "lamost")
    x, w = torch.from_numpy(mi.flux), torch.from_numpy(mi.weight)
    flat = x.clone()
    flat[:, -SED_BINS:] = 0.0                   # the same lines, another SED
    with torch.no_grad():
        assert not torch.allclose(model.encode("lamost", x, w), model.encode("lamost", flat, w),
                                  atol=1e-4)


def test_resume_after_a_crash_matches_an_uninterrupted_run(catalog, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=64, embedding_dim=16, seed=3, device="cpu")
    full = train(catalog, tmp_path / "full", cfg, progress=False)
    steps_per_epoch = full.history[0]["step"]
    with pytest.raises(RuntimeError, match="injected crash"):
        train(catalog, tmp_path / "crash", cfg, progress=False,
              crash_at_step=steps_per_epoch + 2)             # dies inside epoch 2
    with pytest.raises(ConfigError, match="--resume"):
        train(catalog, tmp_path / "crash", cfg, progress=False)
    resumed = train(catalog, tmp_path / "crash", cfg, resume=True, progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    a, b = load_model(tmp_path / "full"), load_model(tmp_path / "crash")
    for k, v in a.net.state_dict().items():
        assert torch.allclose(v, b.net.state_dict()[k], atol=1e-6), k
    assert np.isclose(full.best_val_loss, resumed.best_val_loss, rtol=1e-6)
