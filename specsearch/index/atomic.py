"""All-or-nothing replacement of an index directory.

An index directory is complete or absent, never half-written: every build or update writes a
fresh directory next to the target (``.NAME.tmp-<pid>-<rand>``), fsyncs every file and the
directory entries, and then swaps it in. On Linux the swap is one ``renameat2(...,
RENAME_EXCHANGE)`` call, atomic even when the target exists; where that is unavailable, the
old directory is renamed aside first and :func:`recover` (called by every reader) puts it
back if a crash hits between the two renames.

Unchanged files of an update are hard-linked from the old directory instead of copied (we
never modify a file in place, so sharing inodes is safe, and readers that memory-mapped the
old files keep valid mappings after the swap).

``crash_at`` hooks let tests stop a build at a named point exactly as a crash would: the
exception propagates and nothing is cleaned up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import uuid
from pathlib import Path

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class SimulatedCrash(RuntimeError):
    """Raised at a ``crash_at`` point; deliberately not a SpecsearchError (a crash is not an
    error the CLI should explain)."""


def crash_point(name: str, crash_at: str | None) -> None:
    """Raise :class:`SimulatedCrash` if ``crash_at`` names this point (test hook)."""
    if crash_at is not None and crash_at == name:
        raise SimulatedCrash(f"simulated crash at {name!r}")


def fsync_tree(root: Path) -> None:
    """fsync every regular file under ``root``, then every directory (children first)."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: filesystem/kernel cannot exchange
        return False
    raise OSError(err, f"renameat2 exchange of {a} and {b} failed: {os.strerror(err)}")


def _aside_name(target: Path) -> Path:
    return target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def recover(target: Path) -> None:
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


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (same filesystem), else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
