"""Filesystem helpers shared by every package: atomic files and directories, fsync,
gzip-aware reading, UTC timestamps.

One policy for durability: a file or directory written here is fsynced before and after it
is renamed into place, and a real I/O error while doing so (EIO, ENOSPC...) is raised. Only
platforms and filesystems that cannot fsync a directory at all (Windows, some network
filesystems: EINVAL, ENOTSUP, or a directory that cannot be opened) are skipped silently.

Atomic files are created with ``os.open(..., 0o666)`` so the kernel applies the process
umask as a plain ``open()`` would; nothing here reads or changes the umask (``os.umask``
is process-wide and not thread-safe).

Atomic directories (:class:`AtomicDirectory`) are written beside the target and swapped in
with one ``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere the old directory is renamed
aside first and :func:`recover` puts it back if a crash hits between the two renames.
``crash_at`` hooks let tests stop a writer at a named point exactly as a crash would.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as _dt
import errno
import gzip
import io
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

GZIP_MAGIC = b"\x1f\x8b"

_NO_DIR_FSYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}
"""fsync errors that mean "this filesystem cannot sync a directory", not lost data."""
_NO_DIR_OPEN = {errno.EACCES, errno.EPERM, errno.EISDIR}
"""os.open errors on a directory where the platform cannot open one (Windows)."""


# --------------------------------------------------------------------------- timestamps

def now_iso() -> str:
    """The current UTC time as ISO 8601 to the second, e.g. ``2026-11-25T14:03:07+00:00``."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- fsync

def fsync_file(path: str | Path) -> None:
    """Flush a file's data and metadata to disk (raises OSError on failure)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so that renames and new entries in it survive a crash.

    Skipped where the platform or filesystem cannot sync a directory; other errors raise.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        if exc.errno in _NO_DIR_OPEN:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_FSYNC:
            raise
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every regular file under ``root``, then every directory (children first)."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                fsync_file(full)
        fsync_dir(dirpath)


# --------------------------------------------------------------------------- atomic files

def _create_temp(folder: Path, stem: str, suffix: str) -> Path:
    """A new empty file ``.STEM.<random>SUFFIX`` in ``folder``, mode 0o666 minus the umask."""
    while True:
        tmp = folder / f".{stem}.{uuid.uuid4().hex[:12]}{suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}(?P<suffix>\.tmp)$")


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the ``.NAME.<random>.tmp`` files that :func:`atomic_path` leaves behind when a
    process is killed mid-write (never read, but they hold disk). Call it only where this
    process owns ``folder`` (a resumable job's output folder). Returns what was removed."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and TEMP_NAME.match(p.name):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path in ``path``'s folder; on success fsync it and rename it to ``path``.

    Whatever the body writes to the temp path appears at ``path`` all at once, or not at all:
    on an exception the temp file is removed; after a crash it is left as
    ``.NAME.<random>.tmp`` and never read. ``suffix`` ends the temp name (for writers that
    look at it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path.parent, path.name, suffix)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(path: str | Path, obj: Any, *, sort_keys: bool = True) -> Path:
    """Write ``obj`` as indented JSON (newline-terminated), atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


# --------------------------------------------------------------------------- reading

