"""Uploads are parsed in worker processes that can be stopped: memory-capped, killed on timeout.

A hostile file may make a parser allocate or spin without bound (astropy, pyarrow and
numpy do not stop when asked). Threads cannot be killed, processes can: each upload is
parsed by one of ``parse_workers`` child processes whose address space is capped with
``setrlimit(RLIMIT_AS)`` (``parse_memory_bytes`` above what the child holds after start).
A parse slower than ``parse_timeout_s`` gets its child killed (its CPU and memory return
to the system at once) and a fresh child replaces it on the next request. At most
``parse_workers`` parses run at once; further uploads wait for a slot.

Nothing crosses the pipe as a pickle: a request is a JSON header plus the upload's bytes,
an answer a JSON header plus the (flux, ivar) arrays as float32 bytes. Library errors
come back by class name (an allow-list) and message.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import queue
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from specsearch.errors import (ConfigError, QueryError, ReaderError, SpecsearchError,
                               SpectrumError, UnknownFormatError)
from specsearch.io.limits import InputLimits, InputTooLargeError

log = logging.getLogger("specsearch.service")

READY = b"ready"
START_TIMEOUT_S = 120.0
"""How long a new child may take to import its modules (not counted in the parse timeout)."""

_PATH_ERRORS = {c.__name__: c for c in (ReaderError, UnknownFormatError, InputTooLargeError)}
_TEXT_ERRORS = {c.__name__: c for c in (SpectrumError, QueryError, ConfigError)}


class ParseTimeout(SpecsearchError):
    """Parsing an upload took longer than ``parse_timeout_s`` (HTTP 504); its process was
    killed."""


@dataclass
class ParseRequest:
    """One upload to parse (the JSON header of a request)."""

    filename: str
    modality: str | None
    air: bool | None
    row: int
    max_bytes: int
    limits: dict[str, Any]
    resolving_power: float | None = None
    telluric_uncorrected: bool = False


@dataclass
class ParsedUpload:
    """A parsed upload: spectrum ``row`` of the file on its modality's grid."""

    modality: str
    flux: np.ndarray            # (npix,) float32
    ivar: np.ndarray            # (npix,) float32
    filename: str
    spectrum_id: str | None
    source_id: int | None
    spectra_in_file: int
    row: int
    medium: str | None = None
    """The medium the wavelengths were read in (``meta['wavelength_medium']``: generic and
    LAMOST files); None for Gaia XP tables."""
    medium_from: str | None = None
    rv_kms: float | None = None
    """The radial velocity removed (km/s), None if none."""
    rv_source: str | None = None
    broader_fwhm_A: tuple[float, float] | list[float] | None = None
    """(its FWHM, the model's FWHM) in A when the spectrum is broader than the model's
    resolution (:func:`service.spectra.to_grid`), else None (a list after JSON)."""
    spikes_masked: int = 0
    """Pixels of the file's spectrum masked as single-pixel spikes (cosmic rays)."""


def parse_here(request: ParseRequest, data: bytes) -> ParsedUpload:
    """Parse an upload in this process (what a child runs; also ``parse_workers = 0``)."""
    from service.spectra import choose_modality, to_grid
    from specsearch.io.limits import use_limits
    from specsearch.io.registry import read_spectra_bytes
    from specsearch.preprocess import state_telluric
    from specsearch.preprocess.lsf import state_resolution

    with use_limits(InputLimits(**request.limits)), np.errstate(all="ignore"):
        spectra = read_spectra_bytes(data, request.filename, modality=request.modality,
                                     air=request.air, max_bytes=request.max_bytes)
        if not spectra:
            raise SpectrumError(f"{request.filename}: the file holds no spectrum")
        if request.row >= len(spectra):
            raise QueryError(f"{request.filename}: row={request.row} but the file holds "
                             f"{len(spectra)} spectra (rows 0-{len(spectra) - 1})")
        spec = spectra[request.row]
        state_resolution(spec, request.resolving_power, "upload resolving_power")
        state_telluric(spec, request.telluric_uncorrected, "upload telluric_uncorrected")
        modality = choose_modality(spec, request.modality)
        on = to_grid(spec, modality)
    return ParsedUpload(modality=modality, flux=on.flux, ivar=on.ivar,
                        filename=spec.path or request.filename,
                        spectrum_id=spec.spectrum_id or None, source_id=spec.source_id,
                        spectra_in_file=len(spectra), row=request.row,
                        medium=spec.meta.get("wavelength_medium"),
                        medium_from=spec.meta.get("medium_from"), rv_kms=on.rv_kms,
                        rv_source=on.rv_source, broader_fwhm_A=on.broader_fwhm_A,
                        spikes_masked=on.spikes_masked)


