"""The shipped default model on real spectra (../shared/data/real): real LAMOST and MILES
spectra embed on the LAMOST grid, repeat visits of one star agree, and the heads give
sensible labels. Skipped when the real samples are absent."""

from __future__ import annotations

import numpy as np
import pytest

from specsearch.io.ingest import spectrum_row
from specsearch.io.registry import read_spectra
from specsearch.model import load_model
from specsearch.model.evaluate_real import _multivisit
from specsearch.preprocess import LAMOST_GRID

from test_model_data import _one_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="module")
def model():
    return load_model()


def test_repeat_visits_of_a_real_star_agree(model, real_data):
    r = _multivisit(model, real_data)
    assert r["n_spectra"] == 9 and r["n_stars"] == 3
    # the 5 visits of one star are closer to each other than to the other stars
    assert r["cosine_same_star_mean"] > r["cosine_different_star_mean"]
    # their real Gaia XP spectra rank in the top half of the 2000 XP sources of the field
    ranks = np.array(r["xp_partner_rank_per_visit"])
    assert ranks.size == 9 and np.median(ranks) < 1000


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
