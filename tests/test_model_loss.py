"""Loss terms and augmentations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from specsearch.model.training.augment import (AugmentConfig, augment, mask_segments, red_cut,
                                               red_cut_view, shift)
from specsearch.model.training.loss import (LossConfig, SpecCLIPLoss, gaussian_nll, info_nce,
                                   reduced_chi2, snr_slope, view_nt_xent)
from specsearch.model.network import SpecCLIPNet
from specsearch.model import model_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def test_reduced_chi2_ignores_masked_pixels_and_clips_weights():
    x = torch.ones(2, 10)
    pred = x.clone()
    pred[:, 3] = 100.0                                 # a wild value under the mask...
    w = torch.full((2, 10), 1e4)
    w[:, 3] = 0.0                                      # ...does not count
    assert torch.allclose(reduced_chi2(pred, x, w, 0.01), torch.zeros(2))
    pred2 = x + 0.1
    huge = reduced_chi2(pred2, x, torch.full((2, 10), 1e12), 0.01)
    assert torch.allclose(huge, torch.full((2,), 0.01 / 0.0001), rtol=1e-3)  # floor caps w


def test_info_nce_perfect_alignment_and_same_star_mask():
    e = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    low = info_nce(e, e, torch.tensor(math.log(100.0)))
    high = info_nce(e, torch.roll(e, 1, 0), torch.tensor(math.log(100.0)))
    assert float(low) < 0.1 < float(high)
    dup = e.clone()
    dup[1] = dup[0]                                    # two visits of one star
    sid = torch.arange(8)
    sid[1] = 0
    masked = info_nce(dup, dup, torch.tensor(math.log(100.0)), sid)
    assert float(masked) < 0.1                         # the twin is not a negative


def test_view_nt_xent_counts_same_view_negatives_and_masks_same_star():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    scale = torch.tensor(20.0)
    assert float(view_nt_xent(a, a, scale)) < 0.05         # each view's partner is exact
    # views B that collapse onto one point (a shared nuisance) sit closer to each other
    # than to their partners: the loss must see that, a cross-view InfoNCE barely does
    shared = torch.nn.functional.normalize(a + 3.0 * torch.ones(16), dim=-1)
    assert float(view_nt_xent(a, shared, scale)) > 1.0
    dup = a.clone()
    dup[1] = dup[0]                                        # two visits of one star
    sid = torch.arange(8)
    sid[1] = 0
    assert float(view_nt_xent(dup, dup, scale, sid)) < 0.05  # not each other's negatives
    assert float(view_nt_xent(dup, dup, scale)) > 0.15


def test_snr_slope_sees_a_systematic_move_with_snr_only():
    torch.manual_seed(1)
    ea = torch.randn(256, 8)
    qa = torch.zeros(256, 2)
    qb = torch.zeros(256, 2)
    qb[:, 0] = torch.rand(256) - 0.5                       # the views' log S/N differ
    v = torch.linspace(-1, 1, 8)
    shifted = snr_slope(ea, ea + qb[:, :1] * v, qa, qb)    # moves with S/N: slope = v
    assert float(shifted) == pytest.approx(float(v.square().sum()), rel=1e-4)
    noisy = snr_slope(ea, ea + 0.1 * torch.randn(256, 8), qa, qb)
    assert float(noisy) < 0.05 * float(shifted)
    assert float(snr_slope(ea, ea + 1.0, qa, qa)) == 0.0   # no S/N difference: no slope


def test_snr_film_starts_as_the_plain_encoder_and_needs_quality():
    import dataclasses

    from specsearch.model.layers import MLPEncoder
    cfg = model_config("small").encoders["xp"]
    torch.manual_seed(2)
    film = MLPEncoder(cfg, 16)
    plain = MLPEncoder(dataclasses.replace(cfg, snr_film=False), 16)
    state = {k: v for k, v in film.state_dict().items() if not k.startswith("film.")}
    plain.load_state_dict(state)
    z, good = torch.randn(4, cfg.npix), torch.ones(4, cfg.npix)
    q = torch.rand(4, 2)
    assert torch.allclose(film(z, good, q), plain(z, good), atol=1e-6)
    with torch.no_grad():
        film.film.weight.normal_()        # per-channel (a uniform one LayerNorm undoes)
    assert not torch.allclose(film(z, good, q), plain(z, good), atol=1e-3)
    with pytest.raises(ValueError, match="quality"):
        film(z, good)


def test_noise_blind_encoders_ignore_the_noise_level_only():
    import dataclasses

    from specsearch.errors import ConfigError
    from specsearch.model.conversions import make_noise_blind
    cfg = model_config("small").with_data(label_names=["teff"], class_names=[])
    torch.manual_seed(3)
    net = SpecCLIPNet(cfg).eval()
    for m in cfg.modalities:           # a trained-looking FiLM and shrinkage
        with torch.no_grad():
            net.encoders[m].film.weight.normal_()
        net.normalisers[m].signal_var.fill_(0.5)
    x = 1.0 + 0.1 * torch.randn(3, 3909)
    w = torch.full((3, 3909), 25.0)
    w[:, :100] = 0.0                                   # a masked stretch stays masked
    with torch.no_grad():
        seeing = net.encode("lamost", x, w), net.encode("lamost", x, 16.0 * w)
        assert not torch.allclose(*seeing, atol=1e-4)  # shrinkage and FiLM follow the S/N
        make_noise_blind(net, 40.0)
        blind = net.encode("lamost", x, w), net.encode("lamost", x, 16.0 * w)
        assert torch.allclose(*blind, atol=1e-6)
        assert not torch.allclose(blind[0], net.encode("lamost", x + 0.2, w), atol=1e-4)
        # the heads still see the spectrum's own S/N
        q1 = net.forward_outputs("lamost", x, w).quality
        q16 = net.forward_outputs("lamost", x, 16.0 * w).quality
    assert float(q16[0, 0]) > float(q1[0, 0])
    assert net.cfg.encoders["lamost"].film_snr == 40.0 and net.cfg.shrinkage_snr == 40.0
    bad = dataclasses.replace(cfg.encoders["xp"], film_snr=-1.0)
    with pytest.raises(ConfigError, match="film_snr"):
        dataclasses.replace(cfg, encoders={**cfg.encoders, "xp": bad}).validate()
    with pytest.raises(ConfigError, match="shrinkage_snr"):
        dataclasses.replace(cfg, shrinkage_snr=0.0).validate()


def test_gaussian_nll_skips_unknown_labels():
    mu = torch.zeros(3, 2, requires_grad=True)
    ls = torch.zeros(3, 2)
    y = torch.tensor([[0.0, float("nan")], [0.0, float("nan")], [0.0, 1.0]])
    loss = gaussian_nll(mu, ls, y)
    assert torch.isfinite(loss)
    assert float(loss.detach()) == pytest.approx(0.5 / 4)
    loss.backward()
    assert torch.isfinite(mu.grad).all() and mu.grad[0, 1] == 0


def test_augmentations_are_seeded_and_keep_masks():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x = torch.rand(16, 500) + 0.5
    w = torch.full_like(x, 400.0)
    w[:, 100:120] = 0.0
    x[:, 100:120] = 0.0
    a1 = augment("lamost", x, w, AugmentConfig(), g1)
    a2 = augment("lamost", x, w, AugmentConfig(), g2)
    assert torch.equal(a1[0], a2[0]) and torch.equal(a1[1], a2[1])
    assert not torch.equal(a1[0], x) and torch.equal(w[:, 100:120], torch.zeros(16, 20))
    assert (a1[1][:, 101:119] == 0).all()             # masked stays masked (shift <= 0.5 px)
    assert (a1[1] >= 0).all() and torch.isfinite(a1[0]).all()
    # never much more certain than the data (only the small tilt rescales the weights)
    assert (a1[1] <= w / (1 - AugmentConfig().tilt_lamost) ** 2 + 1e-3).all()
    xs, ws = shift(x.clone(), w.clone(), 1.0, 2.0, torch.Generator().manual_seed(0))
    assert ws[:, 0].min() == 0 or ws[:, -1].min() == 0  # pixels shifted in from outside
    xm, wm = mask_segments(x.clone(), w.clone(), 1.0, 1, 0.2,
                           torch.Generator().manual_seed(0))
    assert ((wm == 0) & (w > 0)).any() and torch.equal(xm[wm == 0], torch.zeros_like(xm[wm == 0]))


def test_red_cut_masks_the_red_end_of_lamost_only():
    from specsearch.preprocess import grid_for

    wave = grid_for("lamost").wavelength
    x = torch.rand(64, wave.size) + 0.5
    w = torch.full_like(x, 100.0)
    xc, wc = red_cut(x.clone(), w.clone(), 1.0, 6800.0, 8200.0,
                     torch.Generator().manual_seed(1))
    blue = torch.from_numpy(wave < 6800.0)
    red = torch.from_numpy(wave > 8200.0)
    assert torch.equal(wc[:, blue], w[:, blue]) and (wc[:, red] == 0).all()
    cut = (wc > 0).sum(1)                               # the cut varies from row to row
    assert cut.unique().numel() > 10 and torch.equal(xc[wc == 0], torch.zeros_like(xc[wc == 0]))
    # off by default: the default augmentations draw exactly what they drew before
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a1 = augment("lamost", x, w, AugmentConfig(), g1)
    a2 = augment("lamost", x, w, AugmentConfig(p_red_cut=0.0), g2)
    assert torch.equal(a1[1], a2[1])
    xp = augment("xp", x[:, :343], w[:, :343], AugmentConfig(p_red_cut=1.0, p_mask=0.0),
                 torch.Generator().manual_seed(0))
    assert (xp[1] > 0).all()                            # XP keeps its red end


def test_red_cut_view_is_augments_cut_applied_afterwards():
    """finetune's distillation needs a view before and after its red cut: the cut alone,
    applied to the uncut view with the same generator state, equals augment's."""
    from specsearch.preprocess import SED_BINS, grid_for

    npix = grid_for("lamost").npix
    x = torch.rand(16, npix + SED_BINS) + 0.5
    w = torch.full_like(x, 100.0)
    x[:, npix:], w[:, npix:] = torch.linspace(-0.2, 0.2, SED_BINS), 1.0
    only_cut = AugmentConfig(p_noise=0.0, p_mask=0.0, p_shift=0.0, p_tilt=0.0, p_red_cut=1.0)
    want = augment("lamost", x, w, only_cut, torch.Generator().manual_seed(4))
    got = red_cut_view("lamost", x, w, only_cut, torch.Generator().manual_seed(4))
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
    assert (got[1][:, npix - 1] == 0).all() and torch.equal(w[:, npix - 1], torch.full((16,), 100.0))
    assert torch.equal(red_cut_view("xp", x[:, :343], w[:, :343], only_cut,
                                    torch.Generator().manual_seed(4))[1], w[:, :343])


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    cfg = model_config("small", embedding_dim=16).with_data(label_names=("teff",),
                                                             class_names=("a", "b"))
    net = SpecCLIPNet(cfg)
    loss_fn = SpecCLIPLoss(LossConfig())
    rng = np.random.default_rng(0)
    n = 16
    t = torch.from_numpy(rng.normal(size=(n, 1)).astype(np.float32))
    xl = 1 + 0.1 * t * torch.sin(torch.linspace(0, 50, 3909))[None, :]
    xx = 1 + 0.2 * t * torch.linspace(-1, 1, 343)[None, :]
    data = {"lamost": (xl, torch.full_like(xl, 1e4)), "xp": (xx, torch.full_like(xx, 1e4))}
    classes = (t[:, 0] > 0).long()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        outs = {m: net.forward_outputs(m, *data[m], decode=True) for m in data}
        terms = loss_fn(outs, data, net.logit_scale, labels=t, classes=classes,
                        source_id=torch.arange(n))
        opt.zero_grad()
        terms.total.backward()
        opt.step()
        losses.append(float(terms.total.detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert {"contrastive", "recon_lamost", "trans_xp_to_lamost", "labels_xp",
            "classes_lamost"} <= set(terms.parts)


def test_clean_anchor_loss_uses_clean_rows_only_and_trains_the_encoder():
    from specsearch.model.training.augment import add_noise_to_snr
    from specsearch.model.training.identity import clean_anchor_loss
    cfg = model_config("small").with_data(label_names=["teff"], class_names=[])
    torch.manual_seed(4)
    net = SpecCLIPNet(cfg)
    gen = torch.Generator().manual_seed(0)
    x = 1.0 + 0.05 * torch.randn(64, 343)
    # add_noise_to_snr: a factor of 2 quarters the weight and adds sqrt(3) sigma of noise
    w = torch.full((64, 343), 400.0)
    xn, wn = add_noise_to_snr(x.clone(), w.clone(), torch.full((64,), 2.0), gen)
    assert torch.allclose(wn, w / 4.0)
    assert float((xn - x).std()) == pytest.approx(3 ** 0.5 / 20.0, rel=0.05)
    # no row at S/N >= 30 (S/N 5 per pixel): nothing to anchor on
    assert clean_anchor_loss(net, "xp", x, torch.full((64, 343), 25.0),
                             augment_cfg=AugmentConfig(), min_snr=30.0, snr_floor=5.0,
                             gen=gen) is None
    loss = clean_anchor_loss(net, "xp", x, torch.full((64, 343), 2500.0),   # S/N 50
                             augment_cfg=AugmentConfig(), min_snr=30.0, snr_floor=5.0, gen=gen)
    assert loss is not None and 0.0 <= float(loss.detach()) <= 2.0
    loss.backward()
    assert net.encoders["xp"].inp.weight.grad.abs().sum() > 0


def test_sed_inputs_start_unchanged_then_read_the_sed_columns():
    from specsearch.model.conversions import add_sed_inputs
    from specsearch.preprocess import SED_BINS, grid_for

    torch.manual_seed(5)
    net = SpecCLIPNet(model_config("small").with_data(label_names=["teff"],
                                                      class_names=[])).eval()
    npix = grid_for("lamost").npix
    x = torch.rand(6, npix + SED_BINS) + 0.5
    w = torch.full_like(x, 100.0)
    x[:, npix:] = torch.linspace(-0.3, 0.3, SED_BINS)
    w[:, npix:] = 1.0
    with torch.no_grad():
        before = net.encode("lamost", x, w)
        assert torch.equal(before, net.encode("lamost", x[:, :npix], w[:, :npix]))
        add_sed_inputs(net)
        assert net.cfg.encoders["lamost"].sed_bins == SED_BINS
        assert net.cfg.encoders["xp"].sed_bins == 0
        assert torch.allclose(net.encode("lamost", x, w), before, atol=1e-6)
        net.encoders["lamost"].inp_sed.weight.normal_()
        tilted = x.clone()
        tilted[:, npix:] *= -1.0
        after = net.encode("lamost", x, w)
        assert not torch.allclose(after, net.encode("lamost", tilted, w), atol=1e-3)
        # no SED columns (e.g. a translated spectrum): encoded as an unknown SED
        unknown = w.clone()
        unknown[:, npix:] = 0.0
        assert torch.allclose(net.encode("lamost", x[:, :npix], w[:, :npix]),
                              net.encode("lamost", x, unknown), atol=1e-6)
        with pytest.raises(ValueError, match="columns"):
            net.encode("lamost", x[:, :npix + 3], w[:, :npix + 3])
    # saved and loaded with its SED inputs
    import tempfile

    from specsearch.model.api import load_model
    from specsearch.model.checkpoint import save_model_dir
    with tempfile.TemporaryDirectory() as d:
        save_model_dir(d, net, net.cfg, training={})
        back = load_model(d)
        with torch.no_grad():
            assert torch.allclose(back.net.encode("lamost", x, w), after, atol=1e-6)


def test_coverage_inputs_start_unchanged_then_tell_the_heads_what_is_missing(tmp_path):
    from specsearch.errors import ConfigError
    from specsearch.model.api import load_model
    from specsearch.model.checkpoint import save_model_dir
    from specsearch.model.layers import coverage_features
    from specsearch.model.conversions import add_coverage_inputs
    from specsearch.preprocess import grid_for

    torch.manual_seed(6)
    net = SpecCLIPNet(model_config("small").with_data(label_names=["teff", "feh"],
                                                      class_names=[])).eval()
    npix = grid_for("lamost").npix
    x = torch.rand(4, npix) + 0.5
    w = torch.full_like(x, 100.0)
    cut = w.clone()
    cut[:, int(0.77 * npix):] = 0.0         # no red arm (as MILES beyond 7410 A)
    with torch.no_grad():
        before = net.forward_outputs("lamost", x, cut, decode=False)
        add_coverage_inputs(net, 8)
        assert net.cfg.head.coverage_bins == 8
        after = net.forward_outputs("lamost", x, cut, decode=False)
        assert after.quality.shape == (4, 10)
        assert torch.equal(after.embedding, before.embedding)
        assert torch.allclose(after.label_mu, before.label_mu, atol=1e-6)
        cov = after.quality[0, 2:]
        assert torch.allclose(cov[:6], torch.ones(6)) and float(cov[7]) == 0.0
        assert 0.0 < float(cov[6]) < 1.0
        # once trained (here: random weights on the new columns) the same embedding reads
        # differently with and without its red end; the embedding itself does not change
        for head in net.heads.values():
            head.net[0].weight[:, -8:].normal_()
        whole = net.forward_outputs("lamost", x, w, decode=False)
        cut_out = net.forward_outputs("lamost", x, cut, decode=False)
        assert not torch.allclose(whole.label_mu, cut_out.label_mu, atol=1e-3)
        assert add_coverage_inputs(net, 8) is net         # same number: nothing to do
        with pytest.raises(ConfigError, match="already read 8"):
            add_coverage_inputs(net, 4)
    save_model_dir(tmp_path, net, net.cfg, training={})
    back = load_model(tmp_path)
    assert back.config.head.coverage_bins == 8
    with torch.no_grad():
        again = back.net.forward_outputs("lamost", x, cut, decode=False)
    assert torch.allclose(again.label_mu, cut_out.label_mu, atol=1e-6)
    g = torch.ones(2, 10)
    g[1, 5:] = 0.0
    assert coverage_features(g, 2).tolist() == [[1.0, 1.0], [1.0, 0.0]]


def test_augment_leaves_sed_columns_to_the_sed_augmentations():
    from specsearch.model.training.augment import add_noise_to_snr
    from specsearch.preprocess import SED_BINS, grid_for

    npix = grid_for("lamost").npix
    x = torch.rand(32, npix + SED_BINS) + 0.5
    w = torch.full_like(x, 400.0)
    sed = torch.linspace(-0.2, 0.2, SED_BINS)
    x[:, npix:], w[:, npix:] = sed, 1.0
    cfg = AugmentConfig(p_noise=1.0, p_red_cut=0.0, p_mask=0.0)
    xa, wa = augment("lamost", x, w, cfg, torch.Generator().manual_seed(0))
    assert xa.shape == x.shape and torch.equal(xa[:, npix:], x[:, npix:])
    assert torch.equal(wa[:, npix:], w[:, npix:]) and not torch.equal(xa[:, :npix], x[:, :npix])
    xn, wn = add_noise_to_snr(x.clone(), w.clone(), torch.full((32,), 3.0),
                              torch.Generator().manual_seed(0), "lamost")
    assert torch.equal(xn[:, npix:], x[:, npix:]) and (wn[:, :npix] < w[:, :npix]).all()
    # a lost red end takes the SED stretches it covers with it; the rest stay centred
    xr, wr = augment("lamost", x, w, AugmentConfig(p_noise=0.0, p_red_cut=1.0, p_mask=0.0,
                                                  p_shift=0.0, p_tilt=0.0),
                     torch.Generator().manual_seed(1))
    lost = wr[:, npix:] == 0
    assert lost[:, -1].all() and not lost[:, 0].any()
    kept = xr[:, npix:] * (~lost)
    assert torch.allclose(kept.sum(1), torch.zeros(32), atol=1e-5)
    # the SED flux-calibration tilt moves the values and keeps them centred
    xt, _ = augment("lamost", x, w, AugmentConfig(p_noise=0.0, p_mask=0.0, p_shift=0.0,
                                                  p_tilt=0.0, p_sed_tilt=1.0, sed_tilt=0.05,
                                                  sed_curve=0.02),
                    torch.Generator().manual_seed(2))
    assert not torch.allclose(xt[:, npix:], x[:, npix:])
    assert torch.allclose(xt[:, npix:].sum(1), torch.zeros(32), atol=1e-4)
    assert (xt[:, npix:] - x[:, npix:]).abs().max() <= 2 * (0.05 + 0.02) + 1e-4


def test_new_population_classes_start_unchanged_and_keep_the_old_rows(tmp_path):
    from specsearch.errors import ConfigError
    from specsearch.model.api import load_model
    from specsearch.model.checkpoint import save_model_dir
    from specsearch.model.conversions import NEW_CLASS_LOGIT, add_population_classes
    from specsearch.preprocess import grid_for

    torch.manual_seed(7)
    old = ["normal", "vmp", "white_dwarf"]
    net = SpecCLIPNet(model_config("small").with_data(label_names=["teff", "feh"],
                                                      class_names=old)).eval()
    npix = grid_for("lamost").npix
    x = torch.rand(4, npix) + 0.5
    w = torch.full_like(x, 100.0)
    new = ["normal", "ultracool", "vmp", "white_dwarf"]      # sorted, as catalogs give them
    with torch.no_grad():
        before = net.forward_outputs("lamost", x, w, decode=False)
        add_population_classes(net, new)
        after = net.forward_outputs("lamost", x, w, decode=False)
    assert net.cfg.class_names == tuple(new)
    assert after.class_logits.shape == (4, 4)
    # the same weights in a last layer of another shape: equal up to the rounding of a
    # matrix product blocked differently (BLAS guarantees no bit-equality across shapes)
    same = dict(rtol=0.0, atol=1e-6)
    assert torch.allclose(after.label_mu, before.label_mu, **same)
    assert torch.allclose(after.label_log_sigma, before.label_log_sigma, **same)
    # the old classes' logits moved to their new places; the new one far below them
    assert torch.allclose(after.class_logits[:, [0, 2, 3]], before.class_logits, **same)
    low = before.class_logits.min(dim=1).values
    assert (after.class_logits[:, 1] < low + NEW_CLASS_LOGIT / 2).all()
    probs_before = torch.softmax(before.class_logits, -1)
    probs_after = torch.softmax(after.class_logits, -1)[:, [0, 2, 3]]
    assert torch.allclose(probs_after, probs_before, atol=1e-3)
    assert add_population_classes(net, new) is net        # nothing to add
    with pytest.raises(ConfigError, match="must hold"):
        add_population_classes(net, ["normal", "vmp"])   # would drop classes
    save_model_dir(tmp_path, net, net.cfg, training={})
    back = load_model(tmp_path)
    assert back.class_names == tuple(new)
    with torch.no_grad():
        again = back.net.forward_outputs("lamost", x, w, decode=False)
    assert torch.allclose(again.class_logits, after.class_logits, atol=1e-6)
