"""Index and model information."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.deps import State
from service.schemas import Info
from service.security import require_api_key
from specsearch import __version__

router = APIRouter(prefix="/v1", tags=["info"], dependencies=[Depends(require_api_key)])


@router.get("/info", response_model=Info, summary="index sizes, backends, model, limits")
async def info(state: State) -> Info:
    model = state.model
    s = state.settings
    return Info(
        version=__version__,
        index=state.info(),
        model={"hash": model.model_hash, "name": model.config.name,
               "embedding_dim": model.embedding_dim, "modalities": list(model.modalities),
               "label_names": list(model.label_names),
               "class_names": list(model.class_names), "device": str(model.device)},
        limits={"max_upload_bytes": s.max_upload_bytes, "max_k": s.max_k,
                "max_page": s.max_page, "request_timeout_s": s.request_timeout_s,
                "auth": bool(state.api_keys)},
        threads={"worker_threads": s.worker_threads, **state.threads})