def is_gzip(path: str | Path) -> bool:
    """True if the file's content starts with the gzip magic bytes (whatever its suffix).

    Raises OSError if the file cannot be opened.
    """
    with open(path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC


def open_maybe_gzip(path: str | Path, mode: str = "rb", *, encoding: str | None = None,
                    errors: str | None = None) -> IO[Any]:
    """Open a file for reading, gunzipping it when its content is gzip (by magic bytes,
    not by suffix). ``mode`` is ``"rb"`` or ``"rt"``; ``encoding`` and ``errors`` apply to
    text mode (as in :func:`open`)."""
    if mode not in ("rb", "rt"):
        raise ValueError(f"open_maybe_gzip reads only: mode must be 'rb' or 'rt', not {mode!r}")
    raw: IO[bytes] = gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")
    if mode == "rb":
        return raw
    return io.TextIOWrapper(raw, encoding=encoding, errors=errors)


def read_head(path: str | Path, nbytes: int) -> bytes:
    """The first ``nbytes`` of the file's (gunzipped) content; raises OSError/EOFError
    (and ``zlib.error`` on a corrupt gzip stream).

    A plain file is read with a buffer no larger than the file (``read(n)`` allocates ``n``
    bytes up front), so a large ``nbytes`` used as a cap costs nothing on a small file.
    """
    with open_maybe_gzip(path, "rb") as fh:
        if isinstance(fh, io.BufferedReader):
            st = os.fstat(fh.fileno())
            if stat.S_ISREG(st.st_mode):
                nbytes = min(nbytes, st.st_size)
        return fh.read(nbytes)


# --------------------------------------------------------------------------- atomic dirs

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class SimulatedCrash(RuntimeError):
    """Raised at a ``crash_at`` point; deliberately not a SpecsearchError (a crash is not an
    error the CLI should explain)."""


def crash_point(name: str, crash_at: str | None) -> None:
    """Raise :class:`SimulatedCrash` if ``crash_at`` names this point (test hook)."""
    if crash_at is not None and crash_at == name:
        raise SimulatedCrash(f"simulated crash at {name!r}")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False if unsupported."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # cannot exchange here
        return False
    raise OSError(err, f"renameat2 exchange of {a} and {b} failed: {os.strerror(err)}")


def _aside_name(target: Path) -> Path:
    return target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def recover(target: str | Path) -> None:
    """Undo an interrupted two-rename swap: put the renamed-aside old directory back."""
    target = Path(target)
    if target.exists() or not target.parent.is_dir():
        return
    olds = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.rename(olds[-1], target)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(target: Path) -> None:
    """Remove temp/aside directories left by crashed writers of ``target`` (dead pids only)."""
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for path in target.parent.glob(pattern):
            try:
                pid = int(path.name.rsplit("-", 2)[-2])
            except (ValueError, IndexError):
                continue
            if not _pid_alive(pid) or pid == os.getpid() and pattern.endswith("old-*"):
                shutil.rmtree(path, ignore_errors=True)


class AtomicDirectory:
    """Write a directory beside ``target`` and swap it in on :meth:`commit`.

    Usage::

        with AtomicDirectory(out) as tmp:
            ... write files under tmp.path ...
            tmp.commit()

    Leaving the block without ``commit()`` (an exception) removes the temp directory, except
    for :class:`SimulatedCrash`, which leaves it behind as a real crash would.
    """

    def __init__(self, target: str | Path, *, crash_at: str | None = None) -> None:
        self.target = Path(target).absolute()
        self.crash_at = crash_at
        self.path = self.target.parent / (
            f".{self.target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.committed = False

    def __enter__(self) -> "AtomicDirectory":
        self.target.parent.mkdir(parents=True, exist_ok=True)
        recover(self.target)
        clean_stale(self.target)
        self.path.mkdir()
        return self

    def checkpoint(self, name: str) -> None:
        crash_point(name, self.crash_at)

    def commit(self) -> None:
        """fsync everything, then make the new directory the target in one step."""
        fsync_tree(self.path)
        self.checkpoint("before_swap")
        if not self.target.exists():
            os.rename(self.path, self.target)
        elif _exchange(self.path, self.target):
            shutil.rmtree(self.path)  # now holds the previous version
        else:
            aside = _aside_name(self.target)
            os.rename(self.target, aside)
            self.checkpoint("between_renames")
            os.rename(self.path, self.target)
            shutil.rmtree(aside)
        fsync_dir(self.target.parent)
        self.committed = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.committed or exc_type is SimulatedCrash:
            return
        shutil.rmtree(self.path, ignore_errors=True)


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hard-link ``src`` to ``dst`` (same filesystem, safe because files are never modified
    in place), else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
