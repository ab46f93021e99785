"""Repeat visits of the synthetic survey (``--repeat-fraction``) and how training pairs them."""

from __future__ import annotations

import numpy as np
import pytest

from specsearch.errors import ConfigError
from specsearch.model.training.data import other_visit, visit_rank
from specsearch.synth.survey import SynthConfig, generate_columns


def test_second_visits_are_independent_observations_of_the_same_stars():
    lam, xp = generate_columns(120, seed=5, repeat_fraction=0.5)
    lam0, xp0 = generate_columns(120, seed=5)
    n2 = lam["source_id"].size - 120
    assert 30 < n2 < 90 and xp["source_id"].size == lam["source_id"].size
    # the first visits are the survey without repeats, bit for bit
    for k in ("flux", "ivar", "source_id", "teff", "ra"):
        assert np.array_equal(lam[k][:120], lam0[k], equal_nan=k == "teff")
        assert np.array_equal(xp[k][:120], xp0[k], equal_nan=k == "teff")
    first = {s: i for i, s in enumerate(lam["source_id"][:120])}
    j = np.array([first[s] for s in lam["source_id"][120:]])
    for k in ("teff", "logg", "feh", "ra", "dec"):          # the same stars ...
        assert np.array_equal(lam[k][120:], lam[k][j], equal_nan=True)
    assert all(s.endswith("-v2-lamost") for s in lam["spectrum_id"][120:])
    assert not np.allclose(lam["snr"][120:], lam["snr"][j])   # ... seen again, independently
    d = lam["flux"][120:] - lam["flux"][j]
    assert np.isfinite(d).all() and np.abs(d).mean() > 0
    assert not np.allclose(xp["flux"][120:], xp["flux"][j])


def test_repeat_fraction_is_checked():
    with pytest.raises(ConfigError, match="repeat_fraction"):
        SynthConfig(n=10, repeat_fraction=1.5)


def test_visit_rank_and_other_visit():
    sid = np.array([5, 3, 5, 7, 3, 5, 9])
    assert visit_rank(sid).tolist() == [0, 0, 1, 0, 1, 2, 0]
    assert other_visit(sid, np.arange(7), 7).tolist() == [2, 4, 5, -1, 1, 0, -1]
    # only positions in the set count (e.g. the training split)
    assert other_visit(sid, np.array([0, 1, 3, 4, 6]), 7).tolist() == [-1, 4, -1, -1, 1, -1, -1]


def test_training_pairs_each_visit_with_the_same_visit_of_the_other_instrument(tmp_path):
    from specsearch.io.catalog import open_catalog
    from specsearch.model.training.data import join_pairs, read_spectra_rows
    from specsearch.synth import generate_survey

    generate_survey(tmp_path / "cat", n=60, seed=2, repeat_fraction=0.5, progress=False)
    cat = open_catalog(tmp_path / "cat")
    pairs = join_pairs(cat, val_fraction=0.1, test_fraction=0.1)
    assert len(pairs) > 60
    lam = read_spectra_rows(cat, "lamost", pairs.lamost_row, extra=("spectrum_id",))
    xp = read_spectra_rows(cat, "xp", pairs.xp_row, extra=("spectrum_id",))
    strip = [s.rsplit("-", 1)[0] for s in lam["spectrum_id"]]
    assert strip == [s.rsplit("-", 1)[0] for s in xp["spectrum_id"]]
    assert len(set(pairs.xp_row.tolist())) == len(pairs)       # no XP row used twice
