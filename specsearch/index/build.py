"""Build an index directory from an embeddings dataset (or in-memory arrays).

Streaming, two passes over each modality's Parquet parts: the first reads ``source_id`` and
the embeddings to count the valid rows of each shard (shard = splitmix64(source_id) mod N),
the second writes each shard's vectors into a pre-sized memory-mapped ``.npy`` and its
metadata rows into a Parquet writer. Then each shard's ANN index is trained on a sample of
its own vectors and filled in chunks, one shard at a time, so peak memory is one shard's
index plus a chunk. Everything is written into a temp directory next to the target and
swapped in atomically (:mod:`specsearch.index.atomic`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from specsearch.errors import CatalogError, ConfigError, SearchIndexError
from specsearch.io.embeddings import IDENTITY_COLUMN, VECTOR_COLUMNS, identity_vectors
from specsearch.fsutil import now_iso
from specsearch.index.atomic import AtomicDirectory
from specsearch.index.backends import Backend, make_backend
from specsearch.index.config import IndexConfig, make_config
from specsearch.index.embedding_sources import EmbeddingSource
from specsearch.index.hashing import shard_of
from specsearch.index.manifest import (MANIFEST, FileEntry, IndexManifest, ModalityManifest,
                                       ShardEntry, read_index_manifest, write_json)
from specsearch.index.threads import faiss_threads
from specsearch.io.parquet import list_column_to_numpy

log = logging.getLogger(__name__)

VECTOR_DTYPES = ("float32", "float16")


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """How to build (CLI: ``specsearch index build``).

    Attributes:
        kind: a backend kind (:data:`specsearch.index.config.KINDS`) or ``auto``.
        config: an explicit backend config (overrides ``kind`` and ``backend_options``).
        backend_options: knobs for ``kind`` (e.g. ``{"m": 32, "storage": "fp16"}``).
        shards: shards a modality (rows assigned by splitmix64(source_id) mod shards).
        memory_budget: bytes of RAM the index may use (``auto``); None = half the RAM.
        target_recall: tune query knobs to this recall@``tune_k`` (None: keep defaults and
            only measure).
        tune_queries: held-out rows used to measure recall.
        vector_dtype: stored vectors (``float32`` exact; ``float16`` halves the disk).
        threads: build threads (None: all cores).
        modalities: subset of the dataset's modalities (None: all).
    """

    kind: str = "auto"
    config: IndexConfig | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)
    shards: int = 1
    memory_budget: int | None = None
    target_recall: float | None = 0.95
    tune_k: int = 10
    tune_queries: int = 500
    vector_dtype: str = "float32"
    threads: int | None = None
    batch_size: int = 65_536
    modalities: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ConfigError(f"--shards must be >= 1, got {self.shards}")
        if self.vector_dtype not in VECTOR_DTYPES:
            raise ConfigError(f"vector dtype must be one of {VECTOR_DTYPES}, "
                              f"got {self.vector_dtype!r}")
        if self.target_recall is not None and not 0 < self.target_recall <= 1:
            raise ConfigError(f"--target-recall must be in (0, 1], got {self.target_recall}")


def shard_stem(shard: int) -> str:
    return f"shard-{shard:05d}"


def normalise_rows(vectors: np.ndarray, where: str) -> np.ndarray:
    """L2-normalise float32 rows; zero or non-finite rows are an error naming ``where``."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1)
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        raise SearchIndexError(f"{where}: {int(bad.sum())} embedding(s) are zero or "
                               f"non-finite; drop rows whose spectra the model rejected")
    return v / norms[:, None]


def auto_chosen(options: BuildOptions) -> bool:
    """True when the builder picks the backend (``--kind auto``, no explicit config)."""
    return options.config is None and options.kind == "auto"


