import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from specsearch.errors import CatalogError
from specsearch.io.catalog import CatalogWriter, list_column_to_numpy, open_catalog
from specsearch.io.embeddings import EmbeddingsWriter, open_embeddings


def _rows(n, npix, start=0):
    rng = np.random.default_rng(start)
    return {"spectrum_id": [f"s{i}" for i in range(start, start + n)],
            "source_id": np.arange(start, start + n, dtype=np.int64),
            "flux": rng.random((n, npix), dtype=np.float32),
            "ivar": np.ones((n, npix), np.float32),
            "teff": np.full(n, 5000.0), "population": ["normal"] * n}


def test_write_read_streaming_round_trip(tmp_path):
    rows = _rows(1050, 343)
    with CatalogWriter(tmp_path, "xp", rows_per_file=400) as w:
        w.write(rows)
    cat = open_catalog(tmp_path)
    assert cat.modalities == ["xp"]
    assert len(cat.files("xp")) == 3 and cat.count("xp") == 1050
    flux = np.concatenate([list_column_to_numpy(b.column("flux"))
                           for b in cat.iter_batches("xp", ["flux"], batch_size=100)])
    assert np.array_equal(flux, rows["flux"])
    assert cat.schema("xp").field("population").type == "string"
    assert json.loads((tmp_path / "catalog.json").read_text())["grids"]["xp"]["npix"] == 343
    assert not list(tmp_path.rglob("*.tmp"))


def test_second_writer_appends_new_parts(tmp_path):
    with CatalogWriter(tmp_path, "xp") as w:
        w.write(_rows(10, 343))
    with CatalogWriter(tmp_path, "xp") as w:
        w.write(_rows(5, 343, start=10))
    cat = open_catalog(tmp_path)
    assert cat.count("xp") == 15
    assert sorted(cat.read_column("xp", "source_id").to_pylist()) == list(range(15))


def test_bad_rows_are_refused_with_the_column_named(tmp_path):
    bad = _rows(2, 300)
    with pytest.raises(CatalogError, match="column 'flux'"):
        with CatalogWriter(tmp_path, "xp") as w:
            w.write(bad)
    missing = _rows(2, 343)
    del missing["source_id"]
    with pytest.raises(CatalogError, match="missing required column 'source_id'"):
        CatalogWriter(tmp_path, "xp").write(missing)


def test_open_errors(tmp_path):
    with pytest.raises(CatalogError, match="no such catalog"):
        open_catalog(tmp_path / "nope")
    tmp_path.joinpath("x").mkdir()
    with pytest.raises(CatalogError, match="catalog.json is missing"):
        open_catalog(tmp_path / "x")
    with CatalogWriter(tmp_path / "c", "xp") as w:
        w.write(_rows(3, 343))
    with pytest.raises(CatalogError, match="no 'lamost' data"):
        open_catalog(tmp_path / "c").files("lamost")
    part = open_catalog(tmp_path / "c").files("xp")[0]
    part.write_bytes(b"garbage")
    with pytest.raises(CatalogError, match="unreadable Parquet"):
        list(open_catalog(tmp_path / "c").iter_batches("xp"))


def test_embeddings_refuse_another_model(tmp_path):
    cols = {"spectrum_id": ["a", "b"], "source_id": [1, 2], "modality": ["xp", "xp"],
            "embedding": np.eye(2, 4, dtype=np.float32), "teff_pred": [5000.0, 6000.0],
            "teff_err": [50.0, 60.0]}
    with EmbeddingsWriter(tmp_path, "xp", model_hash="m1", embedding_dim=4,
                          label_names=["teff"], dtype="float16") as w:
        w.write(cols)
    emb = open_embeddings(tmp_path)
    ids, vecs = emb.read_vectors("xp")
    assert ids.tolist() == [1, 2] and np.allclose(vecs, np.eye(2, 4))
    assert pq.read_schema(emb.files("xp")[0]).field("embedding").type.value_type == "halffloat"
    with pytest.raises(CatalogError, match="refusing to add rows of model 'm2'"):
        EmbeddingsWriter(tmp_path, "xp", model_hash="m2", embedding_dim=4)


def test_atomic_files_get_the_usual_mode(tmp_path):
    import os

    from specsearch.fsutil import write_bytes_atomic

    write_bytes_atomic(tmp_path / "a.json", b"{}")
    (tmp_path / "b.json").write_bytes(b"{}")
    assert os.stat(tmp_path / "a.json").st_mode == os.stat(tmp_path / "b.json").st_mode


def test_spectra_are_written_byte_stream_split_and_read_back_exactly(tmp_path):
    import pyarrow as pa

    from specsearch.io.parquet import array_to_fixed_list, write_table_atomic

    flux = np.random.default_rng(0).normal(1.0, 0.1, (50, 40)).astype(np.float32)
    table = pa.table({"source_id": pa.array(np.arange(50)), "flux": array_to_fixed_list(flux),
                      "name": [f"s{i}" for i in range(50)]})
    path = write_table_atomic(table, tmp_path / "x.parquet")
    meta = pq.ParquetFile(path).metadata.row_group(0)
    enc = {meta.column(i).path_in_schema: meta.column(i).encodings
           for i in range(meta.num_columns)}
    assert "BYTE_STREAM_SPLIT" in enc["flux.list.element"]
    assert "RLE_DICTIONARY" not in enc["flux.list.element"]
    assert "RLE_DICTIONARY" in enc["name"]                 # other columns keep dictionaries
    back = pq.read_table(path)
    assert back.schema.equals(table.schema) and back.equals(table)
