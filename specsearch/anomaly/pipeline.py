"""The end-to-end run behind ``specsearch anomalies``: score, screen, write the lists.

Input is an index directory or an embeddings dataset (:func:`specsearch.rows.load_source`;
for embeddings an in-memory FAISS index is built). The catalog, needed only for the
artefact screening, is found from the dataset's provenance or given explicitly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from specsearch.anomaly.artefacts import ArtefactConfig
from specsearch.anomaly.candidates import CandidateConfig, candidate_list
from specsearch.anomaly.defaults import find_choice
from specsearch.anomaly.scoring import ModalityScores, ScoreConfig, score_tables
from specsearch.anomaly.screening import ArtefactFlags, catalog_features, screen
from specsearch.rows import EmbeddingTable, load_source, row_masks, write_table

log = logging.getLogger(__name__)


def screen_tables(catalog: Path, tables: dict[str, EmbeddingTable], *,
                  config: ArtefactConfig | None = None,
                  scores: dict[str, ModalityScores] | None = None
                  ) -> dict[str, ArtefactFlags]:
    """Artefact flags for the spectra of ``tables`` (streamed from ``catalog``); with
    ``scores``, each star's relative features are judged against its embedding
    neighbours (see :func:`specsearch.anomaly.screening.screen`)."""
    from specsearch.io.catalog import open_catalog

    cat = open_catalog(catalog)
    feats = {}
    for m, t in tables.items():
        if m in cat.modalities:
            feats[m] = catalog_features(catalog, m, config=config,
                                        spectrum_ids=set(t.spectrum_id.astype(str)))
    if "lamost" in tables and "xp" in cat.modalities and "xp" not in feats:
        feats["xp"] = catalog_features(catalog, "xp", config=config)
    out = {}
    for m, f in feats.items():
        if m not in tables:
            continue
        teff = None
        t = tables[m]
        if t.has("teff_pred"):
            lookup = dict(zip(t.spectrum_id.astype(str), t.column("teff_pred")))
            teff = np.asarray([lookup.get(s, np.nan) for s in f.spectrum_id.astype(str)])
        xp_colour = None
        if m == "lamost" and "xp" in feats:
            xf = feats["xp"]
            by_source = dict(zip(xf.source_id.tolist(), xf.features["colour"]))
            xp_colour = np.asarray([by_source.get(s, np.nan) for s in f.source_id.tolist()])
        neighbours = None
        if scores is not None and m in scores:
            neighbours = _neighbours_in(f, t, scores[m].knn.rows)
        out[m] = screen(f, config=config, teff_pred=teff, xp_colour=xp_colour,
                        neighbours=neighbours)
    return out


def _neighbours_in(features, table: EmbeddingTable, rows: np.ndarray) -> np.ndarray:
    """Neighbour rows of ``table`` (row-aligned with it) re-expressed as rows of the
    feature table (which follows the catalog's order); -1 where a neighbour or the row
    itself was not screened."""
    feat_pos = dict(zip(features.spectrum_id.astype(str), range(len(features))))
    table_to_feat = np.asarray([feat_pos.get(s, -1) for s in table.spectrum_id.astype(str)],
                               dtype=np.int64)
    mapped = np.where(rows >= 0, table_to_feat[np.clip(rows, 0, None)], -1)
    out = np.full((len(features), rows.shape[1]), -1, dtype=np.int64)
    have = table_to_feat >= 0
    out[table_to_feat[have]] = mapped[have]
    return out


@dataclass
class AnomalyRun:
    """What :func:`run_anomalies` did."""

    out: Path
    rows: int
    artefacts_out: Path | None
    artefact_rows: int
    n_scored: dict[str, int]
    seconds_scoring: float
    seconds_screening: float
    screened: bool
    top_rows: list[dict[str, Any]]


def run_anomalies(source: str | Path, *, out: str | Path, top: int = 100,
                  modalities: Sequence[str] | None = None,
                  filters: Sequence[str] | None = None, include_artefacts: bool = False,
                  artefacts_out: str | Path | None = None, catalog: str | Path | None = None,
                  embeddings: str | Path | None = None, score_config: ScoreConfig | None = None,
                  n_neighbours: int = 5, fmt: str | None = None,
                  verify: bool = True, model_dir: str | Path | None = None) -> AnomalyRun:
    """Score every object, screen artefacts, write the ranked candidate list(s).

    Scoring fields left unset in ``score_config`` come from the scoring choice stored
    beside the model (``model_dir``, default: the shipped model) when it was made for the
    model of these embeddings (:mod:`specsearch.anomaly.defaults`), else from the library.
    """
    loaded = load_source(source, modalities, embeddings=embeddings, verify=verify)
    choice = find_choice(loaded.provenance.get("model_hash", ""), model_dir)
    config = (score_config or ScoreConfig()).resolved(choice)
    t0 = time.perf_counter()
    scores: dict[str, ModalityScores] = score_tables(loaded.tables, config=config,
                                                     searchers=loaded.searchers)
    t_score = time.perf_counter() - t0
    t0 = time.perf_counter()
    cat = loaded.catalog(catalog)
    flags = screen_tables(cat, loaded.tables, scores=scores) if cat is not None else {}
    if cat is None:
        log.warning("no catalog found for %s: artefact flags not computed (pass --catalog)",
                    source)
    t_screen = time.perf_counter() - t0
    masks = row_masks(loaded.tables, filters)
    kind = "all" if include_artefacts else "astrophysical"
    meta = {"model_hash": loaded.provenance.get("model_hash", ""), "source": str(source),
            "scoring": f"{config.combine} {config.residual_reference} "
                       f"{'+'.join(config.components)} ({'model' if choice else 'library'})",
            "list": kind, "filters": "; ".join(filters or []) or "none",
            "screened": cat is not None}
    table = candidate_list(scores, flags, config=CandidateConfig(
        top=top, kind=kind, n_neighbours=n_neighbours), row_masks=masks)
    out = write_table(table, out, fmt=fmt, meta=meta)
    art_path, art_rows = None, 0
    if artefacts_out is not None:
        art = candidate_list(scores, flags, config=CandidateConfig(
            top=top, kind="artefacts", n_neighbours=n_neighbours), row_masks=masks)
        art_path = write_table(art, artefacts_out, meta={**meta, "list": "artefacts"})
        art_rows = art.num_rows
    show = [c for c in ("rank", "source_id", "modality", "anomaly_score", "anomaly_driver",
                        "artefact_reasons") if c in table.column_names]
    return AnomalyRun(out=out, rows=table.num_rows, artefacts_out=art_path,
                      artefact_rows=art_rows,
                      n_scored={m: len(t) for m, t in loaded.tables.items()},
                      seconds_scoring=t_score, seconds_screening=t_screen,
                      screened=cat is not None,
                      top_rows=table.select(show).slice(0, 10).to_pylist())
