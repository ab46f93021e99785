"""Paired-data layer of the model (join, split, cache) and the toy catalog other model
tests use. The toy spectra are structured (labels drive line depths and the SED) but are
NOT the synthetic survey: they exist only to exercise the code quickly."""

from __future__ import annotations

import numpy as np
import pytest

from specsearch.errors import CatalogError
from specsearch.io.catalog import CatalogWriter, open_catalog
from specsearch.model.training.cache import build_cache, pixel_statistics, population_classes
from specsearch.model.training.data import (catalog_fingerprint, choose_labels, join_pairs,
                                   read_spectra_rows, split_of)
from specsearch.preprocess import LAMOST_GRID, XP_GRID

LINES = np.linspace(3900.0, 8800.0, 40)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def toy_labels(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"teff": rng.uniform(4200, 7000, n).astype(np.float32),
            "logg": rng.uniform(1.0, 5.0, n).astype(np.float32),
            "feh": rng.uniform(-2.5, 0.4, n).astype(np.float32),
            "alpha_fe": rng.uniform(-0.1, 0.4, n).astype(np.float32)}


def toy_lamost(labels, rng, snr):
    wave = LAMOST_GRID.wavelength
    t = (labels["teff"][:, None] - 5500.0) / 1000.0
    cont = (wave[None, :] / 5000.0) ** (-1.0 - 0.8 * t)
    k = np.arange(LINES.size)
    depth = 1 / (1 + np.exp(-(np.sin(k)[None] * t[:, :1] * 2 + np.cos(k)[None]
                               * labels["feh"][:, None] + 0.3 * np.sin(3 * k)[None]
                               * labels["logg"][:, None] + 0.5 * labels["alpha_fe"][:, None]
                               * (k % 3 == 0)[None])))
    prof = np.exp(-0.5 * ((wave[None, :] - LINES[:, None]) / 3.0) ** 2)   # (lines, npix)
    flux = cont * (1 - 0.6 * depth @ prof)
    sigma = flux / snr[:, None]
    ivar = 1.0 / sigma ** 2
    flux = flux + rng.normal(size=flux.shape) * sigma
    return flux.astype(np.float32), ivar.astype(np.float32)


def toy_xp(labels, rng, snr):
    wave_um = XP_GRID.wavelength[None, :] * 1e-4
    teff = labels["teff"][:, None]
    planck = 1.0 / (wave_um ** 5 * (np.exp(14388.0 / (wave_um * teff)) - 1.0))
    bump = 1 + 0.05 * labels["feh"][:, None] * np.exp(-0.5 * ((wave_um - 0.4) / 0.05) ** 2)
    flux = 50 * planck / planck.mean(1, keepdims=True) * bump
    sigma = flux / snr[:, None]
    return ((flux + rng.normal(size=flux.shape) * sigma).astype(np.float32),
            (1 / sigma ** 2).astype(np.float32))


def make_paired_catalog(root, n_stars: int = 400, *, seed: int = 0, revisits: int = 20,
                        unpaired: int = 10, rows_per_file: int = 150,
                        extra_class: str | None = None):
    """A small paired catalog: n_stars with both spectra, ``revisits`` second LAMOST visits,
    ``unpaired`` LAMOST-only stars; ``extra_class`` names the population of every 8th star
    (a third class). Returns the catalog path."""
    rng = np.random.default_rng(seed)
    n_l = n_stars + unpaired
    lab = toy_labels(rng, n_l)
    sid = np.arange(1000, 1000 + n_l, dtype=np.int64) * 7
    pop = np.where(lab["feh"] < -2.0, "metal_poor", "normal")
    if extra_class is not None:
        pop = pop.astype(object)
        pop[::8] = extra_class
    snr_l = rng.uniform(15, 120, n_l).astype(np.float32)
    fl, il = toy_lamost(lab, rng, snr_l)
    idx = np.concatenate([np.arange(n_l), np.arange(revisits)])
    snr_r = np.concatenate([snr_l, rng.uniform(15, 120, revisits).astype(np.float32)])
    fr, ir = toy_lamost({k: v[:revisits] for k, v in lab.items()}, rng, snr_r[n_l:])
    fl, il = np.concatenate([fl, fr]), np.concatenate([il, ir])
    il[:, 3800:] = 0.0                                # a masked red end, as in real data
    with CatalogWriter(root, "lamost", rows_per_file=rows_per_file) as w:
        w.write({"spectrum_id": [f"L{i}" for i in range(idx.size)], "source_id": sid[idx],
                 "flux": fl, "ivar": il, "ra": rng.uniform(0, 360, idx.size),
                 "dec": rng.uniform(-30, 60, idx.size), "snr": snr_r,
                 **{k: v[idx] for k, v in lab.items()}, "population": pop[idx].tolist()})
    snr_x = rng.uniform(30, 200, n_stars).astype(np.float32)
    fx, ix = toy_xp({k: v[:n_stars] for k, v in lab.items()}, rng, snr_x)
    order = rng.permutation(n_stars)                 # XP rows in another order than LAMOST
    with CatalogWriter(root, "xp", rows_per_file=rows_per_file) as w:
        w.write({"spectrum_id": [f"X{i}" for i in order], "source_id": sid[order],
                 "flux": fx[order], "ivar": ix[order], "snr": snr_x[order],
                 **{k: v[order] for k, v in lab.items()}})
    return root


