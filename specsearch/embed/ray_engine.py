"""The Ray Data engine of the embedding builder (optional extra: ``pip install specsearch[ray]``).

The same steps as the local engine, as a Ray Data pipeline::

    read_parquet(pending catalog files) -> map_batches(EmbedActor: holds the model; num_gpus,
    concurrency per worker) -> write_parquet(staging, partitioned by input file)

then each input file's rows are put back in catalog order and written atomically with the
same resume stamp as the local engine, so both engines produce identical datasets and a
rerun of either skips finished files. ``address`` connects to an existing cluster
(``ray start --head`` / ``ray://...``); without it a local Ray instance is started.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from specsearch.embed.config import EmbedConfig, EmbedReport, auto_batch_size
from specsearch.embed.encode import embed_table
from specsearch.embed.outputs import (input_signature, open_output, output_is_current,
                                      write_output)
from specsearch.embed.spectra import metadata_fields, read_columns
from specsearch.errors import ConfigError
from specsearch.io.catalog import open_catalog
from specsearch.io.parquet import columns_to_table

INPUT_COLUMN = "_specsearch_input"


class EmbedActor:
    """A Ray actor that holds one model and embeds catalog batches (pyarrow in and out)."""

    def __init__(self, model: str | Callable[[], Any] | None, modality: str, device: str,
                 with_residual: bool, meta_columns: list[pa.Field], schema_bytes: bytes,
                 threads: int | None = None, precision: str = "auto",
                 check_telluric: bool = False) -> None:
        from specsearch.embed.process import configure_process

        configure_process(threads)
        self.model = _load(model, device)
        self.modality = modality
        self.with_residual = with_residual
        self.precision = precision
        self.check_telluric = check_telluric
        # The input file travels with each row as one more metadata column.
        self.meta_columns = [*meta_columns, pa.field(INPUT_COLUMN, pa.string())]
        self.schema = pa.ipc.read_schema(pa.py_buffer(schema_bytes))

    def __call__(self, batch: pa.Table) -> pa.Table:
        from collections import Counter

        skipped: Counter = Counter()
        stems = pc.replace_substring_regex(batch.column("path"), r"^.*/|\.parquet$", "")
        rb = (batch.drop_columns(["path"]).append_column(INPUT_COLUMN, stems)
              .combine_chunks().to_batches()[0])
        cols = embed_table(self.model, self.modality, rb, with_residual=self.with_residual,
                           meta_columns=self.meta_columns, skipped=skipped,
                           precision=self.precision, check_telluric=self.check_telluric)
        if cols is None:
            empty = columns_to_table({f.name: [] for f in self.schema}, self.schema)
            return empty.append_column(INPUT_COLUMN, pa.array([], pa.string()))
        table = columns_to_table(cols, self.schema)
        # INPUT_COLUMN last: it becomes the partition column of the staging area.
        return table.drop_columns([INPUT_COLUMN]).append_column(INPUT_COLUMN,
                                                                 cols[INPUT_COLUMN])


def _load(model: str | Path | Callable[[], Any] | None, device: str) -> Any:
    if callable(model):
        return model()
    from specsearch.model import load_model

    return load_model(model, device=device)


def build_embeddings_ray(catalog: str | Path, model: str | Path | Callable[[], Any] | None,
                         out: str | Path, config: EmbedConfig | None = None, *,
                         address: str | None = None, concurrency: int = 1,
                         num_gpus: float = 0.0, num_cpus: int | None = None,
                         cpus_per_actor: float = 1.0, threads_per_actor: int | None = None,
                         device: str = "cpu") -> EmbedReport:
    """Embed a catalog with a Ray Data pipeline; same output as :func:`build_embeddings`.

    Args:
        catalog, out, config: as for the local engine.
        model: a model directory, None for the shipped default, or a zero-argument callable
            returning an encoder; each actor loads its own copy.
        address: a Ray cluster address; None starts a local instance.
        concurrency: number of model actors.
        num_gpus: GPUs per actor (0 on CPU machines); ``device`` is what the actor uses.
        num_cpus: CPUs for a local instance (None: all).
        cpus_per_actor: CPUs Ray reserves for each model actor.
        threads_per_actor: torch threads in each actor (None: ``cpus_per_actor``, at least
            1; Ray's read and write tasks use the CPUs that are not reserved).
    """
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("the Ray engine needs the ray extra: pip install 'specsearch[ray]'"
                          ) from exc
    config = config or EmbedConfig()
    config.validate()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    actor_model = model if callable(model) or model is None else str(model)
    model = _load(model, "cpu")
    cat = open_catalog(catalog)
    out = Path(out)
    start = time.perf_counter()
    report = EmbedReport()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, num_cpus=None if address else num_cpus,
                 include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    report.startup_seconds = time.perf_counter() - start
    actors = _Actors(actor_model, concurrency, num_gpus, cpus_per_actor,
                     threads_per_actor or max(1, int(round(cpus_per_actor))), device)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = bool(config.progress)
        for modality in config.modalities or cat.modalities:
            writer = open_output(out, modality, model, cat.root, config)
            meta_cols = metadata_fields(cat.files(modality))
            pending = _pending(cat.files(modality), out / modality, model.model_hash, report)
            if pending:
                _embed_pending(ray, pending, modality, writer.schema, meta_cols,
                               model.model_hash, out, config, actors, report)
    finally:
        if started_here:
            ray.shutdown()
        report.seconds = time.perf_counter() - start
    skipped = report.rows_in - report.rows_written
    if skipped:
        report.rows_skipped["too few good pixels (masked / NaN / zero flux)"] += skipped
    return report


@dataclass(frozen=True)
class _Actors:
    """How the model actors run (see :func:`build_embeddings_ray`)."""

    model: Any
    concurrency: int
    num_gpus: float
    cpus_per_actor: float
    threads: int
    device: str


def _pending(files: list[Path], folder: Path, model_hash: str, report: EmbedReport
             ) -> list[tuple[Path, dict[str, Any], Path]]:
    """(input, signature, output) of the files still to embed; counts the reused ones."""
    pending = []
    for path in files:
        sig = input_signature(path)
        out_path = folder / f"{path.stem}.parquet"
        report.rows_in += sig["input_rows"]
        if output_is_current(out_path, sig, model_hash):
            report.files_reused += 1
            report.rows_written += pq.ParquetFile(out_path).metadata.num_rows
        else:
            pending.append((path, sig, out_path))
    return pending


def _embed_pending(ray: Any, pending: list[tuple[Path, dict[str, Any], Path]], modality: str,
                   schema: pa.Schema, meta_cols: list[pa.Field], model_hash: str, out: Path,
                   config: EmbedConfig, actors: _Actors, report: EmbedReport) -> None:
    """Run the pending files of one modality through Ray Data, then write each output."""
    staging = Path(tempfile.mkdtemp(prefix=".ray-staging-", dir=out))
    try:
        # Only the columns the output needs, when the files agree on them.
        needed = [read_columns(p, meta_cols) for p, _, _ in pending]
        ds = ray.data.read_parquet([str(p) for p, _, _ in pending], include_paths=True)
        if all(set(c) == set(needed[0]) for c in needed):  # projection pushed down
            ds = ds.select_columns([*needed[0], "path"])
        ds = ds.map_batches(
            EmbedActor, batch_size=auto_batch_size(modality, config.batch_size,
                                                   gpu=actors.num_gpus > 0),
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors.concurrency),
            num_gpus=actors.num_gpus, num_cpus=actors.cpus_per_actor,
            fn_constructor_kwargs=dict(
                model=actors.model, modality=modality, device=actors.device,
                with_residual=config.with_residual, meta_columns=meta_cols,
                schema_bytes=schema.serialize().to_pybytes(), precision=config.precision,
                threads=actors.threads, check_telluric=config.check_telluric))
        ds.write_parquet(str(staging), partition_cols=[INPUT_COLUMN])
        for path, sig, out_path in pending:
            table = _collect(staging, path, schema)
            write_output(table, out_path, sig, model_hash)
            report.rows_written += table.num_rows
            if "telluric_masked" in table.column_names:
                report.rows_telluric_masked += int(pc.sum(table.column("telluric_masked"))
                                                   .as_py() or 0)
            report.files_written += 1
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _collect(staging: Path, input_path: Path, schema: pa.Schema) -> pa.Table:
    """One input file's rows from the staging area, back in catalog order."""
    folder = staging / f"{INPUT_COLUMN}={input_path.stem}"
    parts = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not parts:
        return columns_to_table({f.name: [] for f in schema}, schema)
    table = pa.concat_tables([pq.read_table(p) for p in parts], promote_options="permissive")
    if INPUT_COLUMN in table.column_names:
        table = table.drop_columns([INPUT_COLUMN])
    order = pq.read_table(input_path, columns=["spectrum_id"]).column("spectrum_id")
    keys = pc.index_in(table.column("spectrum_id"), value_set=order.combine_chunks())
    table = table.take(pc.sort_indices(keys))
    return columns_to_table(table.select([f.name for f in schema if f.name in
                                          table.column_names] +
                                         [n for n in table.column_names
                                          if schema.get_field_index(n) < 0]), schema)
