"""Catalog batches -> (n, npix) arrays: every list layout, slices, nulls, wrong lengths."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from specsearch.embed.spectra import list_values, spectra_arrays
from specsearch.errors import CatalogError

NPIX = 4


def _rows(n: int, offset: float = 0.0) -> list[list[float]]:
    return [[offset + 10 * i + j for j in range(NPIX)] for i in range(n)]


@pytest.mark.parametrize("list_type", [pa.list_(pa.float32(), NPIX), pa.list_(pa.float32()),
                                       pa.large_list(pa.float32()), pa.list_(pa.float64())])
def test_list_values_of_every_layout_and_slice(list_type):
    col = pa.array(_rows(6), list_type)
    expected = np.array(_rows(6), np.float32)
    for start, stop in ((0, 6), (2, 6), (1, 4)):
        got = list_values(col.slice(start, stop - start), NPIX)
        assert got.dtype == np.float32 and np.array_equal(got, expected[start:stop])


def test_fixed_size_lists_are_viewed_without_a_copy():
    col = pa.array(_rows(5), pa.list_(pa.float32(), NPIX))
    assert np.shares_memory(list_values(col.slice(1, 3), NPIX), np.asarray(col.values))


def test_bad_rows_are_dropped_and_counted():
    flux = pa.array([*_rows(2), None, [1.0, 2.0], *_rows(1, 100)], pa.list_(pa.float32()))
    ivar = pa.array(_rows(5, 0.5), pa.list_(pa.float32()))
    batch = pa.record_batch({"spectrum_id": pa.array(list("abcde")), "flux": flux,
                             "ivar": ivar})
    chunk = spectra_arrays(batch, NPIX)
    assert chunk.batch.column("spectrum_id").to_pylist() == ["a", "b", "e"]
    assert np.array_equal(chunk.flux, np.array([*_rows(2), *_rows(1, 100)], np.float32))
    assert np.array_equal(chunk.ivar, np.array(_rows(5, 0.5), np.float32)[[0, 1, 4]])
    assert sum(chunk.skipped.values()) == 2
    good = spectra_arrays(batch.slice(0, 2), NPIX)
    assert not good.skipped and len(good.batch) == 2
    with pytest.raises(CatalogError, match="list of floats"):
        spectra_arrays(pa.record_batch({"flux": pa.array([1.0]), "ivar": pa.array([1.0])}),
                       NPIX)


def test_byte_stream_split_pages_decode_to_the_same_arrays(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(50, NPIX)).astype(np.float32)
    col = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), NPIX)
    table = pa.table({"flux": col, "ivar": col})
    pq.write_table(table, tmp_path / "plain.parquet")
    pq.write_table(table, tmp_path / "bss.parquet", use_dictionary=False,
                   use_byte_stream_split=["flux.list.element", "ivar.list.element"])
    for name in ("plain", "bss"):
        batch = pq.read_table(tmp_path / f"{name}.parquet").combine_chunks().to_batches()[0]
        assert np.array_equal(spectra_arrays(batch, NPIX).flux, values)
