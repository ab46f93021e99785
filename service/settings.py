"""The service's settings: one validated class, read from ``SPECSEARCH_*`` environment variables.

A pydantic-settings ``BaseSettings``: each field ``name`` is read from ``SPECSEARCH_<NAME>``
(empty values ignored; lists comma-separated); keyword arguments (the command-line options
of ``specsearch serve``) override the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from specsearch.errors import ConfigError

ENV_PREFIX = "SPECSEARCH_"

CommaList = Annotated[tuple[str, ...], NoDecode]
"""A list given as ``a,b,c`` in the environment (not JSON)."""


class Settings(BaseSettings):
    """Everything the HTTP service can be told at start.

    Attributes:
        index_dir: the index directory to serve (``specsearch index build`` output).
        model_dir: model directory; None = the model the index was built with if it is the
            shipped default, i.e. ``load_model(None)``.
        catalog_dir: the index's catalog (observed spectra), used to screen the anomaly list
            for data artefacts; None = the catalog recorded by the index's embeddings, if it
            still exists.
        hunt_calibration: the [Fe/H] calibration of the metal-poor list (``specsearch
            hunt-calibrate``); None = the one stored next to the model, if any, else the
            heads' uncertainties as they are (the list says ``calibrated: false``).
        max_upload_bytes: largest accepted upload body (413 above it).
        max_k: largest ``k`` / ``offset + limit`` of a search (10,000 is the engine's limit).
        max_page: largest ``limit`` of a candidate list page.
        request_timeout_s: a search or upload slower than this gets 504 (its worker thread
            finishes on its own, bounded by ``worker_threads``).
        worker_threads: threads that run searches and model calls off the event loop; more
            than the cores only adds queueing inside FAISS/torch.
        faiss_threads: OpenMP threads FAISS may use inside one search. One is fastest for
            single-vector queries under concurrency (the threadpool is the parallelism).
        torch_threads: intra-op threads of the model (same reasoning).
        api_keys: accepted API keys (``X-API-Key`` or ``Authorization: Bearer``); empty and
            no ``api_keys_file`` = no authentication.
        api_keys_file: a file with one key per line (``#`` comments allowed).
        cors_origins: origins allowed to call the API from a browser (``*`` for any).
        enable_docs: serve the OpenAPI UI at ``/docs`` and the schema at ``/openapi.json``.
        verify_checksums: verify every shard's sha256 at start (slow on large indexes).
        max_decompressed_bytes: largest content of an upload after gzip decompression
            (413 above it; the upload limit applies to the compressed bytes).
        max_upload_rows: largest table (rows) an upload may hold, e.g. Gaia XP tables
            (413 above it; one row is searched, so big tables belong to ``ingest``).
        max_header_cards: FITS header cards an upload may hold, all HDUs together (413).
        parse_workers: processes that parse uploads (at most this many at once; others
            wait). 0 parses in the request's worker thread, without the limits below.
        parse_timeout_s: a parse slower than this is stopped (its process is killed, its
            CPU and memory freed) and the request gets 504.
        parse_memory_bytes: address space one parse may add to its process (413 above it).
        metrics_public: serve ``/metrics`` without an API key even when keys are set
            (default: ``/metrics`` needs a key whenever keys are configured).
        search_batching: run concurrent ``/v1/search/embedding`` requests that share
            modality, k and filters as one batched engine call (:mod:`service.batching`):
            same results, less CPU a request under load; a lone request is not delayed.
        warm_index: read the index files once in a background thread at start (up to half
            the available memory; :mod:`specsearch.index.warm`), so that the first queries
            do not wait on the disk (10M vectors: 315 single queries/s cold, 3,008/s warm).
        search_batch_max: most requests in one batch (at most 16: FAISS computes the
            distances of 20 or more queries with BLAS, which rounds differently, so larger
            batches would not return bit-identical similarities).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True,
                                      extra="forbid", frozen=True)

    index_dir: Path
    model_dir: Path | None = None
    catalog_dir: Path | None = None
    hunt_calibration: Path | None = None
    max_upload_bytes: int = Field(16 * 2 ** 20, ge=1024, le=2 ** 30)
    max_k: int = Field(1000, ge=1, le=10_000)
    max_page: int = Field(500, ge=1, le=10_000)
    request_timeout_s: float = Field(30.0, gt=0, le=3600)
    worker_threads: int = Field(default_factory=lambda: max(2, os.cpu_count() or 2), ge=1,
                                le=256)
    faiss_threads: int = Field(1, ge=1, le=256)
    torch_threads: int = Field(1, ge=1, le=256)
    api_keys: CommaList = ()
    api_keys_file: Path | None = None
    cors_origins: CommaList = ()
    enable_docs: bool = True
    verify_checksums: bool = False
    max_decompressed_bytes: int = Field(64 * 2 ** 20, ge=1024, le=2 ** 34)
    max_upload_rows: int = Field(10_000, ge=1, le=10_000_000)
    max_header_cards: int = Field(10_000, ge=36, le=1_000_000)
    parse_workers: int = Field(2, ge=0, le=64)
    parse_timeout_s: float = Field(10.0, gt=0, le=3600)
    parse_memory_bytes: int = Field(512 * 2 ** 20, ge=64 * 2 ** 20, le=2 ** 40)
    metrics_public: bool = False
    search_batching: bool = True
    search_batch_max: int = Field(16, ge=1, le=16)
    warm_index: bool = True

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys_long_enough(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        short = [k for k in value if len(k) < 8]
        if short:
            raise ValueError(f"API keys must be at least 8 characters; {len(short)} are "
                             f"shorter")
        return value

    @classmethod
    def from_env(cls, **overrides: Any) -> "Settings":
        """Settings from ``SPECSEARCH_<FIELD>`` variables, then ``overrides`` (non-None).

        Raises:
            ConfigError: a value does not validate (the message names the variable).
        """
        values = {k: v for k, v in overrides.items() if v is not None}
        if "index_dir" not in values and not os.environ.get(f"{ENV_PREFIX}INDEX_DIR"):
            raise ConfigError(f"no index directory: pass INDEX_DIR or set "
                              f"{ENV_PREFIX}INDEX_DIR")
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(map(str, e['loc'])).upper()}: {e['msg']} "
                f"(got {e.get('input')!r})" for e in exc.errors())
            raise ConfigError(f"invalid service settings: {problems}") from None

    def all_api_keys(self) -> frozenset[str]:
        """Keys from ``api_keys`` and ``api_keys_file`` (read once, at app start).

        Raises:
            ConfigError: the keys file is missing or unreadable.
        """
        keys = set(self.api_keys)
        if self.api_keys_file is not None:
            try:
                text = Path(self.api_keys_file).read_text()
            except OSError as exc:
                raise ConfigError(f"{ENV_PREFIX}API_KEYS_FILE={self.api_keys_file}: cannot "
                                  f"read the API keys file ({exc.strerror})") from None
            for line in text.splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    keys.add(line)
            if not keys:
                raise ConfigError(f"{self.api_keys_file}: the API keys file holds no key; "
                                  f"add one key a line or unset {ENV_PREFIX}API_KEYS_FILE")
        return frozenset(keys)
