"""The synthetic survey generator: determinism, labels, populations, catalog output, CLI."""

from __future__ import annotations

import numpy as np
import pytest

from specsearch.errors import CatalogError, ConfigError
from specsearch.synth import (
    ARTEFACT_KINDS,
    LABEL_RANGES,
    POPULATIONS,
    SynthConfig,
    generate_batch,
    generate_columns,
    generate_survey,
)
from specsearch.synth.labels import population_counts, resolve_fractions
from specsearch.synth.mix import sample_labels

RARE = {"vmp": 0.03, "emp": 0.02, "carbon": 0.02, "white_dwarf": 0.02, "wd_md": 0.02,
        "emission": 0.02, "hot_ob": 0.02, "binary": 0.05, "ultracool": 0.02}


@pytest.fixture(scope="module")
def sample():
    """600 stars with every rare population boosted (one shard of 600: 2 batches)."""
    return generate_columns(600, seed=11, fractions=RARE, artefact_fraction=0.05)


def test_same_seed_same_survey_and_shards_independent(sample):
    lamost, xp = sample
    config = SynthConfig(n=600, seed=11, fractions=RARE, artefact_fraction=0.05)
    again_l, again_x = generate_batch(config, 0, 1)     # the second batch, on its own
    np.testing.assert_array_equal(again_l["flux"], lamost["flux"][500:])
    np.testing.assert_array_equal(again_x["bp_coefficients"], xp["bp_coefficients"][500:])
    np.testing.assert_array_equal(again_l["source_id"], lamost["source_id"][500:])
    other, _ = generate_batch(SynthConfig(n=600, seed=12, fractions=RARE), 0, 1)
    assert not np.array_equal(other["teff"], again_l["teff"])


def test_pairs_share_labels_and_ids(sample):
    lamost, xp = sample
    np.testing.assert_array_equal(lamost["source_id"], xp["source_id"])
    assert len(set(lamost["source_id"].tolist())) == 600
    assert len(set(lamost["spectrum_id"]) | set(xp["spectrum_id"])) == 1200
    for k in ("teff", "logg", "feh", "population", "mag_g", "ebv", "rv"):
        np.testing.assert_array_equal(lamost[k], xp[k])


def test_nothing_nan_and_shapes(sample):
    lamost, xp = sample
    assert lamost["flux"].shape == (600, 3909) and xp["flux"].shape == (600, 343)
    for cols in (lamost, xp):
        assert np.isfinite(cols["flux"]).all() and np.isfinite(cols["ivar"]).all()
        assert (cols["ivar"] >= 0).all() and np.isfinite(cols["snr"]).all()
        # at least 95% of every spectrum usable
        assert ((cols["ivar"] > 0).mean(axis=1) > 0.95).all()
    for k in ("bp_coefficients", "rp_coefficients", "bp_coefficient_errors",
              "rp_coefficient_errors"):
        assert xp[k].shape == (600, 55) and np.isfinite(xp[k]).all()
    assert (xp["bp_coefficient_errors"] > 0).all()
    for k in ("ebv", "rv", "mag_g"):
        assert np.isfinite(lamost[k]).all()


def test_labels_within_declared_ranges():
    labels = sample_labels(np.random.default_rng(3), 20_000, resolve_fractions(RARE))
    for name in ("teff", "logg", "feh", "alpha_fe", "ebv", "rv", "mag_g"):
        v = getattr(labels, name)
        lo, hi = LABEL_RANGES[name]
        finite = np.isfinite(v)
        assert ((v[finite] >= lo) & (v[finite] <= hi)).all(), name
    undefined = ~np.isfinite(labels.feh)
    assert set(labels.population[undefined]) <= {"white_dwarf", "wd_md", "ultracool"}
    assert set(labels.population[~np.isfinite(labels.teff)]) <= {"wd_md"}
    wd = labels.population == "white_dwarf"
    assert (labels.logg[wd] > 7).all() and (labels.logg[~wd & np.isfinite(labels.logg)]
                                            < 6.5).all()


