"""Request dependencies as ``Annotated`` aliases (the FastAPI way; tests override
:func:`get_state`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request

from service.schemas import Medium
from service.worker import Worker
from service.settings import Settings
from service.state import ServiceState


def state_of(request: Request) -> ServiceState:
    """The resources opened in ``lifespan``; 503 while they are not (yet) open."""
    state = getattr(request.app.state, "service", None)
    if state is None:
        raise HTTPException(503, "the service is starting: the index is not open yet")
    return state


# The dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in
# its thread pool, a thread hop (and a GIL hand-over) per request and dependency, which
# showed up in profiles of the search route under load.
async def get_state(request: Request) -> ServiceState:
    """:func:`state_of` as a dependency (tests override this one)."""
    return state_of(request)


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_worker(state: Annotated[ServiceState, Depends(get_state)]) -> Worker:
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
MediumParam = Annotated[Medium | None, Query(
    description="wavelength medium of a generic file (FITS, text), whatever the file "
                "states; default: the file decides (one that says nothing is air for FITS, "
                "vacuum for text). LAMOST and Gaia XP files state their own: 400")]
AirParam = Annotated[bool | None, Query(
    deprecated=True, description="older spelling of medium: true = air, false = vacuum")]
SourceIdParam = Annotated[int, Path(ge=-(2 ** 63), le=2 ** 63 - 1,
                                    description="Gaia DR3 source_id or survey id (int64)")]
