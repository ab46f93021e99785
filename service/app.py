"""The app factory: ``create_app(settings)`` -> a FastAPI app serving one index directory.

The index (memory-mapped), the model and the catalog handle are opened once, in
``lifespan``, into one :class:`service.state.ServiceState` on ``app.state.service``; routes
reach it through the ``Annotated`` dependencies of :mod:`service.deps` (tests override
:func:`service.deps.get_state` instead of patching globals).

Run it with ``specsearch serve INDEX_DIR`` or any ASGI server:
``uvicorn --factory service.app:app_from_env`` (settings from ``SPECSEARCH_*``).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from service.errors import install_error_handlers
from service.metrics import MetricsMiddleware, ServiceMetrics
from service.openapi import install_openapi
from service.routers import candidates, health, info, objects, pages, predict, search
from service.settings import Settings
from service.state import ServiceState, open_state
from service.uploads import BodyLimitMiddleware
from specsearch import __version__

log = logging.getLogger("specsearch.service")

MULTIPART_OVERHEAD = 64 * 1024
"""Body bytes allowed on top of ``max_upload_bytes`` for multipart boundaries and fields."""


def create_app(settings: Settings, *,
               state_factory: Callable[[Settings, ServiceMetrics], ServiceState] = open_state
               ) -> FastAPI:
    """A FastAPI app for ``settings``; the index and model open when the app starts.

    ``state_factory`` opens the served resources (tests may pass one that builds a small
    state); it runs inside ``lifespan``, so an import of this module does no work.
    """
    metrics = ServiceMetrics.create()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = state_factory(settings, metrics)
        app.state.service = state
        # The model, index and libraries are long-lived: move them out of the cyclic
        # collector's sight, so the full collections that request garbage triggers stop
        # rescanning them (measured: ~8% of a search's CPU, all of it holding the GIL).
        gc.collect()
        gc.freeze()
        log.info("serving %s: %s", settings.index_dir, state.describe())
        warm_stop = None
        if settings.warm_index:
            from specsearch.index.warm import warm_in_background

            def warmed(report) -> None:
                log.info("index files in the page cache: %d files, %.1f MB in %.1f s "
                         "(%d over the budget)", report.files, report.bytes / 1e6,
                         report.seconds, report.skipped)
            _, warm_stop = warm_in_background(settings.index_dir, on_done=warmed)
        try:
            yield
        finally:
            if warm_stop is not None:
                warm_stop.set()
            state.close()

    app = FastAPI(
        title="specsearch",
        version=__version__,
        summary="Similarity search for stellar spectra: LAMOST and Gaia XP in one "
                "embedding space",
        description="Search by uploaded spectrum, JSON arrays, embedding or source_id; "
                    "cross-modal matches; parameter predictions; anomaly and metal-poor "
                    "candidate lists. Errors are JSON `{detail, error}` with a 4xx status "
                    "naming the problem.",
        lifespan=lifespan,
        docs_url="/docs" if settings.enable_docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.enable_docs else None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    for router in (health.router, info.router, search.router, predict.router,
                   candidates.router, objects.router, pages.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=pages.static_dir()), name="static")
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["X-API-Key", "Authorization", "Content-Type"])
    # Our own body limit: its 413 is the JSON error body whatever the request's size.
    app.add_middleware(BodyLimitMiddleware, upload_limit=settings.max_upload_bytes,
                       max_body_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    install_openapi(app, settings)
    return app


def app_from_env() -> FastAPI:
    """``uvicorn --factory service.app:app_from_env``: settings from ``SPECSEARCH_*``."""
    return create_app(Settings.from_env())
