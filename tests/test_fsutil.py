"""specsearch.fsutil: atomic files and directories, the fsync error policy, gzip-aware
reading by magic bytes, UTC timestamps."""

from __future__ import annotations

import datetime as dt
import errno
import gzip
import json
import os
import threading

import pytest

from specsearch import fsutil
from specsearch.fsutil import (AtomicDirectory, SimulatedCrash, atomic_path, fsync_dir,
                               fsync_tree, is_gzip, now_iso, open_maybe_gzip, read_head,
                               recover, write_bytes_atomic, write_json_atomic)


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- atomic files

def test_atomic_path_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "table.bin"
    write_bytes_atomic(target, b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half of the sec")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"first"          # old content kept
    assert _leftovers(target.parent) == []          # temp file removed
    with atomic_path(target, suffix=".png") as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".png")
        assert tmp.name.startswith(".table.bin.")
        tmp.write_bytes(b"second")
    assert target.read_bytes() == b"second" and _leftovers(target.parent) == []


def test_file_mode_follows_the_umask_without_touching_it(tmp_path, monkeypatch):
    old = os.umask(0o027)
    try:
        def refuse(*_):
            raise AssertionError("os.umask is process-wide: fsutil must not call it")

        monkeypatch.setattr(os, "umask", refuse)
        path = write_bytes_atomic(tmp_path / "a.txt", b"x")
        monkeypatch.undo()
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640   # 0o666 & ~0o027, as open() would give


def test_concurrent_writers_leave_one_complete_file(tmp_path):
    target = tmp_path / "manifest.json"
    payloads = [{"writer": i, "rows": list(range(2000))} for i in range(8)]
    threads = [threading.Thread(target=write_json_atomic, args=(target, p)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert json.loads(target.read_text()) in payloads
    assert _leftovers(tmp_path) == []


def test_write_json_atomic_format(tmp_path):
    path = write_json_atomic(tmp_path / "m.json", {"b": 1, "a": [1, 2]})
    text = path.read_text()
    assert text.endswith("\n") and text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"a": [1, 2], "b": 1}
    unsorted = write_json_atomic(tmp_path / "u.json", {"b": 1, "a": 2}, sort_keys=False)
    assert unsorted.read_text().index('"b"') < unsorted.read_text().index('"a"')


# --------------------------------------------------------------------------- fsync policy

@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOTSUP, errno.EBADF])
def test_fsync_dir_skips_filesystems_that_cannot(tmp_path, monkeypatch, code):
    def fail(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fail)
    fsync_dir(tmp_path)  # no error


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
def test_fsync_dir_raises_real_io_errors(tmp_path, monkeypatch, code):
    def fail(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError) as info:
        fsync_dir(tmp_path)
    assert info.value.errno == code
    with pytest.raises(OSError):  # the same policy for a file written atomically
        write_bytes_atomic(tmp_path / "x.bin", b"data")
    assert not (tmp_path / "x.bin").exists() and _leftovers(tmp_path) == []


def test_fsync_dir_where_directories_cannot_be_opened(tmp_path, monkeypatch):
    real_open = os.open

    def open_(path, flags, *args):
        if os.path.isdir(path):
            raise PermissionError(errno.EACCES, "directories cannot be opened here")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", open_)
    fsync_dir(tmp_path)
    assert write_bytes_atomic(tmp_path / "y.bin", b"ok").read_bytes() == b"ok"
    with pytest.raises(FileNotFoundError):
        monkeypatch.undo()
        fsync_dir(tmp_path / "missing")


def test_fsync_tree_visits_files_then_directories(tmp_path, monkeypatch):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f.bin").write_bytes(b"1")
    (tmp_path / "g.bin").write_bytes(b"2")
    (tmp_path / "link").symlink_to(tmp_path / "g.bin")
    synced: list[str] = []
    monkeypatch.setattr(fsutil, "fsync_file", lambda p: synced.append(os.path.basename(p)))
    monkeypatch.setattr(fsutil, "fsync_dir", lambda p: synced.append(os.path.basename(p) + "/"))
    fsync_tree(tmp_path)
    assert sorted(synced) == sorted(["f.bin", "b/", "a/", "g.bin", tmp_path.name + "/"])
    assert synced.index("f.bin") < synced.index("b/") < synced.index("a/")
    assert synced[-1] == tmp_path.name + "/"


# --------------------------------------------------------------------------- reading

