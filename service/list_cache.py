"""Anomaly and metal-poor candidate lists of the served index, computed once and cached.

The lists are the library's (:mod:`specsearch.anomaly`, :mod:`specsearch.hunt`) over the
index's own rows (:func:`specsearch.rows.table_from_index`): scoring every object takes
seconds per million rows, so it runs on the first request (in a worker thread) and is kept;
pages are then cheap and each filtered list is cached. Artefact screening needs the
observed spectra, so it runs only when the index's catalog is available. The [Fe/H]
calibration is the one ``specsearch hunt`` uses (given, or stored next to the model).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from specsearch.errors import QueryError
from specsearch.query import Filter, SearchEngine

log = logging.getLogger("specsearch.service")

RESULT_CACHE = 32
"""Computed lists kept (keyed by modality, kind/threshold and filters)."""


@dataclass
class ListPage:
    """One page of a ranked list."""

    total: int
    table: pa.Table
    extra: dict[str, Any]


class CandidateLists:
    """Lazily computed, cached candidate lists over a :class:`SearchEngine`'s index."""

    def __init__(self, engine: SearchEngine, catalog: Path | None, *,
                 calibration: Path | None = None, model_dir: Path | None = None) -> None:
        self.engine = engine
        self.catalog = catalog
        self.calibration = calibration
        self.model_dir = model_dir
        self._hunt_calibration = None
        self._lock = threading.Lock()
        self._tables: dict[str, Any] = {}
        self._scores: dict[str, Any] = {}
        self._flags: dict[str, Any] = {}
        self._results: OrderedDict[tuple, Any] = OrderedDict()

    def clear(self) -> None:
        with self._lock:
            self._tables.clear()
            self._scores.clear()
            self._flags.clear()
            self._results.clear()

    def _cached(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per key (a small LRU: lists differ only by their filters)."""
        with self._lock:
            if key in self._results:
                self._results.move_to_end(key)
                return self._results[key]
        value = compute()
        with self._lock:
            self._results[key] = value
            while len(self._results) > RESULT_CACHE:
                self._results.popitem(last=False)
        return value

    def _check(self, modality: str) -> None:
        if modality not in self.engine.modalities:
            raise QueryError(f"no {modality!r} index here; modalities: "
                             f"{self.engine.modalities}")

    def _table(self, modality: str):
        from specsearch.rows import table_from_index

        if modality not in self._tables:
            self._tables[modality] = table_from_index(self.engine.index, modality, threads=1)
        return self._tables[modality]

    @staticmethod
    def _masks(tables: dict[str, Any], filters: list[str]) -> dict[str, np.ndarray]:
        from specsearch.rows import row_masks

        return row_masks(tables, filters)

    # ----------------------------------------------------------------- anomalies
    def _anomaly_scores(self):
        """Scores of every modality (cross-modal disagreement needs them all at once)."""
        from specsearch.anomaly import ScoreConfig, score_tables
        from specsearch.anomaly.defaults import find_choice

        with self._lock:
            if not self._scores:
                pairs = {m: self._table(m) for m in self.engine.modalities}
                config = ScoreConfig().resolved(find_choice(self.engine.model_hash,
                                                            self.model_dir))
                scores = score_tables({m: p[0] for m, p in pairs.items()}, config=config,
                                      searchers={m: p[1] for m, p in pairs.items()})
                self._scores.update(scores)
                if self.catalog is not None:
                    self._flags.update(self._screen({m: p[0] for m, p in pairs.items()}))
            return self._scores, self._flags

    def _screen(self, tables: dict[str, Any]) -> dict[str, Any]:
        from specsearch.anomaly.pipeline import screen_tables
        from specsearch.errors import SpecsearchError

        try:
            return screen_tables(self.catalog, tables)
        except (SpecsearchError, OSError) as exc:
            # A moved or changed catalog costs only the screening, not the lists.
            log.warning("artefact screening skipped (%s): %s", self.catalog, exc)
            return {}

    def anomalies(self, modality: str, *, kind: str, filters: list[str], offset: int,
                  limit: int) -> ListPage:
        """A page of the astrophysical or artefact list of ``modality``."""
        from specsearch.anomaly import CandidateConfig, modality_candidates

        self._check(modality)
        flt = Filter.parse(filters)
        scores, flags = self._anomaly_scores()
        s = scores[modality]
        mask = self._masks({modality: s.table}, filters).get(modality)
        screened = modality in flags
        if kind == "artefacts" and not screened:
            raise QueryError("the artefact list needs the observed spectra (the index's "
                             "catalog), which this server does not have; start it with "
                             "--catalog CATALOG_DIR")
        f = flags.get(modality)
        total = self._cached(("anomalies", modality, kind, flt), lambda: modality_candidates(
            s, f, config=CandidateConfig(top=max(1, len(s.table)), kind=kind, n_neighbours=0),
            row_mask=mask).num_rows)
        page = modality_candidates(
            s, f, config=CandidateConfig(top=offset + limit, kind=kind, n_neighbours=3),
            row_mask=mask).slice(offset, limit)
        return ListPage(total=total, table=page,
                        extra={"artefact_screening": screened})

    # ----------------------------------------------------------------- metal-poor
    def _calibration(self):
        from specsearch.hunt.pipeline import find_calibration

        if self._hunt_calibration is None:
            self._hunt_calibration = find_calibration(self.engine.model_hash,
                                                      self.calibration, self.model_dir)
        return self._hunt_calibration

    def metal_poor(self, modality: str, *, feh_max: float, min_prob: float,
                   filters: list[str], offset: int, limit: int,
                   adapt_prior: bool = False) -> ListPage:
        """A page of the stars most likely to have [Fe/H] < ``feh_max``, from ``modality``'s
        predictions (``any``: both modalities combined); with ``adapt_prior`` the prior is
        refitted to the (filtered) pool (:class:`specsearch.hunt.HuntConfig`)."""
        from specsearch.hunt import HuntConfig, hunt

        from specsearch.hunt.rank import check_pool_filters

        mods = self.engine.modalities if modality == "any" else [modality]
        for m in mods:
            self._check(m)
        flt = Filter.parse(filters)
        if adapt_prior:
            check_pool_filters(filters, self._calibration().label)
        with self._lock:
            tables = {m: self._table(m)[0] for m in mods}
        masks = self._masks(tables, filters)
        key = ("metal_poor", modality, feh_max, min_prob, flt, adapt_prior)
        result = self._cached(key, lambda: hunt(
            tables, self._calibration(),
            config=HuntConfig(feh_max=feh_max, mode=modality, top=None, min_prob=min_prob,
                              adapt_prior=adapt_prior),
            row_masks=masks or None))
        return ListPage(total=result.table.num_rows,
                        table=result.table.slice(offset, limit),
                        extra={"calibrated": result.calibrated,
                               "expected_total": result.expected_total,
                               "n_stars": result.n_stars,
                               "prior_fraction": result.prior_fraction,
                               "prior_fraction_se": result.prior_fraction_se,
                               "prior": "refitted to this pool" if adapt_prior
                               else "the calibration's"})
