"""All-or-nothing replacement of an index directory.

An index directory is complete or absent, never half-written: every build or update writes a
fresh directory next to the target and swaps it in (:class:`AtomicDirectory`); every reader
calls :func:`recover` first. Unchanged files of an update are hard-linked from the old
directory (:func:`link_or_copy`). The implementation is the project's one home for
filesystem helpers, :mod:`specsearch.fsutil`; this module names what the index uses.
"""

from __future__ import annotations

from specsearch.fsutil import (
    AtomicDirectory,
    SimulatedCrash,
    clean_stale,
    crash_point,
    fsync_dir,
    fsync_tree,
    link_or_copy,
    recover,
)

__all__ = ["AtomicDirectory", "SimulatedCrash", "clean_stale", "crash_point", "fsync_dir",
           "fsync_tree", "link_or_copy", "recover"]