def test_gzip_is_told_by_content_not_suffix(tmp_path):
    text = "wavelength,flux\n4000,1.0\n"
    hidden = tmp_path / "spectrum.csv"          # gzip content, plain suffix
    hidden.write_bytes(gzip.compress(text.encode()))
    plain = tmp_path / "spectrum.csv.gz"        # plain content, gzip suffix
    plain.write_text(text)
    assert is_gzip(hidden) and not is_gzip(plain)
    for path in (hidden, plain):
        with open_maybe_gzip(path, "rt") as fh:
            assert fh.read() == text
        with open_maybe_gzip(path) as fh:
            assert fh.read() == text.encode()
        assert read_head(path, 10) == text.encode()[:10]
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe end")
    with open_maybe_gzip(tmp_path / "bad.txt", "rt", encoding="utf-8", errors="replace") as fh:
        assert fh.read() == "ok \ufffd\ufffd end"
    with pytest.raises(ValueError, match="mode must be"):
        open_maybe_gzip(plain, "w")
    with pytest.raises(FileNotFoundError):
        is_gzip(tmp_path / "missing.fits")
    (tmp_path / "empty").write_bytes(b"")
    assert not is_gzip(tmp_path / "empty") and read_head(tmp_path / "empty", 4) == b""


def test_now_iso_is_utc_to_the_second():
    stamp = now_iso()
    parsed = dt.datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == dt.timedelta(0) and parsed.microsecond == 0
    assert stamp.endswith("+00:00") and len(stamp) == 25
    assert abs(dt.datetime.now(dt.timezone.utc) - parsed) < dt.timedelta(seconds=5)


# --------------------------------------------------------------------------- atomic dirs

def test_atomic_directory_swaps_in_and_cleans_up(tmp_path):
    target = tmp_path / "index"
    for text in ("v1", "v2"):
        with AtomicDirectory(target) as tmp:
            (tmp.path / "f.txt").write_text(text)
            tmp.commit()
        assert (target / "f.txt").read_text() == text
    with pytest.raises(KeyError):
        with AtomicDirectory(target) as tmp:
            (tmp.path / "f.txt").write_text("v3")
            raise KeyError("failed build")
    assert (target / "f.txt").read_text() == "v2" and _leftovers(tmp_path) == []


def test_crash_between_renames_is_recovered(tmp_path, monkeypatch):
    target = tmp_path / "index"
    with AtomicDirectory(target) as tmp:
        (tmp.path / "f.txt").write_text("old")
        tmp.commit()
    monkeypatch.setattr(fsutil, "_exchange", lambda a, b: False)  # no renameat2 here
    with pytest.raises(SimulatedCrash):
        with AtomicDirectory(target, crash_at="between_renames") as tmp:
            (tmp.path / "f.txt").write_text("new")
            tmp.commit()
    assert not target.exists()                       # the crash left it renamed aside
    recover(target)
    assert (target / "f.txt").read_text() == "old"
    dead = tmp_path / ".index.tmp-2147483646-deadbeef"   # a writer that no longer runs
    dead.mkdir()
    with AtomicDirectory(target) as tmp:
        (tmp.path / "f.txt").write_text("newer")
        tmp.commit()
    assert (target / "f.txt").read_text() == "newer" and not dead.exists()
    # the crashed writer's temp directory is kept while its process lives (a live pid may
    # be a writer still at work); only dead writers' debris is removed
    assert [n.split("-")[0] for n in _leftovers(tmp_path)] == [".index.tmp"]


def test_old_import_paths_are_the_same_objects():
    from specsearch.index import atomic
    from specsearch.io import parquet

    assert atomic.AtomicDirectory is AtomicDirectory and atomic.recover is recover
    assert parquet.atomic_path is atomic_path
    assert parquet.write_json_atomic is write_json_atomic


def test_remove_stale_temps_only_removes_atomic_temps(tmp_path):
    from specsearch.fsutil import atomic_path, remove_stale_temps

    keep = tmp_path / "part-0.parquet"
    keep.write_bytes(b"data")
    (tmp_path / ".hidden.tmp").write_bytes(b"not ours")          # no random part: kept
    try:
        with atomic_path(tmp_path / "part-1.parquet") as tmp:
            tmp.write_bytes(b"half")
            stale = tmp.with_name(tmp.name)                      # as a killed run leaves it
            stale_copy = tmp_path / f".part-2.parquet.{'ab12' * 3}.tmp"
            stale_copy.write_bytes(b"half")
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert not stale.exists()                                    # cleaned on the way out
    removed = remove_stale_temps(tmp_path)
    assert removed == [stale_copy] and not stale_copy.exists()
    assert keep.read_bytes() == b"data" and (tmp_path / ".hidden.tmp").exists()
