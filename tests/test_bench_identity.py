"""The identity benchmark's building blocks (benchmarks/identity_tasks.py): two independent
visits per synthetic star, and exact same-star retrieval measures."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from identity_tasks import (  # noqa: E402
    SNR_RANGE,
    TOLERANCE,
    agreement_ceiling,
    agreement_reranked,
    iter_visit_batches,
    knn,
    label_agreement,
    partner_ranks,
    rank_summary,
    snr_neighbour_rho,
    unit,
    xp_raw,
)

from specsearch.preprocess import grid_for  # noqa: E402

N = 50


@pytest.fixture(scope="module")
def visits():
    """50 stars in two batches (25 + 25)."""
    return list(iter_visit_batches(N, seed=3, batch=25))


def _cat(batches, get) -> np.ndarray:
    return np.concatenate([get(b) for b in batches])


def perfect_vectors(labels: dict[str, np.ndarray]) -> np.ndarray:
    """An ideal embedding: the star's noiseless labels, standardised (NaN -> 0)."""
    x = np.stack([labels[k] for k in ("teff", "logg", "feh", "alpha_fe", "ebv", "rv",
                                      "mag_g")], 1)
    x = (x - np.nanmean(x, 0)) / np.nanstd(x, 0)
    return unit(np.nan_to_num(x))


def test_visits_share_the_star_and_nothing_else(visits):
    assert [len(b) for b in visits] == [25, 25]
    nl, nx = grid_for("lamost").npix, grid_for("xp").npix
    for b in visits:
        for v in range(2):
            assert b.lamost_flux[v].shape == b.lamost_ivar[v].shape == (25, nl)
            assert b.xp_flux[v].shape == b.xp_ivar[v].shape == (25, nx)
            assert np.all((b.lamost_snr[v] >= SNR_RANGE[0]) & (b.lamost_snr[v] <= SNR_RANGE[1]))
        assert all(v.shape == (25,) for v in b.labels.values())
        # independent S/N, noise and XP coefficient noise, same star
        assert not np.allclose(b.lamost_snr[0], b.lamost_snr[1])
        assert not np.allclose(b.lamost_flux[0], b.lamost_flux[1])
        assert not np.allclose(b.xp_flux[0], b.xp_flux[1])
        # row i of both visits is star i (stars differ by up to 9 mag)
        ratio = np.nanmedian(b.xp_flux[0] / b.xp_flux[1], axis=1)
        assert np.all(np.abs(ratio - 1.0) < 0.2)
        both = (b.lamost_ivar[0] > 0) & (b.lamost_ivar[1] > 0)
        ratio = np.nanmedian(np.where(both, b.lamost_flux[0], np.nan)
                             / np.where(both, b.lamost_flux[1], np.nan), axis=1)
        assert np.all(np.abs(ratio - 1.0) < 0.2)
    # batches are different stars; the same seed gives the same stars
    assert not np.allclose(visits[0].labels["mag_g"], visits[1].labels["mag_g"])
    again = next(iter_visit_batches(25, seed=3, batch=25))
    np.testing.assert_array_equal(again.lamost_flux[1], visits[0].lamost_flux[1])


def test_perfect_embedding_finds_every_other_visit(visits):
    labels = {k: _cat(visits, lambda b: b.labels[k]) for k in visits[0].labels}
    vec = perfect_vectors(labels)
    ranks = partner_ranks(vec, vec)
    assert ranks.shape == (N,)
    assert rank_summary(ranks)["top1"] == 1.0
    shuffled = partner_ranks(vec, vec[np.roll(np.arange(N), 1)])
    assert rank_summary(shuffled)["top1"] < 0.2
    # an unusable (zero) query ranks last, not first
    vec0 = vec.copy()
    vec0[0] = 0.0
    assert partner_ranks(vec0, vec)[0] == N
    # the XP baseline on real visits: shapes and ranks in range
    xr = [unit(xp_raw(_cat(visits, lambda b, v=v: b.xp_flux[v]))) for v in range(2)]
    r = partner_ranks(*xr)
    assert r.shape == (N,) and r.min() >= 1 and r.max() <= N


def test_knn_matches_brute_force_and_excludes():
    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(40, 8)))
    partner = np.roll(np.arange(40), 20)
    exclude = np.stack([np.arange(40), partner], 1)
    D, I = knn(x, x, 5, exclude=exclude, block=7)
    sim = x @ x.T
    sim[np.arange(40), np.arange(40)] = -np.inf
    sim[np.arange(40), partner] = -np.inf
    np.testing.assert_array_equal(I, np.argsort(-sim, axis=1)[:, :5])
    np.testing.assert_allclose(D, np.take_along_axis(sim, I, 1), rtol=1e-6)


