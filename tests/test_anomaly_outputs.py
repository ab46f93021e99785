"""Candidate lists: every output format opens with astropy and keeps all columns; the
``anomalies`` and ``more-like-this`` commands end to end on a small embeddings dataset."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.table import Table

from specsearch.anomaly import CandidateConfig, candidate_list, score_modality
from specsearch.anomaly.neighbours import FaissNeighbours
from specsearch.query.similar import more_like_this
from specsearch.rows import EmbeddingTable, write_table
from specsearch.rows.writers import flatten_lists
from specsearch.cli import main
from specsearch.errors import ConfigError
from specsearch.preprocess import LAMOST_GRID

DIM = 16


def vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((5, DIM - 1))
    x = np.zeros((n, DIM))
    x[:, :DIM - 1] = centres[rng.integers(0, 5, n)] + 0.2 * rng.standard_normal((n, DIM - 1))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def meta_columns(n: int, modality: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    sid = np.arange(n, dtype=np.int64) + 5000
    return {
        "spectrum_id": [f"{modality}-{s}-é" for s in sid],        # non-ASCII on purpose
        "source_id": sid,
        "ra": rng.uniform(0, 360, n), "dec": rng.uniform(-30, 60, n),
        "snr": rng.uniform(5, 100, n).astype(np.float32),
        "mag_g": np.where(rng.random(n) < 0.1, np.nan, rng.uniform(10, 17, n)),
        "teff_pred": rng.uniform(4000, 7000, n).astype(np.float32),
        "teff_err": np.full(n, 80.0, np.float32),
        "feh_pred": rng.normal(-0.3, 0.4, n).astype(np.float32),
        "feh_err": np.full(n, 0.1, np.float32),
        "class_pred": rng.choice(["normal", "carbon"], n),
        "recon_residual": rng.lognormal(0, 0.1, n).astype(np.float32),
        "population": rng.choice(["normal", "binary"], n),
        "is_artefact": rng.random(n) < 0.05,
    }


@pytest.fixture(scope="module")
def candidates() -> pa.Table:
    n = 800
    cols = meta_columns(n, "lamost", 1)
    meta = pa.table({k: pa.array(v) for k, v in cols.items()})
    meta = meta.append_column("nullable_int", pa.array([None if i % 3 else i
                                                        for i in range(n)], pa.int64()))
    table = EmbeddingTable("lamost", vectors(n, 2), meta, ("teff", "feh"), "h")
    return candidate_list({"lamost": score_modality(table)},
                          config=CandidateConfig(top=25, n_neighbours=4))


def test_candidate_rows_carry_everything(candidates):
    names = set(candidates.column_names)
    for col in ("rank", "source_id", "spectrum_id", "anomaly_score", "anomaly_driver",
                "z_knn", "z_lof", "z_recon", "artefact_flag", "artefact_reasons",
                "normal_neighbour_source_id", "normal_neighbour_similarity", "teff_pred",
                "feh_err", "ra", "dec", "mag_g", "population"):
        assert col in names, col
    score = candidates.column("anomaly_score").to_numpy()
    assert np.all(np.diff(score) <= 0)
    nb = np.stack(candidates.column("normal_neighbour_source_id").to_numpy(
        zero_copy_only=False))
    assert (nb > 0).all()


@pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyUserWarning")
@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".vot", ".fits"])
def test_every_format_opens_with_astropy_and_keeps_all_columns(candidates, tmp_path, suffix):
    path = write_table(candidates, tmp_path / f"cand{suffix}", meta={"model_hash": "h",
                                                                     "k": 20})
    got = Table.read(path, format="parquet") if suffix == ".parquet" else Table.read(path)
    expected = (flatten_lists(candidates).column_names if suffix == ".csv"
                else candidates.column_names)
    assert got.colnames == expected
    assert len(got) == candidates.num_rows
    np.testing.assert_array_equal(np.asarray(got["source_id"]),
                                  candidates.column("source_id").to_numpy())
    np.testing.assert_allclose(np.asarray(got["anomaly_score"], float),
                               candidates.column("anomaly_score").to_numpy(), rtol=1e-6)
    assert str(got["anomaly_driver"][0]) == candidates.column("anomaly_driver")[0].as_py()
    if suffix in (".vot", ".fits", ".parquet"):
        assert np.asarray(got["normal_neighbour_source_id"]).shape == (candidates.num_rows, 4)
    else:
        assert "normal_neighbour_source_id_4" in got.colnames
    if suffix in (".vot", ".fits"):
        # Null integers survive as masked values; the spectrum id keeps its text.
        nulls = candidates.column("nullable_int").is_null().to_numpy(zero_copy_only=False)
        assert np.array_equal(np.ma.getmaskarray(got["nullable_int"]), nulls)
        assert str(got["spectrum_id"][0]).startswith("lamost-")
    assert not list(tmp_path.glob(".cand*")), "temporary file left behind"


def test_unknown_output_suffix_is_a_clear_error(candidates, tmp_path):
    with pytest.raises(ConfigError, match="suffix"):
        write_table(candidates, tmp_path / "cand.xlsx")


def test_more_like_this_centroid_and_union():
    x = vectors(1000, 3)
    meta = pa.table({k: pa.array(v) for k, v in meta_columns(1000, "lamost", 4).items()})
    table = EmbeddingTable("lamost", x, meta, ("teff",), "h")
    searcher = FaissNeighbours(x)
    ex_rows = [10, 20]
    examples = x[ex_rows]
    sid = table.source_id
    cen = more_like_this(table, searcher, examples, k=15, mode="centroid",
                         exclude_source_ids=sid[ex_rows])
    c = examples.mean(0) / np.linalg.norm(examples.mean(0))
    truth = [r for r in np.argsort(-(x @ c)) if r not in ex_rows][:15]
    assert cen.column("source_id").to_pylist() == list(sid[truth])
    uni = more_like_this(table, searcher, examples, k=15, mode="union",
                         exclude_source_ids=sid[ex_rows])
    best = np.max(x @ examples.T, axis=1)
    truth = [r for r in np.argsort(-best, kind="stable") if r not in ex_rows][:15]
    assert set(uni.column("source_id").to_pylist()) == set(sid[truth])
    assert set(uni.column("matched_example").to_pylist()) <= {0, 1}


def write_dataset(tmp_path, n: int = 600):
    """A tiny catalog + embeddings dataset (LAMOST and XP) with one odd star."""
    from specsearch.io.catalog import CatalogWriter
    from specsearch.io.embeddings import EmbeddingsWriter

    cat, emb = tmp_path / "cat", tmp_path / "emb"
    rng = np.random.default_rng(5)
    wave = LAMOST_GRID.wavelength
    flux = np.tile((wave / 5500.0) ** -1.0, (n, 1)) * (1 + 0.01 * rng.standard_normal(
        (n, wave.size)))
    ivar = np.full(flux.shape, 1.0 / 0.01 ** 2)
    flux[7, 1000:1400] *= 0.01                                   # a dead segment
    x = vectors(n, 6)
    x[3] = 0.0
    x[3, DIM - 1] = 1.0                                          # the odd star
    for modality in ("lamost", "xp"):
        cols = meta_columns(n, modality, 7)
        cols["spectrum_id"] = [s.replace("-é", "") for s in cols["spectrum_id"]]
        with EmbeddingsWriter(emb, modality, model_hash="h", embedding_dim=DIM,
                              label_names=["teff", "feh"],
                              extra_manifest={"catalog": str(cat)}) as w:
            w.write({**cols, "modality": [modality] * n, "embedding": x})
    with CatalogWriter(cat, "lamost") as w:
        cols = meta_columns(n, "lamost", 7)
        w.write({"spectrum_id": [s.replace("-é", "") for s in cols["spectrum_id"]],
                 "source_id": cols["source_id"], "flux": flux.astype(np.float32),
                 "ivar": ivar.astype(np.float32), "snr": cols["snr"]})
    return cat, emb


def test_anomalies_command_end_to_end(tmp_path, capsys):
    cat, emb = write_dataset(tmp_path)
    out, art = tmp_path / "top.fits", tmp_path / "art.csv"
    assert main(["anomalies", str(emb), "--top", "20", "--out", str(out), "--modality",
                 "lamost", "--artefacts-out", str(art)]) == 0
    top = Table.read(out)
    assert top["source_id"][0] == 5003 and top["rank"][0] == 1
    assert 5007 not in set(top["source_id"])                    # flagged: other list
    arts = Table.read(art)
    assert 5007 in set(arts["source_id"])
    assert "dead_segment" in str(arts[arts["source_id"] == 5007]["artefact_reasons"][0])
    assert "wrote 20 candidates" in capsys.readouterr().out
    # --include-artefacts and a filter
    out2 = tmp_path / "all.parquet"
    assert main(["anomalies", str(emb), "--top", "5", "--out", str(out2),
                 "--include-artefacts", "--filter", "snr>=0"]) == 0
    assert pq.read_table(out2).num_rows == 5
    # only the density components
    out3 = tmp_path / "density.parquet"
    assert main(["anomalies", str(emb), "--top", "10", "--out", str(out3),
                 "--components", "density"]) == 0
    assert set(pq.read_table(out3).column("anomaly_driver").to_pylist()) <= {"knn", "lof"}
    assert main(["anomalies", str(emb), "--top", "10", "--out", str(out3),
                 "--components", "density,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_anomalies_and_more_like_this_on_an_index(tmp_path):
    from specsearch.index import BuildOptions, build_index

    cat, emb = write_dataset(tmp_path)
    idx = tmp_path / "idx"
    build_index(emb, idx, BuildOptions(kind="flat", shards=2, target_recall=None))
    out = tmp_path / "top.vot"
    assert main(["anomalies", str(idx), "--top", "10", "--out", str(out)]) == 0
    top = Table.read(out)
    assert top["source_id"][0] == 5003
    like = tmp_path / "like.csv"
    assert main(["more-like-this", str(idx), "--source-id", "5010", "--source-id", "5011",
                 "--mode", "union", "--k", "7", "--target-modality", "xp",
                 "--out", str(like)]) == 0
    got = Table.read(like)
    assert len(got) == 7 and 5010 not in set(got["source_id"])


def test_a_models_scoring_choice_is_the_default_for_its_embeddings_only(tmp_path):
    from specsearch.anomaly import ScoreConfig
    from specsearch.anomaly.defaults import DEFAULTS_FILE, find_choice, save_choice
    from specsearch.anomaly.pipeline import run_anomalies
    from specsearch.rows import load_source

    cat, emb = write_dataset(tmp_path)
    model_hash = load_source(emb).provenance.get("model_hash", "")
    assert model_hash
    model_dir = tmp_path / "model"
    model_dir.mkdir()

    def drivers_and_scoring(name, **kw):
        out = tmp_path / name
        run_anomalies(emb, out=out, top=30, modalities=["lamost"], model_dir=model_dir, **kw)
        meta = pq.read_schema(out).metadata
        return set(pq.read_table(out).column("anomaly_driver").to_pylist()), \
            meta[b"specsearch.scoring"].decode()

    _, scoring = drivers_and_scoring("library.parquet")       # no choice file: the library's
    assert scoring.startswith("rank_fisher global") and scoring.endswith("(library)")
    save_choice(model_dir / DEFAULTS_FILE, model_hash=model_hash, components=("knn",),
                combine="max", residual_reference="global", source="test")
    drivers, scoring = drivers_and_scoring("model.parquet")
    assert drivers == {"knn"} and scoring == "max global knn (model)"
    # explicit settings win over the model's choice
    drivers, _ = drivers_and_scoring("explicit.parquet",
                                     score_config=ScoreConfig(components=("lof",)))
    assert drivers == {"lof"}
    # a choice made for another model is ignored
    save_choice(model_dir / DEFAULTS_FILE, model_hash="f" * 64, components=("knn",),
                combine="max", residual_reference="global", source="test")
    assert find_choice(model_hash, model_dir) is None
    assert drivers_and_scoring("other.parquet")[1].endswith("(library)")
    # a malformed one is an error that names the file and the field
    (model_dir / DEFAULTS_FILE).write_text(
        '{"kind": "specsearch.anomaly_defaults", "format_version": 1, "model_hash": "x", '
        '"components": ["knn", "vibes"], "combine": "max", "residual_reference": "global"}')
    with pytest.raises(ConfigError, match=f"{DEFAULTS_FILE}.*components"):
        find_choice(model_hash, model_dir)
    (model_dir / DEFAULTS_FILE).write_text("not json")
    with pytest.raises(ConfigError, match="unreadable"):
        find_choice(model_hash, model_dir)


def test_out_of_domain_spectra_head_the_list():
    """Rows the model's domain check flags lead the astrophysical list (driver
    out_of_domain, their own score kept), in each modality and after the merge; not in
    the list with the option off."""
    n = 600
    tables = {}
    for m, seed in (("lamost", 1), ("xp", 3)):
        cols = meta_columns(n, m, seed)
        flags = np.zeros(n, bool)
        flags[[7, 300]] = True                       # ordinary rows in embedding space
        cols["out_of_domain"] = flags
        cols["is_artefact"] = np.zeros(n, bool)
        tables[m] = EmbeddingTable(m, vectors(n, seed + 1), pa.table(cols), ("teff", "feh"),
                                   "h")
    scores = {m: score_modality(t) for m, t in tables.items()}
    for m, s in scores.items():
        assert s.score[[7, 300]].max() < np.sort(s.score)[-20]    # not top-20 by score
    merged = candidate_list(scores, config=CandidateConfig(top=20, n_neighbours=0,
                                                           dedupe_sources=False))
    assert merged.column("anomaly_driver").to_pylist()[:4] == ["out_of_domain"] * 4
    assert sorted(merged.column("source_id").to_pylist()[:4]) == [5007, 5007, 5300, 5300]
    lead = merged.slice(0, 4).column("anomaly_score").to_pylist()
    assert lead == sorted(lead, reverse=True)                      # by score among them
    rest = merged.slice(4).column("anomaly_score").to_pylist()
    assert rest == sorted(rest, reverse=True) and "out_of_domain" not in \
        merged.slice(4).column("anomaly_driver").to_pylist()
    off = candidate_list(scores, config=CandidateConfig(top=20, n_neighbours=0,
                                                        promote_out_of_domain=False))
    assert "out_of_domain" not in off.column("anomaly_driver").to_pylist()
    every = candidate_list(scores, config=CandidateConfig(top=20, kind="all",
                                                          n_neighbours=0))
    assert every.column("anomaly_driver").to_pylist()[0] == "out_of_domain"
