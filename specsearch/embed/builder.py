"""The local embedding builder: catalog -> embeddings dataset, streamed, resumable.

One output file per input catalog file (``EMB/<modality>/<input stem>.parquet``), written
atomically, whose Parquet metadata records the input file (name, size, row count) and the
model hash. A rerun skips outputs that match their input and model, so after a kill (even
``kill -9``) it produces exactly the dataset an uninterrupted run would have; a rerun with a
different model refuses to mix unless ``overwrite=True``.

Reading and preprocessing of the next batch overlap the encoding of the current one (a
reader thread; torch and pyarrow release the GIL in their kernels).
"""

from __future__ import annotations

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
from specsearch.io.parquet import (
    columns_to_table,
    iter_file_batches,
    list_column_to_numpy,
    write_table_atomic,
)

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
        batch_size: spectra per forward pass; larger is faster until memory runs out
            (bounded memory ~ batch_size x npix x 4 B x a few buffers).
        dtype: storage type of the embedding column, ``float32`` or ``float16`` (half the
            size; cosine similarities change by < 1e-3).
        with_residual: also store the reconstruction / translation residuals (outlier
            scores need them; costs a decoder pass).
        overwrite: replace an existing dataset made by another model.
        prefetch: batches read ahead by the reader thread.
        progress: show a tqdm bar with spectra/s and ETA.
        crash_at: test hook: raise RuntimeError after this many output files are written.
    """

    modalities: Sequence[str] | None = None
    batch_size: int = 4096
    dtype: str = "float32"
    with_residual: bool = False
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

    @property
    def spectra_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        skipped = sum(self.rows_skipped.values())
        reasons = ", ".join(f"{n} {r}" for r, n in self.rows_skipped.most_common())
        return (f"embedded {self.rows_written} of {self.rows_in} spectra "
                f"({skipped} skipped{': ' + reasons if reasons else ''}); "
                f"{self.files_written} files written, {self.files_reused} reused; "
                f"{self.seconds:.1f} s, {self.spectra_per_s:,.0f} spectra/s")


VECTOR_COLUMNS = ("flux", "ivar")


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


def embed_table(model: Encoder, modality: str, batch: pa.RecordBatch, *,
                with_residual: bool, meta_columns: Sequence[pa.Field],
                skipped: Counter) -> dict[str, Any] | None:
    """Encode one catalog batch; returns output columns for the good rows (or None)."""
    flux = list_column_to_numpy(batch.column("flux"))
    ivar = list_column_to_numpy(batch.column("ivar"))
    out = model.embed_numpy(modality, flux, ivar, with_residual=with_residual)
    good = np.asarray(out.good, dtype=bool)
    n_bad = int((~good).sum())
    if n_bad:
        skipped["too few good pixels (masked / NaN / zero flux)"] += n_bad
    if not good.any():
        return None
    idx = np.flatnonzero(good)
    cols: dict[str, Any] = {
        "spectrum_id": batch.column("spectrum_id").take(pa.array(idx)),
        "source_id": batch.column("source_id").take(pa.array(idx)),
        "modality": pa.array([modality] * idx.size, pa.string()),
        "embedding": np.asarray(out.embedding, dtype=np.float32)[idx],
    }
    for j, name in enumerate(model.label_names):
        cols[f"{name}_pred"] = np.asarray(out.predictions[idx, j], np.float32)
        cols[f"{name}_err"] = np.asarray(out.uncertainties[idx, j], np.float32)
    class_prob = getattr(out, "class_prob", None)
    if class_prob is not None and len(model.class_names):
        probs = np.asarray(class_prob)[idx]
        best = probs.argmax(axis=1)
        cols["class_pred"] = pa.array(np.asarray(model.class_names, dtype=object)[best])
        cols["class_prob"] = probs[np.arange(idx.size), best].astype(np.float32)
    for name in ("recon_residual", "translation_residual"):
        values = getattr(out, name, None)
        if with_residual and values is not None:
            cols[name] = np.asarray(values, np.float32)[idx]
    names = batch.schema.names
    for f in meta_columns:
        if f.name in cols:
            continue
        if f.name in names:
            cols[f.name] = batch.column(f.name).take(pa.array(idx))
        else:
            cols[f.name] = pa.nulls(idx.size, type=f.type)
    return cols


def _prefetch(iterator: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run ``iterator`` in a thread, ``depth`` items ahead (exceptions re-raised here)."""
    if depth <= 0:
        yield from iterator
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def work() -> None:
        try:
            for item in iterator:
                q.put(item)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)
        q.put(done)

    threading.Thread(target=work, daemon=True, name="embed-reader").start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


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


def _embed_file(model: Encoder, modality: str, path: Path, out_path: Path,
                schema: pa.Schema, meta_cols: list[pa.Field], config: EmbedConfig,
                report: EmbedReport, bar) -> None:
    signature = input_signature(path)
    if output_is_current(out_path, signature, model.model_hash):
        report.files_reused += 1
        report.rows_in += signature["input_rows"]
        report.rows_written += pq.ParquetFile(out_path).metadata.num_rows
        if bar is not None:
            bar.update(signature["input_rows"])
        return
    tables = []
    batches = iter_file_batches(path, columns=None, batch_size=config.batch_size)
    for batch in _prefetch(batches, config.prefetch):
        report.rows_in += batch.num_rows
        cols = embed_table(model, modality, batch, with_residual=config.with_residual,
                           meta_columns=meta_cols, skipped=report.rows_skipped)
        if cols is not None:
            tables.append(columns_to_table(cols, schema))
        if bar is not None:
            bar.update(batch.num_rows)
    table = (pa.concat_tables(tables, promote_options="permissive") if tables
             else columns_to_table({f.name: [] for f in schema}, schema))
    write_output(table, out_path, signature, model.model_hash)
    report.rows_written += table.num_rows
    report.files_written += 1


def write_output(table: pa.Table, out_path: Path, signature: dict[str, Any],
                 model_hash: str) -> None:
    """Write one output file atomically, stamped with its input signature and model."""
    meta = dict(table.schema.metadata or {})
    meta[META_KEY] = json.dumps({**signature, "model_hash": model_hash}).encode()
    write_table_atomic(table.replace_schema_metadata(meta), out_path)


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="spectra", unit_scale=True, desc="embed", smoothing=0.1)