def test_galactic_mix_metal_poor_tail_is_rare_and_boostable():
    rng = np.random.default_rng(5)
    normal = sample_labels(rng, 50_000, resolve_fractions())
    frac = np.mean(normal.feh < -2)
    assert 0.001 <= frac <= 0.01
    boosted = sample_labels(rng, 50_000, resolve_fractions(metal_poor_boost=10))
    assert np.mean(boosted.feh < -2) > 5 * frac
    assert np.mean(boosted.feh < -3) > 0.002
    # thin-disk dominated: median near solar, dwarfs and giants both present
    assert -0.4 < np.nanmedian(normal.feh) < 0.1
    assert 0.15 < np.nanmean(normal.logg < 3.5) < 0.6


@pytest.mark.parametrize("pop", POPULATIONS[1:])
def test_each_population_present_at_its_fraction(pop, sample):
    lamost, _ = sample
    expected = RARE[pop] * 600          # 2 batches (500 + 100): floor + Bernoulli each
    assert abs(np.sum(lamost["population"] == pop) - expected) <= 2
    counts = population_counts(np.random.default_rng(0), 10_000, resolve_fractions(RARE))
    assert abs(counts[pop] - RARE[pop] * 10_000) <= 1


def test_artefacts_labelled_on_lamost_only(sample):
    lamost, xp = sample
    assert abs(lamost["is_artefact"].sum() - 30) <= 2
    kinds = set(lamost["artefact_kind"][lamost["is_artefact"]])
    assert kinds <= set(ARTEFACT_KINDS) and len(kinds) >= 3
    assert (lamost["artefact_kind"][~lamost["is_artefact"]] == "").all()
    assert not xp["is_artefact"].any()


def test_fraction_errors():
    with pytest.raises(ConfigError, match="unknown population"):
        resolve_fractions({"quasar": 0.1})
    with pytest.raises(ConfigError, match="sum to"):
        resolve_fractions({"binary": 0.9, "vmp": 0.2})
    with pytest.raises(ConfigError):
        SynthConfig(n=0)


def test_generate_survey_writes_paired_catalog_and_resumes(tmp_path):
    from specsearch.io.catalog import open_catalog

    out = tmp_path / "cat"
    report = generate_survey(out, n=120, seed=3, shard_size=50, progress=False)
    assert report.shards_written == [0, 1, 2] and report.rows_written == 120
    cat = open_catalog(out)
    assert cat.modalities == ["lamost", "xp"]
    assert cat.count("lamost") == cat.count("xp") == 120
    ids_l = np.sort(cat.read_column("lamost", "source_id").to_numpy())
    ids_x = np.sort(cat.read_column("xp", "source_id").to_numpy())
    np.testing.assert_array_equal(ids_l, ids_x)
    names = cat.schema("xp").names
    for col in ("teff", "population", "is_artefact", "bp_coefficients", "mag_g", "snr"):
        assert col in names
    again = generate_survey(out, n=120, seed=3, shard_size=50, progress=False)
    assert again.shards_written == [] and again.shards_skipped == [0, 1, 2]
    with pytest.raises(CatalogError, match="another configuration"):
        generate_survey(out, n=120, seed=4, shard_size=50, progress=False)


def test_cli_synth(tmp_path, capsys):
    from specsearch.cli import build_parser, main

    from specsearch.synth.labels import DEFAULT_ARTEFACT_FRACTION

    synth = build_parser()._subparsers._group_actions[0].choices["synth"]
    help_text = synth.format_help()
    assert "Example:" in help_text and "--metal-poor-boost" in help_text
    assert synth.get_default("artefact_fraction") == DEFAULT_ARTEFACT_FRACTION
    rc = main(["synth", "--n", "20", "--seed", "1", "--out", str(tmp_path / "c"),
               "--fractions", "carbon=0.1", "--no-progress"])
    assert rc == 0 and "20 stars" in capsys.readouterr().out
    assert main(["synth", "--n", "5", "--out", str(tmp_path / "d"),
                 "--fractions", "carbon"]) == 2