def test_snr_neighbour_rho_sees_noise_clustering():
    rng = np.random.default_rng(1)
    snr = rng.uniform(*SNR_RANGE, 200)
    partner = np.roll(np.arange(200), 100)
    by_noise = unit(np.stack([np.cos(snr / 100), np.sin(snr / 100)], 1))
    assert snr_neighbour_rho(by_noise, snr, partner)["rho"] > 0.9
    by_star = unit(rng.normal(size=(200, 16)))
    assert abs(snr_neighbour_rho(by_star, snr, partner)["rho"]) < 0.3


def test_label_agreement_counts_neighbours_within_tolerance():
    labels = {"teff": np.array([5000.0, 5100.0, 6000.0, np.nan]),
              "logg": np.array([4.0, 4.1, 4.0, 4.0]), "feh": np.zeros(4)}
    got = label_agreement(np.array([[1, 2], [0, 2], [0, 1], [0, 1]]), labels, labels)
    assert got == {"n": 3, "fraction_within": pytest.approx(2 / 6)}


def test_likelihood_ratio_ranks_do_not_prefer_noisy_gallery_spectra():
    """A very noisy gallery spectrum fits every template about equally well: ranked by
    likelihood it would win every query; by the likelihood ratio against the population it
    wins none that has a clear partner."""
    from identity_ceiling import _ratio_ranks

    n = 5
    ll = np.full((n, n), -50.0)
    np.fill_diagonal(ll, -10.0)          # each template fits its own spectrum best ...
    ll[:, 4] = -5.0                       # ... but spectrum 4 (noise only) fits all better
    assert (np.argmax(ll, axis=1) == 4).all()
    ranks = _ratio_ranks(ll)
    assert ranks[:4].tolist() == [1, 1, 1, 1]


def test_ceilings_on_a_few_stars():
    """Forty stars: an exact XP template picks its own noisy spectrum almost always; a free
    SED slope and curvature can only lose information."""
    from identity_ceiling import xp_partner_ceilings

    from specsearch.model import load_model

    got = xp_partner_ceilings(load_model(None), n=40, seed=5)
    assert got["n_stars"] == 40
    assert got["exact"]["top1"] >= 0.9
    assert got["exact"]["top1"] >= got["sed_known"]["top1"] - 0.05
    assert got["sed_known"]["top1"] >= got["sed_real"]["top1"] - 0.05
    assert got["sed_real"]["top1"] >= got["sed_free"]["top1"] - 0.05
    # the median rank orders the searchers more tightly than top-1 among 40 does
    assert got["sed_known"]["median_rank"] <= got["sed_free"]["median_rank"]
    assert 0.0 <= got["embedding"]["top1"] <= 1.0
    assert sum(v["n"] for v in got["top1_by_g"].values()) == 40


def test_truth_is_the_visits_without_noise_or_systematics():
    """The systematics-free truth differs from each visit's noiseless flux only by the
    visit's smooth calibration, telluric residual and sub-pixel velocity residual; the
    visits are the same with or without it."""
    (plain,) = iter_visit_batches(20, seed=4, batch=20)
    (with_truth,) = iter_visit_batches(20, seed=4, batch=20, with_truth=True)
    assert plain.lamost_truth is None
    np.testing.assert_array_equal(plain.lamost_flux[0], with_truth.lamost_flux[0])
    t = with_truth.lamost_truth
    assert t.shape == plain.lamost_flux[0].shape and np.isfinite(t).all() and (t > 0).all()
    wave = grid_for("lamost").wavelength
    blue = (wave > 4000) & (wave < 5500)
    for v in range(2):
        f, w = with_truth.lamost_flux[v], with_truth.lamost_ivar[v]
        ratio = np.nanmedian(np.where(w > 0, f, np.nan)[:, blue] / t[:, blue], axis=1)
        assert np.all(np.abs(ratio - 1.0) < 0.1)
        # residuals in the blue are noise: reduced chi-square ~1 after the scale
        chi = np.nanmean(np.where(w > 0, (f - ratio[:, None] * t) ** 2 * w, np.nan)[:, blue],
                         axis=1)
        assert np.all(chi < 1.6)


def test_visit_ceiling_finds_the_star_and_fails_without_information():
    """Sixty stars: every searcher of the ceiling finds (nearly) every star. Told the
    wrong stars' spectra, the searcher of the observed visits finds none; at S/N ~0.05 the
    searchers of noisy visits find hardly any."""
    from identity_ceiling import visit_ceiling

    b = list(iter_visit_batches(60, seed=6, batch=30, with_truth=True))
    truth = _cat(b, lambda x: x.lamost_truth)
    flux, ivar_a, ivar_b = (_cat(b, lambda x: x.lamost_flux[0]),
                            _cat(b, lambda x: x.lamost_ivar[0]),
                            _cat(b, lambda x: x.lamost_ivar[1]))
    wave = grid_for("lamost").wavelength
    got = visit_ceiling(truth, flux, ivar_a, ivar_b, wave, seed=1, block=25)
    assert set(got) == {"noise_only", "bayes_noisy", "observed_poly"}
    for name, ranks in got.items():
        assert ranks.shape == (60,) and ranks.min() >= 1 and ranks.max() <= 60
        assert rank_summary(ranks)["top1"] >= 0.95, name
    wrong = visit_ceiling(truth[np.roll(np.arange(60), 7)], flux, ivar_a, ivar_b, wave,
                          seed=1, block=25)
    assert rank_summary(wrong["observed_poly"])["top1"] <= 0.05
    faint = visit_ceiling(truth, flux, ivar_a * 1e-6, ivar_b * 1e-6, wave, seed=1, block=25)
    for name in ("noise_only", "bayes_noisy"):
        assert rank_summary(faint[name])["top1"] <= 0.3, name


