"""What the service opens once at start: index, model, thread policy, keys, candidate lists."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.batching import SearchBatcher
from service.list_cache import CandidateLists
from service.metrics import ServiceMetrics
from service.parse_pool import ParsePool
from service.worker import Worker, apply_thread_policy
from service.settings import Settings
from specsearch.index import ThreadPolicy
from specsearch.model import SpecModel, load_model
from specsearch.query import SearchEngine

log = logging.getLogger("specsearch.service")


@dataclass
class ServiceState:
    """The served resources; shared by all requests, read-only after start.

    ``engine`` and ``model`` are safe to call from several worker threads at once: FAISS and
    hnswlib searches are const, torch inference under ``inference_mode`` keeps no state.
    """

    settings: Settings
    engine: SearchEngine
    model: SpecModel
    metrics: ServiceMetrics
    worker: Worker
    api_keys: frozenset[str]
    threads: dict[str, int]
    lists: CandidateLists
    catalog_dir: Path | None = None
    started: float = field(default_factory=time.time)
    parser: ParsePool = field(default_factory=lambda: ParsePool(
        workers=0, timeout_s=60.0, memory_bytes=2 ** 30))
    batcher: SearchBatcher | None = None
    """Micro-batches embedding searches (``search_batching``); None: one call a request."""

    def __post_init__(self) -> None:
        if self.batcher is None and self.settings.search_batching:
            self.batcher = SearchBatcher(self.engine, self.worker,
                                         max_batch=self.settings.search_batch_max,
                                         metrics=self.metrics)

    def describe(self) -> str:
        counts = ", ".join(f"{m}: {self.engine.index[m].count:,}"
                           for m in self.engine.modalities)
        auth = f"{len(self.api_keys)} API key(s)" if self.api_keys else "no authentication"
        return f"{counts} vectors; model {self.model.model_hash[:12]}; {auth}"

    def info(self) -> dict[str, Any]:
        return self.engine.info()

    def close(self) -> None:
        """Nothing to flush (read-only); drops references so memory maps can close."""
        self.lists.clear()
        self.parser.close()


def catalog_of(engine: SearchEngine, configured: Path | None) -> Path | None:
    """The index's catalog: the configured one, else the one its embeddings record."""
    from specsearch.rows import find_catalog

    return find_catalog(configured, source=engine.index.manifest.source)


def open_state(settings: Settings, metrics: ServiceMetrics, *,
               engine: SearchEngine | None = None) -> ServiceState:
    """Open everything the service needs (called once, in ``lifespan``).

    ``engine``: an already opened engine with SearchEngine's interface (e.g. the
    distributed one of :mod:`service.ray_serve`) instead of opening ``settings.index_dir``.

    Raises:
        SearchIndexError / ModelError / ConfigError: the service cannot start; the message
            says which file is wrong (the model must be the one the index was built with).
    """
    keys = settings.all_api_keys()
    threads = apply_thread_policy(faiss_threads=settings.faiss_threads,
                                  torch_threads=settings.torch_threads)
    if engine is None:
        engine = SearchEngine.open(settings.index_dir, mmap=True,
                                   verify=settings.verify_checksums,
                                   threads=ThreadPolicy(single=settings.faiss_threads,
                                                        batch=settings.faiss_threads),
                                   max_k=settings.max_k)
    model = load_model(settings.model_dir)
    model.domain_check          # a malformed domain_check.json stops the start, not requests
    engine.attach_encoder(model)
    for modality in engine.modalities:
        metrics.index_vectors.labels(modality).set(engine.index[modality].count)
    catalog = catalog_of(engine, settings.catalog_dir)
    return ServiceState(
        settings=settings, engine=engine, model=model, metrics=metrics,
        worker=Worker(threads=settings.worker_threads, timeout_s=settings.request_timeout_s,
                      metrics=metrics),
        api_keys=keys, threads=threads,
        lists=CandidateLists(engine, catalog, calibration=settings.hunt_calibration,
                             model_dir=settings.model_dir),
        catalog_dir=catalog,
        parser=ParsePool(workers=settings.parse_workers, timeout_s=settings.parse_timeout_s,
                         memory_bytes=settings.parse_memory_bytes))
