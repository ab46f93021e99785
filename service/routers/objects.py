"""One star's record: every stored row of it, in every modality."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service import convert
from service.deps import SourceIdParam, State
from service.schemas import ObjectRecord
from service.schemas import API_ERRORS
from service.security import require_api_key

router = APIRouter(prefix="/v1/objects", tags=["objects"],
                   dependencies=[Depends(require_api_key)],
                   responses=API_ERRORS)


@router.get("/{source_id}", response_model=ObjectRecord,
            summary="stored metadata and predictions of one source_id")
async def get_object(state: State, source_id: SourceIdParam) -> ObjectRecord:
    def work() -> ObjectRecord:
        table = state.engine.lookup(source_id)      # NotFoundError -> 404
        table = table.select(convert.scalar_columns(table))
        labels = state.engine.index.manifest.label_names
        obs = [convert.row_to_neighbour(row, rank=i + 1, similarity=1.0, label_names=labels,
                                        modality=str(row.get("modality")))
               for i, row in enumerate(table.to_pylist())]
        return ObjectRecord(source_id=source_id, observations=obs)

    return await state.worker.run("object", work)