def resolve_config(options: BuildOptions, n_per_shard: int, dim: int,
                   sample: np.ndarray | None = None) -> IndexConfig:
    """The backend config of a build: explicit, named or (``auto``) chosen for the size,
    memory budget and, given ``sample`` rows of the data, how concentrated their variance
    is (:func:`specsearch.index.tuning.choose_config`)."""
    from specsearch.index.tuning import choose_config  # tuning imports reader, not build
    if options.config is not None:
        config = options.config
    elif options.kind == "auto":
        config = choose_config(n_per_shard * options.shards, dim, options.memory_budget,
                               sample, rows_per_shard=n_per_shard)
        if options.backend_options:
            knobs = {k: v for k, v in config.to_dict().items() if k != "kind"}
            config = make_config(config.kind, **{**knobs, **options.backend_options})
    else:
        config = make_config(options.kind, **options.backend_options)
    return config.resolved(n_per_shard)


def sample_rows(folder: Path, counts: list[int], take: int, *, seed: int = 0
                ) -> np.ndarray:
    """Up to ``take`` random rows (float32) of the spooled shard vectors in ``folder``,
    spread over the shards in proportion to their rows."""
    total = sum(counts)
    rng = np.random.default_rng(seed)
    parts = []
    for s, count in enumerate(counts):
        want = min(count, int(round(take * count / max(total, 1))))
        if want:
            vectors = np.load(folder / f"{shard_stem(s)}.vectors.npy", mmap_mode="r")
            rows = np.sort(rng.choice(count, size=want, replace=False))
            parts.append(np.asarray(vectors[rows], dtype=np.float32))
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def train_and_fill(backend: Backend, vectors: np.ndarray, *, threads: int | None,
                   chunk: int = 65_536, seed: int = 0,
                   untrained: np.ndarray | None = None) -> None:
    """Train ``backend`` on a sample of ``vectors`` (rows; never the sorted rows
    ``untrained``, kept for tuning, unless nothing else is left) and add them all, in
    chunks."""
    n = len(vectors)
    train_size = getattr(backend.config, "train_size", 100_000)
    rng = np.random.default_rng(seed)
    pool = (np.delete(np.arange(n), untrained) if untrained is not None and len(untrained)
            and len(untrained) < n else None)
    if pool is None:
        sample_rows = np.sort(rng.choice(n, size=min(n, train_size), replace=False))
    else:
        sample_rows = np.sort(rng.choice(pool, size=min(len(pool), train_size), replace=False))
    with faiss_threads(threads):
        if n:
            backend.train(np.asarray(vectors[sample_rows], dtype=np.float32))
        for start in range(0, n, chunk):
            backend.add(np.asarray(vectors[start:start + chunk], dtype=np.float32),
                        threads=threads)


def write_shard(folder: Path, shard: int, backend: Backend, *, deleted: np.ndarray | None,
                vectors: np.ndarray | None = None, rows: pa.Table | None = None,
                identity: np.ndarray | None = None) -> ShardEntry:
    """Save ``backend`` (and ``vectors``/``rows``/``identity`` unless already written under
    their names) as shard ``shard`` in ``folder``; return its manifest entry with sizes and
    checksums. The identity file is listed when there is one (written or spooled)."""
    stem = shard_stem(shard)
    index_path = folder / f"{stem}{backend.file_suffix}"
    backend.save(index_path)
    vec_path, rows_path = folder / f"{stem}.vectors.npy", folder / f"{stem}.rows.parquet"
    id_path = folder / f"{stem}.identity.npy"
    if vectors is not None:
        np.save(vec_path, vectors)
    if rows is not None:
        pq.write_table(rows, rows_path)
    if identity is not None:
        np.save(id_path, identity)
    tomb = None
    n_deleted = 0
    if deleted is not None and deleted.any():
        tomb_path = folder / f"{stem}.deleted.npy"
        np.save(tomb_path, deleted.astype(bool))
        tomb = FileEntry.of(tomb_path)
        n_deleted = int(deleted.sum())
    return ShardEntry(shard=shard, count=backend.ntotal, deleted=n_deleted,
                      index=FileEntry.of(index_path), vectors=FileEntry.of(vec_path),
                      rows=FileEntry.of(rows_path), tombstones=tomb,
                      identity=FileEntry.of(id_path) if id_path.is_file() else None)


