"""The spectrum catalog: a Parquet dataset, one row an observation, one folder a modality.

Layout::

    CATALOG/catalog.json          format version, the grids of the modalities present
    CATALOG/lamost/part-00000.parquet
    CATALOG/xp/part-00000.parquet

Each row holds ``flux`` and ``ivar`` on the modality's canonical grid
(:mod:`specsearch.preprocess`), the star's ``source_id`` (a paired catalog joins the two
modalities on it), position, S/N and labels where known. Extra columns (magnitudes, XP
coefficients, population labels, provenance) are kept as written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
from specsearch.preprocess import grid_for

__all__ = ["Catalog", "CatalogWriter", "catalog_schema", "open_catalog",
           "list_column_to_numpy", "LABEL_COLUMNS", "REQUIRED_COLUMNS"]

LABEL_COLUMNS: tuple[str, ...] = ("teff", "logg", "feh", "alpha_fe")
"""Stellar labels the catalog carries where known (K, dex, dex, dex)."""

REQUIRED_COLUMNS: tuple[str, ...] = ("spectrum_id", "source_id", "modality", "flux", "ivar")


def catalog_schema(modality: str) -> pa.Schema:
    """The catalog schema of one modality (required + standard nullable columns)."""
    grid = grid_for(modality)
    fields = [
        pa.field("spectrum_id", pa.string(), nullable=False),
        pa.field("source_id", pa.int64(), nullable=False),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("flux", fixed_list_type(grid.npix), nullable=False),
        pa.field("ivar", fixed_list_type(grid.npix), nullable=False),
        pa.field("ra", pa.float64()),
        pa.field("dec", pa.float64()),
        pa.field("snr", pa.float32()),
    ] + [pa.field(name, pa.float32()) for name in LABEL_COLUMNS]
    return pa.schema(fields, metadata={b"specsearch.kind": b"catalog",
                                       b"specsearch.modality": modality.encode()})


class Catalog(PartitionedDataset):
    """A catalog opened for reading (see :func:`open_catalog`)."""

    kind = "catalog"


def open_catalog(root: str | Path) -> Catalog:
    """Open a catalog directory; CatalogError if it is missing or malformed."""
    return Catalog(root)


def _update_manifest(root: Path, modality: str) -> None:
    path = root / "catalog.json"
    manifest: dict[str, Any] = {"format_version": FORMAT_VERSION, "kind": "catalog",
                                "grids": {}}
    if path.is_file():
        manifest = Catalog(root).manifest
    manifest.setdefault("grids", {})[modality] = grid_for(modality).describe()
    manifest["updated"] = now_iso()
    write_json_atomic(path, manifest)


class CatalogWriter(ModalityWriter):
    """Write rows of one modality into a catalog, in atomic Parquet parts.

    Use as a context manager; ``write`` takes a dict of columns (2-D numpy arrays for
    ``flux``/``ivar``) or a pyarrow Table. Rows are validated against
    :func:`catalog_schema`: a missing required column or a flux of the wrong length is a
    :class:`CatalogError` naming the column.

    Example::

        with CatalogWriter("cat", "lamost") as w:
            w.write({"spectrum_id": ids, "source_id": sids, "modality": ["lamost"] * n,
                     "flux": flux, "ivar": ivar})
    """

    def __init__(self, root: str | Path, modality: str, *, rows_per_file: int = 50_000,
                 file_prefix: str = "part") -> None:
        self.root = Path(root)
        self.modality = modality
        self.schema = catalog_schema(modality)
        self.root.mkdir(parents=True, exist_ok=True)
        _update_manifest(self.root, modality)
        self._writer = DatasetWriter(self.root / modality, self.schema,
                                     rows_per_file=rows_per_file, file_prefix=file_prefix)

    def write(self, columns: Mapping[str, Any] | pa.Table | pa.RecordBatch) -> None:
        if isinstance(columns, Mapping) and "modality" not in columns:
            n = len(next(iter(columns.values()))) if columns else 0
            columns = {**columns, "modality": [self.modality] * n}
        table_modalities = None
        if isinstance(columns, Mapping):
            table_modalities = set(map(str, columns["modality"]))
        if table_modalities and table_modalities != {self.modality}:
            raise CatalogError(
                f"this writer writes {self.modality!r} rows; got modality values "
                f"{sorted(table_modalities)}")
        self._writer.write(columns)