# --------------------------------------------------------------------------- child side

def _address_space() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _child_main(conn: Connection, memory_bytes: int) -> None:
    """Loop: receive (header, bytes), answer (header, flux, ivar) or an error header."""
    import resource

    # Modules are imported before the cap, so the cap is the room left for one parse;
    # torch and the radial-velocity templates too (a spectrum without a redshift has its
    # velocity measured, as ingest does: specsearch.preprocess.rv)
    import service.spectra  # noqa: F401
    import specsearch.io.registry  # noqa: F401
    import torch  # noqa: F401
    from specsearch.preprocess.rv import prepare_default_templates

    prepare_default_templates()

    try:
        limit = _address_space() + memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, ValueError) as exc:   # not Linux, or a lower hard limit: still parse
        log.warning("parse worker: no memory limit (%s)", exc)
    conn.send_bytes(READY)
    while True:
        try:
            header = conn.recv_bytes()
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            request = ParseRequest(**json.loads(header))
            parsed = parse_here(request, data)
            meta = {k: v for k, v in asdict(parsed).items() if k not in ("flux", "ivar")}
            conn.send_bytes(json.dumps({"ok": True, **meta}).encode())
            conn.send_bytes(np.ascontiguousarray(parsed.flux, np.float32).tobytes())
            conn.send_bytes(np.ascontiguousarray(parsed.ivar, np.float32).tobytes())
            continue
        except MemoryError:
            answer = {"ok": False, "error": "InputTooLargeError",
                      "message": f"parsing needs more than the {memory_bytes // 2 ** 20} MiB "
                                 f"allowed to one upload (SPECSEARCH_PARSE_MEMORY_BYTES); "
                                 f"send a smaller file"}
        except SpecsearchError as exc:
            answer = {"ok": False, "error": type(exc).__name__,
                      "message": getattr(exc, "reason", None) or str(exc)}
        except Exception as exc:  # noqa: BLE001 - a reader bug is still the file's problem
            answer = {"ok": False, "error": "ReaderError",
                      "message": f"cannot read the file: {type(exc).__name__}"}
        del data
        conn.send_bytes(json.dumps(answer).encode())


# --------------------------------------------------------------------------- parent side

class _Child:
    """One worker process and its end of the pipe."""

    def __init__(self, ctx: Any, memory_bytes: int) -> None:
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_child_main, args=(child_conn, memory_bytes),
                                   name="specsearch-parse", daemon=True)
        self.process.start()
        child_conn.close()
        if not self.conn.poll(START_TIMEOUT_S) or self.conn.recv_bytes() != READY:
            self.kill()
            raise RuntimeError("a parse worker process did not start")

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


def _error_from(answer: dict[str, Any], filename: str) -> SpecsearchError:
    name, message = answer.get("error", ""), str(answer.get("message", ""))
    if name in _PATH_ERRORS:
        return _PATH_ERRORS[name](filename, message)
    return _TEXT_ERRORS.get(name, SpectrumError)(message)