def _spool_modality(source: EmbeddingSource, modality: str, folder: Path,
                    options: BuildOptions) -> tuple[list[int], list[str], int]:
    """Pass 1 + 2: per-shard vectors (.npy), rows (.parquet) and, when the embeddings
    carry them, identity vectors (.npy, memory-mapped at query time like the vectors).
    Returns counts, row columns, identity dimension (0: none)."""
    dim, n_shards = source.embedding_dim, options.shards
    counts = np.zeros(n_shards, np.int64)
    for batch in source.iter_batches(modality, ["source_id"], options.batch_size):
        counts += np.bincount(shard_of(batch.column("source_id").to_numpy(), n_shards),
                              minlength=n_shards)
    schema = source.schema(modality)
    if "embedding" not in schema.names or "source_id" not in schema.names:
        raise CatalogError(f"embeddings of {modality!r} need columns embedding and source_id;"
                           f" found {schema.names}")
    row_schema = pa.schema([f for f in schema if f.name not in VECTOR_COLUMNS])
    id_dim = 0
    if IDENTITY_COLUMN in schema.names:
        id_type = schema.field(IDENTITY_COLUMN).type
        if not pa.types.is_fixed_size_list(id_type):
            raise CatalogError(f"embeddings of {modality!r}: column {IDENTITY_COLUMN!r} must "
                               f"be a fixed-size list of floats; found {id_type}")
        id_dim = id_type.list_size
    vec_files = [np.lib.format.open_memmap(folder / f"{shard_stem(s)}.vectors.npy", mode="w+",
                                           dtype=options.vector_dtype, shape=(int(c), dim))
                 for s, c in enumerate(counts)]
    id_files = [np.lib.format.open_memmap(folder / f"{shard_stem(s)}.identity.npy", mode="w+",
                                          dtype=options.vector_dtype, shape=(int(c), id_dim))
                for s, c in enumerate(counts)] if id_dim else []
    writers = [pq.ParquetWriter(folder / f"{shard_stem(s)}.rows.parquet", row_schema)
               for s in range(n_shards)]
    filled = np.zeros(n_shards, np.int64)
    try:
        for b, batch in enumerate(source.iter_batches(modality, None, options.batch_size)):
            vecs = normalise_rows(list_column_to_numpy(batch.column("embedding"), np.float32),
                                  f"{modality} batch {b}")
            shards = shard_of(batch.column("source_id").to_numpy(), n_shards)
            table = pa.Table.from_batches([batch])
            ident = identity_vectors(table) if id_dim else None
            table = table.select(row_schema.names).cast(row_schema)
            for s in np.unique(shards):
                sel = np.flatnonzero(shards == s)
                vec_files[s][filled[s]:filled[s] + len(sel)] = vecs[sel]
                if ident is not None:
                    id_files[s][filled[s]:filled[s] + len(sel)] = ident[sel]
                writers[s].write_table(table.take(pa.array(sel)))
                filled[s] += len(sel)
    finally:
        for w in writers:
            w.close()
    if not np.array_equal(filled, counts):
        raise CatalogError(f"{modality}: the dataset changed while it was read "
                           f"({filled.sum()} rows on pass 2, {counts.sum()} on pass 1)")
    for v in (*vec_files, *id_files):
        v.flush()
    del vec_files, id_files
    return [int(c) for c in counts], row_schema.names, id_dim


