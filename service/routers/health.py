"""Liveness and readiness (no API key: for load balancers and orchestrators), and the
Prometheus metrics beside them (API key unless ``metrics_public``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from service.schemas import Health
from service.security import require_metrics_access

router = APIRouter(tags=["health"])


@router.get("/v1/health/live", response_model=Health, summary="the process answers")
async def live() -> Health:
    return Health(status="ok")


@router.get("/v1/health/ready", response_model=Health, summary="the index and model are open",
            responses={503: {"model": Health, "description": "the service is starting"}})
async def ready(request: Request) -> Health | JSONResponse:
    # Ready or not, nothing more: no model hash, key count or sizes without a key.
    state = getattr(request.app.state, "service", None)
    if state is None:
        return JSONResponse(Health(status="starting").model_dump(), status_code=503)
    return Health(status="ok")


@router.get("/metrics", include_in_schema=False,
            dependencies=[Depends(require_metrics_access)])
async def metrics(request: Request) -> Response:
    """Prometheus text exposition (request counts, latency histograms, stage timings)."""
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)
