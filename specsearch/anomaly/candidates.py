"""Ranked, explained candidate lists: the astrophysical list and the artefact list.

A candidate row holds what an astronomer needs to judge it without opening anything else:
the ids, the combined score with every component and the one that drove it, the artefact
flags with their reasons, the nearest *normal* neighbours (what the object would look like
if it were ordinary), the heads' parameter predictions with uncertainties, and the metadata
(position, S/N, magnitude and, on synthetic data, the truth).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from specsearch.anomaly.scoring import ModalityScores
from specsearch.anomaly.screening import ArtefactFlags
from specsearch.errors import ConfigError

LIST_KINDS = ("astrophysical", "artefacts", "all")


@dataclass(frozen=True, kw_only=True)
class CandidateConfig:
    """How candidate lists are cut.

    Attributes:
        top: rows in the list.
        kind: ``astrophysical`` (artefact-flagged objects removed), ``artefacts`` (only
            flagged objects, ranked by their anomaly score) or ``all``.
        n_neighbours: nearest normal neighbours reported per candidate.
        normal_z: a neighbour counts as *normal* when its anomaly score is below this and it
            has no artefact flag.
        dedupe_sources: with several modalities, keep one row per star (the higher score).
        promote_out_of_domain: spectra the model's domain check flags (``out_of_domain``
            rows: its reconstruction misses them, a star unlike any it was trained on or a
            spectrum too noisy to read) head the list, driver ``out_of_domain``, whatever
            their embedding-space score: an object the model cannot redraw is an outlier
            by its own account, while near-neighbour scores can place it among ordinary
            stars (real XP M8-L1 dwarfs embed among K dwarfs). Too-noisy spectra carry the
            low-S/N artefact flag, so the astrophysical list screens them out.
    """

    top: int = 100
    kind: str = "astrophysical"
    n_neighbours: int = 5
    normal_z: float = 3.0
    dedupe_sources: bool = True
    promote_out_of_domain: bool = True

    def __post_init__(self) -> None:
        if self.kind not in LIST_KINDS:
            raise ConfigError(f"list kind must be one of {LIST_KINDS}, got {self.kind!r}")
        if self.top < 1 or self.n_neighbours < 0:
            raise ConfigError(f"need top >= 1 and n_neighbours >= 0, got {self.top}, "
                              f"{self.n_neighbours}")


def align_flags(scores: ModalityScores, flags: ArtefactFlags | None) -> pa.Table | None:
    """The artefact table's rows in the order of ``scores`` (joined on spectrum_id);
    rows without a screened spectrum get nulls."""
    if flags is None:
        return None
    table = flags.to_arrow()
    ids = table.column("spectrum_id").to_numpy(zero_copy_only=False).astype(str)
    lookup = {s: i for i, s in enumerate(ids)}
    want = scores.table.spectrum_id.astype(str)
    take = pa.array([lookup.get(s) for s in want], pa.int64())
    return table.drop_columns(["spectrum_id", "source_id"]).take(take)


def normal_neighbours(scores: ModalityScores, rows: np.ndarray, *, n: int,
                      normal_z: float, artefact: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(source_id (m, n) int64, similarity (m, n) float32) of the ``n`` nearest normal
    neighbours of each row in ``rows`` (-1 / NaN padding).

    The stored k neighbours are used first; a candidate with too few normal ones among them
    gets a wider search (10 n) through the same searcher.
    """
    m = rows.size
    out_id = np.full((m, n), -1, np.int64)
    out_sim = np.full((m, n), np.nan, np.float32)
    if n == 0 or m == 0:
        return out_id, out_sim
    is_normal = np.isfinite(scores.score) & (scores.score < normal_z)
    if artefact is not None:
        is_normal &= ~artefact
    sid = scores.table.source_id

    def pick(cand: np.ndarray, sims: np.ndarray, me: int) -> tuple[np.ndarray, np.ndarray]:
        ok = (cand >= 0) & (cand != me)
        ok[ok] &= is_normal[cand[ok]] & (sid[cand[ok]] != sid[me])
        return cand[ok][:n], sims[ok][:n]

    need_more = []
    for i, r in enumerate(rows):
        c, s = pick(scores.knn.rows[r], scores.knn.similarity[r], r)
        out_id[i, :c.size], out_sim[i, :c.size] = sid[c], s
        if c.size < n:
            need_more.append(i)
    if need_more:
        q = scores.table.vectors[rows[need_more]]
        sims, cand = scores.searcher.search(q, min(len(scores.table), 10 * n + 10))
        for j, i in enumerate(need_more):
            c, s = pick(cand[j], sims[j], rows[i])
            out_id[i], out_sim[i] = -1, np.nan
            out_id[i, :c.size], out_sim[i, :c.size] = sid[c], s
    return out_id, out_sim


def _meta_columns(scores: ModalityScores, rows: np.ndarray, skip: set[str]) -> dict:
    meta = scores.table.meta.take(pa.array(rows, pa.int64()))
    return {name: meta.column(name) for name in meta.column_names
            if name not in skip and not pa.types.is_list(meta.column(name).type)
            and not pa.types.is_fixed_size_list(meta.column(name).type)}


