"""The model's domain check: the relative reconstruction error, the ``domain_check.json``
file (and hostile copies of it), and where the flag goes (embedding columns, the hunt)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch

from specsearch.embed.encode import _head_columns
from specsearch.errors import ConfigError
from specsearch.hunt import HuntCalibration, HuntConfig, hunt
from specsearch.model.domain import (DEFAULT_COVERAGE, DOMAIN_FILE, DomainCheck,
                                     find_domain_check, load_domain_check, relative_residual,
                                     window_coverage)
from specsearch.rows import EmbeddingTable


def test_relative_residual_is_a_median_of_relative_errors():
    x = torch.tensor([[1.0, 2.0, 0.5, 1.0, 0.01],
                      [1.0, 1.0, 1.0, 1.0, 1.0],
                      [1.0, 1.0, 1.0, 1.0, 1.0]])
    w = torch.ones_like(x)
    w[2] = 0.0                                                  # nothing usable: NaN
    pred = torch.tensor([[1.1, 2.0, 0.4, 1.5, 5.0],             # 0.1, 0, 0.2, 0.5; |x| < min
                         [1.0, 1.0, 1.0, 1.0, 1.0],
                         [9.0, 9.0, 9.0, 9.0, 9.0]])
    r = relative_residual(pred, x, w)
    assert r[0].item() == pytest.approx(0.1)                    # nanmedian: lower middle
    assert r[1].item() == 0.0 and math.isnan(r[2].item())
    # noise-free scale: the same relative miss at any flux level scores the same
    p4, x4, w4 = pred[:1, :4], x[:1, :4], w[:1, :4]
    assert relative_residual(10 * p4, 10 * x4, w4).item() == pytest.approx(
        relative_residual(p4, x4, w4).item(), rel=1e-5)


def test_flags_need_a_threshold_and_skip_unusable_rows():
    check = DomainCheck("abc", {"xp": 0.5})
    flags = check.flags("xp", np.array([0.1, 0.6, np.nan, 0.5]))
    assert flags.tolist() == [False, True, False, False]
    assert check.flags("lamost", np.array([0.9])) is None


def test_file_round_trip_and_model_match(tmp_path):
    DomainCheck("abc", {"lamost": 0.25, "xp": 0.5}, {"xp": {"n": 10}}, "test").save(
        tmp_path / DOMAIN_FILE)
    got = load_domain_check(tmp_path / DOMAIN_FILE)
    assert got.thresholds == {"lamost": 0.25, "xp": 0.5} and got.reference == {"xp": {"n": 10}}
    assert find_domain_check("abc", tmp_path).thresholds["xp"] == 0.5
    assert find_domain_check("another model", tmp_path) is None     # made for another model
    assert find_domain_check("abc", tmp_path / "nowhere") is None
    assert find_domain_check("abc", None) is None


def test_coverage_rule_flags_too_little_of_its_window(tmp_path):
    wave = np.linspace(3700.0, 9100.0, 541)              # 10 A pixels
    w = torch.ones(3, 541 + 16)                          # + SED columns, never counted
    w[1, (wave < 4400).nonzero()[0]] = 0.0               # half of 3850-5000 gone
    w[2, (wave < 5000).nonzero()[0]] = 0.0               # no blue end at all
    w[:, 541:] = 0.0
    cov = window_coverage(w, wave, [3850.0, 5000.0]).numpy()
    assert cov[0] == 1.0 and 0.45 < cov[1] < 0.55 and cov[2] == 0.0
    check = DomainCheck("abc", {"lamost": 0.25}, coverage={"lamost": {
        "window_A": [3850.0, 5000.0], "min_fraction": 0.6}})
    rel = np.array([0.01, 0.01, 0.01])
    assert check.flags("lamost", rel, cov).tolist() == [False, True, True]
    assert check.flags("lamost", rel).tolist() == [False, False, False]  # no coverage given
    # a file with the rule reads back with it; a file written before the rule has none
    check.save(tmp_path / DOMAIN_FILE)
    assert load_domain_check(tmp_path / DOMAIN_FILE).coverage == check.coverage
    old = json.loads((tmp_path / DOMAIN_FILE).read_text())
    del old["coverage"]
    (tmp_path / DOMAIN_FILE).write_text(json.dumps(old))
    assert load_domain_check(tmp_path / DOMAIN_FILE).flags("lamost", rel, cov).tolist() == \
        [False, False, False]


def test_the_shipped_model_flags_a_spectrum_without_its_blue_end(samples):
    from specsearch.io.registry import read_spectra
    from specsearch.model import load_model
    from specsearch.preprocess import LAMOST_GRID, to_canonical_grid

    model = load_model(None)
    assert model.domain_check.coverage == DEFAULT_COVERAGE
    spec = next(iter(read_spectra(samples / "lamost" / "dr1" / "spectra" /
                                  "spec-55862-B6212_sp06-008.fits")))     # an F5 star
    grid = to_canonical_grid(spec, "lamost")
    flux = np.stack([grid.flux] * 3)
    ivar = np.stack([grid.ivar] * 3)
    ivar[1, LAMOST_GRID.wavelength < 5000] = 0.0         # the red arm only
    ivar[2, LAMOST_GRID.wavelength > 5700] = 0.0         # the blue arm only: still read
    b = model.embed_numpy("lamost", flux, ivar, with_domain=True)
    assert b.good.all() and b.out_of_domain.tolist() == [False, True, False]
    assert b.window_coverage[0] > 0.9 and b.window_coverage[1] == 0.0
    # the reconstruction alone would not have told: it fits where there is data
    assert b.recon_relative[1] < model.domain_check.thresholds["lamost"]


@pytest.mark.parametrize("content, match", [
    (b"{not json", "unreadable domain check"),
    (b"\xff\xfe\x00", "unreadable domain check"),
    (json.dumps({"kind": "specsearch.anomaly_defaults", "format_version": 1}).encode(),
     "not a specsearch domain check"),
    (json.dumps({"kind": "specsearch.domain_check", "format_version": 99}).encode(),
     "not a specsearch domain check"),
    (json.dumps({"kind": "specsearch.domain_check", "format_version": 1,
                 "thresholds": {"xp": -1}}).encode(), "finite positive"),
    (json.dumps({"kind": "specsearch.domain_check", "format_version": 1,
                 "thresholds": {"xp": True}}).encode(), "finite positive"),
    (json.dumps({"kind": "specsearch.domain_check", "format_version": 1,
                 "thresholds": {"xp": "0.5"}}).encode(), "finite positive"),
    (b'{"kind": "specsearch.domain_check", "format_version": 1, "thresholds": '
     b'{"xp": NaN}}', "finite positive"),
    (json.dumps({"kind": "specsearch.domain_check", "format_version": 1,
                 "thresholds": []}).encode(), "finite positive"),
    (b"[" * 100_000, "bytes; a domain check is a few hundred"),
    (json.dumps({"kind": "specsearch.domain_check", "format_version": 1,
                 "thresholds": {"lamost": 0.2},
                 "coverage": {"lamost": {"window_A": [5000, 3850],
                                         "min_fraction": 0.5}}}).encode(), "coverage must"),
    (json.dumps({"kind": "specsearch.domain_check", "format_version": 1,
                 "thresholds": {"lamost": 0.2},
                 "coverage": {"lamost": {"window_A": [3850, 5000],
                                         "min_fraction": 2}}}).encode(), "coverage must"),
    (json.dumps({"kind": "specsearch.domain_check", "format_version": 1,
                 "thresholds": {"lamost": 0.2}, "coverage": [1]}).encode(), "coverage must"),
])
def test_hostile_files_are_clear_errors(tmp_path, content, match):
    path = tmp_path / DOMAIN_FILE
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=match) as err:
        find_domain_check("abc", tmp_path)
    assert str(path) in str(err.value)


def test_embedding_columns_carry_the_flag():
    model = SimpleNamespace(label_names=("feh",), class_names=())
    out = SimpleNamespace(predictions=np.zeros((3, 1)), uncertainties=np.ones((3, 1)),
                          class_prob=None, recon_residual=np.ones(3),
                          translation_residual=None, recon_relative=np.array([0.1, 0.9, 0.2]),
                          out_of_domain=np.array([False, True, False]))
    cols = _head_columns(model, out, lambda a: a, 3, with_residual=True)
    assert cols["out_of_domain"].tolist() == [False, True, False]
    assert cols["recon_relative"].dtype == np.float32
    assert "out_of_domain" not in _head_columns(model, out, lambda a: a, 3, with_residual=False)
    out.out_of_domain = None                                      # a model without a check
    assert "out_of_domain" not in _head_columns(model, out, lambda a: a, 3, with_residual=True)


def test_the_hunt_leaves_out_flagged_measurements():
    n = 6
    sid = np.arange(n, dtype=np.int64)
    pred = np.array([-3.0, -2.8, -0.2, -0.1, 0.0, 0.1], np.float32)

    def table(flags):
        cols = {"spectrum_id": [f"s{i}" for i in sid], "source_id": sid, "feh_pred": pred,
                "feh_err": np.full(n, 0.1, np.float32)}
        if flags is not None:
            cols["out_of_domain"] = pa.array(flags, pa.bool_())
        return {"lamost": EmbeddingTable("lamost", np.eye(n, 4, dtype=np.float32),
                                         pa.table(cols), ("feh",), "h")}

    none = HuntCalibration(modalities={})
    plain = hunt(table(None), none, config=HuntConfig(top=3))
    assert plain.n_out_of_domain == 0 and plain.table.column("source_id")[0].as_py() == 0
    flagged = hunt(table([True, False, False, False, None, False]), none,
                   config=HuntConfig(top=3))
    assert flagged.n_out_of_domain == 1
    assert 0 not in flagged.table.column("source_id").to_pylist()   # its reading says nothing
    assert flagged.table.column("source_id")[0].as_py() == 1


def test_a_spectrum_query_says_why_it_is_out_of_domain(service_index, samples):
    """The engine's spectrum queries (the CLI's ``search --spectrum``) carry the coverage
    and the resolution reasons, and the CLI names them."""
    from specsearch.cli.search import _domain_reason
    from specsearch.io.registry import read_spectra
    from specsearch.model import load_model
    from specsearch.query import SearchEngine

    index, model_dir, _ = service_index
    model = load_model(model_dir)
    if model.domain_check is None or not model.domain_check.coverage:
        pytest.skip("the test model has no domain check with a coverage rule")
    engine = SearchEngine.open(index, encoder=model)
    spec = next(iter(read_spectra(samples / "lamost" / "dr1" / "spectra" /
                                  "spec-55862-B6212_sp06-008.fits")))
    whole = engine.search_spectrum(spec, k=3).query["domain"]
    assert not whole["out_of_domain"] and whole["window_coverage"] > 0.9
    red = replace(spec, ivar=np.where(spec.wavelength < 5200, 0.0, spec.ivar))
    d = engine.search_spectrum(red, k=3).query["domain"]
    assert d["out_of_domain"] and d["window_coverage"] == 0.0
    assert "lacks most of 3850-5000 A" in _domain_reason(d)
    broad = replace(spec, meta={**spec.meta, "resolving_power": 900.0})
    d = engine.search_spectrum(broad, k=3).query["domain"]
    assert d["out_of_domain"] and d["broader_than_model"]["input_fwhm_A"] > 5.0
    assert "broader than the model reads" in _domain_reason(d)
    assert "does not know stars" in _domain_reason(
        {"recon_relative": 0.9, "threshold": 0.25, "out_of_domain": True})
    good = np.flatnonzero(spec.ivar > 0)
    flux = spec.flux.copy()
    flux[good[np.linspace(500, good.size - 500, 6).astype(int)]] += 5.0 * np.median(
        spec.flux[good])
    q = engine.search_spectrum(replace(spec, flux=flux), k=3).query
    assert q["spikes_masked"] == 6 + engine.search_spectrum(spec, k=3).query["spikes_masked"]
    # DR1's files have no data in the A band: nothing to find; the DR7 sample with the
    # atmosphere put back is found, and its bands masked
    assert engine.search_spectrum(spec, k=3).query["telluric"]["source"] is None
    from specsearch.preprocess import LAMOST_GRID
    from specsearch.synth.lamost import telluric_transmission
    dr7 = next(iter(read_spectra(samples / "lamost" / "format_samples" /
                                 "spec-55859-F5902_sp01-001_dr7.fits.gz")))
    t = np.interp(dr7.wavelength, LAMOST_GRID.wavelength,
                  telluric_transmission(np.zeros(1), np.full(1, 1.2), np.full(1, 1.0))[0])
    left = replace(dr7, flux=dr7.flux * t, ivar=dr7.ivar / np.maximum(t, 1e-3) ** 2)
    got = engine.search_spectrum(left, k=3).query["telluric"]
    assert got["masked"] and got["source"] == "detected" and got["depth"] > 0.3
    assert engine.search_spectrum(dr7, k=3).query["telluric"]["masked"] is False


def test_example_spectra_from_files_are_read_as_queries_are(samples, tmp_path):
    """``more-like-this --spectrum`` / hunt seed spectra (``embed_spectrum_files``) reach the
    model through the same reading as every other spectrum: a LAMOST star written at +300
    km/s without a redshift embeds where the star at rest does."""
    from specsearch.io.registry import read_spectra
    from specsearch.model import load_model
    from specsearch.preprocess import C_KMS, to_canonical_grid
    from specsearch.query.similar import embed_spectrum_files

    model = load_model()
    spec = next(iter(read_spectra(samples / "lamost" / "format_samples" /
                                  "spec-55859-F5902_sp01-001_dr7.fits.gz"))).validated()
    rest = to_canonical_grid(spec, "lamost")
    good = spec.ivar > 0
    wave = spec.wavelength / (1.0 + rest.z_removed) * (1.0 + 300.0 / C_KMS)
    rows = "\n".join(f"{w:.4f},{f:.6g},{i:.6g}" for w, f, i in
                     zip(wave[good], spec.flux[good], spec.ivar[good]))
    (tmp_path / "moved.csv").write_text("# medium = vacuum\nwavelength,flux,ivar\n" + rows)
    got = embed_spectrum_files([tmp_path / "moved.csv"], "lamost", model)[0]
    want = model.embed_numpy("lamost", rest.flux[None], rest.ivar[None]).embedding[0]
    assert float(got @ want) > 0.99
