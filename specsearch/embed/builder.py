"""The local embedding builder: catalog -> embeddings dataset, streamed, resumable.

One output file per input catalog file (``EMB/<modality>/<input stem>.parquet``), written
atomically, whose Parquet metadata records the input file (name, size, row count) and the
model hash. A rerun skips outputs that match their input and model, so after a kill (even
``kill -9``) it produces exactly the dataset an uninterrupted run would have; a rerun with a
different model refuses to mix unless ``overwrite=True``.

Three stages overlap: a reader thread decodes the next Parquet batches (only the columns the
output needs; on a GPU it also copies the spectra into pinned memory), the calling thread
preprocesses and encodes (on the model's device: on a GPU the preprocessing runs there too),
and a writer thread encodes the output Parquet, streamed to a temp file that is renamed into
place when the input file is done. Memory is bounded by a few batches whatever the size of
the catalog or of its files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from specsearch.errors import CatalogError, ConfigError
from specsearch.io.catalog import open_catalog
from specsearch.io.embeddings import EmbeddingsWriter, open_embeddings
from specsearch.fsutil import atomic_path, remove_stale_temps
from specsearch.io.parquet import columns_to_table, iter_file_batches

log = logging.getLogger(__name__)

META_KEY = b"specsearch.embed"


class Encoder(Protocol):
    """What the builder needs from a model (``specsearch.model.SpecModel`` provides it)."""

    model_hash: str
    embedding_dim: int
    label_names: Sequence[str]
    class_names: Sequence[str]

    def embed_numpy(self, modality: str, flux: np.ndarray, ivar: np.ndarray, *,
                    with_residual: bool = False) -> Any: ...


@dataclass
class EmbedConfig:
    """Knobs of the embedding builder.

    Attributes:
        modalities: which modalities of the catalog to embed (None: all present).
        batch_size: spectra per forward pass (None: ~4 million pixels, 1024 LAMOST or
            12,032 XP spectra; 8x the pixels on a GPU). Memory is bounded by ~batch_size x
            npix x 4 B x a few buffers; past a few MB per array larger batches stop helping
            on a CPU (they fall out of the caches).
        dtype: storage type of the embedding column, ``float32`` or ``float16`` (half the
            size; cosine similarities change by < 1e-3).
        with_residual: also store the reconstruction / translation residuals (outlier
            scores need them; costs a decoder pass).
        precision: the network's precision on the model's device: ``auto`` (bf16 autocast
            on a GPU, fp32 on a CPU), ``bf16``, ``fp16`` or ``fp32``.
        overwrite: replace an existing dataset made by another model.
        prefetch: batches read ahead by the reader thread.
        progress: show a tqdm bar with spectra/s and ETA.
        crash_at: test hook: raise RuntimeError after this many output files are written.
    """

    modalities: Sequence[str] | None = None
    batch_size: int | None = None
    dtype: str = "float32"
    with_residual: bool = False
    precision: str = "auto"
    overwrite: bool = False
    prefetch: int = 2
    progress: bool = True
    crash_at: int | None = None


@dataclass
class EmbedReport:
    """What a build did."""

    rows_in: int = 0
    rows_written: int = 0
    rows_skipped: Counter = field(default_factory=Counter)
    files_written: int = 0
    files_reused: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0

    @property
    def spectra_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_spectra_per_s(self) -> float:
        """Throughput without the engine's start-up (a Ray instance starting)."""
        busy = self.seconds - self.startup_seconds
        return self.rows_in / busy if busy > 0 else 0.0

    def summary(self) -> str:
        skipped = sum(self.rows_skipped.values())
        reasons = ", ".join(f"{n} {r}" for r, n in self.rows_skipped.most_common())
        return (f"embedded {self.rows_written} of {self.rows_in} spectra "
                f"({skipped} skipped{': ' + reasons if reasons else ''}); "
                f"{self.files_written} files written, {self.files_reused} reused; "
                f"{self.seconds:.1f} s, {self.spectra_per_s:,.0f} spectra/s"
                + (f" ({self.startup_seconds:.1f} s of start-up)"
                   if self.startup_seconds else ""))


VECTOR_COLUMNS = ("flux", "ivar")


def auto_batch_size(modality: str, batch_size: int | None = None, *,
                    gpu: bool = False) -> int:
    """``batch_size`` if given (validated), else
    :func:`specsearch.preprocess.default_batch_size`."""
    if batch_size is not None:
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        return int(batch_size)
    from specsearch.preprocess import default_batch_size

    return default_batch_size(modality, gpu=gpu)


