"""specsearch.io.tables: one reader for CSV/ECSV/FITS/VOTable/Parquet/Arrow tables."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from specsearch.errors import ReaderError
from specsearch.io.tables import (META_KEY, TABLE_FORMATS, detect_table_format,
                                  iter_table_batches, parse_array_strings, read_column_names,
                                  read_table)
from specsearch.io.tables import csv_format


@pytest.fixture(scope="module")
def xp_dir(samples):
    return samples / "gaia_xp"  # the committed samples (tests/data)


# --------------------------------------------------------------------------- real files

def test_archive_csv_arrays_become_lists(xp_dir):
    path = xp_dir / "archive_format" / "XP_CONTINUOUS_RAW_with_missing_BP.csv"
    t = read_table(path)
    assert detect_table_format(path) == "csv"
    assert t.num_rows == 3
    assert t.schema.field("source_id").type == pa.int64()
    # 19-digit ids survive exactly (no float round trip)
    assert t.column("source_id").to_pylist() == [5853498713190525696, 5405570973190252288,
                                                 5762406957886626816]
    coef = t.column("bp_coefficients")
    assert pa.types.is_list(coef.type)
    assert coef.null_count == 1 and coef[1].as_py() is None      # the source without BP
    assert len(coef[0].as_py()) == 55
    assert len(t.column("rp_coefficient_correlations")[0].as_py()) == 1485
    # the first value equals the text in the file
    raw = path.read_text().splitlines()[1]
    first = raw.split('"(')[1].split(",")[0]
    assert coef[0].as_py()[0] == float(first)
    assert read_column_names(path) == t.column_names


def test_fits_per_coefficient_table(xp_dir):
    from astropy.table import Table

    path = xp_dir / "xp_continuous_combined_chunk0_20rows.fits"
    t = read_table(path, columns=["source_id", "bp_coeff_0", "e_rp_coeff_54"])
    ref = Table.read(path)
    assert detect_table_format(path) == "fits"
    assert t.column_names == ["source_id", "bp_coeff_0", "e_rp_coeff_54"]
    np.testing.assert_array_equal(t.column("source_id").to_numpy(), ref["source_id"])
    np.testing.assert_array_equal(t.column("bp_coeff_0").to_numpy(), ref["bp_coeff_0"])
    assert len(read_column_names(path)) == 223


def test_votable_variable_arrays(xp_dir):
    path = xp_dir / "xp_continuous_combined_weiler2023_examples.vot"
    t = read_table(path)
    assert detect_table_format(path) == "votable"
    assert t.num_rows == 4
    corr = t.column("bp_coefficient_correlations")
    assert pa.types.is_list(corr.type) and len(corr[0].as_py()) == 1485
    assert read_column_names(path) == t.column_names


def test_label_table(real_data):
    path = real_data / "lamost" / "dr1" / "labels.csv"
    t = read_table(path)
    assert t.num_rows >= 54 and "filename" in t.column_names


# --------------------------------------------------------------------------- formats

@pytest.fixture
def small_table() -> pa.Table:
    return pa.table({"source_id": pa.array([1, 2, 3], pa.int64()),
                     "teff": [5000.0, None, 6000.0],
                     "name": ["a", "b", None],
                     "coef": pa.array([[1.0, 2.0], None, [3.0, np.nan]],
                                      pa.list_(pa.float64()))})


def test_parquet_arrow_round_trip(tmp_path, small_table):
    pq.write_table(small_table, tmp_path / "t.parquet")
    feather.write_feather(small_table, tmp_path / "t.feather")
    pq.write_table(small_table, tmp_path / "misnamed.csv")    # content beats extension
    for name, fmt in (("t.parquet", "parquet"), ("t.feather", "arrow"),
                      ("misnamed.csv", "parquet")):
        assert detect_table_format(tmp_path / name) == fmt and fmt in TABLE_FORMATS
        t = read_table(tmp_path / name)
        assert t.column("coef").to_pylist()[:2] == [[1.0, 2.0], None]
        assert t.column("teff").to_pylist()[1] is None


def test_csv_gz_and_comments(tmp_path):
    text = "# a comment\nsource_id,flux\n7,\"(1.5, 2.5)\"\n8,\"[3, nan]\"\n"
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress(text.encode()))
    t = read_table(tmp_path / "t.csv.gz")
    assert t.column("source_id").to_pylist() == [7, 8]
    flux = t.column("flux").to_pylist()
    assert flux[0] == [1.5, 2.5] and flux[1][0] == 3.0 and np.isnan(flux[1][1])


def test_ecsv_arrays_masks_and_meta(tmp_path):
    from astropy.table import MaskedColumn, Table

    t = Table()
    t["source_id"] = np.array([11, 12], dtype=np.int64)
    t["flux"] = np.arange(6.0).reshape(2, 3)
    t["teff"] = MaskedColumn([5000.0, 0.0], mask=[False, True])
    t.meta["sampling"] = [1.0, 2.0, 3.0]
    t.write(tmp_path / "t.ecsv", format="ascii.ecsv")
    out = read_table(tmp_path / "t.ecsv")
    assert detect_table_format(tmp_path / "t.ecsv") == "ecsv"
    assert out.column("flux").to_pylist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert out.column("teff").to_pylist() == [5000.0, None]
    assert json.loads(out.schema.metadata[META_KEY])["sampling"] == [1.0, 2.0, 3.0]


def test_fits_vector_and_null_columns(tmp_path):
    from astropy.io import fits

    cols = [fits.Column("source_id", "K", array=np.array([5, 6]), null=-1),
            fits.Column("flux", "3E", array=np.arange(6, dtype=np.float32).reshape(2, 3)),
            fits.Column("n", "I", array=np.array([1, -99]), null=-99)]
    fits.BinTableHDU.from_columns(cols).writeto(tmp_path / "t.fits")
    out = read_table(tmp_path / "t.fits")
    assert pa.types.is_fixed_size_list(out.schema.field("flux").type)
    assert out.column("flux").to_pylist()[1] == [3.0, 4.0, 5.0]
    assert out.column("n").to_pylist() == [1, None]


def test_parse_array_strings():
    got = parse_array_strings(pa.array(["(1, 2)", None, "[ 3 , null ]", "()"]))
    vals = got.to_pylist()
    assert vals[0] == [1.0, 2.0] and vals[1] is None and vals[3] == []
    assert vals[2][0] == 3.0 and np.isnan(vals[2][1])
    assert parse_array_strings(pa.array(["abc", "(1, 2)"])) is None        # not all arrays
    assert parse_array_strings(pa.array(["((1,2),(3,4))"])) is None        # nested: kept
    assert parse_array_strings(pa.array([1, 2])) is None                   # not strings


def test_iter_batches_streams_csv(tmp_path, monkeypatch):
    # First rows have no array (null-typed in the first block): later blocks must still read.
    lines = ["source_id,coef"] + [f"{i}," for i in range(50)] + \
            [f'{i},"({i}.0, 1.0)"' for i in range(50, 120)]
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(csv_format, "CSV_BLOCK_BYTES", 256)
    batches = list(iter_table_batches(tmp_path / "s.csv", batch_size=32))
    assert [b.num_rows for b in batches] == [32, 32, 32, 24]
    ids = np.concatenate([b.column("source_id").to_numpy() for b in batches])
    np.testing.assert_array_equal(ids, np.arange(120))
    last = batches[-1].column("coef").to_pylist()
    assert last[-1] == [119.0, 1.0]


def test_iter_batches_parquet_and_columns(tmp_path, small_table):
    pq.write_table(small_table, tmp_path / "t.parquet")
    batches = list(iter_table_batches(tmp_path / "t.parquet", batch_size=2,
                                      columns=["source_id"]))
    assert [b.num_rows for b in batches] == [2, 1]
    with pytest.raises(ReaderError, match="missing column"):
        list(iter_table_batches(tmp_path / "t.parquet", columns=["nope"]))


# --------------------------------------------------------------------------- bad input

def test_bad_files_raise_reader_error_naming_file(tmp_path, xp_dir, small_table):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b\n1,2\n3\n")
    pq.write_table(small_table, tmp_path / "whole.parquet")
    raw = (tmp_path / "whole.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(raw[: len(raw) // 2])
    fits_raw = (xp_dir / "xp_continuous_combined_chunk0_20rows.fits").read_bytes()
    (tmp_path / "cut.fits").write_bytes(fits_raw[: len(fits_raw) // 3])
    (tmp_path / "garbage.fits").write_bytes(b"\x00\x01garbage" * 100)
    (tmp_path / "cut.vot").write_text(
        (xp_dir / "xp_continuous_combined_weiler2023_examples.vot").read_text()[:5000])
    for name in ("empty.csv", "ragged.csv", "cut.parquet", "cut.fits", "garbage.fits",
                 "cut.vot", "missing.csv"):
        with pytest.raises(ReaderError) as info:
            read_table(tmp_path / name)
        assert name in str(info.value), str(info.value)
    with pytest.raises(ReaderError, match="missing column"):
        read_table(tmp_path / "whole.parquet", columns=["source_id", "nope"])
