"""Output files of the embedding builder: resume stamps, Parquet options, a writer thread.

Each output file's Parquet metadata records the input file (name, size, row count) and the
model hash (:data:`META_KEY`); a file whose stamp matches its input and model is reused by
a rerun, whichever engine wrote it.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from specsearch.embed.config import EmbedConfig
from specsearch.embed.encode import Encoder, identity_dim_of
from specsearch.errors import CatalogError
from specsearch.fsutil import atomic_path
from specsearch.io.embeddings import VECTOR_COLUMNS, EmbeddingsWriter

META_KEY = b"specsearch.embed"


def input_signature(path: Path) -> dict[str, Any]:
    """What identifies an input file for resume: name, size and row count."""
    return {"input": path.name, "input_size": path.stat().st_size,
            "input_rows": pq.ParquetFile(path).metadata.num_rows}


def stamp(signature: dict[str, Any], model_hash: str) -> dict[bytes, bytes]:
    """The Parquet key-value metadata that marks an output as made from this input/model."""
    return {META_KEY: json.dumps({**signature, "model_hash": model_hash}).encode()}


def output_is_current(out_path: Path, signature: dict[str, Any], model_hash: str) -> bool:
    """True when ``out_path`` exists, is readable, and was made from this input and model."""
    if not out_path.is_file():
        return False
    try:
        meta = pq.read_schema(out_path).metadata or {}
    except (OSError, pa.ArrowException):
        return False
    try:
        recorded = json.loads(meta.get(META_KEY, b"{}"))
    except ValueError:
        return False
    return recorded == {**signature, "model_hash": model_hash}


def output_write_options(schema: pa.Schema) -> dict[str, Any]:
    """Parquet options for an embeddings file: zstd everywhere except the vector columns
    (embedding, identity), stored plain (float vectors do not compress: zstd saves ~5% of
    the file and makes the index builder's read of the vectors ~6x slower)."""
    names = schema.names
    return {"compression": {n: "none" if n in VECTOR_COLUMNS else "zstd" for n in names},
            "use_dictionary": [n for n in names if n not in VECTOR_COLUMNS]}


def write_output(table: pa.Table, out_path: Path, signature: dict[str, Any],
                 model_hash: str) -> None:
    """Write one output file atomically, stamped with its input signature and model."""
    meta = {**(table.schema.metadata or {}), **stamp(signature, model_hash)}
    table = table.replace_schema_metadata(meta)
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp, **output_write_options(table.schema))


def open_output(out: Path, modality: str, model: Encoder, catalog: Path,
                config: EmbedConfig) -> EmbeddingsWriter:
    """Create or reopen the embeddings dataset for ``modality`` (refuses another model's
    dataset unless ``config.overwrite``); its schema is what every output file follows
    (with an ``identity`` column when the model has identity vectors for ``modality``)."""
    return EmbeddingsWriter(
        out, modality, model_hash=model.model_hash, embedding_dim=model.embedding_dim,
        label_names=list(model.label_names), class_names=list(model.class_names),
        dtype=config.dtype, extra_manifest={"catalog": str(Path(catalog).resolve())},
        overwrite_model=config.overwrite, identity_dim=identity_dim_of(model, modality))


class ParquetSink:
    """Writes tables to one Parquet file from a background thread, in order.

    ``write`` hands a table over (blocking when ``depth`` tables are already waiting);
    ``close`` waits for the queue to drain and closes the file; a writer error is re-raised
    in the calling thread at the next ``write``/``close``.
    """

    def __init__(self, path: Path, metadata: dict[bytes, bytes], depth: int = 2) -> None:
        self.path = path
        self.metadata = metadata
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.error: BaseException | None = None
        self.writer: pq.ParquetWriter | None = None
        self.schema: pa.Schema | None = None
        self.submitted = 0
        self.thread = threading.Thread(target=self._run, daemon=True, name="embed-writer")
        self.thread.start()

    def _run(self) -> None:
        while (table := self.queue.get()) is not None:
            if self.error is not None:
                continue
            try:
                if self.writer is None:
                    self.schema = table.schema.with_metadata(
                        {**(table.schema.metadata or {}), **self.metadata})
                    self.writer = pq.ParquetWriter(self.path, self.schema,
                                                   **output_write_options(self.schema))
                if not table.schema.equals(self.schema, check_metadata=False):
                    table = table.cast(self.schema)
                self.writer.write_table(table)
            except BaseException as exc:
                self.error = exc

    def _raise(self) -> None:
        if self.error is not None:
            raise CatalogError(f"{self.path}: writing embeddings failed: {self.error}"
                               ) from self.error

    def write(self, table: pa.Table) -> None:
        self._raise()
        self.queue.put(table)
        self.submitted += 1

    def close(self, empty: pa.Table) -> None:
        """Drain and close; ``empty`` (a 0-row table) is written when nothing else was."""
        if self.submitted == 0:
            self.queue.put(empty)
        self.queue.put(None)
        self.thread.join()
        try:
            self._raise()
        finally:
            if self.writer is not None:
                self.writer.close()

    def abort(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
