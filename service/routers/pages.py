"""The web page (plain HTML + a little JS from ``service/static``) and the metrics endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

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
async def metrics(request: Request) -> Response:
    """Prometheus text exposition (request counts, latency histograms, stage timings)."""
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)