def metadata_fields(files: Sequence[Path]) -> list[pa.Field]:
    """Catalog columns copied to the embeddings: everything but spectra and list columns.

    The union over all files of a modality (their extra columns may differ: synthetic parts
    carry ``population``, ingested ones ``origin``), so every output file has the same
    columns; a column absent from a file is null there.
    """
    fields: dict[str, pa.Field] = {}
    for path in files:
        for f in pq.read_schema(path):
            if (f.name in VECTOR_COLUMNS or pa.types.is_list(f.type)
                    or pa.types.is_fixed_size_list(f.type)):
                continue
            if f.name not in fields or pa.types.is_null(fields[f.name].type):
                fields[f.name] = f
    return list(fields.values())


def input_signature(path: Path) -> dict[str, Any]:
    """What identifies an input file for resume: name, size and row count."""
    return {"input": path.name, "input_size": path.stat().st_size,
            "input_rows": pq.ParquetFile(path).metadata.num_rows}


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


@dataclass
class SpectraChunk:
    """One catalog batch ready for the model.

    Attributes:
        batch: the catalog rows whose spectra have the grid's length (metadata columns).
        flux, ivar: (n, npix) float32 arrays (numpy, or pinned torch tensors for a GPU).
        skipped: rows dropped before the model, by reason.
    """

    batch: pa.RecordBatch
    flux: Any
    ivar: Any
    skipped: Counter


def spectra_arrays(batch: pa.RecordBatch, npix: int, source: str = "catalog"
                   ) -> SpectraChunk:
    """Split a catalog batch into metadata rows and (n, npix) flux / ivar arrays.

    Catalogs store fixed-size lists; a file written by another tool may hold variable-length
    lists: rows whose flux or ivar is null or does not have ``npix`` values are dropped and
    counted (``skipped``), the others kept. Zero-copy for fixed-size lists without nulls.
    """
    skipped: Counter = Counter()
    names = batch.schema.names
    for col in VECTOR_COLUMNS:
        if col not in names:
            raise CatalogError(f"{source}: no {col!r} column (present: {names})")
    columns = [batch.column(c) for c in VECTOR_COLUMNS]
    for c, col in zip(VECTOR_COLUMNS, columns):
        if not (pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type)
                or pa.types.is_large_list(col.type)):
            raise CatalogError(f"{source}: column {c!r} must be a list of floats, "
                               f"got {col.type}")
    keep = np.ones(batch.num_rows, dtype=bool)
    for col in columns:
        if pa.types.is_fixed_size_list(col.type) and col.type.list_size == npix:
            lengths = None
        elif pa.types.is_fixed_size_list(col.type):
            lengths = np.full(batch.num_rows, col.type.list_size)
        else:
            lengths = np.asarray(col.value_lengths().fill_null(-1))
        if lengths is not None:
            keep &= lengths == npix
        if col.null_count:
            keep &= np.asarray(col.is_valid())
    n_bad = int((~keep).sum())
    if n_bad:
        skipped[f"flux/ivar missing or not {npix} pixels"] += n_bad
        batch = batch.filter(pa.array(keep))
        columns = [batch.column(c) for c in VECTOR_COLUMNS]
    arrays = []
    for col in columns:
        if pa.types.is_fixed_size_list(col.type) and col.offset == 0 and not col.null_count:
            values = col.values
        else:
            values = col.flatten()
        arr = values.to_numpy(zero_copy_only=False)[: batch.num_rows * npix]
        arrays.append(arr.reshape(batch.num_rows, npix).astype(np.float32, copy=False))
    return SpectraChunk(batch, arrays[0], arrays[1], skipped)