def modality_candidates(scores: ModalityScores, flags: ArtefactFlags | None = None, *,
                        config: CandidateConfig | None = None,
                        row_mask: np.ndarray | None = None,
                        partner_flagged: np.ndarray | None = None) -> pa.Table:
    """The top ``config.top`` candidates of one modality as an Arrow table (ranked).

    Args:
        scores: :func:`specsearch.anomaly.scoring.score_modality` output.
        flags: artefact flags of the same spectra (joined on spectrum_id), or None.
        row_mask: (n,) bool, rows allowed (metadata filters); None: all.
        partner_flagged: source_ids whose spectrum in the *other* modality has an artefact
            flag: a row of such a star driven by cross-modal disagreement is an artefact
            (reason ``partner_artefact``), since the disagreement comes from the bad
            partner spectrum.
    """
    config = config or CandidateConfig()
    aligned = align_flags(scores, flags)
    artefact = (aligned.column("artefact_flag").fill_null(False).to_numpy(zero_copy_only=False)
                if aligned is not None else np.zeros(len(scores.table), bool))
    partner_bad = np.zeros(len(scores.table), bool)
    if partner_flagged is not None and len(partner_flagged):
        partner_bad = (scores.driver == "crossmodal") & np.isin(scores.table.source_id,
                                                                partner_flagged)
        artefact = artefact | partner_bad
    order = scores.rank()
    ood = (_out_of_domain(scores)
           if config.promote_out_of_domain and config.kind != "artefacts" else None)
    if ood is not None:
        order = order[np.argsort(~ood[order], kind="stable")]      # flagged rows first
    keep = np.isfinite(scores.score[order]) | (False if ood is None else ood[order])
    if row_mask is not None:
        keep &= np.asarray(row_mask, bool)[order]
    if config.kind == "astrophysical":
        keep &= ~artefact[order]
    elif config.kind == "artefacts":
        keep &= artefact[order]
    rows = order[keep][:config.top]
    base = scores.to_arrow().take(pa.array(rows, pa.int64()))
    cols: dict[str, pa.Array] = {"rank": pa.array(np.arange(1, rows.size + 1), pa.int32())}
    cols.update({name: base.column(name) for name in base.column_names})
    if ood is not None and ood[rows].any():
        drivers = cols["anomaly_driver"].to_pylist()
        cols["anomaly_driver"] = pa.array(
            ["out_of_domain" if f else d for d, f in zip(drivers, ood[rows])], pa.string())
    if aligned is not None:
        sub = aligned.take(pa.array(rows, pa.int64()))
        cols.update({name: sub.column(name) for name in sub.column_names})
    else:
        cols["artefact_flag"] = pa.array(np.zeros(rows.size, bool))
        cols["artefact_reasons"] = pa.array([""] * rows.size, pa.string())
    if partner_bad[rows].any():
        reasons = [r or "" for r in cols["artefact_reasons"].to_pylist()]
        cols["artefact_reasons"] = pa.array(
            [";".join(x for x in (r, "partner_artefact") if x) if bad else r
             for r, bad in zip(reasons, partner_bad[rows])], pa.string())
        cols["artefact_flag"] = pa.array(artefact[rows])
    nb_id, nb_sim = normal_neighbours(scores, rows, n=config.n_neighbours,
                                      normal_z=config.normal_z, artefact=artefact)
    if config.n_neighbours:
        cols["normal_neighbour_source_id"] = pa.FixedSizeListArray.from_arrays(
            pa.array(nb_id.ravel(), pa.int64()), config.n_neighbours)
        cols["normal_neighbour_similarity"] = pa.FixedSizeListArray.from_arrays(
            pa.array(nb_sim.ravel(), pa.float32()), config.n_neighbours)
    skip = set(cols) | {"embedding"}
    cols.update(_meta_columns(scores, rows, skip))
    return pa.table(cols)


def _out_of_domain(scores: ModalityScores) -> np.ndarray | None:
    """(n,) bool ``out_of_domain`` of the scored rows, or None without that column."""
    t = scores.table
    if not t.has("out_of_domain"):
        return None
    col = t.meta.column("out_of_domain")
    if not pa.types.is_boolean(col.type):
        raise ConfigError(f"{t.modality}: column out_of_domain must be boolean, got {col.type}")
    return np.asarray(col.fill_null(False).to_numpy(zero_copy_only=False), bool)


def _flagged_sources(flags: ArtefactFlags) -> np.ndarray:
    return np.unique(flags.table.source_id[flags.any])


def candidate_list(scores: Mapping[str, ModalityScores],
                   flags: Mapping[str, ArtefactFlags] | None = None, *,
                   config: CandidateConfig | None = None,
                   row_masks: Mapping[str, np.ndarray] | None = None) -> pa.Table:
    """Candidates over one or several modalities, merged by score (one row per star when
    ``config.dedupe_sources``), re-ranked from 1."""
    config = config or CandidateConfig()
    flagged = {m: _flagged_sources(f) for m, f in (flags or {}).items()}
    parts = []
    for m, s in scores.items():
        others = [v for k, v in flagged.items() if k != m]
        parts.append(modality_candidates(
            s, (flags or {}).get(m), config=config, row_mask=(row_masks or {}).get(m),
            partner_flagged=np.concatenate(others) if others else None))
    if not parts:
        raise ConfigError("no modality to list candidates from")
    table = pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 \
        else parts[0]
    score = table.column("anomaly_score").to_numpy(zero_copy_only=False)
    score = np.where(np.isfinite(score), score, -np.inf)
    first = np.zeros(score.size, bool)             # promoted out-of-domain rows lead
    if config.promote_out_of_domain:
        first = np.asarray(pc.equal(table.column("anomaly_driver"), "out_of_domain")
                           .fill_null(False).to_numpy(zero_copy_only=False), bool)
    order = np.lexsort((np.arange(score.size), -score, ~first))
    if config.dedupe_sources and len(parts) > 1:
        sid = table.column("source_id").to_numpy()[order]
        _, first = np.unique(sid, return_index=True)
        order = order[np.sort(first)]
    order = order[:config.top]
    table = table.take(pa.array(order, pa.int64()))
    return table.set_column(0, "rank", pa.array(np.arange(1, table.num_rows + 1), pa.int32()))
