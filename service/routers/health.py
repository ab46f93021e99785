"""Liveness and readiness (no API key: for load balancers and orchestrators)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.schemas import Health

router = APIRouter(prefix="/v1/health", tags=["health"])


@router.get("/live", response_model=Health, summary="the process answers")
async def live() -> Health:
    return Health(status="ok")


@router.get("/ready", response_model=Health, summary="the index and model are open",
            responses={503: {"model": Health}})
async def ready(request: Request) -> Health | JSONResponse:
    # Ready or not, nothing more: no model hash, key count or sizes without a key.
    state = getattr(request.app.state, "service", None)
    if state is None:
        return JSONResponse(Health(status="starting").model_dump(), status_code=503)
    return Health(status="ok")
