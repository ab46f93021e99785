"""Library exceptions -> JSON 4xx at the boundary; nothing a client sends may become a 500.

Every error body is ``{"detail": <message>, "error": <kind>}``; the library's messages
already name the file/field, what was expected, what was found and how to fix it.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.parse_pool import ParseTimeout
from specsearch.errors import (
    CatalogError,
    ConfigError,
    ModelError,
    NotFoundError,
    QueryError,
    ReaderError,
    SearchIndexError,
    SpecsearchError,
    SpectrumError,
    UnknownFormatError,
)
from specsearch.io.limits import InputTooLargeError

log = logging.getLogger("specsearch.service")


__all__ = ["NotFoundError", "STATUS_OF", "error_response", "install_error_handlers", "status_for"]

# Order matters: the first matching class wins (subclasses before their bases).
STATUS_OF: tuple[tuple[type[BaseException], int, str], ...] = (
    (NotFoundError, 404, "not_found"),
    (InputTooLargeError, 413, "too_large"),
    (ParseTimeout, 504, "timeout"),
    (UnknownFormatError, 415, "unknown_format"),
    (ReaderError, 422, "unreadable_file"),
    (SpectrumError, 422, "bad_spectrum"),
    (QueryError, 400, "bad_query"),
    (ConfigError, 400, "bad_parameter"),
    # Problems of the served data, not of the request: the service is unavailable.
    (SearchIndexError, 503, "index_unavailable"),
    (ModelError, 503, "model_unavailable"),
    (CatalogError, 503, "catalog_unavailable"),
)

HTTP_KIND = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
             405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type",
             422: "invalid", 429: "too_many_requests", 503: "unavailable", 504: "timeout"}


def error_response(status: int, kind: str, detail: object,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "error": kind}, status_code=status, headers=headers)


def status_for(exc: SpecsearchError) -> tuple[int, str]:
    for cls, status, kind in STATUS_OF:
        if isinstance(exc, cls):
            return status, kind
    return 400, "bad_request"


async def _specsearch_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SpecsearchError)
    status, kind = status_for(exc)
    if status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc)
    return error_response(status, kind, str(exc))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail
    if exc.status_code == 413 and detail == "Content Too Large":  # the app's body limit
        limit = request.app.state.settings.max_upload_bytes
        length = request.headers.get("content-length")
        got = f"a body of {length} bytes" if length else "a body"
        detail = (f"request too large: {got} exceeds the limit of {limit} bytes "
                  f"(server setting SPECSEARCH_MAX_UPLOAD_BYTES); send a smaller file")
    return error_response(exc.status_code, HTTP_KIND.get(exc.status_code, "error"), detail,
                          headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # FastAPI's list of {loc, msg, type}; inputs are dropped (they may be megabytes).
    problems = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""),
                 "type": e.get("type", "")} for e in exc.errors()]
    text = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in problems)
    return JSONResponse({"detail": problems, "error": "invalid_request", "message": text},
                        status_code=422)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # A bug, not a client error: log the traceback, tell the client nothing internal.
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error",
                          "internal server error; the server log has the details")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SpecsearchError, _specsearch_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
