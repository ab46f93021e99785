"""The shipped default model on real spectra (../shared/data/real): real LAMOST and MILES
spectra embed on the LAMOST grid, repeat visits of one star agree, and the heads give
sensible labels. Skipped when the real samples are absent."""

from __future__ import annotations

import numpy as np
import pytest

from specsearch.io.ingest import spectrum_row
from specsearch.io.registry import read_spectra
from specsearch.model import load_model
from specsearch.model.evaluation.real_identity import (cross_modal, identity,
                                                       same_star_retrieval)
from specsearch.model.evaluation.real_parameters import WINDOWS_A, window_ablation
from specsearch.model.training.real_sets import load_all
from specsearch.preprocess import LAMOST_GRID

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def real_sets(real_data, tmp_path_factory):
    return load_all(real_data, tmp_path_factory.mktemp("real") / "sets.npz")


def test_repeat_visits_of_a_real_star_agree(model, real_sets):
    r = identity(model, {k: v for k, v in real_sets.items() if k in ("lamost_dr8",
                                                                       "lamost_dr1")})
    # the DR8 visits of three stars find another visit of their star among ~110 spectra
    assert r["lamost_dr8"]["embedding"]["n"] == 9
    assert r["lamost_dr8"]["embedding"]["top5"] >= 0.6
    cm = cross_modal(model, real_sets)
    ranks = np.array(cm["partner_rank_per_visit"])
    # their real Gaia XP spectra rank in the top half of the 2000 XP sources of the field
    assert ranks.size == 9 and np.median(ranks) < 1000
    # a search by source_id queries the star's best visit; ranks beyond the re-rank's
    # window of 50 are the cosine's, inside it the parameter re-rank's
    engine = cm["partner_rank_per_star_engine"]
    assert engine.keys() == cm["partner_rank_per_star"].keys()
    assert all(1 <= r <= cm["xp_pool"] for r in engine.values())


def test_window_ablation_reports_shift_bias_and_scatter(model, real_sets):
    r = window_ablation(model, real_sets["lamost_dr10"])
    assert r["n"] >= 100
    assert [k for k in r if k != "n"] == [f"mask {lo}-{hi} A" for lo, hi in WINDOWS_A]
    assert "mask 6800-9100 A" in r          # what a spectrum that stops at 6800 A reads
    for row in (v for k, v in r.items() if k != "n"):
        for name in ("teff", "logg", "feh"):
            assert np.isfinite(row[f"{name}_shift"]) and np.isfinite(row[f"{name}_bias"])
            assert 0 < row[f"{name}_sigma"] < {"teff": 400, "logg": 0.6, "feh": 0.4}[name]


def test_same_star_retrieval_ranks():
    v = np.eye(4, dtype=np.float32)[[0, 0, 1, 2, 3]]
    v[1] += 0.1
    star = np.array(["a", "a", "b", "c", "d"])
    r = same_star_retrieval(v / np.linalg.norm(v, axis=1, keepdims=True), star,
                            np.array([True, True, True, False, False]))
    assert r["n"] == 2 and r["top1"] == 1.0       # "b" has no other visit: not a query
    bad = v.copy()
    bad[0] = np.nan                               # an unusable query ranks its partner last
    r = same_star_retrieval(bad, star, np.array([True, False, False, False, False]))
    assert r["median_rank"] == 5


def test_miles_on_the_lamost_grid(model, real_data):
    path = real_data / "miles" / "spectra" / "m0001V.fits"
    if not path.is_file():
        path = sorted((real_data / "miles" / "spectra").glob("*.fits"))[0]
    spec = next(iter(read_spectra(path)))
    row = spectrum_row(spec, "lamost")
    ivar = np.asarray(row["ivar"])
    assert (ivar[LAMOST_GRID.wavelength > 7420] == 0).all()      # no red arm in MILES
    b = model.embed_numpy("lamost", np.asarray(row["flux"]), ivar)
    assert b.good[0] and np.isfinite(b.embedding).all()
    teff, err = b.label("teff")
    assert 2500 < teff[0] < 40000 and err[0] > 0
