"""Fine-tuning on real spectra: the split by star, the noisy-label likelihood, the real-data
uncertainty floor, the hunt's noise refit, and ``specsearch finetune`` end to end on a toy
catalog with a toy "real" set (no ../shared needed)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from specsearch.cli import main
from specsearch.errors import ConfigError
from specsearch.hunt.calibration_fit import fit_measurement, refit_noise
from specsearch.model import load_model
from specsearch.model.training.configs import FinetuneConfig
from specsearch.model.training.finetune import _teacher_from
from specsearch.model.training.finetune_loss import noisy_label_nll
from specsearch.model.training.real_sets import (SPLIT_CODES, RealSet, cache_version, load_all,
                                                 save_sets, star_split)

from test_model_data import make_paired_catalog, toy_labels, toy_lamost, toy_xp

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def test_star_split_is_a_function_of_the_star():
    keys = np.array([f"J{i:06d}" for i in range(20_000)])
    split = star_split(keys)
    assert np.array_equal(split, star_split(keys))                  # stable
    again = star_split(np.concatenate([keys[::-1], keys[:5]]))       # order-free, visits agree
    assert np.array_equal(again[:-5], split[::-1]) and np.array_equal(again[-5:], split[:5])
    frac = np.bincount(split, minlength=3) / split.size
    assert np.allclose(frac, [0.65, 0.15, 0.20], atol=0.015)


def test_noisy_label_nll_discounts_noisy_labels():
    mu = torch.zeros(4, 1, requires_grad=True)
    log_sigma = torch.full((4, 1), np.log(0.1))
    target = torch.full((4, 1), 0.5)
    clean = noisy_label_nll(mu, log_sigma, target, torch.zeros(4, 1), beta=0.0)
    (g_clean,) = torch.autograd.grad(clean, mu)
    noisy = noisy_label_nll(mu, log_sigma, target, torch.full((4, 1), 1.0), beta=0.0)
    (g_noisy,) = torch.autograd.grad(noisy, mu)
    # a label known to +-1 pulls the prediction ~100x less than one known to +-0.1
    assert 50 < float(g_clean.abs().sum() / g_noisy.abs().sum()) < 200
    nan = noisy_label_nll(mu, log_sigma, torch.full((4, 1), float("nan")),
                          torch.zeros(4, 1), beta=0.5)
    assert float(nan.detach()) == 0.0


def test_refit_noise_widens_for_noisier_stars():
    rng = np.random.default_rng(0)
    true = rng.uniform(-3, 0.3, 4000)
    err = np.full(true.size, 0.05)
    pred = 0.9 * true + rng.normal(0, 0.05, true.size)
    model = fit_measurement(pred, err, true, modality="lamost")
    t2 = rng.uniform(-2.5, 0.3, 400)
    p2 = 0.9 * t2 + rng.normal(0, 0.15, t2.size)                     # 3x wider "real" residuals
    refit = refit_noise(model, p2, np.full(t2.size, 0.05), t2)
    assert refit.knots_true == model.knots_true                     # the shape is kept
    width = np.hypot(refit.scale * 0.05, refit.floor)
    assert 0.11 < width < 0.2 and width > 2 * np.hypot(model.scale * 0.05, model.floor)


def _toy_real_sets(n: int = 160) -> dict[str, RealSet]:
    rng = np.random.default_rng(5)
    lab = toy_labels(rng, n)
    flux, ivar = toy_lamost(lab, rng, rng.uniform(20, 80, n).astype(np.float32))
    flux = flux * (1 + 0.03 * np.linspace(-1, 1, flux.shape[1]))[None, :]   # "instrument"
    star = np.array([f"S{i}" for i in range(n)])
    labels = {k: np.asarray(lab[k], float) for k in ("teff", "logg", "feh")}
    labels["feh"] = labels["feh"] + 0.2                                        # another scale
    lam = RealSet("lamost_dr10", "lamost", flux.astype(np.float32), ivar.astype(np.float32),
                  star, star_split(star), labels, np.full(n, 40.0))
    fx, ix = toy_xp(lab, rng, rng.uniform(30, 100, n).astype(np.float32))
    xp = RealSet("xp_patch", "xp", fx.astype(np.float32), ix.astype(np.float32), star,
                 star_split(star), {}, None, {"source_id": np.arange(n)})
    return {"lamost_dr10": lam, "xp_patch": xp}


def test_hot_label_noise_widens_lamost_labels_of_hot_stars_only():
    from specsearch.model.training.real_sets import HOT_TEFF, LABEL_NOISE, prepare_real

    sets = _toy_real_sets(60)
    lam = sets["lamost_dr10"]
    lam.labels["teff"][:30] = 8000.0            # catalogue A stars
    lam.labels["teff"][30:] = 5500.0
    miles = dataclasses.replace(lam, name="miles")
    names = ["teff", "logg", "feh"]
    plain = prepare_real([lam, miles], names, "train")
    hot = prepare_real([lam, miles], names, "train", hot_noise={"logg": 0.5, "feh": 0.3})
    is_lam = hot.set_index == 0
    a_star = is_lam & (hot.labels[:, 0] >= HOT_TEFF)
    assert a_star.any() and (is_lam & ~a_star).any()
    np.testing.assert_allclose(hot.label_noise[a_star][:, 1:], [[0.5, 0.3]] * a_star.sum())
    np.testing.assert_array_equal(hot.label_noise[a_star][:, 0], plain.label_noise[a_star][:, 0])
    np.testing.assert_array_equal(hot.label_noise[~a_star], plain.label_noise[~a_star])
    assert plain.label_noise[0, 1] == np.float32(LABEL_NOISE["lamost_dr10"]["logg"])
    with pytest.raises(ConfigError, match="hot_label_noise"):
        FinetuneConfig(hot_label_noise=(("logg", -1.0),))


def test_real_sets_round_trip(tmp_path):
    sets = _toy_real_sets(40)
    save_sets(tmp_path / "real.npz", sets)
    back = load_all(tmp_path / "missing-folder", tmp_path / "real.npz")
    assert set(back) == set(sets)
    for k, s in sets.items():
        b = back[k]
        assert np.array_equal(b.flux, s.flux) and np.array_equal(b.star, s.star)
        assert np.array_equal(b.split, s.split) and b.modality == s.modality
        for name, v in s.labels.items():
            assert np.array_equal(b.labels[name], v, equal_nan=True)
    assert (back["lamost_dr10"].in_split("test") ==
            (back["lamost_dr10"].split == SPLIT_CODES["test"])).all()
    # a cache read by an older version is read again (here: no real folder, no sets)
    from specsearch.model.training.real_sets import CACHE_VERSION, CACHE_VERSION_KEY
    with np.load(tmp_path / "real.npz") as z:
        assert int(z[CACHE_VERSION_KEY]) == CACHE_VERSION
        old = {k: z[k] for k in z.files if k != CACHE_VERSION_KEY}
    np.savez(tmp_path / "old.npz", **old)
    assert load_all(tmp_path / "missing-folder", tmp_path / "old.npz") == {}
    assert cache_version(tmp_path / "old.npz") == CACHE_VERSION


def _toy_base(tmp_path):
    """A toy paired catalog, a base model trained on it for one epoch, and the toy real
    sets saved as tmp_path/real.npz. Returns (catalog, base model) paths."""
    cat = make_paired_catalog(tmp_path / "cat", 240, revisits=10)
    base = tmp_path / "base"
    assert main(["train", "--catalog", str(cat), "--out", str(base), "--epochs", "1",
                 "--batch-size", "64", "--embedding-dim", "16", "--device", "cpu",
                 "--no-progress"]) == 0
    save_sets(tmp_path / "real.npz", _toy_real_sets())
    return cat, base


def test_finetune_cli_end_to_end(tmp_path, capsys):
    cat, base = _toy_base(tmp_path)
    out = tmp_path / "ft"
    assert main(["finetune", "--model", str(base), "--catalog", str(cat), "--real-data",
                 str(tmp_path), "--real-cache", str(tmp_path / "real.npz"), "--out", str(out),
                 "--steps", "3", "--device", "cpu", "--no-progress",
                 "--hard-negatives", "0.5", "--hard-group", "8",
                 "--noise-blind", "40", "--clean-anchor", "1",
                 "--snr-adversary", "0.5", "--head-distill", "2",
                 "--distill-synthetic", "--sed-inputs", "--sed-lr-factor", "5",
                 "--red-cut", "0.2", "--red-cut-real", "0.5",
                 "--coverage-inputs", "4", "--hot-label-noise", "logg=0.4,feh=0.25"]) == 0
    text = capsys.readouterr().out
    assert "fine-tuned" in text and "z-width on the real calibration stars" in text
    old, new = load_model(base), load_model(out)
    assert new.model_hash != old.model_hash
    ft = new.full_config["training"]["finetune"]
    assert ft["base_hash"] == old.model_hash and ft["real_train"]["lamost_dr10"] > 50
    assert ft["config"]["hard_negatives"] == 0.5 and ft["config"]["hard_group"] == 8
    assert ft["config"]["noise_blind"] == 40.0 and ft["config"]["clean_anchor"] == 1.0
    assert ft["history_last"]["clean_anchor"] >= 0.0
    assert ft["config"]["snr_adversary"] == 0.5 and ft["history_last"]["snr_critic"] >= 0.0
    assert ft["config"]["head_distill"] == 2.0 and ft["history_last"]["head_distill"] > 0.0
    assert ft["config"]["distill_synthetic"] is True
    assert ft["config"]["augment"]["p_red_cut"] == 0.2 and ft["config"]["real_red_cut"] == 0.5
    assert ft["config"]["coverage_bins"] == 4 and new.config.head.coverage_bins == 4
    assert ft["config"]["hot_label_noise"] == {"logg": 0.4, "feh": 0.25}
    assert float(new.net.heads["lamost"].net[0].weight[:, -4:].detach().abs().max()) > 0
    assert not any("adversary" in k or k.startswith("f.") for k in new.net.state_dict())
    # SED inputs were added (zero-initialised) and trained, with the SED augmentation
    assert new.net.cfg.encoders["lamost"].sed_bins == 16
    assert new.net.cfg.encoders["xp"].sed_bins == 0
    assert float(new.net.encoders["lamost"].inp_sed.weight.detach().abs().max()) > 0
    assert ft["config"]["sed_inputs"] and ft["config"]["augment"]["p_sed_tilt"] == 0.8
    # the saved model is noise-blind: the same pixels at 4x the inverse variance embed alike
    assert new.net.cfg.shrinkage_snr == 40.0
    assert all(e.film_snr == 40.0 for e in new.net.cfg.encoders.values())
    rs0 = _toy_real_sets(8)["lamost_dr10"]
    e1 = new.embed_numpy("lamost", rs0.flux, rs0.ivar).embedding
    e4 = new.embed_numpy("lamost", rs0.flux, 4.0 * rs0.ivar).embedding
    np.testing.assert_allclose(e1, e4, atol=1e-5)
    floor = new.net.heads["lamost"].sigma_floor
    j = new.label_names.index("feh")
    assert floor.shape == (len(new.label_names),) and float(floor[j]) > 0   # +0.2 dex scale
    # the floor widens every reported uncertainty by at least itself
    rs = _toy_real_sets(20)["lamost_dr10"]
    b = new.embed_numpy("lamost", rs.flux, rs.ivar)
    assert (b.uncertainties[b.good, j] >= 0.999 * ft["sigma_floor"]["feh"]).all()
    # --heads-only: the heads move, the encoders (so every embedding) do not
    heads = tmp_path / "heads"
    assert main(["finetune", "--model", str(out), "--catalog", str(cat), "--real-data",
                 str(tmp_path), "--real-cache", str(tmp_path / "real.npz"), "--out",
                 str(heads), "--steps", "3", "--lr", "1e-2", "--device", "cpu",
                 "--no-progress", "--heads-only", "--real-set-weights", "0.3,0.1,0.6",
                 "--catalogue-offsets", "lamost_dr10", "--head-fill", "6000"]) == 0
    refit = load_model(heads)
    assert refit.full_config["training"]["finetune"]["config"]["heads_only"] is True
    # the (toy) DR10 labels were read on a scale of their own (a learnt, recorded offset),
    # and the heads read spectra without their red end filled in
    rec = refit.full_config["training"]["finetune"]
    assert rec["config"]["catalogue_offsets"] == ["lamost_dr10"]
    assert set(rec["catalogue_offsets"]) == {"lamost_dr10"}
    assert set(rec["catalogue_offsets"]["lamost_dr10"]) == set(refit.label_names)
    assert any(v != 0.0 for v in rec["catalogue_offsets"]["lamost_dr10"].values())
    assert refit.net.cfg.head_fill["lamost"].rounds == 3
    assert refit.full_config["training"]["finetune"]["config"]["real_set_weights"] == \
        [0.3, 0.1, 0.6]
    stages = refit.full_config["training"]["finetune_stages"]     # the earlier stage's record
    assert [st["base_hash"] for st in stages] == [old.model_hash]
    before, after = new.net.state_dict(), refit.net.state_dict()
    moved = {k for k in before if k.startswith("heads.") and not k.endswith("sigma_floor")
             and not torch.equal(before[k], after[k])}
    assert moved
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("heads."))
    np.testing.assert_array_equal(refit.embed_numpy("lamost", rs.flux, rs.ivar).embedding,
                                  b.embedding)
    # another model of the same base as the distillation teacher (recorded by its hash);
    # one that prepares its inputs differently, or a teacher without distillation, is refused
    taught = tmp_path / "taught"
    assert main(["finetune", "--model", str(heads), "--catalog", str(cat), "--real-data",
                 str(tmp_path), "--real-cache", str(tmp_path / "real.npz"), "--out",
                 str(taught), "--steps", "2", "--device", "cpu", "--no-progress",
                 "--heads-only", "--head-distill", "50", "--distill-synthetic",
                 "--teacher", str(out), "--red-cut-real", "0.5"]) == 0
    tft = load_model(taught).full_config["training"]["finetune"]
    assert tft["teacher_hash"] == new.model_hash and tft["base_hash"] == refit.model_hash
    assert tft["history_last"]["head_distill"] > 0.0
    student = load_model(heads).net
    student.normalisers["lamost"].mean += 0.5
    with pytest.raises(ConfigError, match="normalisers.lamost.mean differs"):
        _teacher_from(out, student, torch.device("cpu"))
    assert main(["finetune", "--model", str(heads), "--catalog", str(cat), "--real-data",
                 str(tmp_path), "--real-cache", str(tmp_path / "real.npz"), "--out",
                 str(tmp_path / "no-distill"), "--steps", "1", "--no-progress",
                 "--teacher", str(out)]) == 2
    assert "only read by head_distill" in capsys.readouterr().err
    # a domain check fitted on the (toy) real spectra, for this model only
    assert main(["domain-fit", "--model", str(heads), "--real-data", str(tmp_path),
                 "--real-cache", str(tmp_path / "real.npz")]) == 0
    assert "domain check for model" in capsys.readouterr().out
    refit = load_model(heads)
    thr = refit.domain_check.thresholds
    assert set(thr) == {"lamost", "xp"} and all(v > 0 for v in thr.values())
    dom = refit.embed_numpy("lamost", rs.flux, rs.ivar, with_domain=True)
    assert dom.out_of_domain is not None and not dom.out_of_domain[dom.good].any()
    wiggle = 1.0 + 0.6 * np.sin(np.arange(rs.flux.shape[1]) * 2 * np.pi / 9.0)
    weird = rs.flux * wiggle[None, :]            # deep 9-pixel features: no star's lines
    odd = refit.embed_numpy("lamost", weird, rs.ivar, with_domain=True)
    assert (odd.recon_relative[odd.good] > dom.recon_relative[dom.good].max()).all()
    assert odd.out_of_domain[odd.good].all()
    assert load_model(out).domain_check is None       # the file sits beside `heads` only
    # refuses to overwrite unless asked
    assert main(["finetune", "--model", str(base), "--catalog", str(cat), "--real-data",
                 str(tmp_path), "--real-cache", str(tmp_path / "real.npz"), "--out", str(out),
                 "--steps", "1", "--no-progress"]) == 2
    # and label noise for a label the model does not predict
    assert main(["finetune", "--model", str(base), "--catalog", str(cat), "--real-data",
                 str(tmp_path), "--real-cache", str(tmp_path / "real.npz"), "--out",
                 str(tmp_path / "ft-bad"), "--steps", "1", "--no-progress",
                 "--hot-label-noise", "vsini=3"]) == 2
    assert "hot_label_noise names ['vsini']" in capsys.readouterr().err
    # and an offset for a catalogue the real data do not hold
    assert main(["finetune", "--model", str(base), "--catalog", str(cat), "--real-data",
                 str(tmp_path), "--real-cache", str(tmp_path / "real.npz"), "--out",
                 str(tmp_path / "ft-bad2"), "--steps", "1", "--no-progress",
                 "--catalogue-offsets", "miles"]) == 2
    assert "catalogue_offsets names ['miles']" in capsys.readouterr().err


def test_finetune_new_classes_grows_the_population_classifier(tmp_path, capsys):
    """A catalog with a population the model has never seen (as a survey made with
    ``--fractions ultracool=...``): refused as another catalog unless ``--new-classes``,
    which grows the heads' classifier, keeps every embedding and learns the new class."""
    _, base = _toy_base(tmp_path)
    grown = make_paired_catalog(tmp_path / "cat-uc", 240, revisits=10, extra_class="ultracool")
    args = ["finetune", "--model", str(base), "--catalog", str(grown), "--real-data",
            str(tmp_path), "--real-cache", str(tmp_path / "real.npz"), "--steps", "40",
            "--lr", "1e-2", "--device", "cpu", "--no-progress", "--heads-only"]
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    assert "differ from the model's" in capsys.readouterr().err
    out = tmp_path / "grown"
    assert main([*args, "--out", str(out), "--new-classes"]) == 0
    old, new = load_model(base), load_model(out)
    assert old.class_names == ("metal_poor", "normal")
    assert new.class_names == ("metal_poor", "normal", "ultracool")
    assert new.full_config["training"]["finetune"]["config"]["new_classes"] is True
    rs = _toy_real_sets(20)["lamost_dr10"]
    np.testing.assert_array_equal(new.embed_numpy("lamost", rs.flux, rs.ivar).embedding,
                                  old.embed_numpy("lamost", rs.flux, rs.ivar).embedding)
    rng = np.random.default_rng(0)
    lab = toy_labels(rng, 64)
    flux, ivar = toy_lamost(lab, rng, np.full(64, 60.0, np.float32))
    probs = new.embed_numpy("lamost", flux, ivar).class_prob
    assert probs.shape == (64, 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    # trained 40 steps on an eighth of the stars: the new class is no longer at ~e^-10
    assert float(probs[:, 2].mean()) > 1e-3


def test_snr_critic_learns_a_noise_signature_and_reverses_its_gradient():
    """Embeddings that carry the visit's S/N let the critic predict which visit is the
    noisier; the same star's labels cancel in the difference. The encoders' gradient is
    the critic's, reversed and scaled."""
    from specsearch.model.training.identity import SnrAdversary

    torch.manual_seed(0)
    n, d = 256, 8
    star = torch.randn(n, d)
    qa, qb = torch.rand(n, 1) * 2, torch.rand(n, 1) * 2          # log S/N of the two visits
    noise_dir = torch.zeros(d)
    noise_dir[0] = 1.0

    def embed(q):
        return star + 0.5 * q * noise_dir

    critic = SnrAdversary(["lamost"], d)
    opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    first = None
    for _ in range(200):
        loss = critic.loss("lamost", embed(qa), embed(qb), qa, qb, scale=1.0)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.1 * first            # it found the noise signature
    # embeddings without it: nothing to learn (the labels cancel)
    blind = SnrAdversary(["lamost"], d)
    assert float(blind.loss("lamost", star, star, qa, qb, scale=1.0).detach()) > 0.9
    # the gradient reaching the embeddings is reversed and scaled
    ea = embed(qa).requires_grad_()
    critic.loss("lamost", ea, embed(qb), qa, qb, scale=1.0).backward()
    g1 = ea.grad.clone()
    ea.grad = None
    critic.loss("lamost", ea, embed(qb), qa, qb, scale=0.25).backward()
    torch.testing.assert_close(ea.grad, 0.25 * g1)
    za = embed(qa).requires_grad_()
    f = critic.f["lamost"]
    target = (qb - qa)[:, 0] / (qb - qa)[:, 0].std()
    ((f(embed(qb)) - f(za))[:, 0] - target).square().mean().backward()
    torch.testing.assert_close(g1, -za.grad)


def test_finetune_config_checks_the_anchor_and_critic_options():
    cfg = FinetuneConfig(anchor_modalities=("lamost",), anchor_real=False, snr_adversary=0.5)
    assert cfg.to_dict()["anchor_modalities"] == ["lamost"]
    with pytest.raises(ConfigError, match="anchor_modalities"):
        FinetuneConfig(anchor_modalities=())
    with pytest.raises(ConfigError, match="anchor_modalities"):
        FinetuneConfig(anchor_modalities=("lamost", "gaia"))
    with pytest.raises(ConfigError, match="snr_adversary"):
        FinetuneConfig(snr_adversary=-1.0)
    with pytest.raises(ConfigError, match="head_distill"):
        FinetuneConfig(head_distill=-1.0)
    with pytest.raises(ConfigError, match="second visits"):
        FinetuneConfig(snr_adversary=1.0, identity=0.0, snr_slope=0.0)
    with pytest.raises(ConfigError, match="catalogue_offsets names \\['sdss'\\]"):
        FinetuneConfig(catalogue_offsets=("miles", "sdss"))
    assert FinetuneConfig(catalogue_offsets=("miles",)).to_dict()["catalogue_offsets"] == \
        ["miles"]
    with pytest.raises(ConfigError, match="head_fill_a"):
        FinetuneConfig(head_fill_a=6000.0, head_fill_rounds=0)
    with pytest.raises(ConfigError, match="heads_only freezes the encoders"):
        FinetuneConfig(heads_only=True, clean_anchor=5.0)
    with pytest.raises(ConfigError, match="noise_blind"):
        FinetuneConfig(heads_only=True, noise_blind=40.0)
    with pytest.raises(ConfigError, match="sed_inputs"):
        FinetuneConfig(heads_only=True, sed_inputs=True)
    with pytest.raises(ConfigError, match="sed_lr_factor"):
        FinetuneConfig(sed_lr_factor=0.0)
    with pytest.raises(ConfigError, match="sed_tilt_p"):
        FinetuneConfig(sed_tilt_p=1.5)
    with pytest.raises(ConfigError, match="real_red_cut"):
        FinetuneConfig(real_red_cut=-0.1)
    assert FinetuneConfig(heads_only=True, real_red_cut=0.5).to_dict()["real_red_cut"] == 0.5
    assert FinetuneConfig(heads_only=True, head_distill=10.0).to_dict()["heads_only"]
    with pytest.raises(ConfigError, match="real_set_weights"):
        FinetuneConfig(real_set_weights=(0.5, 0.5))
    with pytest.raises(ConfigError, match="real_set_weights"):
        FinetuneConfig(real_set_weights=(0.0, 0.0, 0.0))
    with pytest.raises(ConfigError, match="real_set_weights"):
        FinetuneConfig(real_set_weights=(0.5, float("nan"), 0.5))

