"""The local embedding builder: catalog -> embeddings dataset, streamed, resumable.

One output file per input catalog file (``EMB/<modality>/<input stem>.parquet``), written
atomically, whose Parquet metadata records the input file (name, size, row count) and the
model hash (:mod:`specsearch.embed.outputs`). A rerun skips outputs that match their input
and model, so after a kill (even ``kill -9``) it produces exactly the dataset an
uninterrupted run would have; a rerun with a different model refuses to mix unless
``overwrite=True``.

Three stages overlap: a reader thread decodes the next Parquet batches (only the columns the
output needs, :mod:`specsearch.embed.spectra`; on a GPU it also copies the spectra into
pinned memory), the calling thread preprocesses and encodes (:mod:`specsearch.embed.encode`,
on the model's device: on a GPU the preprocessing runs there too), and a writer thread
encodes the output Parquet, streamed to a temp file that is renamed into place when the
input file is done. Memory is bounded by a few batches whatever the size of the catalog or
of its files.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from specsearch.embed.config import EmbedConfig, EmbedReport, auto_batch_size
from specsearch.embed.encode import Encoder, embed_chunk
from specsearch.embed.outputs import (ParquetSink, input_signature, open_output,
                                      output_is_current, stamp)
from specsearch.embed.spectra import (SpectraChunk, metadata_fields, read_columns,
                                      spectra_arrays)
from specsearch.errors import CatalogError
from specsearch.fsutil import atomic_path, remove_stale_temps
from specsearch.io.catalog import open_catalog
from specsearch.io.embeddings import open_embeddings
from specsearch.io.parquet import columns_to_table, iter_file_batches

log = logging.getLogger(__name__)

__all__ = ["EmbedConfig", "EmbedReport", "build_embeddings", "auto_batch_size"]


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
    config.validate()
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
    chunks = _chunks(path, read_columns(path, meta_cols), grid_for(modality).npix,
                     auto_batch_size(modality, config.batch_size, gpu=_on_gpu(model)),
                     _stager(model))
    rows = 0
    with atomic_path(out_path) as tmp:
        sink = ParquetSink(tmp, stamp(signature, model.model_hash),
                           depth=config.prefetch)
        try:
            for chunk in _prefetch(chunks, config.prefetch):
                n_in = chunk.batch.num_rows + sum(chunk.skipped.values())
                report.rows_in += n_in
                cols = embed_chunk(model, modality, chunk, with_residual=config.with_residual,
                                   meta_columns=meta_cols, skipped=report.rows_skipped,
                                   precision=config.precision,
                                   check_telluric=config.check_telluric)
                if cols is not None:
                    if "telluric_masked" in cols:
                        report.rows_telluric_masked += int(np.sum(cols["telluric_masked"]))
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


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="spectra", unit_scale=True, desc="embed", smoothing=0.1)
