"""Ingest real survey files into a catalog: nothing lost silently, nothing duplicated."""

import numpy as np
import pyarrow.parquet as pq

from specsearch.io.catalog import list_column_to_numpy, open_catalog
from specsearch.io.ingest import ingest, stable_source_id


def _table(root, modality):
    cat = open_catalog(root)
    return pq.ParquetDataset([str(p) for p in cat.files(modality)]).read()


def test_lamost_dr1_with_labels_then_rerun_adds_nothing(real_data, tmp_path):
    spectra = real_data / "lamost" / "dr1" / "spectra"
    out = tmp_path / "cat"
    rep = ingest([spectra], out, modality="lamost",
                 labels=real_data / "lamost" / "dr1" / "labels.csv", on="filename",
                 progress=False)
    n_files = len(list(spectra.glob("*.fits")))
    assert rep.files_seen == n_files
    assert rep.rows_written + len(rep.skipped_rows) + len(rep.skipped_files) >= n_files
    assert rep.rows_written >= n_files - 2, rep.summary()
    assert rep.rows_labelled == 54
    t = _table(out, "lamost")
    assert t.num_rows == rep.rows_written
    assert len(set(t.column("spectrum_id").to_pylist())) == t.num_rows
    flux = list_column_to_numpy(t.column("flux"))
    ivar = list_column_to_numpy(t.column("ivar"))
    assert flux.shape[1] == 3909 and np.all(ivar >= 0) and np.all(np.isfinite(flux))
    assert np.isfinite(t.column("teff").to_numpy(zero_copy_only=False)).sum() == 54
    again = ingest([spectra], out, modality="lamost", progress=False)
    assert again.rows_written == 0 and again.files_already_ingested == n_files
    assert open_catalog(out).count("lamost") == t.num_rows


def test_bad_file_among_good_ones_is_reported_and_skipped(samples, tmp_path):
    src = sorted((samples / "lamost" / "dr1" / "spectra").glob("*.fits"))[:3]
    folder = tmp_path / "in"
    folder.mkdir()
    for p in src:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "spec-broken.fits").write_bytes(src[0].read_bytes()[:5000])
    (folder / "empty.fits").write_bytes(b"")
    rep = ingest([folder], tmp_path / "cat", modality="lamost", progress=False)
    assert rep.rows_written == 3
    skipped = dict(rep.skipped_files)
    assert set(skipped) == {"spec-broken.fits", "empty.fits"}
    assert all(reason for reason in skipped.values())


def test_xp_and_miles_ingest(real_data, tmp_path):
    xp = real_data / "gaia_xp" / "xp_continuous_combined_chunk0.fits"
    rep = ingest([xp], tmp_path / "cat", modality="xp", progress=False)
    assert rep.rows_written == 2000, rep.summary()
    t = _table(tmp_path / "cat", "xp")
    assert t.column("source_id").type == "int64"
    miles = sorted((real_data / "miles" / "spectra").glob("*.fits"))[:5]
    rep = ingest(miles, tmp_path / "cat", modality="lamost", progress=False)
    assert rep.rows_written == 5, rep.summary()
    t = _table(tmp_path / "cat", "lamost")
    ivar = list_column_to_numpy(t.column("ivar"))
    wave_cover = (ivar > 0).any(axis=0)
    from specsearch.preprocess import LAMOST_GRID

    covered = LAMOST_GRID.wavelength[wave_cover]
    assert covered.min() < 3710 and 7380 < covered.max() < 7430  # MILES stops at 7410 A


def test_stable_source_id_is_stable_and_positive():
    a = stable_source_id("miles:m0001V")
    assert a == stable_source_id("miles:m0001V") and a > 0
    assert a != stable_source_id("miles:m0002V")