def embed_chunk(model: Encoder, modality: str, chunk: SpectraChunk, *,
                with_residual: bool, meta_columns: Sequence[pa.Field],
                skipped: Counter, precision: str = "auto") -> dict[str, Any] | None:
    """Encode one chunk; returns the output columns of its good rows (or None)."""
    skipped.update(chunk.skipped)
    batch = chunk.batch
    if batch.num_rows == 0:
        return None
    extra = {} if precision == "auto" else {"autocast": precision}
    out = model.embed_numpy(modality, chunk.flux, chunk.ivar, with_residual=with_residual,
                            **extra)
    good = np.asarray(out.good, dtype=bool)
    n_bad = int((~good).sum())
    if n_bad:
        skipped["too few good pixels (masked / NaN / zero flux)"] += n_bad
    if not good.any():
        return None
    all_good = n_bad == 0
    idx = None if all_good else np.flatnonzero(good)
    take = (lambda a: a) if all_good else (lambda a: a[idx])
    take_arrow = (lambda a: a) if all_good else (lambda a: a.take(pa.array(idx)))
    n = int(good.sum())
    cols: dict[str, Any] = {
        "spectrum_id": take_arrow(batch.column("spectrum_id")),
        "source_id": take_arrow(batch.column("source_id")),
        "modality": pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(n, np.int32)), pa.array([modality])).cast(pa.string()),
        "embedding": take(np.asarray(out.embedding, dtype=np.float32)),
    }
    predictions = take(np.asarray(out.predictions, np.float32))
    uncertainties = take(np.asarray(out.uncertainties, np.float32))
    for j, name in enumerate(model.label_names):
        cols[f"{name}_pred"] = np.ascontiguousarray(predictions[:, j])
        cols[f"{name}_err"] = np.ascontiguousarray(uncertainties[:, j])
    class_prob = getattr(out, "class_prob", None)
    if class_prob is not None and len(model.class_names):
        probs = take(np.asarray(class_prob))
        best = probs.argmax(axis=1)
        names = pa.array(list(model.class_names), pa.string())
        cols["class_pred"] = names.take(pa.array(best.astype(np.int32)))
        cols["class_prob"] = probs[np.arange(n), best].astype(np.float32)
    for name in ("recon_residual", "translation_residual"):
        values = getattr(out, name, None)
        if with_residual and values is not None:
            cols[name] = take(np.asarray(values, np.float32))
    names = batch.schema.names
    for f in meta_columns:
        if f.name in cols:
            continue
        if f.name in names:
            cols[f.name] = take_arrow(batch.column(f.name))
        else:
            cols[f.name] = pa.nulls(n, type=f.type)
    return cols


def embed_table(model: Encoder, modality: str, batch: pa.RecordBatch, *,
                with_residual: bool, meta_columns: Sequence[pa.Field],
                skipped: Counter, precision: str = "auto") -> dict[str, Any] | None:
    """Encode one catalog batch; returns output columns for the good rows (or None)."""
    from specsearch.preprocess import grid_for

    chunk = spectra_arrays(batch, grid_for(modality).npix)
    return embed_chunk(model, modality, chunk, with_residual=with_residual,
                       meta_columns=meta_columns, skipped=skipped, precision=precision)