def build_modality(source: EmbeddingSource, modality: str, folder: Path,
                   options: BuildOptions, *, atomic: AtomicDirectory | None = None
                   ) -> ModalityManifest:
    """Write one modality's shards and manifest into ``folder`` and tune its knobs."""
    from specsearch.index.reader import ModalityIndex
    from specsearch.index.shard import Shard
    from specsearch.index.tuning import tune, tuning_rows, tuning_take

    folder.mkdir(parents=True, exist_ok=True)
    counts, columns, id_dim = _spool_modality(source, modality, folder, options)
    if atomic:
        atomic.checkpoint(f"after_vectors:{modality}")
    dim = source.embedding_dim
    sample = None
    if auto_chosen(options) and sum(counts):
        from specsearch.index.tuning import AUTO_SAMPLE_ROWS
        sample = sample_rows(folder, counts, AUTO_SAMPLE_ROWS)
    config = resolve_config(options, max(1, sum(counts) // options.shards), dim, sample)
    del sample
    entries = []
    for s, count in enumerate(counts):
        vectors = np.load(folder / f"{shard_stem(s)}.vectors.npy", mmap_mode="r")
        backend = make_backend(config, dim)
        held_out = tuning_rows(count, None, tuning_take(options.tune_queries, count,
                                                        sum(counts)), shard=s)
        train_and_fill(backend, vectors, threads=options.threads, seed=s, untrained=held_out)
        entries.append(write_shard(folder, s, backend, deleted=None))
        del backend, vectors
        log.info("%s shard %d/%d: %d rows (%s)", modality, s + 1, len(counts), count,
                 config.kind)
        if atomic:
            atomic.checkpoint(f"after_shard:{modality}:{s}")
    manifest = ModalityManifest(
        modality=modality, model_hash=source.model_hash, embedding_dim=dim, backend=config,
        search=config.search_defaults(), n_shards=options.shards, shards=entries,
        vector_dtype=options.vector_dtype, columns=columns, identity_dim=id_dim)
    index = ModalityIndex(folder, manifest,
                          [Shard(folder, e, manifest, mmap=True) for e in entries])
    with faiss_threads(options.threads):
        manifest.tuning = tune(index, target_recall=options.target_recall, k=options.tune_k,
                               n_queries=options.tune_queries, threads=options.threads)
    manifest.search = index.knobs
    write_json(folder / MANIFEST, manifest.to_dict())
    return manifest


def build_index(embeddings: str | Path | EmbeddingSource, out: str | Path,
                options: BuildOptions | None = None, *,
                crash_at: str | None = None) -> IndexManifest:
    """Build ``out`` (an index directory) from an embeddings dataset or source.

    The previous contents of ``out``, if any, stay intact until the new directory is
    complete, then are replaced in one atomic step. ``crash_at`` (tests) names a point
    (``after_vectors:<modality>``, ``after_shard:<modality>:<i>``, ``before_manifest``,
    ``before_swap``) at which to stop as if the process had died.
    """
    options = options or BuildOptions()
    if isinstance(embeddings, (str, Path)):
        from specsearch.io.embeddings import open_embeddings
        source: EmbeddingSource = open_embeddings(embeddings)
    else:
        source = embeddings
    modalities = list(options.modalities or source.modalities)
    missing = sorted(set(modalities) - set(source.modalities))
    if missing or not modalities:
        raise CatalogError(f"embeddings have modalities {source.modalities}; asked for "
                           f"{modalities}")
    out = Path(out)
    generation = 1
    if (out / MANIFEST).is_file():
        try:
            generation = read_index_manifest(out).generation + 1
        except SearchIndexError:
            pass
    with AtomicDirectory(out, crash_at=crash_at) as tmp:
        for modality in modalities:
            build_modality(source, modality, tmp.path / modality, options, atomic=tmp)
        tmp.checkpoint("before_manifest")
        manifest = IndexManifest(
            model_hash=source.model_hash, embedding_dim=source.embedding_dim,
            modalities=modalities, label_names=list(source.label_names),
            class_names=list(getattr(source, "manifest", {}).get("class_names", [])),
            source=str(getattr(source, "root", "") or "arrays"), created=now_iso(),
            generation=generation)
        write_json(tmp.path / MANIFEST, {**manifest.__dict__})
        tmp.commit()
    return manifest
