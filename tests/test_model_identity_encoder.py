"""Identity vectors: ``ModelConfig.identity_encoders``, ``specsearch train-identity`` end to
end on a toy catalog with repeat visits, and ``SpecModel.identity_numpy``."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from specsearch.cli import main
from specsearch.errors import ConfigError
from specsearch.io.catalog import open_catalog
from specsearch.model import load_model
from specsearch.model.config import EncoderConfig, ModelConfig, model_config

from test_model_data import make_paired_catalog

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def test_config_round_trip_and_checks():
    cfg = model_config("small").with_data(label_names=("teff",), class_names=())
    assert cfg.identity_encoders == {} and ModelConfig.from_dict(cfg.to_dict()) == cfg
    enc = EncoderConfig(kind="mlp", npix=cfg.encoders["lamost"].npix, hidden=64, depth=1)
    with_id = dataclasses.replace(cfg, identity_encoders={"lamost": enc}, identity_dim=32)
    assert ModelConfig.from_dict(with_id.to_dict()) == with_id.validate()
    bad = [dataclasses.replace(cfg, identity_encoders={"lamost": dataclasses.replace(
               enc, kind="transformer")}),
           dataclasses.replace(cfg, identity_encoders={"lamost": dataclasses.replace(
               enc, npix=100)}),
           dataclasses.replace(cfg, identity_encoders={"lamost": enc}, identity_dim=1)]
    for c in bad:
        with pytest.raises(ConfigError, match="identity"):
            c.validate()
    with pytest.raises(ConfigError, match="ignore_bands"):
        dataclasses.replace(cfg, encoders={**cfg.encoders, "lamost": dataclasses.replace(
            cfg.encoders["lamost"], ignore_bands=((6860.0, 6960.0),))}).validate()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A toy base model and its catalog (120 of 250 stars visited twice)."""
    root = tmp_path_factory.mktemp("identity")
    cat = make_paired_catalog(root / "cat", 240, revisits=120)
    base = root / "base"
    assert main(["train", "--catalog", str(cat), "--out", str(base), "--epochs", "1",
                 "--batch-size", "64", "--embedding-dim", "16", "--device", "cpu",
                 "--no-progress"]) == 0
    return root, cat, base


def _visit_pairs(cat):
    """(flux, ivar) of the first and second visits of the stars visited twice."""
    c = open_catalog(cat)
    sid = c.read_column("lamost", "source_id").to_numpy()
    flux, ivar = (np.stack(c.read_column("lamost", k).to_numpy(zero_copy_only=False))
                  .astype(np.float32) for k in ("flux", "ivar"))
    first, second = {}, {}
    for i, s in enumerate(sid):
        (second if s in first else first).setdefault(s, i)
    a = np.array([first[s] for s in second])
    b = np.array(list(second.values()))
    return (flux[a], ivar[a]), (flux[b], ivar[b])


