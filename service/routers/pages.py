"""The web page (plain HTML + a little JS from ``service/static``) and the metrics endpoint."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import FileResponse, Response

from service.deps import get_state
from service.security import require_api_key

router = APIRouter(include_in_schema=False)

PAGES = {"/": "index.html", "/anomalies": "anomalies.html", "/metal-poor": "metal-poor.html"}


def _page(name: str):
    async def serve() -> FileResponse:
        from service.app import static_dir

        return FileResponse(static_dir() / name, media_type="text/html")
    return serve


for _path, _name in PAGES.items():
    router.add_api_route(_path, _page(_name), methods=["GET"])


@router.get("/metrics")
async def metrics(request: Request,
                  x_api_key: Annotated[str | None, Header()] = None,
                  authorization: Annotated[str | None, Header()] = None) -> Response:
    """Prometheus text exposition (request counts, latency histograms, stage timings).

    Needs the API key whenever keys are configured, unless ``metrics_public`` is set
    (``SPECSEARCH_METRICS_PUBLIC=1``, e.g. for a scraper on a private network).
    """
    if not request.app.state.settings.metrics_public:
        await require_api_key(get_state(request), x_api_key, authorization)
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)
