"""Reading an index's files into the page cache (specsearch.index.warm)."""

from __future__ import annotations

import threading

import numpy as np

from specsearch.index import ArrayEmbeddings, BuildOptions, build_index
from specsearch.index.warm import _rank, warm_files, warm_in_background


def _index(tmp_path):
    x = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    src = ArrayEmbeddings({"xp": {"embedding": x, "source_id": np.arange(3000)}},
                          model_hash="test")
    root = tmp_path / "idx"
    build_index(src, root, BuildOptions(kind="flat", shards=2))
    return root


def test_reads_every_file_once_index_files_first(tmp_path):
    root = _index(tmp_path)
    files = [p for p in root.rglob("*") if p.is_file()]
    report = warm_files(root, budget_bytes=10 ** 12)
    assert report.files == len(files) and report.skipped == 0
    assert report.bytes == sum(p.stat().st_size for p in files)
    ranks = sorted(_rank(p) for p in files)
    assert ranks[0] == 0 and any(p.name.endswith(".vectors.npy") for p in files)
    assert _rank(root / "xp" / "shard-00000.faiss") < _rank(root / "xp" / "shard-00000.vectors.npy")


def test_budget_stop_and_missing_directory(tmp_path):
    root = _index(tmp_path)
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    half = warm_files(root, budget_bytes=total // 2)
    assert half.bytes <= total // 2 and half.skipped > 0
    stop = threading.Event()
    stop.set()
    assert warm_files(root, stop=stop).bytes == 0
    assert warm_files(tmp_path / "nothing").files == 0


def test_background_warming_reports_when_done(tmp_path):
    root = _index(tmp_path)
    got = []
    thread, _ = warm_in_background(root, budget_bytes=10 ** 12, on_done=got.append)
    thread.join(timeout=30)
    assert got and got[0].files > 0 and got[0].skipped == 0


def test_a_file_that_vanishes_is_skipped(tmp_path, monkeypatch):
    """Listed, then gone before it is read (an index swapped meanwhile)."""
    import errno

    root = _index(tmp_path)
    victim = next(p for p in root.rglob("*.rows.parquet"))
    real_stat = type(victim).stat
    calls = {"n": 0}

    def stat(self, *a, **kw):
        if self == victim:
            calls["n"] += 1
            if calls["n"] > 1:          # the listing saw it; the read does not
                raise FileNotFoundError(errno.ENOENT, "gone", str(self))
        return real_stat(self, *a, **kw)
    monkeypatch.setattr(type(victim), "stat", stat)
    report = warm_files(root, budget_bytes=10 ** 12)
    assert report.skipped == 1 and report.files > 0
