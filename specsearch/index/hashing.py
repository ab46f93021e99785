"""Stable shard assignment by source_id.

A star's rows must land in the same shard on every machine and in every Python process, so
a catalog can be indexed shard by shard on different hosts and updates find the shard that
holds a source. Python's ``hash`` is salted per process for str and is the identity for
small ints (terrible balance for Gaia ids, whose low bits encode HEALPix position), so the
assignment uses splitmix64, a fixed, well-mixed 64-bit finaliser.
"""

from __future__ import annotations

import numpy as np

SHARD_HASH = "splitmix64"
"""Name recorded in manifests; a reader refuses an index that used another function."""

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(values: np.ndarray) -> np.ndarray:
    """splitmix64 of each int64 in ``values`` (bit pattern reinterpreted as uint64)."""
    z = np.asarray(values, dtype=np.int64).view(np.uint64) + _GOLDEN
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def shard_of(source_ids: np.ndarray, n_shards: int) -> np.ndarray:
    """The shard (0..n_shards-1, int64) of each source_id; rows of one star share a shard."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    ids = np.atleast_1d(np.asarray(source_ids, dtype=np.int64))
    return (splitmix64(ids) % np.uint64(n_shards)).astype(np.int64)