@pytest.fixture(scope="module")
def toy_catalog(tmp_path_factory):
    return make_paired_catalog(tmp_path_factory.mktemp("toy") / "cat", 300)


def test_split_is_a_stable_function_of_source_id():
    sid = np.arange(100_000, dtype=np.int64) * 13 + 5
    s = split_of(sid, val_fraction=0.1, test_fraction=0.05)
    assert np.array_equal(s, split_of(sid, val_fraction=0.1, test_fraction=0.05))
    frac = np.bincount(s, minlength=3) / s.size
    assert abs(frac[1] - 0.1) < 0.01 and abs(frac[2] - 0.05) < 0.01
    # Growing the validation share never moves a test star.
    s2 = split_of(sid, val_fraction=0.2, test_fraction=0.05)
    assert np.array_equal(s == 2, s2 == 2)


def test_join_pairs_every_visit_with_its_star(toy_catalog):
    cat = open_catalog(toy_catalog)
    pairs = join_pairs(cat, val_fraction=0.1, test_fraction=0.1)
    assert len(pairs) == 300 + 20                   # unpaired LAMOST stars are dropped
    lam = read_spectra_rows(cat, "lamost", pairs.lamost_row, extra=("source_id", "teff"))
    xp = read_spectra_rows(cat, "xp", pairs.xp_row, extra=("source_id", "teff"))
    assert np.array_equal(lam["source_id"], pairs.source_id)
    assert np.array_equal(xp["source_id"], pairs.source_id)
    assert np.array_equal(lam["teff"], xp["teff"])
    # both visits of a star share a split
    for s in np.unique(pairs.source_id):
        assert np.unique(pairs.split[pairs.source_id == s]).size == 1
    assert choose_labels(cat, None) == ["teff", "logg", "feh", "alpha_fe"]
    with pytest.raises(CatalogError, match="label column"):
        choose_labels(cat, ["teff", "nope"])


def test_cache_matches_catalog_and_is_reused(toy_catalog, tmp_path):
    cat = open_catalog(toy_catalog)
    pairs = join_pairs(cat, val_fraction=0.1, test_fraction=0.1)
    sel = np.flatnonzero(pairs.split != 2)
    classes = population_classes(cat, pairs, sel)
    assert classes == ["metal_poor", "normal"]
    fp = catalog_fingerprint(cat)
    cache = build_cache(cat, pairs, sel, tmp_path / "c", label_names=["teff", "feh"],
                        class_names=classes, fingerprint=fp, progress=False)
    assert len(cache) == sel.size
    b = cache.load(np.arange(len(cache)))
    raw = read_spectra_rows(cat, "xp", pairs.xp_row[sel], extra=("teff",))
    from specsearch.preprocess import prepare_model_input
    mi = prepare_model_input(raw["flux"], raw["ivar"], "xp")
    assert np.allclose(b.x["xp"], mi.flux, atol=1e-6)
    assert np.allclose(b.w["xp"], mi.weight, rtol=2e-3)
    assert np.allclose(b.labels[:, 0], raw["teff"])
    assert set(np.unique(b.classes)) <= {0, 1}
    lam = cache.load(np.arange(5)).w["lamost"]
    assert (lam[:, 3800:LAMOST_GRID.npix] == 0).all()  # masked pixels stay masked
    # the SED columns travel with the pixels
    rawl = read_spectra_rows(cat, "lamost", pairs.lamost_row[sel][:5])
    ml = prepare_model_input(rawl["flux"], rawl["ivar"], "lamost")
    assert lam.shape[1] == ml.flux.shape[1] == LAMOST_GRID.npix + 16
    assert np.allclose(cache.load(np.arange(5)).x["lamost"][:, LAMOST_GRID.npix:],
                       ml.flux[:, LAMOST_GRID.npix:], atol=2e-3)
    mtime = (tmp_path / "c" / "lamost_x.npy").stat().st_mtime_ns
    build_cache(cat, pairs, sel, tmp_path / "c", label_names=["teff", "feh"],
                class_names=classes, fingerprint=fp, progress=False)
    assert (tmp_path / "c" / "lamost_x.npy").stat().st_mtime_ns == mtime
    stats = pixel_statistics(cache, cache.positions("train"), "lamost")
    assert stats["std"].shape == (LAMOST_GRID.npix + 16,) and np.all(stats["std"] > 0)
    # shuffled batches cover every training pair once
    pos = cache.positions("train")
    got = np.concatenate(list(cache.batches(pos, 64, rng=np.random.default_rng(1), block=16,
                                            buffer_blocks=3)))
    assert np.unique(got).size == got.size and np.isin(got, pos).all()
    assert got.size >= pos.size - 31                 # only a last batch < 32 is dropped


def test_catalog_without_pairs_is_refused(tmp_path):
    with CatalogWriter(tmp_path, "xp") as w:
        w.write({"spectrum_id": ["a"], "source_id": np.array([1]),
                 "flux": np.ones((1, 343), np.float32), "ivar": np.ones((1, 343), np.float32)})
    with pytest.raises(CatalogError, match="needs 'lamost' and 'xp'"):
        join_pairs(open_catalog(tmp_path), val_fraction=0.1, test_fraction=0.1)
