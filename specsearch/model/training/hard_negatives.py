"""Batches of look-alike stars: hard negatives for the contrastive terms.

With stars drawn at random, a batch of 256 holds few stars alike enough to be confused, so
the cross-modal and same-star objectives learn "what kind of star" and stop short of "which
star". Here part of each batch is made of *groups*: a random star and its nearest
neighbours in standardised label space (Teff, logg, [Fe/H], [alpha/Fe], E(B-V)), distinct
stars only. Each term then has to tell a star from its look-alikes, as a search among
millions must. The rest of the batch stays random, so the global layout is still learnt.
"""

from __future__ import annotations

import numpy as np

GROUP_LABELS = ("teff", "logg", "feh", "alpha_fe", "ebv")
"""Labels that define look-alikes (those the model has); standardised by the heads' std."""


def label_neighbours(labels: np.ndarray, label_names: tuple[str, ...] | list[str],
                     label_std: np.ndarray, positions: np.ndarray, source_id: np.ndarray,
                     k: int) -> np.ndarray:
    """(len(positions), k) the cache positions of each position's ``k`` nearest other
    *stars* (same-star rows skipped) in standardised label space; missing labels count as
    the mean. ``labels``/``source_id`` are indexed by cache position."""
    from scipy.spatial import cKDTree

    cols = [i for i, n in enumerate(label_names) if n in GROUP_LABELS]
    positions = np.asarray(positions, np.int64)
    if not cols or positions.size <= k:
        raise ValueError(f"look-alike groups need the labels {GROUP_LABELS} (have "
                         f"{list(label_names)}) and more than {k} stars")
    z = labels[positions][:, cols].astype(np.float64) / np.asarray(label_std)[cols]
    z = np.where(np.isfinite(z), z, np.nanmean(z, axis=0))
    # ask for extra neighbours: the star's own and its neighbours' other visits (repeat
    # visits share the labels) take places in the list
    _, nn = cKDTree(z).query(z, k=min(positions.size, 2 * k + 6))
    sid = source_id[positions]
    out = np.empty((positions.size, k), np.int64)
    for i in range(positions.size):
        cand = nn[i][sid[nn[i]] != sid[i]]
        _, first = np.unique(sid[cand], return_index=True)
        cand = cand[np.sort(first)][:k]
        if cand.size < k:                       # many repeats: pad with the farthest found
            cand = np.r_[cand, np.full(k - cand.size, cand[-1] if cand.size else nn[i][-1])]
        out[i] = positions[cand]
    return out


def sample_batch(rng: np.random.Generator, train_pos: np.ndarray, neighbours: np.ndarray,
                 source_id: np.ndarray, batch: int, fraction: float, group: int
                 ) -> np.ndarray:
    """Sorted cache positions of one batch: ``fraction`` of it in groups of ``group``
    look-alikes (a random star + its ``group - 1`` neighbours, ``neighbours`` aligned with
    ``train_pos``), the rest random; one row per star."""
    n_groups = int(round(fraction * batch)) // group
    seeds = rng.integers(0, train_pos.size, n_groups)
    parts = [np.r_[train_pos[s], neighbours[s, :group - 1]] for s in seeds]
    picked = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    _, first = np.unique(source_id[picked], return_index=True)
    picked = picked[first]
    for _ in range(8):                          # top up with random distinct stars
        if picked.size >= batch:
            break
        extra = train_pos[rng.integers(0, train_pos.size, batch - picked.size)]
        both = np.r_[picked, extra]
        _, first = np.unique(source_id[both], return_index=True)
        picked = both[np.sort(first)]           # the groups come first and stay
    return np.sort(picked[:batch])
