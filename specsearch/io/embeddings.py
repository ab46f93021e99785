"""The embeddings dataset: what the embedding builder writes and the indexes are built from.

Layout::

    EMB/embeddings.json           format version, model hash, dimension, dtype, label names
    EMB/lamost/part-00000.parquet
    EMB/xp/part-00000.parquet

Columns: ``spectrum_id``, ``source_id``, ``modality``, ``embedding`` (fixed-size list,
L2-normalised), for each label ``L``: ``L_pred`` and ``L_err`` (1 sigma), ``identity``
(fixed-size list, L2-normalised) when the model has identity vectors for the modality
(``identity_dims`` in the manifest; see ``SpecModel.identity_numpy``), and any metadata
the builder copies from the catalog for filters and evaluation (``ra``, ``dec``, ``snr``,
``mag_g``, true labels, ``population``...). A dataset holds the output of exactly one model:
writers refuse to add rows made by another model hash.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from specsearch.errors import CatalogError
from specsearch.fsutil import now_iso, write_json_atomic
from specsearch.io.parquet import (
    FORMAT_VERSION,
    DatasetWriter,
    ModalityWriter,
    PartitionedDataset,
    fixed_list_type,
    list_column_to_numpy,
)

__all__ = ["Embeddings", "EmbeddingsWriter", "embeddings_schema", "open_embeddings",
           "IDENTITY_COLUMN", "VECTOR_COLUMNS", "identity_vectors"]

EMBEDDING_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
IDENTITY_COLUMN = "identity"
"""The identity vectors' column: same-instrument "which star" vectors that same-star
searches re-rank by (:meth:`specsearch.query.SearchEngine.search`); never shown in results."""
VECTOR_COLUMNS = ("embedding", IDENTITY_COLUMN)


def identity_vectors(table: Any) -> np.ndarray | None:
    """(n, d) float32 identity vectors of a table of embeddings rows (NaN rows where null),
    or None when it has no identity column."""
    if IDENTITY_COLUMN not in table.column_names:
        return None
    col = table.column(IDENTITY_COLUMN).combine_chunks()
    size = col.type.list_size
    # The child values of every slot, null ones included (then overwritten with NaN).
    flat = col.values.slice(col.offset * size, len(col) * size)
    vecs = flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), size)
    if col.null_count:
        vecs = vecs.copy()
        vecs[col.is_null().to_numpy(zero_copy_only=False)] = np.nan
    return vecs


def embeddings_schema(embedding_dim: int, label_names: Sequence[str],
                      dtype: str = "float32", identity_dim: int = 0) -> pa.Schema:
    """Required columns of an embeddings dataset (metadata columns are appended freely);
    ``identity_dim`` > 0 adds the nullable ``identity`` column."""
    if dtype not in EMBEDDING_DTYPES:
        raise CatalogError(f"embedding dtype must be one of {sorted(EMBEDDING_DTYPES)}, "
                           f"got {dtype!r}")
    fields = [
        pa.field("spectrum_id", pa.string(), nullable=False),
        pa.field("source_id", pa.int64(), nullable=False),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("embedding", fixed_list_type(embedding_dim, EMBEDDING_DTYPES[dtype]),
                 nullable=False),
    ]
    for name in label_names:
        fields += [pa.field(f"{name}_pred", pa.float32()), pa.field(f"{name}_err", pa.float32())]
    if identity_dim > 0:
        fields.append(pa.field(IDENTITY_COLUMN,
                               fixed_list_type(identity_dim, EMBEDDING_DTYPES[dtype])))
    return pa.schema(fields, metadata={b"specsearch.kind": b"embeddings"})


class Embeddings(PartitionedDataset):
    """An embeddings dataset opened for reading (see :func:`open_embeddings`)."""

    kind = "embeddings"

    @property
    def model_hash(self) -> str:
        return str(self.manifest["model_hash"])

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest["embedding_dim"])

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest.get("label_names", []))

    def identity_dim(self, modality: str) -> int:
        """Dimension of ``modality``'s identity vectors (0: none)."""
        return int(self.manifest.get("identity_dims", {}).get(modality, 0))

    def read_vectors(self, modality: str) -> tuple[np.ndarray, np.ndarray]:
        """(source_id (n,) int64, embedding (n, D) float32) of one modality.

        Loads the vectors of the modality into memory: for tests and small datasets; index
        builders stream with :meth:`iter_batches` instead.
        """
        ids, vecs = [], []
        for batch in self.iter_batches(modality, columns=["source_id", "embedding"]):
            ids.append(batch.column("source_id").to_numpy())
            vecs.append(list_column_to_numpy(batch.column("embedding"), np.float32))
        if not ids:
            return np.zeros(0, np.int64), np.zeros((0, self.embedding_dim), np.float32)
        return np.concatenate(ids), np.concatenate(vecs)


def open_embeddings(root: str | Path) -> Embeddings:
    """Open an embeddings directory; CatalogError if missing, malformed or another version."""
    emb = Embeddings(root)
    for key in ("model_hash", "embedding_dim"):
        if key not in emb.manifest:
            raise CatalogError(f"{emb.root / 'embeddings.json'}: missing key {key!r}")
    return emb


class EmbeddingsWriter(ModalityWriter):
    """Write embeddings of one modality, made by one model, in atomic Parquet parts.

    Opening a writer on a dataset made by another model hash is a CatalogError unless
    ``overwrite_model=True`` (then the caller is responsible for removing the old parts).
    """

    def __init__(self, root: str | Path, modality: str, *, model_hash: str,
                 embedding_dim: int, label_names: Sequence[str] = (),
                 class_names: Sequence[str] = (), dtype: str = "float32",
                 rows_per_file: int = 100_000, file_prefix: str = "part",
                 extra_manifest: Mapping[str, Any] | None = None,
                 overwrite_model: bool = False, identity_dim: int = 0) -> None:
        self.root = Path(root)
        self.modality = modality
        self.schema = embeddings_schema(embedding_dim, label_names, dtype, identity_dim)
        manifest_path = self.root / "embeddings.json"
        manifest: dict[str, Any] = {}
        if manifest_path.is_file():
            manifest = Embeddings(self.root).manifest
            if manifest.get("model_hash") != model_hash and not overwrite_model:
                raise CatalogError(
                    f"{self.root}: holds embeddings of model {manifest.get('model_hash')!r}, "
                    f"refusing to add rows of model {model_hash!r}; write to a new directory "
                    f"or ask to overwrite")
            if manifest.get("embedding_dim") not in (None, embedding_dim):
                raise CatalogError(
                    f"{self.root}: embedding_dim {manifest.get('embedding_dim')} != "
                    f"{embedding_dim}")
        manifest.update({
            "format_version": FORMAT_VERSION, "kind": "embeddings", "model_hash": model_hash,
            "embedding_dim": int(embedding_dim), "dtype": dtype,
            "label_names": list(label_names), "class_names": list(class_names),
            "updated": now_iso(),
        })
        dims = {**manifest.get("identity_dims", {}), modality: int(identity_dim)}
        manifest["identity_dims"] = {m: d for m, d in dims.items() if d > 0}
        manifest.update(dict(extra_manifest or {}))
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(manifest_path, manifest)
        self._writer = DatasetWriter(self.root / modality, self.schema,
                                     rows_per_file=rows_per_file, file_prefix=file_prefix)