class ParsePool:
    """``workers`` parse processes (started on first use), one upload each at a time.

    ``workers = 0`` parses in the calling thread (no isolation; for debugging).
    """

    def __init__(self, *, workers: int, timeout_s: float, memory_bytes: int) -> None:
        self.workers = workers
        self.timeout_s = timeout_s
        self.memory_bytes = memory_bytes
        self._slots = threading.BoundedSemaphore(max(1, workers))
        self._idle: queue.SimpleQueue[_Child] = queue.SimpleQueue()
        self._all: set[_Child] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._limiter: Any = None
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        self._ctx = mp.get_context(method)
        if method == "forkserver":
            # The fork server imports the parsers once; each child is a cheap fork of it.
            self._ctx.set_forkserver_preload(["service.parse_pool", "service.spectra",
                                              "specsearch.io.registry", "torch"])

    def limiter(self) -> Any:
        """An ``anyio.CapacityLimiter`` of ``workers`` threads (made inside the event loop),
        so that uploads waiting for a worker wait in the loop, not in threads."""
        if self._limiter is None:
            import anyio

            self._limiter = anyio.CapacityLimiter(max(1, self.workers))
        return self._limiter

    def parse(self, request: ParseRequest, data: bytes) -> ParsedUpload:
        """Parse in a child (blocking; call it from a worker thread).

        Raises:
            ParseTimeout: slower than ``timeout_s`` (the child was killed).
            InputTooLargeError: the child ran out of its memory or died.
            ReaderError / UnknownFormatError / SpectrumError / QueryError / ConfigError: the
                parse's own error, as raised by the readers.
        """
        if self.workers == 0:
            return parse_here(request, data)
        with self._slots:
            child = self._take()
            try:
                outcome = self._run(child, request, data)
            except BaseException:
                self._give_back(child, healthy=False)   # killed: its memory is freed now
                raise
            self._give_back(child, healthy=True)
        if isinstance(outcome, SpecsearchError):
            raise outcome
        return outcome

    def _take(self) -> _Child:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            child = _Child(self._ctx, self.memory_bytes)
            with self._lock:
                self._all.add(child)
            return child

    def _give_back(self, child: _Child, healthy: bool) -> None:
        if healthy and not self._closed and child.process.is_alive():
            self._idle.put(child)
            return
        child.kill()
        with self._lock:
            self._all.discard(child)

    def _run(self, child: _Child, request: ParseRequest,
             data: bytes) -> ParsedUpload | SpecsearchError:
        """The parse's result, or the library error the child answered with (the child
        stays usable); raises when the child must be killed."""
        name = request.filename
        start = time.monotonic()
        try:
            child.conn.send_bytes(json.dumps(asdict(request)).encode())
            child.conn.send_bytes(data)
            if not child.conn.poll(self.timeout_s):
                raise ParseTimeout(f"{name}: parsing took longer than the server's limit of "
                                   f"{self.timeout_s:g} s (SPECSEARCH_PARSE_TIMEOUT_S) and "
                                   f"was stopped; send a smaller or simpler file")
            answer = json.loads(child.conn.recv_bytes())
            if not answer.pop("ok"):
                return _error_from(answer, name)
            left = max(0.1, self.timeout_s - (time.monotonic() - start))
            arrays = []
            for _ in range(2):
                if not child.conn.poll(left):
                    raise ParseTimeout(f"{name}: the parse worker stopped answering")
                arrays.append(np.frombuffer(child.conn.recv_bytes(), np.float32).copy())
        except (EOFError, OSError, ValueError) as exc:
            raise InputTooLargeError(name, f"parsing stopped: the file needs more than the "
                                           f"{self.memory_bytes // 2 ** 20} MiB of memory "
                                           f"allowed to one upload, or crashed the parser "
                                           f"({type(exc).__name__}); send a smaller file"
                                     ) from None
        return ParsedUpload(flux=arrays[0], ivar=arrays[1], **answer)

    def close(self) -> None:
        """Kill every child (app shutdown)."""
        self._closed = True
        with self._lock:
            children = list(self._all)
            self._all.clear()
        for child in children:
            child.kill()
