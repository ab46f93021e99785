"""Index and model information."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.deps import State
from service.schemas import Info
from service.schemas import API_ERRORS
from service.security import require_api_key
from specsearch import __version__

router = APIRouter(prefix="/v1", tags=["info"], dependencies=[Depends(require_api_key)],
                   responses=API_ERRORS)

PATH_KEYS = frozenset({"root", "path", "paths", "dir", "directory", "file", "files",
                       "index_dir", "model_dir", "catalog_dir", "source"})
"""Keys whose values are server paths: never sent to clients."""


def without_paths(value: object) -> object:
    """``value`` (JSON-like) with every path-valued key removed, recursively."""
    if isinstance(value, dict):
        return {k: without_paths(v) for k, v in value.items() if str(k) not in PATH_KEYS}
    if isinstance(value, list):
        return [without_paths(v) for v in value]
    return value


@router.get("/info", response_model=Info, summary="index sizes, backends, model, limits")
async def info(state: State) -> Info:
    model = state.model
    s = state.settings
    return Info(
        version=__version__,
        index=without_paths(state.info()),
        model={"hash": model.model_hash, "name": model.config.name,
               "embedding_dim": model.embedding_dim, "modalities": list(model.modalities),
               "label_names": list(model.label_names),
               "class_names": list(model.class_names), "device": str(model.device)},
        limits={"max_upload_bytes": s.max_upload_bytes, "max_k": s.max_k,
                "max_page": s.max_page, "request_timeout_s": s.request_timeout_s,
                "auth": bool(state.api_keys), "max_upload_rows": s.max_upload_rows,
                "max_decompressed_bytes": s.max_decompressed_bytes,
                "parse_timeout_s": s.parse_timeout_s},
        threads={"worker_threads": s.worker_threads, **state.threads})