def test_train_identity_end_to_end(trained, capsys):
    root, cat, base = trained
    out = root / "with-id"
    assert main(["train-identity", "--model", str(base), "--catalog", str(cat), "--out",
                 str(out), "--steps", "60", "--batch", "48", "--hidden", "64", "--depth", "1",
                 "--dim", "8", "--hard-group", "4", "--lr", "3e-3", "--device", "cpu",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "identity vectors" in text and "embedding" in text
    old, new = load_model(base), load_model(out)
    assert new.model_hash != old.model_hash
    assert not old.has_identity("lamost") and new.has_identity("lamost")
    assert not new.has_identity("xp")
    record = new.full_config["training"]["identity"]
    assert record["base_hash"] == old.model_hash and record["config"]["dim"] == 8
    assert set(record["val"]) == {"n", "identity_top1", "embedding_top1"}
    # the same score on as many training stars (the memorisation gap)
    assert set(record["fit"]) == set(record["val"])
    assert record["fit"]["n"] == record["val"]["n"] > 0
    assert "training stars, the same score" in text
    (fa, ia), (fb, ib) = _visit_pairs(cat)
    # the rest of the model is untouched: same embeddings and predictions
    e_old, e_new = old.embed_numpy("lamost", fa, ia), new.embed_numpy("lamost", fa, ia)
    np.testing.assert_array_equal(e_old.embedding, e_new.embedding)
    np.testing.assert_array_equal(e_old.predictions, e_new.predictions)
    # identity vectors: unit rows, NaN for an unusable spectrum, and they find the other visit
    va = new.identity_numpy("lamost", fa, ia, batch_size=50)
    vb = new.identity_numpy("lamost", fb, ib)
    assert va.shape == (len(fa), 8) and va.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(va, axis=1), 1.0, rtol=1e-5)
    bad = new.identity_numpy("lamost", fa[:2], np.zeros_like(ia[:2]))
    assert np.isnan(bad).all()
    top1 = np.mean(np.argmax(va @ vb.T, axis=1) == np.arange(len(va)))
    assert top1 >= 0.8, top1     # one step of training: ~0.06
    # a model without them says so, naming the command
    with pytest.raises(ConfigError, match="train-identity"):
        old.identity_numpy("lamost", fa, ia)


def test_train_identity_needs_repeat_visits(tmp_path, trained):
    _, _, base = trained
    cat = make_paired_catalog(tmp_path / "cat", 240, revisits=0)
    with pytest.raises(ConfigError, match="repeat-fraction"):
        from specsearch.model.training.identity_encoder import (IdentityTrainConfig,
                                                                train_identity)
        train_identity(base, cat, tmp_path / "out", IdentityTrainConfig(device="cpu"),
                       progress=False)


def test_resume_goes_on_from_the_models_identity_encoder(tmp_path, trained):
    from specsearch.model.training.identity_encoder import IdentityTrainConfig, train_identity

    _, cat, base = trained
    small = IdentityTrainConfig(steps=1, batch=48, hidden=32, depth=1, dim=8, hard_group=4,
                                device="cpu", val_pairs=64)
    first = train_identity(base, cat, tmp_path / "first", small, progress=False)
    with pytest.raises(ConfigError, match="no lamost identity encoder"):
        train_identity(base, cat, tmp_path / "x", dataclasses.replace(small, resume=True),
                       progress=False)
    # a second schedule at a vanishing learning rate: the same vectors, not a fresh encoder
    # (the width asked for is ignored: the encoder's own is kept)
    again = dataclasses.replace(small, resume=True, steps=2, lr=1e-12, hidden=64, seed=1)
    res = train_identity(tmp_path / "first", cat, tmp_path / "second", again, progress=False)
    one, two = load_model(tmp_path / "first"), load_model(tmp_path / "second")
    assert two.net.cfg.identity_encoders["lamost"].hidden == 32
    (fa, ia), _ = _visit_pairs(cat)
    np.testing.assert_allclose(two.identity_numpy("lamost", fa, ia),
                               one.identity_numpy("lamost", fa, ia), atol=1e-5)
    record = two.full_config["training"]["identity"]
    assert record["base_hash"] == first.model_hash and record["config"]["resume"]
    assert record["previous"]["base_hash"] == load_model(base).model_hash
    assert res.model_hash != first.model_hash


def test_without_a_progress_bar_each_validation_is_a_log_line(tmp_path, trained, caplog):
    from specsearch.model.training.identity_encoder import IdentityTrainConfig, train_identity

    _, cat, base = trained
    # the history keeps a row every 100 steps; validation runs on those every val_every
    cfg = IdentityTrainConfig(steps=110, batch=16, hidden=16, depth=1, dim=8, hard_group=4,
                              device="cpu", val_pairs=32, val_every=100)
    with caplog.at_level(logging.INFO, logger="specsearch.model.training.identity_encoder"):
        train_identity(base, cat, tmp_path / "out", cfg, progress=False)
    lines = [r.getMessage() for r in caplog.records if "train-identity step" in r.getMessage()]
    # the last step's validation is the final score, printed by the command itself
    assert len(lines) == 1 and lines[0].startswith("train-identity step 100/110: loss "), lines
    assert "validation other-visit top-1 " in lines[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="specsearch.model.training.identity_encoder"):
        train_identity(base, cat, tmp_path / "bar", cfg, progress=True)
    assert not [r for r in caplog.records if "train-identity step" in r.getMessage()]


def test_red_cut_reaches_the_augmentations(tmp_path, trained, capsys):
    _, cat, base = trained
    common = ["train-identity", "--model", str(base), "--catalog", str(cat), "--steps", "1",
              "--batch", "48", "--hidden", "32", "--dim", "8", "--hard-group", "4",
              "--device", "cpu", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "bad"), "--red-cut", "1.5"]) == 2
    assert "--red-cut" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "cut"), "--red-cut", "0.5"]) == 0
    record = load_model(tmp_path / "cut").full_config["training"]["identity"]
    assert record["config"]["augment"]["p_red_cut"] == 0.5