def test_ultracool_dwarfs_come_from_the_templates_and_follow_teff():
    """Ultracool dwarfs: Teff below the emulator's dwarfs, [Fe/H] not labelled, spectra
    interpolated between the shipped type templates (the node spectrum at a node's Teff),
    very red; off by default, so default surveys draw nothing."""
    from specsearch.synth.grid import model_wavelength
    from specsearch.synth.model import model_spectra
    from specsearch.synth.ultracool import TEFF_RANGE, load, ultracool_spectra

    assert resolve_fractions()["ultracool"] == 0.0
    assert population_counts(np.random.default_rng(0), 10_000, resolve_fractions())[
        "ultracool"] == 0
    labels = sample_labels(np.random.default_rng(4), 4_000, resolve_fractions(RARE))
    ucd = labels.population == "ultracool"
    assert 60 <= ucd.sum() <= 100
    assert (labels.teff[ucd] >= TEFF_RANGE[0]).all() and (labels.teff[ucd] <= TEFF_RANGE[1]).all()
    assert np.isnan(labels.feh[ucd]).all() and (labels.logg[ucd] > 5.0).all()
    assert (labels.mag_g[ucd] >= 13.5).all()

    nodes, log_flux = load()
    assert np.all(np.diff(nodes) > 0) and log_flux.shape == (nodes.size, model_wavelength().size)
    np.testing.assert_allclose(ultracool_spectra(nodes[2:3])[0], np.exp(log_flux[2]),
                               rtol=1e-5)
    mid = ultracool_spectra(np.array([0.5 * (nodes[3] + nodes[4])]))[0]
    np.testing.assert_allclose(np.log(mid), 0.5 * (log_flux[3] + log_flux[4]), atol=1e-5)
    wave = model_wavelength()
    spec = ultracool_spectra(np.array([2000.0, 2400.0, 2800.0]))
    assert np.isfinite(spec).all() and (spec > 0).all()
    red = spec[:, (wave > 8000) & (wave < 9000)].mean(1)
    blue = spec[:, (wave > 5000) & (wave < 6000)].mean(1)
    # Very red throughout; along the M sequence cooler is redder (in the L dwarfs the
    # optical colours turn over, as the co-adds' own r-i does).
    assert (red / blue > 5).all() and red[1] / blue[1] > red[2] / blue[2]
    flux = model_spectra(sample_labels(np.random.default_rng(4), 4_000,
                                       resolve_fractions(RARE)))
    np.testing.assert_allclose(flux[ucd], ultracool_spectra(labels.teff[ucd]), rtol=1e-6)


def test_ultracool_templates_refuse_a_missing_or_foreign_file(tmp_path):
    from specsearch.synth.ultracool import load

    with pytest.raises(ConfigError, match="missing"):
        load(str(tmp_path / "absent.npz"))
    bad = tmp_path / "bad.npz"
    np.savez(bad, teff=np.array([2000.0, 2500.0]), log_flux=np.zeros((2, 10)),
             wavelength=np.arange(10.0))
    with pytest.raises(ConfigError, match="model grid"):
        load(str(bad))


def test_a_population_of_fraction_zero_takes_no_random_draw():
    """Adding a population with fraction 0 leaves every earlier survey's stream alone:
    population_counts draws once per population with a positive fraction, never for 0."""
    fr = resolve_fractions()                      # ultracool = 0 by default
    positive = sum(1 for name in POPULATIONS[1:] if fr.get(name, 0.0) > 0)
    assert positive == len(POPULATIONS) - 2
    rng = np.random.default_rng(0)
    population_counts(rng, 1_000, fr)
    after = rng.random()
    ref = np.random.default_rng(0)
    ref.random(positive)
    assert after == ref.random()
