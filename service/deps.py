"""Request dependencies as ``Annotated`` aliases (the FastAPI way; tests override
:func:`get_state`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request

from service.worker import Worker
from service.settings import Settings
from service.state import ServiceState


def get_state(request: Request) -> ServiceState:
    """The resources opened in ``lifespan``; 503 while they are not (yet) open."""
    state = getattr(request.app.state, "service", None)
    if state is None:
        raise HTTPException(503, "the service is starting: the index is not open yet")
    return state


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_worker(state: Annotated[ServiceState, Depends(get_state)]) -> Worker:
    return state.worker


State = Annotated[ServiceState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
WorkerDep = Annotated[Worker, Depends(get_worker)]

# Shared query parameters.
FilterParam = Annotated[list[str], Query(
    alias="filter",
    description="repeatable: 'snr>=20', 'feh_pred<-2', 'mag_g<15', "
                "'cone=RA,DEC,RADIUS_DEG', any stored column")]
OffsetParam = Annotated[int, Query(ge=0, le=1_000_000, description="rows to skip")]
SourceIdParam = Annotated[int, Path(ge=-(2 ** 63), le=2 ** 63 - 1,
                                    description="Gaia DR3 source_id or survey id (int64)")]