def test_real_goal_rows_score_the_identity_vectors_with_the_embedding():
    from specsearch.model.evaluation.evaluate_real import real_goal_rows

    def got(top1):
        return {"n": 34, "top1": top1, "top5": 1.0, "median_rank": 1.0}

    ident = {"lamost_dr10": {"embedding": got(0.82), "raw_pixels": got(0.65),
                             "identity": got(0.80), "embedding+identity": got(0.91)}}
    rows = {r["what"]: r for r in real_goal_rows({"identity": ident})}
    both = rows["lamost_dr10 repeat visits top-1, embedding + identity vectors"]
    assert both["value"] == 0.91 and both["met"]
    assert not rows["lamost_dr10 repeat visits top-1 (pool: all real LAMOST)"]["met"]
    ident["lamost_dr10"].pop("embedding+identity")         # a model without them
    assert not any("identity" in r["what"] for r in real_goal_rows({"identity": ident}))


def test_resample_snr_draws_each_visit_its_own_noise_level():
    """--resample-snr: each visit's S/N drops to a log-uniform draw in [min_snr, its S/N],
    whatever the other visit's, so two visits' noise levels no longer agree."""
    import torch
    from scipy.stats import spearmanr

    from specsearch.model.training.identity_encoder import IdentityTrainConfig, _resample_snr

    rng = np.random.default_rng(0)
    n = 4000
    star_snr = np.exp(rng.uniform(np.log(12), np.log(150), n))       # both visits alike
    snr_a, snr_b = star_snr * rng.uniform(0.9, 1.1, n), star_snr * rng.uniform(0.9, 1.1, n)
    assert spearmanr(snr_a, snr_b).correlation > 0.95
    cfg = IdentityTrainConfig(min_snr=10.0, resample_snr=True)
    gen = torch.Generator().manual_seed(0)
    got = []
    for snr in (snr_a, snr_b):
        x, w = torch.zeros(n, 64), torch.ones(n, 64)
        x, w = _resample_snr(x, w, snr, cfg, rng, gen)
        factor = 1.0 / np.sqrt(w[:, 0].numpy())                   # weight / factor^2
        new = snr / factor
        assert (factor >= 1 - 1e-5).all() and (new >= 10 - 1e-3).all()
        assert (new <= snr + 1e-3).all() and float(x.std()) > 0    # noise was added
        got.append(new)
    assert abs(spearmanr(got[0], got[1]).correlation) < 0.5     # ~0.37 (from > 0.95)