def test_pairs_table_gives_the_gaia_source_id(real_data, tmp_path):
    rep = ingest([real_data / "lamost" / "dr8_xp_matched"], tmp_path / "cat",
                 modality="lamost", labels=real_data / "pairs_lamost_xp.csv", on="obsid",
                 rename={"gaia_dr3_source_id": "source_id"}, progress=False)
    assert rep.rows_written == 9 and rep.rows_labelled == 9
    ids = set(_table(tmp_path / "cat", "lamost").column("source_id").to_pylist())
    assert ids == {349511554371328, 319343704120704, 120435178731136}


def test_label_sentinels_are_read_as_missing(samples, tmp_path):
    labels = samples / "miles" / "labels.csv"
    sentinel = [line.split(",")[0] for line in labels.read_text().splitlines()
                if line.endswith(",9999.0")][0]
    path = samples / "miles" / "spectra" / f"MILES_res2.50_star_{sentinel}.fits"
    rep = ingest([path], tmp_path / "cat", modality="lamost", labels=labels, on="miles_id",
                 progress=False)
    assert rep.rows_labelled == 1
    t = _table(tmp_path / "cat", "lamost")
    assert t.column("feh").to_pylist() == [None] or np.isnan(t.column("feh").to_pylist()[0])
    assert t.column("teff").to_pylist()[0] > 1000


def test_resolving_power_for_files_that_state_none(tmp_path):
    """A spectrum sampled at 0.8 A (too coarse to be taken as Nyquist-sampled) is broadened
    only once ingest is told its resolution; a resolution the file states wins."""
    import pytest

    from specsearch.errors import ConfigError

    wave = np.arange(4000.0, 6000.0, 0.8)
    sigma = 5000.0 / 5000.0 / 2.3548                       # R = 5000 lines
    flux = 1.0 - 0.5 * sum(np.exp(-0.5 * ((wave - c) / sigma) ** 2) for c in (4500, 5000, 5500))
    lines = "\n".join(f"{w:.2f},{f:.6f},0.01" for w, f in zip(wave, flux))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "star.csv").write_text("wavelength,flux,error\n" + lines + "\n")
    (tmp_path / "in" / "coarse.csv").write_text("# fwhm = 6.0\nwavelength,flux,error\n"
                                               + lines + "\n")
    depth = {}
    for name, power in (("plain", None), ("told", 5000.0)):
        rep = ingest([tmp_path / "in"], tmp_path / name, modality="lamost", progress=False,
                     resolving_power=power)
        assert rep.rows_written == 2
        t = _table(tmp_path / name, "lamost")
        fl = {sid: f for sid, f in zip(t.column("spectrum_id").to_pylist(),
                                       list_column_to_numpy(t.column("flux")))}
        depth[name] = {sid: float(1.0 - f[f > 0].min()) for sid, f in fl.items()}
    assert depth["told"]["star"] < 0.8 * depth["plain"]["star"]   # broadened: shallower
    assert depth["told"]["coarse"] == depth["plain"]["coarse"]     # its own fwhm = 6 A wins
    with pytest.raises(ConfigError, match="resolving_power"):
        ingest([tmp_path / "in"], tmp_path / "bad", modality="lamost", progress=False,
               resolving_power=-1.0)


def test_spectra_without_telluric_correction_are_ingested_with_the_bands_masked(samples,
                                                                               tmp_path):
    from specsearch.preprocess import LAMOST_GRID

    path = samples / "lamost" / "format_samples" / "spec-55859-F5902_sp01-001_dr7.fits.gz"
    ivar = {}
    for flag in (False, True):
        out = tmp_path / f"cat-{flag}"
        report = ingest([path], out, modality="lamost", telluric_uncorrected=flag,
                        progress=False)
        assert report.rows_written == 1
        ivar[flag] = list_column_to_numpy(open_catalog(out).read_column("lamost", "ivar"))[0]
    a_band = (LAMOST_GRID.wavelength > 7610) & (LAMOST_GRID.wavelength < 7680)  # rest frame
    assert (ivar[False][a_band] > 0).all() and (ivar[True][a_band] == 0).all()
    blue = LAMOST_GRID.wavelength < 6500
    np.testing.assert_array_equal(ivar[False][blue], ivar[True][blue])