def test_reranked_ranks_are_the_engines_and_the_exact_mean_when_the_window_is_everything():
    """The engine's re-rank as the benchmark scores it: a window over every row gives the
    exact ranking by the mean cosine; a small window keeps the embedding's rank outside."""
    from identity_tasks import partner_ranks, reranked_knn, reranked_partner_ranks, unit

    rng = np.random.default_rng(3)
    n = 300
    ea, ia = unit(rng.standard_normal((n, 16))), unit(rng.standard_normal((n, 8)))
    eb = unit(ea + 0.8 * rng.standard_normal((n, 16)))
    ib = unit(ia + 0.5 * rng.standard_normal((n, 8)))
    exact = partner_ranks(np.c_[ea, ia], np.c_[eb, ib])
    np.testing.assert_array_equal(reranked_partner_ranks(ea, eb, ia, ib, n), exact)
    small = reranked_partner_ranks(ea, eb, ia, ib, 5)
    emb = partner_ranks(ea, eb)
    np.testing.assert_array_equal(small[emb > 5], emb[emb > 5])
    assert (small[emb <= 5] <= 5).all()
    order = reranked_knn(ea, eb, ia, ib, 5)
    assert order.shape == (n, 5) and (np.sort(order, 1) == np.sort(
        np.argsort(-(ea @ eb.T), 1, kind="stable")[:, :5], 1)).all()


def _label_world(n: int = 300, seed: int = 3):
    """Stars with true (teff, logg, feh), predictions with per-star errors, and embeddings
    that know the labels only coarsely (cosine of labels in units of 5x the tolerance)."""
    rng = np.random.default_rng(seed)
    true = np.c_[rng.uniform(4500, 6500, n), rng.uniform(1.0, 4.8, n), rng.uniform(-2, 0.4, n)]
    labels = dict(zip(TOLERANCE, true.T))
    err = np.c_[rng.uniform(20, 300, n), rng.uniform(0.05, 0.6, n), rng.uniform(0.02, 0.4, n)]
    pred = true + rng.normal(size=true.shape) * err
    tol = np.array(list(TOLERANCE.values()))
    emb = unit(np.c_[true / (5 * tol), np.full(n, 40.0)] + rng.normal(0, 0.5, (n, 4)))
    return labels, true, pred, err, emb


def test_agreement_rerank_brings_agreeing_neighbours_up_and_keeps_partner_ranks_exact():
    labels, true, pred, err, emb = _label_world()
    names = tuple(TOLERANCE)
    plain = label_agreement(knn(emb, emb, 10)[1], labels, labels)["fraction_within"]
    got = agreement_reranked(emb, emb, pred, err, pred, err, names, labels, 50)
    assert got["label_agreement_top10"]["fraction_within"] > plain
    # the partner (here the star itself) is top-1 by cosine; the re-rank moves it down
    # only where its parameters are too uncertain to agree with anything (itself included)
    # better than a sharper look-alike does
    precise = err[:, 2] < 0.1
    assert got["n"] == len(true) and 0.5 < got["top1"] < 1.0
    again = agreement_reranked(emb[precise], emb[precise], pred[precise], err[precise],
                               pred[precise], err[precise], names,
                               {k: v[precise] for k, v in labels.items()}, 50)
    assert again["top1"] > got["top1"]
    with pytest.raises(ValueError, match="window"):
        agreement_reranked(emb, emb, pred, err, pred, err, names, labels, 5)


def test_agreement_ceilings_bound_by_the_side_that_is_known_through_predictions():
    labels, true, pred, err, _ = _label_world()
    exact = agreement_ceiling(true, true, np.full_like(err, 1e-6), labels, query_side=True)
    noisy_query = agreement_ceiling(true, pred, err, labels, query_side=True)
    noisy_gallery = agreement_ceiling(true, pred, err, labels, query_side=False)
    truth = label_agreement(knn(*(unit(np.c_[true / np.array(list(TOLERANCE.values())),
                                            np.ones(len(true))]),) * 2, 10)[1],
                            labels, labels)["fraction_within"]
    assert exact["fraction_within"] >= truth - 0.05
    assert noisy_query["fraction_within"] < exact["fraction_within"]
    assert noisy_gallery["fraction_within"] < exact["fraction_within"]