def _prefetch(iterator: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run ``iterator`` in a thread, ``depth`` items ahead (exceptions re-raised here).

    Closing the returned generator early (an exception downstream) stops the thread.
    """
    if depth <= 0:
        yield from iterator
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in iterator:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer
            put(exc)
            return
        put(done)

    thread = threading.Thread(target=work, daemon=True, name="embed-reader")
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def output_write_options(schema: pa.Schema) -> dict[str, Any]:
    """Parquet options for an embeddings file: zstd everywhere except the embedding column,
    stored plain (float vectors do not compress: zstd saves ~5% of the file and makes the
    index builder's read of the vectors ~6x slower)."""
    names = schema.names
    return {"compression": {n: "none" if n == "embedding" else "zstd" for n in names},
            "use_dictionary": [n for n in names if n != "embedding"]}


class _ParquetSink:
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


def open_output(out: Path, modality: str, model: Encoder, catalog: Path,
                config: EmbedConfig) -> EmbeddingsWriter:
    """Create or reopen the embeddings dataset for ``modality`` (refuses another model's
    dataset unless ``config.overwrite``); its schema is what every output file follows."""
    return EmbeddingsWriter(
        out, modality, model_hash=model.model_hash, embedding_dim=model.embedding_dim,
        label_names=list(model.label_names), class_names=list(model.class_names),
        dtype=config.dtype, extra_manifest={"catalog": str(Path(catalog).resolve())},
        overwrite_model=config.overwrite)


def build_embeddings(catalog: str | Path, model: Encoder, out: str | Path,
                     config: EmbedConfig | None = None) -> EmbedReport:
    """Embed every spectrum of a catalog with ``model`` into an embeddings dataset.

    Args:
        catalog: a catalog directory (:mod:`specsearch.io.catalog`).
        model: an encoder (e.g. ``specsearch.model.load_model()``).
        out: the embeddings directory (created; resumed if it holds this model's output).
        config: see :class:`EmbedConfig`.
    Returns:
        An :class:`EmbedReport`. Bad rows are skipped and counted, never fatal.
    """
    config = config or EmbedConfig()
    if config.dtype not in ("float32", "float16"):
        raise ConfigError(f"dtype must be float32 or float16, got {config.dtype!r}")
    if config.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got "
                          f"{config.precision!r}")
    cat = open_catalog(catalog)
    out = Path(out)
    modalities = list(config.modalities or cat.modalities)
    for m in modalities:
        if m not in cat.modalities:
            raise CatalogError(f"{cat.root}: no {m!r} spectra to embed "
                               f"(modalities present: {cat.modalities})")
    if (out / "embeddings.json").is_file() and config.overwrite:
        existing = open_embeddings(out)
        if existing.model_hash != model.model_hash:
            for m in existing.modalities:
                for p in existing.files(m):
                    p.unlink()
    for m in modalities:   # temp files of a killed run: this run owns the folder
        remove_stale_temps(out / m)
    report = EmbedReport()
    start = time.perf_counter()
    total = sum(cat.count(m) for m in modalities)
    bar = _bar(total, config.progress)
    try:
        for modality in modalities:
            schema = open_output(out, modality, model, cat.root, config).schema
            meta_cols = metadata_fields(cat.files(modality))
            for path in cat.files(modality):
                _embed_file(model, modality, path, out / modality / f"{path.stem}.parquet",
                            schema, meta_cols, config, report, bar)
                if config.crash_at is not None and report.files_written >= config.crash_at:
                    raise RuntimeError(f"crash_at={config.crash_at} (test hook)")
    finally:
        if bar is not None:
            bar.close()
        report.seconds = time.perf_counter() - start
    return report


def read_columns(path: Path, meta_cols: Sequence[pa.Field]) -> list[str]:
    """The catalog columns the output needs, in file order (spectra, ids, metadata)."""
    wanted = {"spectrum_id", "source_id", *VECTOR_COLUMNS, *(f.name for f in meta_cols)}
    names = pq.read_schema(path).names
    missing = [c for c in ("spectrum_id", "source_id", *VECTOR_COLUMNS) if c not in names]
    if missing:
        raise CatalogError(f"{path}: missing column(s) {missing}; present: {names}")
    return [n for n in names if n in wanted]


def _on_gpu(model: Encoder) -> bool:
    return getattr(getattr(model, "device", None), "type", None) == "cuda"


def _stager(model: Encoder):
    """A function that puts a chunk's spectra where the model reads them fastest: pinned
    host memory for a CUDA model (asynchronous copies), the Arrow buffers as they are
    otherwise."""
    if not _on_gpu(model):
        return None
    import torch

    def stage(chunk: SpectraChunk) -> SpectraChunk:
        pinned = []
        for a in (chunk.flux, chunk.ivar):
            t = torch.empty(a.shape, dtype=torch.float32, pin_memory=True)
            t.numpy()[...] = a
            pinned.append(t)
        return SpectraChunk(chunk.batch, pinned[0], pinned[1], chunk.skipped)

    return stage


def _chunks(path: Path, columns: list[str], npix: int, batch_size: int, stage
            ) -> Iterator[SpectraChunk]:
    for batch in iter_file_batches(path, columns=columns, batch_size=batch_size):
        chunk = spectra_arrays(batch, npix, source=str(path))
        yield stage(chunk) if stage is not None else chunk


def _embed_file(model: Encoder, modality: str, path: Path, out_path: Path,
                schema: pa.Schema, meta_cols: list[pa.Field], config: EmbedConfig,
                report: EmbedReport, bar) -> None:
    from specsearch.preprocess import grid_for

    signature = input_signature(path)
    if output_is_current(out_path, signature, model.model_hash):
        report.files_reused += 1
        report.rows_in += signature["input_rows"]
        report.rows_written += pq.ParquetFile(out_path).metadata.num_rows
        if bar is not None:
            bar.update(signature["input_rows"])
        return
    stamp = {META_KEY: json.dumps({**signature, "model_hash": model.model_hash}).encode()}
    chunks = _chunks(path, read_columns(path, meta_cols), grid_for(modality).npix,
                     auto_batch_size(modality, config.batch_size, gpu=_on_gpu(model)),
                     _stager(model))
    rows = 0
    with atomic_path(out_path) as tmp:
        sink = _ParquetSink(tmp, stamp, depth=config.prefetch)
        try:
            for chunk in _prefetch(chunks, config.prefetch):
                n_in = chunk.batch.num_rows + sum(chunk.skipped.values())
                report.rows_in += n_in
                cols = embed_chunk(model, modality, chunk, with_residual=config.with_residual,
                                   meta_columns=meta_cols, skipped=report.rows_skipped,
                                   precision=config.precision)
                if cols is not None:
                    table = columns_to_table(cols, schema)
                    rows += table.num_rows
                    sink.write(table)
                if bar is not None:
                    bar.update(n_in)
        except BaseException:
            sink.abort()
            raise
        empty = {f.name: pa.array([], f.type) for f in [*schema, *meta_cols]}
        sink.close(columns_to_table(empty, schema))
    report.rows_written += rows
    report.files_written += 1


def write_output(table: pa.Table, out_path: Path, signature: dict[str, Any],
                 model_hash: str) -> None:
    """Write one output file atomically, stamped with its input signature and model."""
    meta = dict(table.schema.metadata or {})
    meta[META_KEY] = json.dumps({**signature, "model_hash": model_hash}).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp, **output_write_options(table.schema))


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="spectra", unit_scale=True, desc="embed", smoothing=0.1)
