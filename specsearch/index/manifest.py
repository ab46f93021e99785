"""Index manifests: what an index directory holds, checked before anything is searched.

Layout of an index directory::

    INDEX_DIR/manifest.json              IndexManifest: model hash, dimension, metric, modalities
    INDEX_DIR/<modality>/manifest.json   ModalityManifest: backend + knobs, tuning, shards
    INDEX_DIR/<modality>/shard-00000.faiss|.hnsw      the ANN index (rows numbered 0..n-1)
    INDEX_DIR/<modality>/shard-00000.vectors.npy      (n, D) stored vectors (exact re-rank,
                                                      lookup by source_id, compaction)
    INDEX_DIR/<modality>/shard-00000.rows.parquet     row -> source_id, spectrum_id and all
                                                      metadata / head predictions (filters)
    INDEX_DIR/<modality>/shard-00000.identity.npy     optional (n, d) identity vectors of a
                                                      model with an identity encoder
                                                      (same-star re-rank; NaN rows: none)
    INDEX_DIR/<modality>/shard-00000.deleted.npy      optional bool tombstones (n,)

Every shard file carries its byte size and sha256 in the manifest. One index per modality;
the top-level manifest ties them to one model hash, so cross-modal search is checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specsearch.errors import SearchIndexError
from specsearch.fsutil import write_json_atomic
from specsearch.index.config import METRIC, IndexConfig, SearchKnobs, config_from_dict
from specsearch.index.hashing import SHARD_HASH

FORMAT = "specsearch-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path, *, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class FileEntry:
    """One file of a shard: name relative to the modality folder, size and sha256."""

    name: str
    bytes: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> "FileEntry":
        return cls(name=path.name, bytes=path.stat().st_size, sha256=sha256_file(path))

    def verify(self, folder: Path, *, checksum: bool) -> None:
        path = folder / self.name
        if not path.is_file():
            raise SearchIndexError(f"{path}: shard file listed in the manifest is missing; "
                                   f"the index directory is incomplete: rebuild it")
        size = path.stat().st_size
        if size != self.bytes:
            raise SearchIndexError(f"{path}: size {size} B, manifest says {self.bytes} B; the "
                                   f"shard is truncated or was replaced: rebuild the index")
        if checksum and sha256_file(path) != self.sha256:
            raise SearchIndexError(f"{path}: sha256 does not match the manifest; the shard "
                                   f"is corrupt: rebuild the index (or restore it)")


@dataclass
class ShardEntry:
    """One shard: its row count (incl. deleted rows), deletions and files."""

    shard: int
    count: int
    deleted: int
    index: FileEntry
    vectors: FileEntry
    rows: FileEntry
    tombstones: FileEntry | None = None
    identity: FileEntry | None = None

    def files(self) -> list[FileEntry]:
        return [f for f in (self.index, self.vectors, self.rows, self.tombstones,
                            self.identity) if f]

    @property
    def live(self) -> int:
        return self.count - self.deleted

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ShardEntry":
        files = {k: (FileEntry(**d[k]) if d.get(k) else None)
                 for k in ("index", "vectors", "rows", "tombstones", "identity")}
        return cls(shard=int(d["shard"]), count=int(d["count"]), deleted=int(d["deleted"]),
                   **files)


@dataclass
class Tuning:
    """How the query knobs were chosen: measured recall@k on held-out rows vs exact search."""

    target_recall: float | None
    measured_recall: float
    k: int
    n_queries: int
    knobs: dict[str, Any]
    method: str = ("held-out stored rows (masked out of the search) vs exact inner product "
                   "over the other rows")


@dataclass
class ModalityManifest:
    """The manifest of one modality's index (``INDEX_DIR/<modality>/manifest.json``)."""

    modality: str
    model_hash: str
    embedding_dim: int
    backend: IndexConfig
    search: SearchKnobs
    n_shards: int
    shards: list[ShardEntry]
    vector_dtype: str = "float32"
    columns: list[str] = field(default_factory=list)
    identity_dim: int = 0
    """Dimension of the shards' identity vectors (``shard-*.identity.npy``); 0: none."""
    tuning: Tuning | None = None
    metric: str = METRIC
    shard_hash: str = SHARD_HASH
    format_version: int = FORMAT_VERSION

    @property
    def has_identity(self) -> bool:
        """Whether the shards hold identity vectors (an index of the previous layout kept
        them as a rows column, which :class:`specsearch.index.shard.Shard` reads alike)."""
        from specsearch.io.embeddings import IDENTITY_COLUMN
        return self.identity_dim > 0 or IDENTITY_COLUMN in self.columns

    @property
    def count(self) -> int:
        """Live (not deleted) rows."""
        return sum(s.live for s in self.shards)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["backend"] = self.backend.to_dict()
        d["search"] = self.search.to_dict()
        d["count"] = self.count
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: Path) -> "ModalityManifest":
        try:
            if d.get("format_version") != FORMAT_VERSION:
                raise SearchIndexError(
                    f"{where}: index format version {d.get('format_version')!r}, this "
                    f"specsearch reads version {FORMAT_VERSION}: rebuild the index")
            if d.get("metric") != METRIC or d.get("shard_hash") != SHARD_HASH:
                raise SearchIndexError(
                    f"{where}: metric {d.get('metric')!r} / shard hash {d.get('shard_hash')!r}"
                    f"; expected {METRIC!r} / {SHARD_HASH!r}")
            tuning = Tuning(**d["tuning"]) if d.get("tuning") else None
            return cls(modality=d["modality"], model_hash=d["model_hash"],
                       embedding_dim=int(d["embedding_dim"]),
                       backend=config_from_dict(d["backend"]),
                       search=SearchKnobs.from_dict(d["search"]), n_shards=int(d["n_shards"]),
                       shards=[ShardEntry.from_dict(s) for s in d["shards"]],
                       vector_dtype=d.get("vector_dtype", "float32"),
                       columns=list(d.get("columns", [])),
                       identity_dim=int(d.get("identity_dim", 0)), tuning=tuning)
        except (KeyError, TypeError, ValueError) as exc:
            raise SearchIndexError(f"{where}: malformed manifest ({type(exc).__name__}: "
                                   f"{exc}); rebuild the index") from None


