"""Incremental updates: add embeddings, delete by source_id, compact — without a full rebuild.

Each update writes a new generation of the index directory atomically: changed shards are
rewritten, every other file is hard-linked from the current directory (cheap, and safe
because files are never modified in place), and the new directory is swapped in.

* **add**: new rows go to the shard their source_id hashes to and are appended to that
  shard's ANN index (all backends support appends; IVF/PQ/SQ codebooks trained at build time
  are reused). A row whose ``spectrum_id`` is already indexed replaces it (the old row is
  tombstoned), so re-embedding a spectrum is an upsert.
* **delete**: rows of the given source_ids are tombstoned (a ``.deleted.npy`` mask per
  shard). Searches exclude tombstoned rows through the same ID-selector path as filters, so
  recall is unaffected; only the changed tombstone files are written. We tombstone for every
  backend (HNSW graphs cannot delete; uniform handling keeps row numbering stable).
* **compact**: shards with tombstones are rebuilt from their live stored vectors (IVF
  indexes keep their trained cells; graphs are rebuilt for that shard only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from specsearch.errors import SearchIndexError
from specsearch.fsutil import now_iso
from specsearch.index.atomic import AtomicDirectory, link_or_copy, recover
from specsearch.index.build import normalise_rows, shard_stem, train_and_fill, write_shard
from specsearch.index.embedding_sources import EmbeddingSource
from specsearch.index.hashing import shard_of
from specsearch.index.manifest import (MANIFEST, IndexManifest, ModalityManifest, ShardEntry,
                                       read_index_manifest, read_modality_manifest, write_json)
from specsearch.index.shard import Shard
from specsearch.io.embeddings import VECTOR_COLUMNS, identity_vectors
from specsearch.io.parquet import list_column_to_numpy

log = logging.getLogger(__name__)


@dataclass
class UpdateReport:
    """What an update changed, per modality."""

    added: dict[str, int] = field(default_factory=dict)
    replaced: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    not_found: dict[str, int] = field(default_factory=dict)
    compacted_shards: dict[str, list[int]] = field(default_factory=dict)
    generation: int = 0


def _open_manifests(root: Path) -> tuple[IndexManifest, dict[str, ModalityManifest]]:
    recover(root)
    top = read_index_manifest(root)
    return top, {m: read_modality_manifest(root, m, top) for m in top.modalities}


def _rewrite(root: Path, top: IndexManifest, manifests: dict[str, ModalityManifest],
             new_entries: dict[str, dict[int, ShardEntry]], writer, crash_at: str | None
             ) -> int:
    """Write a new generation: ``writer(tmp_folder, modality, shard_no) -> ShardEntry`` for
    the shards listed in ``new_entries`` (values filled in here), links for the rest."""
    with AtomicDirectory(root, crash_at=crash_at) as tmp:
        for modality, manifest in manifests.items():
            src, dst = root / modality, tmp.path / modality
            dst.mkdir()
            changed = new_entries.get(modality, {})
            shards = []
            for entry in manifest.shards:
                if entry.shard in changed:
                    new = writer(dst, modality, entry.shard)
                    # Unchanged big files of a changed shard (e.g. delete only touches the
                    # tombstones) are linked rather than rewritten.
                    shards.append(new)
                else:
                    for f in entry.files():
                        link_or_copy(src / f.name, dst / f.name)
                    shards.append(entry)
                tmp.checkpoint(f"after_shard:{modality}:{entry.shard}")
            manifest.shards = shards
            write_json(dst / MANIFEST, manifest.to_dict())
        tmp.checkpoint("before_manifest")
        top.generation += 1
        top.created = now_iso()
        write_json(tmp.path / MANIFEST, {**top.__dict__})
        tmp.commit()
    return top.generation


def _kept_identity(manifest: ModalityManifest, shard: Shard,
                   live: np.ndarray | None = None) -> np.ndarray | None:
    """The identity vectors a rewritten shard keeps (its ``live`` rows, default all), and
    the manifest's identity dimension set from them (an index of the previous layout kept
    them in the rows table: a rewritten shard moves them to its own file)."""
    if shard.identity is None:
        return None
    manifest.identity_dim = int(shard.identity.shape[1])
    return np.asarray(shard.identity if live is None else shard.identity[live])


def _align(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """``table`` with exactly ``schema``'s columns (missing ones null, extra ones dropped)."""
    cols = []
    for f in schema:
        if f.name in table.column_names:
            cols.append(table.column(f.name).cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    extra = sorted(set(table.column_names) - set(schema.names) - set(VECTOR_COLUMNS))
    if extra:
        log.warning("%s: columns %s are not in the index and are dropped", where, extra)
    return pa.Table.from_arrays(cols, schema=schema)


def add_embeddings(index_dir: str | Path, embeddings: str | Path | EmbeddingSource, *,
                   threads: int | None = None, crash_at: str | None = None) -> UpdateReport:
    """Append the rows of ``embeddings`` (same model) to an index, upserting by spectrum_id."""
    root = Path(index_dir)
    if isinstance(embeddings, (str, Path)):
        from specsearch.io.embeddings import open_embeddings
        source: EmbeddingSource = open_embeddings(embeddings)
    else:
        source = embeddings
    top, manifests = _open_manifests(root)
    if source.model_hash != top.model_hash:
        raise SearchIndexError(
            f"{root}: index built from model {top.model_hash[:16]}..., the new embeddings "
            f"come from model {source.model_hash[:16]}...; vectors of different models are "
            f"not comparable: rebuild the index with `specsearch index build`")
    unknown = sorted(set(source.modalities) - set(manifests))
    if unknown:
        raise SearchIndexError(f"{root}: no index for modality(ies) {unknown}; rebuild the "
                               f"index to add a modality")
    report = UpdateReport()
    pending: dict[str, dict[int, tuple[np.ndarray, pa.Table]]] = {}
    for modality in source.modalities:
        manifest = manifests[modality]
        parts: dict[int, list[tuple[np.ndarray, pa.Table]]] = {}
        for batch in source.iter_batches(modality):
            vecs = normalise_rows(list_column_to_numpy(batch.column("embedding"), np.float32),
                                  f"new {modality} embeddings")
            if vecs.shape[1] != manifest.embedding_dim:
                raise SearchIndexError(f"new {modality} embeddings have dimension "
                                       f"{vecs.shape[1]}, the index {manifest.embedding_dim}")
            table = pa.Table.from_batches([batch])
            shards = shard_of(table.column("source_id").to_numpy(), manifest.n_shards)
            for s in np.unique(shards):
                sel = np.flatnonzero(shards == s)
                parts.setdefault(int(s), []).append((vecs[sel], table.take(pa.array(sel))))
        pending[modality] = {s: (np.concatenate([p[0] for p in ps]),
                                 pa.concat_tables([p[1] for p in ps])) for s, ps in parts.items()}
        report.added[modality] = sum(len(v) for v, _ in pending[modality].values())
        report.replaced[modality] = 0

    def writer(folder: Path, modality: str, s: int) -> ShardEntry:
        manifest = manifests[modality]
        entry = manifest.shards[s]
        shard = Shard(root / modality, entry, manifest, mmap=False)
        new_vecs, new_rows = pending[modality][s]
        identity = _kept_identity(manifest, shard)
        if identity is not None:
            new_id = identity_vectors(new_rows)
            if new_id is None:
                new_id = np.full((len(new_vecs), identity.shape[1]), np.nan)
            if new_id.shape[1] != identity.shape[1]:
                raise SearchIndexError(f"new {modality} identity vectors have dimension "
                                       f"{new_id.shape[1]}, the index {identity.shape[1]}")
            identity = np.concatenate([identity, new_id.astype(identity.dtype)])
        new_rows = _align(new_rows, shard.rows.schema, f"new {modality} rows")
        deleted = np.zeros(shard.count + len(new_vecs), bool)
        if shard.deleted is not None:
            deleted[:shard.count] = shard.deleted
        # Upsert: an already indexed spectrum_id is tombstoned in favour of the new row.
        old_ids = shard.column("spectrum_id")
        dup = np.isin(old_ids, new_rows.column("spectrum_id").to_numpy(zero_copy_only=False))
        dup &= ~deleted[:shard.count]
        deleted[:shard.count] |= dup
        report.replaced[modality] += int(dup.sum())
        shard.backend.add(new_vecs, threads=threads)
        vectors = np.concatenate([shard.vectors, new_vecs.astype(shard.vectors.dtype)])
        rows = pa.concat_tables([shard.rows, new_rows])
        return write_shard(folder, s, shard.backend, deleted=deleted, vectors=vectors,
                           rows=rows, identity=identity)

    changed = {m: {s: None for s in p} for m, p in pending.items()}
    report.generation = _rewrite(root, top, manifests, changed, writer, crash_at)
    return report


def delete_sources(index_dir: str | Path, source_ids: np.ndarray | list[int], *,
                   modalities: list[str] | None = None,
                   crash_at: str | None = None) -> UpdateReport:
    """Tombstone every row of ``source_ids`` (in ``modalities``, default all)."""
    root = Path(index_dir)
    ids = np.unique(np.asarray(source_ids, dtype=np.int64))
    top, manifests = _open_manifests(root)
    selected = {m: manifests[m] for m in (modalities or list(manifests))
                if m in manifests}
    report = UpdateReport()
    masks: dict[str, dict[int, np.ndarray]] = {}
    for modality, manifest in selected.items():
        shards = shard_of(ids, manifest.n_shards)
        masks[modality] = {}
        found = np.zeros(len(ids), bool)
        for s in np.unique(shards):
            entry = manifest.shards[int(s)]
            shard = Shard(root / modality, entry, manifest, mmap=True)
            sid = shard.column("source_id").astype(np.int64)
            hit = np.isin(sid, ids[shards == s])
            if shard.deleted is not None:
                hit &= ~shard.deleted
            if hit.any():
                found |= np.isin(ids, sid[hit])
                deleted = hit if shard.deleted is None else (hit | shard.deleted)
                masks[modality][int(s)] = deleted
        report.deleted[modality] = int(sum(m.sum() for m in masks[modality].values())
                                       - sum(manifest.shards[s].deleted
                                             for s in masks[modality]))
        report.not_found[modality] = int((~found).sum())

    def writer(folder: Path, modality: str, s: int) -> ShardEntry:
        manifest = manifests[modality]
        entry = manifest.shards[s]
        src = root / modality
        for f in (entry.index, entry.vectors, entry.rows, entry.identity):
            if f is not None:
                link_or_copy(src / f.name, folder / f.name)
        tomb = folder / f"{shard_stem(s)}.deleted.npy"
        np.save(tomb, masks[modality][s])
        from specsearch.index.manifest import FileEntry
        return ShardEntry(shard=s, count=entry.count, deleted=int(masks[modality][s].sum()),
                          index=entry.index, vectors=entry.vectors, rows=entry.rows,
                          tombstones=FileEntry.of(tomb), identity=entry.identity)

    if not any(masks.values()):
        report.generation = top.generation
        return report
    report.generation = _rewrite(root, top, manifests, masks, writer, crash_at)
    return report


def compact(index_dir: str | Path, *, modalities: list[str] | None = None,
            min_deleted_fraction: float = 0.0, threads: int | None = None,
            crash_at: str | None = None) -> UpdateReport:
    """Rebuild every shard whose deleted fraction exceeds ``min_deleted_fraction`` from its
    live rows, dropping the tombstones."""
    root = Path(index_dir)
    top, manifests = _open_manifests(root)
    todo: dict[str, dict[int, None]] = {}
    for modality, manifest in manifests.items():
        if modalities and modality not in modalities:
            continue
        todo[modality] = {e.shard: None for e in manifest.shards
                          if e.deleted and e.deleted / max(e.count, 1) > min_deleted_fraction}
    report = UpdateReport(compacted_shards={m: sorted(t) for m, t in todo.items()})

    def writer(folder: Path, modality: str, s: int) -> ShardEntry:
        manifest = manifests[modality]
        # A private (not memory-mapped) copy: an IVF index is cloned and emptied below.
        shard = Shard(root / modality, manifest.shards[s], manifest, mmap=False)
        live = np.flatnonzero(~shard.deleted) if shard.deleted is not None else \
            np.arange(shard.count)
        vectors = np.asarray(shard.vectors[live])
        backend = shard.backend.empty_like() if hasattr(shard.backend, "is_ivf") and \
            shard.backend.is_ivf else None
        if backend is None:
            from specsearch.index.backends import make_backend
            backend = make_backend(manifest.backend, manifest.embedding_dim)
        train_and_fill(backend, vectors, threads=threads, seed=s)
        backend.set_default_knobs(manifest.search)
        return write_shard(folder, s, backend, deleted=None, vectors=vectors,
                           rows=shard.rows.take(pa.array(live)),
                           identity=_kept_identity(manifest, shard, live))

    if not any(todo.values()):
        report.generation = top.generation
        return report
    report.generation = _rewrite(root, top, manifests, todo, writer, crash_at)
    return report
