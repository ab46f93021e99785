"""specsearch.io.gaia_xp / xp_basis: every real XP file equals gaiaxpy.calibrate to 1e-6.

GaiaXPy is slow (a Python loop per source) and chatty, so it is called on few sources and
with stdout captured; a socket guard proves it works offline. GaiaXPy cannot take two of our
real inputs directly: the 18 Sco CSV lacks ``*_standard_deviation`` (GaiaXPy multiplies and
divides by it, so it cancels: we pass 1.0) and the per-coefficient FITS chunk has no
correlations (we pass an identity correlation, i.e. zeros for the off-diagonal values).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil
import socket

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from specsearch.errors import ConfigError, ReaderError, SpectrumError
from specsearch.io import gaia_xp as gx
from specsearch.io import xp_basis as xb
from specsearch.preprocess import XP_FLUX_SCALE, XP_GRID

gaiaxpy = pytest.importorskip("gaiaxpy")
pd = pytest.importorskip("pandas")

pytestmark = pytest.mark.filterwarnings(   # GaiaXPy's own use of pandas
    "ignore:The 'float_precision' argument is deprecated")

RTOL = 1e-6
ERROR_RTOL = 1e-5
"""Flux errors with the default single-precision correlation term (the issue's bound; the
largest deviation measured on these files is ~1.5e-6)."""
ARCHIVE = ("XP_CONTINUOUS_RAW.csv", "XP_CONTINUOUS_RAW_with_missing_BP.csv")
MISSING_BP_SOURCE = 5405570973190252288


@pytest.fixture(scope="module")
def xp_dir(samples):
    """The committed XP samples (tests/data/gaia_xp)."""
    return samples / "gaia_xp"


@pytest.fixture(scope="module")
def full_xp_dir(real_data):
    """The larger set's XP files (the whole 2000-source chunk)."""
    return real_data / "gaia_xp"


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def run_gaiaxpy(obj, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        df, pos = gaiaxpy.calibrate(obj, save_file=False, **kwargs)
    return df, pos


def assert_equals_gaiaxpy(ours: gx.XPSampled, df, pos, error_rtol: float = ERROR_RTOL) -> None:
    np.testing.assert_array_equal(ours.wavelength_nm, pos)
    row = {int(s): i for i, s in enumerate(ours.source_id)}
    for k, sid in enumerate(df["source_id"]):
        i = row[int(sid)]
        for mine, theirs, rtol in ((ours.flux[i], df["flux"].iloc[k], RTOL),
                                   (ours.flux_error[i], df["flux_error"].iloc[k], error_rtol)):
            theirs = np.asarray(theirs, dtype=np.float64)
            np.testing.assert_array_equal(np.isnan(mine), np.isnan(theirs))
            np.testing.assert_allclose(mine, theirs, rtol=rtol, atol=0, equal_nan=True)


def max_relative_error_difference(ours: gx.XPSampled, df) -> float:
    row = {int(s): i for i, s in enumerate(ours.source_id)}
    worst = 0.0
    for k, sid in enumerate(df["source_id"]):
        theirs = np.asarray(df["flux_error"].iloc[k], dtype=np.float64)
        mine = ours.flux_error[row[int(sid)]]
        good = np.isfinite(theirs)
        worst = max(worst, float(np.max(np.abs(mine[good] / theirs[good] - 1.0))))
    return worst


def as_gaiaxpy_frame(xp: gx.XPContinuous, rows: np.ndarray):
    """GaiaXPy input rows for sources without correlations / standard deviations."""
    records = []
    for i in rows:
        rec = {"source_id": int(xp.source_id[i])}
        for b in ("bp", "rp"):
            coef, err, corr, nrel = xp.band(b)
            rec.update({f"{b}_n_parameters": 55, f"{b}_standard_deviation": 1.0,
                        f"{b}_coefficients": coef[i], f"{b}_coefficient_errors": err[i],
                        f"{b}_coefficient_correlations":
                            np.zeros(1485) if corr is None else corr[i],
                        f"{b}_n_relevant_bases": int(nrel[i])})
        records.append(rec)
    return pd.DataFrame(records)


# --------------------------------------------------------------------------- equality

@pytest.mark.parametrize("name", ARCHIVE)
def test_archive_csv_equals_gaiaxpy(xp_dir, offline, name):
    path = xp_dir / "archive_format" / name
    xp = gx.read_xp_continuous(path)
    ours = gx.calibrate(xp)
    df, pos = run_gaiaxpy(str(path))
    assert_equals_gaiaxpy(ours, df, pos)
    assert_equals_gaiaxpy(gx.calibrate(xp, error_precision="double"), df, pos, error_rtol=RTOL)
    if name.endswith("missing_BP.csv"):
        i = int(np.flatnonzero(ours.source_id == MISSING_BP_SOURCE)[0])
        blue = ours.wavelength_nm <= xb.RP_LOW_NM
        assert np.isnan(ours.flux[i, blue]).all() and np.isfinite(ours.flux[i, ~blue]).all()


def test_single_precision_errors_within_1e5_of_gaiaxpy(xp_dir, tmp_path, offline):
    """Every real archive-format file with correlation matrices: the float32 correlation
    term keeps sigma within 1e-5 of GaiaXPy (and really is the single-precision path:
    double agrees to 1e-12, single does not)."""
    shutil.copy(xp_dir / "xp_continuous_combined_weiler2023_examples.vot",
                tmp_path / "examples.xml")
    paths = [*(xp_dir / "archive_format" / name for name in ARCHIVE), tmp_path / "examples.xml"]
    worst = {}
    for path in paths:
        xp = gx.read_xp_continuous(path)
        assert xp.bp_coefficient_correlations is not None, path
        df, _ = run_gaiaxpy(str(path))
        for precision in ("single", "double"):
            ours = gx.calibrate(xp, error_precision=precision)
            worst[path.name, precision] = max_relative_error_difference(ours, df)
    assert max(v for (_, p), v in worst.items() if p == "double") < 1e-12, worst
    single = [v for (_, p), v in worst.items() if p == "single"]
    assert max(single) < ERROR_RTOL and max(single) > 1e-9, worst


def test_votable_equals_gaiaxpy_with_and_without_truncation(xp_dir, tmp_path, offline):
    path = xp_dir / "xp_continuous_combined_weiler2023_examples.vot"
    shutil.copy(path, tmp_path / "examples.xml")     # GaiaXPy wants the .xml extension
    xp = gx.read_xp_continuous(path)
    assert xp.bp_coefficient_correlations is not None
    for truncation in (False, True):
        ours = gx.calibrate(xp, truncation=truncation)
        assert_equals_gaiaxpy(ours, *run_gaiaxpy(str(tmp_path / "examples.xml"),
                                                 truncation=truncation))


def test_18sco_equals_gaiaxpy(xp_dir, offline):
    path = xp_dir / "archive_format" / "18Sco-XP-spectra.csv"
    frame = pd.read_csv(path)
    frame["bp_standard_deviation"] = frame["rp_standard_deviation"] = 1.0
    ours = gx.calibrate(gx.read_xp_continuous(path))
    assert_equals_gaiaxpy(ours, *run_gaiaxpy(frame))


def test_fits_chunk_equals_gaiaxpy(full_xp_dir, offline):
    xp = gx.read_xp_continuous(full_xp_dir / "xp_continuous_combined_chunk0.fits")
    assert len(xp) == 2000 and xp.bp_coefficient_correlations is None
    rows = np.linspace(0, 1999, 8).astype(int)
    for truncation in (False, True):
        ours = gx.calibrate(xp, truncation=truncation)
        assert_equals_gaiaxpy(ours, *run_gaiaxpy(as_gaiaxpy_frame(xp, rows),
                                                 truncation=truncation))


def test_custom_grid_equals_gaiaxpy(xp_dir, offline):
    path = xp_dir / "archive_format" / "XP_CONTINUOUS_RAW_with_missing_BP.csv"
    grid = np.arange(400.0, 900.0, 5.0)
    ours = gx.calibrate(gx.read_xp_continuous(path), grid_nm=grid)
    assert_equals_gaiaxpy(ours, *run_gaiaxpy(str(path), sampling=grid))


# --------------------------------------------------------------------------- model

def test_design_comes_from_the_package():
    d = xb.xp_design()
    assert d is xb.xp_design(xb.DEFAULT_GRID_NM.copy())           # cached, same grid
    np.testing.assert_array_equal(d.wavelength_nm * 10.0, XP_GRID.wavelength)
    assert d.bp.shape == d.rp.shape == (55, 343)
    np.testing.assert_allclose(d.weight_bp + d.weight_rp, 1.0)
    assert d.source.endswith(".xml") and d.gaiaxpy_version != "unknown"
    with pytest.raises(Exception, match="330-1050"):
        xb.xp_design(np.array([300.0, 400.0]))


def test_vectorised_equals_one_by_one(xp_dir):
    xp = gx.read_xp_continuous(xp_dir / "archive_format" / "XP_CONTINUOUS_RAW_with_missing_BP.csv")
    for precision, error_rtol in (("double", 1e-12), ("single", 2e-6)):
        whole = gx.calibrate(xp, batch_size=2, error_precision=precision)
        for i in range(len(xp)):
            one = dataclasses.replace(xp, **{f.name: getattr(xp, f.name)[i:i + 1]
                                             for f in dataclasses.fields(xp)
                                             if isinstance(getattr(xp, f.name), np.ndarray)})
            # BLAS may sum in another order for one row: 1e-12 (float32: 1e-7)
            got = gx.calibrate(one, error_precision=precision)
            np.testing.assert_allclose(got.flux[0], whole.flux[i], rtol=1e-12)
            np.testing.assert_allclose(got.flux_error[0], whole.flux_error[i], rtol=error_rtol)


def test_pair_variance_blocks_threads_and_scales(xp_dir):
    """Several GEMM blocks and fill threads, and errors of any magnitude (float32 would
    overflow at 1e20 or flush to zero at 1e-25 without the per-source scaling)."""
    xp = gx.read_xp_continuous(xp_dir / "archive_format" / "XP_CONTINUOUS_RAW.csv")
    n = 9 * xb._CHUNK_ROWS + 77
    rows = np.arange(n) % len(xp)
    magnitude = 10.0 ** np.resize([0.0, 20.0, -25.0, 3.0], n)
    errors = xp.rp_coefficient_errors[rows] * magnitude[:, None]
    corr = xp.rp_coefficient_correlations[rows]
    ops = xb.xp_design().band_operators("rp")
    ref = xb.pair_variance(xp.rp_coefficient_errors, xp.rp_coefficient_correlations, ops,
                           precision="double")[rows] * magnitude[:, None] ** 2
    diag = (errors * errors) @ ops.design_sq
    for threads in (1, 2):
        got = xb.pair_variance(errors, corr, ops, threads=threads)
        np.testing.assert_allclose(diag + got, diag + ref, rtol=2e-6)
    with pytest.raises(ConfigError, match="half"):
        xb.sample(xp.bp_coefficients, xp.rp_coefficients, xp.bp_coefficient_errors,
                  xp.rp_coefficient_errors, error_precision="half")


def test_projection_round_trip(xp_dir):
    d = xb.xp_design()
    xp = gx.read_xp_continuous(xp_dir / "archive_format" / "18Sco-XP-spectra.csv")
    flux, _ = xb.sample(xp.bp_coefficients, xp.rp_coefficients)
    bp, rp = xb.project_to_coefficients(flux, d.wavelength_nm)
    assert bp.shape == rp.shape == (1, 55)
    back, _ = xb.sample(bp, rp)
    assert np.max(np.abs(back - flux) / np.abs(flux)) < 1e-5
    # a smooth SED on a fine grid: blackbodies, vectorised over N
    wl = np.arange(300.0, 1100.0, 0.1)
    seds = np.stack([1e-14 / (wl / 500) ** 5 / np.expm1(1.4387769e7 / (wl * t))
                     for t in (3500.0, 5800.0, 10000.0)])
    bp, rp = xb.project_to_coefficients(seds, wl)
    back, _ = xb.sample(bp, rp)
    ref = np.stack([np.interp(d.wavelength_nm, wl, s) for s in seds])
    rel = np.abs(back - ref) / ref
    assert rel.max() < 0.02 and np.median(rel) < 2e-3
    # an SED covering only the BP range gives BP coefficients and a NaN RP
    blue = wl < 700
    bp, rp = xb.project_to_coefficients(seds[:, blue], wl[blue])
    assert np.isfinite(bp).all() and np.isnan(rp).all()
    with pytest.raises(SpectrumError, match="covers neither"):
        xb.project_to_coefficients(np.ones((1, 10)), np.linspace(100, 200, 10))


# --------------------------------------------------------------------------- formats

def test_parquet_and_ecsv_inputs_match_csv(xp_dir, tmp_path):
    from astropy.table import Table

    src = xp_dir / "archive_format" / "XP_CONTINUOUS_RAW.csv"
    xp = gx.read_xp_continuous(src)
    ref = gx.calibrate(xp).flux
    cols = {"source_id": xp.source_id}
    for b in ("bp", "rp"):
        for key in ("coefficients", "coefficient_errors", "coefficient_correlations"):
            cols[f"{b}_{key}"] = getattr(xp, f"{b}_{key}")
    pq.write_table(pa.table({k: list(v) if v.ndim == 2 else v for k, v in cols.items()}),
                   tmp_path / "xp.parquet")
    Table(cols).write(tmp_path / "xp.ecsv", format="ascii.ecsv")
    for name in ("xp.parquet", "xp.ecsv"):
        assert gx.identify(tmp_path / name)
        np.testing.assert_array_equal(gx.calibrate(gx.read_xp_continuous(tmp_path / name)).flux,
                                      ref)


def test_sampled_tables_from_gaiaxpy(xp_dir, tmp_path, offline):
    path = xp_dir / "archive_format" / "XP_CONTINUOUS_RAW_with_missing_BP.csv"
    ref = gx.calibrate(gx.read_xp_continuous(path), error_precision="double")
    grid = np.arange(400.0, 900.0, 5.0)
    for fmt in ("csv", "ecsv", "fits", "xml"):
        with contextlib.redirect_stdout(io.StringIO()):
            gaiaxpy.calibrate(str(path), output_path=str(tmp_path), output_file="default",
                              output_format=fmt)
            gaiaxpy.calibrate(str(path), sampling=grid, output_path=str(tmp_path),
                              output_file="custom", output_format=fmt)
        default, custom = tmp_path / f"default.{fmt}", tmp_path / f"custom.{fmt}"
        assert gx.identify(default)
        got = gx.read_xp_sampled(default)
        np.testing.assert_array_equal(got.wavelength_nm, ref.wavelength_nm)
        np.testing.assert_allclose(got.flux, ref.flux, rtol=RTOL)
        np.testing.assert_allclose(got.flux_error, ref.flux_error, rtol=RTOL)  # float32 in FITS
        np.testing.assert_array_equal(gx.read_xp_sampled(custom).wavelength_nm, grid)
        cols = next(gx.iter_xp_catalog_columns(custom))
        assert cols["flux"].shape == (3, 343) and "bp_coefficients" not in cols


def test_read_yields_validated_spectra(xp_dir):
    path = xp_dir / "archive_format" / "XP_CONTINUOUS_RAW_with_missing_BP.csv"
    ref = gx.calibrate(gx.read_xp_continuous(path))
    spectra = list(gx.read(path))
    assert [s.source_id for s in spectra] == ref.source_id.tolist()
    for s, flux, err in zip(spectra, ref.flux, ref.flux_error):
        assert s.spectrum_id == f"xp-{s.source_id}" and s.modality == "xp"
        np.testing.assert_array_equal(s.wavelength, XP_GRID.wavelength)
        good = np.isfinite(flux)
        np.testing.assert_allclose(s.flux[good], flux[good] / XP_FLUX_SCALE, rtol=1e-12)
        np.testing.assert_allclose(s.ivar[good], (XP_FLUX_SCALE / err[good]) ** 2, rtol=1e-12)
        assert np.array_equal(s.mask, ~good) and (s.ivar[~good] == 0).all()
        assert s.snr == pytest.approx(np.median(flux[good] / err[good]), rel=1e-6)
        assert s.validated().npix == 343


def test_catalog_columns(full_xp_dir, tmp_path):
    from specsearch.io.catalog import CatalogWriter, open_catalog

    path = full_xp_dir / "xp_continuous_combined_chunk0.fits"
    xp = gx.read_xp_continuous(path)
    ref = gx.calibrate(xp)
    batches = list(gx.iter_xp_catalog_columns(path, batch_size=700))
    assert [len(b["source_id"]) for b in batches] == [700, 700, 600]
    first = batches[0]
    assert first["flux"].dtype == np.float32 and first["flux"].shape == (700, 343)
    np.testing.assert_allclose(first["flux"], ref.flux[:700] / XP_FLUX_SCALE, rtol=1e-6)
    np.testing.assert_array_equal(first["bp_coefficients"],
                                  xp.bp_coefficients[:700].astype(np.float32))
    assert np.isnan(first["ra"]).all() and first["spectrum_id"][0] == f"xp-{xp.source_id[0]}"
    assert (first["snr"] > 0).all()
    with CatalogWriter(tmp_path / "cat", "xp") as writer:
        for cols in batches:
            writer.write(cols)
    assert open_catalog(tmp_path / "cat").count("xp") == 2000


def test_identify(xp_dir, samples, tmp_path):
    for path in [*(xp_dir / "archive_format").glob("*.csv"), *xp_dir.glob("*.fits"),
                 *xp_dir.glob("*.vot")]:
        assert gx.identify(path), path
    (tmp_path / "spec.csv").write_text("wavelength,flux,ivar\n4000,1,1\n4001,1,1\n")
    lamost = next((samples / "lamost").rglob("*.fits*"))
    for path in (tmp_path / "spec.csv", lamost, tmp_path / "missing.csv"):
        assert not gx.identify(path)


# --------------------------------------------------------------------------- bad input

def test_bad_tables_raise_reader_error(xp_dir, tmp_path):
    src = (xp_dir / "archive_format" / "XP_CONTINUOUS_RAW.csv").read_text()
    header, row1, row2 = src.splitlines()[:3]
    bad = {
        "truncated.csv": src[: len(src) // 2],
        "empty.csv": header + "\n",
        "zero.csv": "",
        "no_rp.csv": "source_id,bp_coefficients,bp_coefficient_errors\n1,\"(1,2)\",\"(1,2)\"\n",
        "short.csv": src.replace(row1, row1.replace("(", "(0.5,", 1)),
        "garbled.csv": "source_id,bp_coefficients\n1,\"(a, b)\"\n",
    }
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ReaderError) as info:
            gx.calibrate(gx.read_xp_continuous(tmp_path / name))
        assert name in str(info.value), str(info.value)
    with pytest.raises(ReaderError, match="56 values, expected 55"):
        gx.read_xp_continuous(tmp_path / "short.csv")
    with pytest.raises(ReaderError, match="rp_coefficients"):
        gx.read_xp_continuous(tmp_path / "no_rp.csv")
    fits_raw = (xp_dir / "xp_continuous_combined_chunk0_20rows.fits").read_bytes()
    (tmp_path / "cut.fits").write_bytes(fits_raw[:70_000])
    with pytest.raises(ReaderError, match="cut.fits.*truncated"):
        list(gx.read(tmp_path / "cut.fits"))


def test_source_without_any_band_is_skipped(xp_dir, tmp_path):
    src = (xp_dir / "archive_format" / "XP_CONTINUOUS_RAW.csv").read_text().splitlines()
    names = src[0].split(",")
    empty = ",".join("999" if n == "source_id" else "" for n in names)
    (tmp_path / "none.csv").write_text("\n".join([src[0], src[1], empty]) + "\n")
    skipped = []
    cols = next(gx.iter_xp_catalog_columns(tmp_path / "none.csv",
                                           on_skip=lambda sid, why: skipped.append(sid)))
    assert skipped == [999] and len(cols["source_id"]) == 1
    assert [s.source_id for s in gx.read(tmp_path / "none.csv")] == [int(src[1].split(",")[0])]