def test_cross_batch_memory_adds_negatives_but_never_the_star_itself():
    import torch
    import torch.nn.functional as F

    from specsearch.model.training.identity_encoder import _Memory, _nt_xent

    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    b = F.normalize(a + 0.3 * torch.randn(6, 4, generator=g), dim=1)
    sid = torch.arange(100, 106)
    plain = _nt_xent([a, b], sid, 0.1, None)
    target = torch.arange(6)
    logits = a @ b.T / 0.1
    want = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    torch.testing.assert_close(plain, want)
    # memory entries are negatives, except a star's own (an earlier visit of it)
    mem = _Memory(8, 4, torch.device("cpu"))
    mem_sid = torch.tensor([100, 1001, 102])
    mem.push([b[:3], a[:3]], mem_sid)
    got = _nt_xent([a, b], sid, 0.1, mem)
    want = 0.0
    for q, k, mk in ((a, b, a[:3]), (b, a, b[:3])):    # the memory keeps view 0 as b
        for i in range(6):
            keys = torch.cat([k, mk[(mem_sid != sid[i])]])
            want = want + 0.5 * F.cross_entropy((q[i] @ keys.T / 0.1)[None],
                                                torch.tensor([i])) / 6
    torch.testing.assert_close(got, want)
    # look-alikes of the queries raise the loss; the ring keeps the newest
    mem.push([b, a], sid + 1000)          # 9 pushed into 8 slots
    assert mem.filled == 8 and mem.head == 1
    assert sorted(mem.sid.tolist()) == sorted([1001, 102, *range(1100, 1106)])
    assert _nt_xent([a, b], sid, 0.1, mem) > plain + 0.1
    # the memory is detached: gradients reach only the batch's own vectors
    a2 = a.clone().requires_grad_(True)
    _nt_xent([a2, b], sid, 0.1, mem).backward()
    assert a2.grad is not None and not mem.vec.requires_grad


def test_memory_option_reaches_the_training_record(tmp_path, trained):
    _, cat, base = trained
    assert main(["train-identity", "--model", str(base), "--catalog", str(cat), "--steps", "3",
                 "--batch", "48", "--hidden", "32", "--dim", "8", "--hard-group", "4",
                 "--memory", "96", "--memory-start", "1", "--device", "cpu", "--no-progress",
                 "--out", str(tmp_path / "mem")]) == 0
    record = load_model(tmp_path / "mem").full_config["training"]["identity"]
    assert record["config"]["memory"] == 96 and record["config"]["memory_start"] == 1
    with pytest.raises(ConfigError, match="memory"):
        from specsearch.model.training.identity_config import IdentityTrainConfig
        IdentityTrainConfig(memory=-1).validate()


def test_own_noise_identity_encoder_reads_the_spectrums_noise(tmp_path, trained):
    """--own-noise: the identity encoder's input shrinks each pixel by its own inverse
    variance and its FiLM sees the spectrum's S/N, while the embedding stays noise-blind."""
    import torch

    from specsearch.model.conversions import add_identity_encoder, make_noise_blind

    _, cat, base = trained
    assert main(["train-identity", "--model", str(base), "--catalog", str(cat), "--steps", "2",
                 "--batch", "48", "--hidden", "32", "--dim", "8", "--hard-group", "4",
                 "--own-noise", "--device", "cpu", "--no-progress",
                 "--out", str(tmp_path / "own")]) == 0
    model = load_model(tmp_path / "own")
    enc = model.net.cfg.identity_encoders["lamost"]
    assert enc.own_noise and enc.snr_film and enc.film_snr is None
    assert model.full_config["training"]["identity"]["config"]["own_noise"]
    # on a noise-blind network, only the own-noise encoder's vectors move with the weights
    net = make_noise_blind(load_model(base).net, 30.0).eval()
    (fa, ia), _ = _visit_pairs(cat)
    x, w = torch.from_numpy(fa[:8]), torch.from_numpy(ia[:8])
    for own in (False, True):
        add_identity_encoder(net, "lamost", 32, 1, 8, own_noise=own)
        with torch.no_grad():
            moved = (net.identity("lamost", x, w) - net.identity("lamost", x, w * 4)).abs()
        assert (moved.max() > 1e-3) == own, own


