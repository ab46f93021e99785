"""Look-alike batches (specsearch.model.training.hard_negatives)."""

from __future__ import annotations

import numpy as np
import pytest

from specsearch.model.training.hard_negatives import label_neighbours, sample_batch

NAMES = ("teff", "logg", "feh", "alpha_fe", "ebv")
STD = np.array([1000.0, 1.0, 0.5, 0.1, 0.1])


def _stars(n=400, seed=0):
    """n rows: n/2 stars with two visits each (same labels, same source_id)."""
    rng = np.random.default_rng(seed)
    half = n // 2
    lab = np.c_[rng.uniform(4000, 7000, half), rng.uniform(1, 5, half),
                rng.uniform(-2, 0.5, half), rng.uniform(0, 0.4, half),
                rng.uniform(0, 0.5, half)].astype(np.float32)
    labels = np.r_[lab, lab]
    sid = np.r_[np.arange(half), np.arange(half)] + 1000
    return labels, sid


def test_neighbours_are_other_stars_and_near():
    labels, sid = _stars()
    pos = np.arange(len(sid))
    nn = label_neighbours(labels, NAMES, STD, pos, sid, k=7)
    assert nn.shape == (len(sid), 7)
    for i in range(len(sid)):
        assert sid[i] not in sid[nn[i]]                    # never the star itself
        assert len(set(sid[nn[i]])) == 7                    # distinct stars
    z = labels / STD
    d_nn = np.linalg.norm(z[nn] - z[:, None], axis=-1).mean()
    rng = np.random.default_rng(1)
    d_rand = np.linalg.norm(z[rng.integers(0, len(z), (len(z), 7))] - z[:, None],
                            axis=-1).mean()
    assert d_nn < 0.5 * d_rand


def test_missing_labels_count_as_the_mean_and_need_labels():
    labels, sid = _stars()
    labels[::3, 2] = np.nan
    nn = label_neighbours(labels, NAMES, STD, np.arange(len(sid)), sid, k=5)
    assert (nn >= 0).all()
    with pytest.raises(ValueError, match="look-alike"):
        label_neighbours(labels[:, :1], ("mass",), STD[:1], np.arange(len(sid)), sid, k=5)


def test_batches_hold_groups_and_one_row_per_star():
    labels, sid = _stars(4000)
    pos = np.arange(len(sid))
    nn = label_neighbours(labels, NAMES, STD, pos, sid, k=15)
    rng = np.random.default_rng(3)
    for fraction in (0.0, 0.5, 1.0):
        b = sample_batch(rng, pos, nn, sid, batch=64, fraction=fraction, group=16)
        assert b.size == 64 and (np.diff(b) > 0).all()
        assert len(set(sid[b])) == 64
    # with groups, a batch's rows sit much closer to their nearest batch-mate
    z = labels / STD

    def nearest(b):
        d = np.linalg.norm(z[b][:, None] - z[b][None], axis=-1)
        np.fill_diagonal(d, np.inf)
        return np.median(d.min(1))
    grouped = np.mean([nearest(sample_batch(rng, pos, nn, sid, 64, 1.0, 16))
                       for _ in range(5)])
    random = np.mean([nearest(sample_batch(rng, pos, nn, sid, 64, 0.0, 16))
                      for _ in range(5)])
    assert grouped < 0.6 * random
