"""Uploads: the request body limit (JSON 413), reading a file part, parsing it in a worker.

:class:`BodyLimitMiddleware` refuses a body over the limit with the same JSON error body
as every other error, whether the client announced its size (``Content-Length``) or not.
:func:`parse_upload` hands the bytes to the service's :class:`~service.parse_pool.ParsePool`
under the upload limits (:func:`upload_limits`).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import numpy as np
from fastapi import HTTPException, UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.parse_pool import ParseRequest
from service.settings import Settings
from service.spectra import GridSpectrum
from specsearch.errors import QueryError
from specsearch.io.limits import InputLimits
from specsearch.io.registry import air_from_medium
from specsearch.preprocess import grid_for
from specsearch.spectrum import Spectrum

if TYPE_CHECKING:
    from service.state import ServiceState

CHUNK = 1 << 20


def too_large_detail(limit: int, length: str | None) -> str:
    got = f"a body of {length} bytes" if length else "a body"
    return (f"request too large: {got} exceeds the limit of {limit} bytes (server setting "
            f"SPECSEARCH_MAX_UPLOAD_BYTES); send a smaller file")


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a body passes the limit (FastAPI re-raises
    HTTPExceptions met while parsing a body, so the JSON error handler answers it)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_detail(limit, None))


class BodyLimitMiddleware:
    """Pure ASGI: 413 with a JSON body for any request body over ``max_body_bytes``."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, upload_limit: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await _json_413(send, too_large_detail(self.upload_limit, length.decode("latin-1")))
            return
        total = 0
        started = False

        async def limited() -> Message:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.max_body_bytes:
                    raise BodyTooLarge(self.upload_limit)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracked)
        except BodyTooLarge as exc:
            if started:
                raise
            await _json_413(send, str(exc.detail))


async def _json_413(send: Send, detail: str) -> None:
    from service.errors import error_response

    response = error_response(413, "too_large", detail, headers={"Connection": "close"})
    await send({"type": "http.response.start", "status": 413,
                "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


async def read_upload(file: UploadFile, max_bytes: int) -> bytes:
    """All bytes of ``file``; 413 as soon as more than ``max_bytes`` arrive, 422 if empty.

    The body limit of the app already stops oversized requests; this check names the file
    and also holds when the multipart part is smaller than the body but over the limit.
    """
    parts: list[bytes] = []
    size = 0
    while chunk := await file.read(CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise HTTPException(413, f"{file.filename or 'upload'}: file larger than the "
                                     f"limit of {max_bytes} bytes "
                                     f"(SPECSEARCH_MAX_UPLOAD_BYTES); send a smaller file")
        parts.append(chunk)
    if size == 0:
        raise HTTPException(422, f"{file.filename or 'upload'}: empty upload (0 bytes)")
    return b"".join(parts)


def upload_air(medium: str | None, air: bool | None) -> bool | None:
    """The readers' ``air=`` for an upload's ``medium`` (or its older spelling ``air``);
    None: the file decides. QueryError (400) when the two disagree."""
    stated = air_from_medium(medium)
    if stated is not None and air is not None and stated != air:
        raise QueryError(f"medium={medium} contradicts air={str(air).lower()}; send medium "
                         f"alone (air is its older spelling)")
    return stated if stated is not None else air


def upload_limits(settings: Settings) -> InputLimits:
    """The reader limits of one upload (see :class:`service.settings.Settings`)."""
    return InputLimits(max_decompressed_bytes=settings.max_decompressed_bytes,
                       max_streamed_bytes=settings.max_decompressed_bytes,
                       max_header_cards=settings.max_header_cards,
                       max_table_rows=settings.max_upload_rows)


async def parse_upload(state: "ServiceState", data: bytes, filename: str, *,
                       modality: str | None, air: bool | None, row: int,
                       resolving_power: float | None = None,
                       telluric_uncorrected: bool = False) -> GridSpectrum:
    """Parse an upload in a parse worker: spectrum ``row`` on its grid.

    Waiting for a free worker counts against the request timeout (504); the parse itself
    against ``parse_timeout_s`` (504, worker killed).
    """
    settings = state.settings
    request = ParseRequest(filename=filename, modality=modality, air=air, row=row,
                           max_bytes=settings.max_upload_bytes,
                           limits=asdict(upload_limits(settings)),
                           resolving_power=resolving_power,
                           telluric_uncorrected=telluric_uncorrected)
    start = time.perf_counter()
    try:
        with anyio.fail_after(settings.request_timeout_s):
            parsed = await anyio.to_thread.run_sync(state.parser.parse, request, data,
                                                    limiter=state.parser.limiter(),
                                                    abandon_on_cancel=True)
    except TimeoutError:
        raise HTTPException(504, f"{filename}: no parse worker became free within the "
                                 f"request timeout of {settings.request_timeout_s:g} s "
                                 f"(SPECSEARCH_REQUEST_TIMEOUT_S); try again later"
                            ) from None
    finally:
        state.metrics.stage_latency.labels("parse").observe(time.perf_counter() - start)
    grid = grid_for(parsed.modality)
    spectrum = Spectrum(wavelength=np.asarray(grid.wavelength, np.float64),
                        flux=parsed.flux.astype(np.float64),
                        ivar=parsed.ivar.astype(np.float64), mask=parsed.ivar <= 0,
                        spectrum_id=parsed.spectrum_id or "", source_id=parsed.source_id,
                        modality=parsed.modality, path=parsed.filename)
    return GridSpectrum(spectrum=spectrum, modality=parsed.modality, flux=parsed.flux,
                        ivar=parsed.ivar, filename=parsed.filename,
                        spectra_in_file=parsed.spectra_in_file, row=parsed.row,
                        medium=parsed.medium, medium_from=parsed.medium_from,
                        rv_kms=parsed.rv_kms, rv_source=parsed.rv_source,
                        broader_fwhm_A=parsed.broader_fwhm_A,
                        spikes_masked=parsed.spikes_masked,
                        telluric_uncorrected=telluric_uncorrected)