def test_fit_probe_scores_training_stars_apart_from_the_validation_stars(tmp_path, trained):
    from specsearch.model.training.finetune import open_base
    from specsearch.model.training.identity_encoder import IdentityTrainConfig, _pairs

    _, cat, base = trained
    model, _ = open_base(base, tmp_path / "out", device="cpu", seed=0, overwrite=False)
    cfg = IdentityTrainConfig(batch=48, hard_group=4, device="cpu", val_pairs=64)
    data = _pairs(model.net, dict(model.full_config.get("training", {})), cat,
                  tmp_path / "cache", cfg, False)
    sid = data.cache.index["source_id"]
    assert data.fit_pos is not None and data.fit_pos.size == data.val_pos.size > 0
    assert np.isin(data.fit_pos, data.pos).all()                  # training visits only
    assert np.unique(sid[data.fit_pos]).size == data.fit_pos.size  # one visit per star
    assert not set(sid[data.fit_pos].tolist()) & set(sid[data.val_pos].tolist())


def test_ignore_bands_are_never_read_and_travel_with_the_model(tmp_path, trained, capsys):
    """--ignore-bands telluric: the identity vectors do not move when the telluric bands'
    pixels change (training and inference alike), the bands are in the saved config, and a
    malformed band list is refused by name."""
    import torch

    from specsearch.model.conversions import add_identity_encoder
    from specsearch.preprocess import (TELLURIC_BANDS, band_mask, grid_for,
                                       prepare_model_input)

    _, cat, base = trained
    common = ["train-identity", "--model", str(base), "--catalog", str(cat), "--steps", "2",
              "--batch", "48", "--hidden", "32", "--dim", "8", "--hard-group", "4",
              "--device", "cpu", "--no-progress"]
    with pytest.raises(SystemExit) as exc:
        main([*common, "--out", str(tmp_path / "bad"), "--ignore-bands", "7000-6900"])
    assert exc.value.code == 2 and "--ignore-bands" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "tell"), "--ignore-bands", "telluric"]) == 0
    model = load_model(tmp_path / "tell")
    assert model.net.cfg.identity_encoders["lamost"].ignore_bands == TELLURIC_BANDS
    assert model.full_config["training"]["identity"]["config"]["ignore_bands"]
    assert ModelConfig.from_dict(model.net.cfg.to_dict()) == model.net.cfg

    # the encoder's input: the prepared pixels inside the bands enter as masked ones (the
    # continuum normalisation the embedding shares still sees them)
    (fa, ia), _ = _visit_pairs(cat)
    inside = band_mask(grid_for("lamost").wavelength, TELLURIC_BANDS)
    assert 0 < inside.sum() < inside.size
    mi = prepare_model_input(fa[:8], ia[:8], "lamost")
    x, w = torch.from_numpy(mi.flux), torch.from_numpy(mi.weight)
    npix = inside.size
    scale = torch.ones(x.shape[1])
    scale[:npix][torch.from_numpy(inside)] = torch.linspace(0.5, 1.5, int(inside.sum()))
    net = model.net.eval()
    with torch.no_grad():
        same = net.identity("lamost", x, w)
        assert torch.allclose(net.identity("lamost", x * scale, w), same, atol=1e-6)
        assert torch.allclose(net.identity("lamost", x, w * scale), same, atol=1e-6)
        # outside the bands the same change moves them
        out = torch.ones(x.shape[1])
        out[:npix][torch.from_numpy(~inside)] = torch.linspace(0.5, 1.5, int((~inside).sum()))
        assert (net.identity("lamost", x * out, w) - same).abs().max() > 1e-3
        # and an encoder without the bands reads them
        plain = load_model(base).net.eval()
        add_identity_encoder(plain, "lamost", 32, 1, 8)
        moved = plain.identity("lamost", x * scale, w) - plain.identity("lamost", x, w)
    assert moved.abs().max() > 1e-3
    with pytest.raises(ValueError, match="ignore_bands"):
        EncoderConfig(kind="mlp", npix=10, ignore_bands=((5000.0, 4000.0),))