@dataclass
class IndexManifest:
    """The top-level manifest (``INDEX_DIR/manifest.json``)."""

    model_hash: str
    embedding_dim: int
    modalities: list[str]
    label_names: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    source: str = ""
    created: str = ""
    generation: int = 1
    metric: str = METRIC
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: Path) -> "IndexManifest":
        if d.get("format") != FORMAT:
            raise SearchIndexError(f"{where}: not a specsearch index manifest "
                                   f"(format {d.get('format')!r})")
        if d.get("format_version") != FORMAT_VERSION:
            raise SearchIndexError(
                f"{where}: index format version {d.get('format_version')!r}, this specsearch "
                f"reads version {FORMAT_VERSION}: rebuild the index")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except TypeError as exc:
            raise SearchIndexError(f"{where}: malformed manifest ({exc})") from None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a manifest atomically (:func:`specsearch.fsutil.write_json_atomic`), keys in
    the order given."""
    write_json_atomic(path, data, sort_keys=False)


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SearchIndexError(f"{path}: no index manifest here; build one with "
                               f"`specsearch index build --embeddings EMB --out DIR`")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SearchIndexError(f"{path}: manifest is not valid JSON ({exc}); the index is "
                               f"corrupt: rebuild it") from None


def read_index_manifest(root: Path) -> IndexManifest:
    return IndexManifest.from_dict(read_json(root / MANIFEST), root / MANIFEST)


def read_modality_manifest(root: Path, modality: str, top: IndexManifest) -> ModalityManifest:
    """Read and cross-check one modality's manifest against the top-level one."""
    path = root / modality / MANIFEST
    m = ModalityManifest.from_dict(read_json(path), path)
    if m.model_hash != top.model_hash:
        raise SearchIndexError(
            f"{path}: built from model {m.model_hash[:16]}..., but the index directory is for "
            f"model {top.model_hash[:16]}...; embeddings of different models are not "
            f"comparable: rebuild this modality's index from the same model's embeddings")
    if m.embedding_dim != top.embedding_dim or m.modality != modality:
        raise SearchIndexError(
            f"{path}: modality {m.modality!r} dim {m.embedding_dim}; expected {modality!r} dim "
            f"{top.embedding_dim}")
    if len(m.shards) != m.n_shards:
        raise SearchIndexError(f"{path}: lists {len(m.shards)} shards, n_shards={m.n_shards}")
    return m
