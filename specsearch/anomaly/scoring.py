"""Outlier scores for every object: k-NN density, residuals, cross-modal disagreement.

Components (each a raw value, then a robust z-score within S/N bins, see
:mod:`specsearch.anomaly.robust`):

* ``knn``: log cosine distance to the k-th nearest *other* star in the embedding (large for
  an object in an empty part of the space);
* ``lof``: log of that distance over the median k-distance of the object's own neighbours
  (large when an object is far from neighbours that are themselves in a dense region: a
  local outlier even where the space is crowded);
* ``recon``: log of the reconstruction residual (reduced chi of embedding -> own spectrum):
  spectral features the model cannot express;
* ``translation``: log of the translation residual (the spectrum predicted for the other
  instrument, or the round trip, disagrees with the data);
* ``crossmodal``: for stars with both spectra, log(1 - cos) between the star's LAMOST and XP
  embeddings (the two instruments disagree about what the star is).

The combined ``anomaly_score`` is the strongest component (``max``, the default) or their
RMS, and ``anomaly_driver`` names the component that set it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from specsearch.anomaly.neighbours import (FaissNeighbours, KnnResult, NeighbourConfig,
                                           NeighbourSearch, self_knn)
from specsearch.anomaly.robust import (COMBINE_METHODS, combine_scores, local_residual,
                                       robust_z)
from specsearch.anomaly.selfjoin import CellSelfJoin, SelfJoinConfig
from specsearch.rows import EmbeddingTable
from specsearch.errors import ConfigError

COMPONENTS: tuple[str, ...] = ("knn", "lof", "recon", "translation", "crossmodal")
LIBRARY_SCORING: dict[str, object] = {"components": COMPONENTS, "combine": "rank_fisher",
                                      "residual_reference": "global"}
"""What ``components``, ``combine`` and ``residual_reference`` left unset become when the
model has no scoring choice of its own (:mod:`specsearch.anomaly.defaults`)."""


@dataclass(frozen=True, kw_only=True)
class ScoreConfig:
    """How outlier scores are computed.

    Attributes:
        k: neighbours per object for the density components; None (the default) picks
            ``clip(n / 500, 20, 200)`` for a table of n rows. k sets the scale on which
            density is measured: a rare *class* with many more than k members forms its
            own dense clump and looks normal, so k must grow with the catalog (0.2% of n
            finds classes of a few tenths of a percent). Memory ~12 k bytes an object;
            search time grows slowly with k.
        components: which components enter the combined score (all are computed when their
            inputs exist; a missing input, e.g. no residual column, is skipped).
        combine: ``rank_fisher``, ``rank_max``, ``max`` or ``rms``
            (:func:`specsearch.anomaly.robust.combine_scores`); z-score ``max`` lets the
            component with the heaviest tail for normal stars fill the list.
            ``components``, ``combine`` and ``residual_reference`` left None are the
            model's own choice when :func:`specsearch.anomaly.pipeline.run_anomalies` finds
            one (``anomaly_defaults.json`` beside the model, chosen on a synthetic
            calibration survey by ``benchmarks/bench_anomaly.py``: the best variant changes
            from model to model), else :data:`LIBRARY_SCORING` (:meth:`resolved`).
        residual_reference: what the reconstruction and translation residuals are
            compared with: ``global`` (all objects of similar S/N) or ``neighbours``
            (the object's own nearest neighbours in the embedding: a residual shared by
            all stars of a kind, e.g. where the model is simply worse, is then no
            anomaly; only what the object does not share with its look-alikes counts).
        weights: per-component multipliers applied before combining.
        snr_bins: S/N quantile bins for the robust standardisation (0: global).
        neighbour_method: how every object's neighbours are found: ``auto`` (exact
            FAISS flat below ``exact_below`` rows, else ``selfjoin``), ``selfjoin`` (a
            cell-blocked BLAS self-join, :mod:`specsearch.anomaly.selfjoin`, ~98% recall
            of the k nearest, much faster than one query per object),
            ``index`` (one batched query per object through the given index searcher: its
            own recall/speed trade-off) or ``faiss`` (an in-memory FAISS index,
            ``neighbours``; ``kind="flat"`` is exact).
        batch_size: queries per neighbour-search call (``index``/``faiss``).
        neighbours: the in-memory FAISS index of ``faiss``.
        selfjoin: the knobs of ``selfjoin``.
    """

    k: int | None = None
    components: tuple[str, ...] | None = None
    combine: str | None = None
    residual_reference: str | None = None
    weights: Mapping[str, float] = field(default_factory=dict)
    snr_bins: int = 10
    neighbour_method: str = "auto"
    batch_size: int = 8192
    neighbours: NeighbourConfig = field(default_factory=NeighbourConfig)
    selfjoin: SelfJoinConfig = field(default_factory=SelfJoinConfig)

    def __post_init__(self) -> None:
        unknown = set(self.components or COMPONENTS) - set(COMPONENTS)
        if unknown or (self.components is not None and not self.components):
            raise ConfigError(f"unknown score component(s) {sorted(unknown)}; choose from "
                              f"{list(COMPONENTS)}")
        if self.k is not None and self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        if self.combine is not None and self.combine not in COMBINE_METHODS:
            raise ConfigError(f"combine must be one of {COMBINE_METHODS}, got "
                              f"{self.combine!r}")
        if self.residual_reference not in (None, "global", "neighbours"):
            raise ConfigError(f"residual_reference must be 'global' or 'neighbours', got "
                              f"{self.residual_reference!r}")
        if self.neighbour_method not in ("auto", "selfjoin", "index", "faiss"):
            raise ConfigError(f"neighbour_method must be auto, selfjoin, index or faiss; got "
                              f"{self.neighbour_method!r}")

    def resolved(self, choice: Mapping[str, object] | None = None) -> "ScoreConfig":
        """This config with ``components``, ``combine`` and ``residual_reference`` that are
        None taken from ``choice`` (a model's scoring choice), else from
        :data:`LIBRARY_SCORING`; fields set explicitly are kept."""
        fill = {}
        for name, fallback in LIBRARY_SCORING.items():
            if getattr(self, name) is None:
                value = (choice or {}).get(name, fallback)
                fill[name] = tuple(value) if name == "components" else value
        return dataclasses.replace(self, **fill) if fill else self

    def k_for(self, n: int) -> int:
        """The k used for a table of ``n`` rows."""
        if self.k is not None:
            return self.k
        return int(np.clip(n // 500, 20, 200))


@dataclass
class ModalityScores:
    """Scores of every row of one :class:`EmbeddingTable` (row-aligned arrays).

    Attributes:
        table: the rows scored.
        knn: their k nearest other objects (for "nearest normal neighbours").
        raw: component name -> raw value (knn distance, LOF ratio, residuals...).
        z: component name -> robust z-score.
        score: combined anomaly score.
        driver: name of the component that set ``score``.
        searcher: the neighbour search used (reused for more-like-this).
        seconds: wall time of the scoring.
    """

    table: EmbeddingTable
    knn: KnnResult
    raw: dict[str, np.ndarray]
    z: dict[str, np.ndarray]
    score: np.ndarray
    driver: np.ndarray
    searcher: NeighbourSearch
    seconds: float = 0.0

    @property
    def modality(self) -> str:
        return self.table.modality

    def rank(self) -> np.ndarray:
        """Row positions by decreasing score (NaN last; ties broken by row for
        determinism)."""
        s = np.where(np.isfinite(self.score), self.score, -np.inf)
        return np.lexsort((np.arange(s.size), -s))

    def to_arrow(self) -> pa.Table:
        """spectrum_id, source_id, modality, raw components, z-scores, score and driver."""
        cols: dict[str, pa.Array] = {
            "spectrum_id": pa.array(self.table.spectrum_id.astype(str), pa.string()),
            "source_id": pa.array(self.table.source_id, pa.int64()),
            "modality": pa.array([self.modality] * len(self.table), pa.string()),
        }
        names = {"knn": "knn_distance", "lof": "lof_ratio", "recon": "recon_residual",
                 "translation": "translation_residual", "crossmodal": "crossmodal_distance"}
        for comp, values in self.raw.items():
            cols[names[comp]] = pa.array(values.astype(np.float32), pa.float32(),
                                         mask=~np.isfinite(values))
        for comp, values in self.z.items():
            cols[f"z_{comp}"] = pa.array(values.astype(np.float32), pa.float32(),
                                         mask=~np.isfinite(values))
        cols["anomaly_score"] = pa.array(self.score.astype(np.float32), pa.float32(),
                                         mask=~np.isfinite(self.score))
        cols["anomaly_driver"] = pa.array(self.driver.astype(str), pa.string())
        return pa.table(cols)


def _log(x: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(x) & (x > 0), np.log(np.maximum(x, floor)), np.nan)


def group_mean_vectors(source_id: np.ndarray, vectors: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique source_ids, their mean unit vectors): one vector per star from
    several visits."""
    order = np.argsort(source_id, kind="stable")
    sid = source_id[order]
    uniq, start = np.unique(sid, return_index=True)
    sums = np.add.reduceat(vectors[order].astype(np.float64), start, axis=0) \
        if len(sid) else np.zeros((0, vectors.shape[1]))
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return uniq, (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def crossmodal_distance(table: EmbeddingTable, other: EmbeddingTable) -> np.ndarray:
    """(n,) 1 - cos between each row's vector and its star's mean vector in ``other``
    (NaN where the star has no spectrum in ``other``)."""
    uniq, mean = group_mean_vectors(other.source_id, other.vectors)
    sid = table.source_id
    out = np.full(len(table), np.nan)
    if uniq.size == 0:
        return out
    pos = np.clip(np.searchsorted(uniq, sid), 0, uniq.size - 1)
    found = uniq[pos] == sid
    rows = np.flatnonzero(found)
    for start in range(0, rows.size, 65_536):
        r = rows[start:start + 65_536]
        out[r] = 1.0 - np.einsum("nd,nd->n", table.vectors[r], mean[pos[r]])
    return out


def score_modality(table: EmbeddingTable, *, config: ScoreConfig | None = None,
                   searcher: NeighbourSearch | None = None,
                   partner: EmbeddingTable | None = None) -> ModalityScores:
    """Score every row of ``table``.

    Args:
        table: one modality's rows.
        config: see :class:`ScoreConfig`.
        searcher: neighbour search over exactly ``table``'s rows (e.g. the index's, from
            :func:`specsearch.rows.table_from_index`): used for every object
            with ``neighbour_method="index"``, and for later per-candidate queries
            (normal neighbours, more-like-this) otherwise.
        partner: the other modality's rows, for the cross-modal component.
    """
    config = (config or ScoreConfig()).resolved()
    t0 = time.perf_counter()
    if len(table) == 0:
        raise ConfigError(f"no {table.modality} rows to score")
    method = config.neighbour_method
    if method == "index" and searcher is None:
        method = "faiss"
    if method == "auto":
        method = "selfjoin" if len(table) >= config.neighbours.exact_below else "exact"
    if method == "exact":
        method, config = "faiss", dataclasses.replace(
            config, neighbours=dataclasses.replace(config.neighbours, kind="flat"))
    if method == "selfjoin":
        join = CellSelfJoin(table.vectors, config.selfjoin)
        knn = self_knn(table.vectors, join, k=config.k_for(len(table)),
                       source_id=table.source_id)
        searcher = searcher or join
    else:
        if method == "faiss":
            searcher = FaissNeighbours(table.vectors, config.neighbours)
        knn = self_knn(table.vectors, searcher, k=config.k_for(len(table)),
                       source_id=table.source_id,
                       batch_size=config.batch_size)
    raw: dict[str, np.ndarray] = {"knn": knn.kdist, "lof": knn.lof_ratio()}
    for comp, column in (("recon", "recon_residual"), ("translation", "translation_residual")):
        if table.has(column):
            values = table.column(column)
            if np.isfinite(values).any():
                raw[comp] = values
    if partner is not None and len(partner):
        raw["crossmodal"] = crossmodal_distance(table, partner)
    snr = table.column("snr") if table.has("snr") and config.snr_bins else None
    z = {}
    for comp, values in raw.items():
        x = _log(values)
        if comp in ("recon", "translation") and config.residual_reference == "neighbours":
            x = local_residual(x, knn.rows)
        z[comp] = robust_z(x, by=snr, n_bins=max(config.snr_bins, 1))
    used = {c: z[c] for c in config.components if c in z}
    if not used:
        raise ConfigError(f"none of the score components {list(config.components)} can be "
                          f"computed for {table.modality} (available: {sorted(z)})")
    score, driver = combine_scores(used, method=config.combine, weights=config.weights)
    return ModalityScores(table=table, knn=knn, raw=raw, z=z, score=score, driver=driver,
                          searcher=searcher, seconds=time.perf_counter() - t0)


def score_tables(tables: Mapping[str, EmbeddingTable], *, config: ScoreConfig | None = None,
                 searchers: Mapping[str, NeighbourSearch] | None = None
                 ) -> dict[str, ModalityScores]:
    """Score several modalities; each gets the others as cross-modal partner (LAMOST<->XP)."""
    out = {}
    for modality, table in tables.items():
        others = [t for m, t in tables.items() if m != modality]
        out[modality] = score_modality(
            table, config=config, searcher=(searchers or {}).get(modality),
            partner=others[0] if others else None)
    return out
