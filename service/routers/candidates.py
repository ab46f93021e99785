"""Anomaly and metal-poor candidate lists, paginated and filtered."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from service import convert
from service.deps import FilterParam, OffsetParam, State
from service.schemas import Modality, Page
from service.schemas import API_ERRORS
from service.security import require_api_key

router = APIRouter(prefix="/v1/candidates", tags=["candidates"],
                   dependencies=[Depends(require_api_key)],
                   responses=API_ERRORS)

PageLimit = Annotated[int, Query(ge=1, le=10_000, description="rows (<= server max_page)")]
MAX_WINDOW = 100_000
"""Deepest row a page may reach (offset + limit)."""


def _window(state, offset: int, limit: int) -> int:
    from specsearch.errors import QueryError

    limit = min(limit, state.settings.max_page)
    if offset + limit > MAX_WINDOW:
        raise QueryError(f"offset + limit = {offset + limit} exceeds {MAX_WINDOW}; narrow "
                         f"the list with filters instead")
    return limit


@router.get("/anomalies", response_model=Page, summary="ranked anomaly candidates")
async def anomalies(
    state: State, modality: Modality = "lamost",
    kind: Annotated[Literal["astrophysical", "artefacts", "all"],
                    Query(description="astrophysical (artefact-flagged removed), artefacts "
                                      "(likely data problems) or all")] = "astrophysical",
    filters: FilterParam = [],
    offset: OffsetParam = 0, limit: PageLimit = 50,
) -> Page:
    limit = _window(state, offset, limit)
    page = await state.worker.run("anomalies", state.lists.anomalies, modality, kind=kind,
                                  filters=filters or [], offset=offset, limit=limit)
    columns, rows = convert.table_rows(page.table)
    return Page(list=f"anomalies:{kind}", modality=modality, total=page.total, offset=offset,
                limit=limit, filters=filters or [], columns=columns, rows=rows,
                info={k: convert.clean(v) for k, v in page.extra.items()})


@router.get("/metal-poor", response_model=Page, summary="ranked metal-poor candidates")
async def metal_poor(
    state: State,
    modality: Annotated[Literal["lamost", "xp", "any", "both"],
                        Query(description="predictions used: one modality, any (combined "
                                          "where a star has both) or both")] = "any",
    feh_max: Annotated[float, Query(ge=-6.0, le=1.0, description="[Fe/H] threshold (dex)")]
    = -2.0,
    min_prob: Annotated[float, Query(ge=0.0, le=1.0, description="lowest P([Fe/H] < feh_max) "
                                                               "in the list")] = 0.5,
    adapt_prior: Annotated[bool, Query(description="refit the fraction of stars below "
                                                   "feh_max to the (filtered) pool: for a "
                                                   "pre-selected sample")] = False,
    filters: FilterParam = [],
    offset: OffsetParam = 0, limit: PageLimit = 50,
) -> Page:
    limit = _window(state, offset, limit)
    page = await state.worker.run("metal_poor", state.lists.metal_poor, modality,
                                  feh_max=feh_max, min_prob=min_prob, filters=filters or [],
                                  offset=offset, limit=limit, adapt_prior=adapt_prior)
    columns, rows = convert.table_rows(page.table)
    return Page(list=f"metal-poor:feh<{feh_max:g}", modality=modality, total=page.total,
                offset=offset, limit=limit, filters=filters or [], columns=columns,
                rows=rows, info={k: convert.clean(v) for k, v in page.extra.items()})
