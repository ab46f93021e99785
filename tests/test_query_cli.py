"""`specsearch index ...` and `specsearch search ...` end to end on a sharded index."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from specsearch.cli import main
from specsearch.index.synthetic import synthetic_embeddings


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    emb = synthetic_embeddings(root / "emb", n=1500, dim=16)
    assert main(["index", "build", "--embeddings", str(root / "emb"), "--out",
                 str(root / "idx"), "--kind", "hnswlib", "--shards", "2",
                 "--option", "m=12", "--target-recall", "0.95", "--tune-queries", "100"]) == 0
    return root, emb


def test_build_info_and_search_formats(built, capsys):
    root, emb = built
    capsys.readouterr()
    assert main(["index", "info", str(root / "idx"), "--json", "--verify"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["modalities"]["lamost"]["backend"]["m"] == 12
    assert info["modalities"]["xp"]["shards"] == 2

    sid = int(emb.read_vectors("lamost")[0][0])
    assert main(["search", str(root / "idx"), "--source-id", str(sid), "--k", "5"]) == 0
    out = capsys.readouterr().out
    assert "similarity" in out and "feh_pred" in out and len(out.strip().splitlines()) == 7

    assert main(["search", str(root / "idx"), "--source-id", str(sid), "--target-modality",
                 "xp", "--k", "3", "--format", "json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res[0]["modality"] == "xp" and res[0]["neighbours"][0]["source_id"] == sid

    np.save(root / "q.npy", emb.read_vectors("xp")[1][:2])
    assert main(["search", str(root / "idx"), "--embedding", str(root / "q.npy"),
                 "--modality", "xp", "--k", "20", "--offset", "10", "--limit", "5",
                 "--filter", "snr>=10", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 10 and {r["query"] for r in rows} == {"0", "1"}
    assert all(float(r["snr"]) >= 10 and 10 <= int(r["rank"]) < 15 for r in rows)

    assert main(["search", str(root / "idx"), "--source-id", str(sid), "--range", "0.9",
                 "--format", "json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert all(n["similarity"] >= 0.9 for n in res[0]["neighbours"])


def test_update_commands(built, capsys, tmp_path):
    root, emb = built
    import shutil
    idx = tmp_path / "idx"
    shutil.copytree(root / "idx", idx)
    sid = emb.read_vectors("lamost")[0][:3]
    assert main(["index", "delete", str(idx), "--source-id", *map(str, sid)]) == 0
    assert "deleted rows {'lamost': 3" in capsys.readouterr().out
    assert main(["search", str(idx), "--source-id", str(sid[0])]) == 2
    assert "not in" in capsys.readouterr().err
    assert main(["index", "compact", str(idx)]) == 0
    assert main(["index", "add", str(idx), "--embeddings", str(root / "emb")]) == 0
    assert "replacing" in capsys.readouterr().out
    assert main(["index", "info", str(idx), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["modalities"]["lamost"]["count"] == 1500 and info["generation"] == 4


def test_errors_are_clean(tmp_path, capsys):
    assert main(["search", str(tmp_path / "none"), "--source-id", "1"]) == 2
    assert "no index manifest" in capsys.readouterr().err
    assert main(["index", "build", "--embeddings", str(tmp_path / "none"), "--out",
                 str(tmp_path / "x")]) == 2
