"""Open an index directory or an embeddings dataset as row tables; find its catalog.

Input is an index directory (``specsearch index build``: vectors, head predictions and
metadata next to the shards; neighbour search goes through the index) or an embeddings
dataset (callers build an in-memory index if they need neighbours). The catalog, needed
for artefact screening, is found from the dataset's provenance or given explicitly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specsearch.errors import CatalogError, ConfigError
from specsearch.rows.sources import (EmbeddingTable, NeighbourSearch, table_from_embeddings,
                                     table_from_index)


@dataclass
class Loaded:
    """Tables (and index searchers, if any) of the modalities asked for."""

    tables: dict[str, EmbeddingTable]
    searchers: dict[str, NeighbourSearch]
    kind: str                      # "index" or "embeddings"
    root: Path
    provenance: dict[str, Any] = field(default_factory=dict)
    index: Any = None              # the opened IndexDirectory, when kind == "index"

    def catalog(self, given: str | Path | None = None) -> Path | None:
        """:func:`find_catalog` from this source's provenance."""
        return find_catalog(given, recorded=self.provenance.get("catalog"),
                            source=self.provenance.get("source"))


def load_source(path: str | Path, modalities: Sequence[str] | None = None, *,
                embeddings: str | Path | None = None, verify: bool = True) -> Loaded:
    """Open an index directory or an embeddings dataset and read the modalities' rows.

    Args:
        path: index directory (``manifest.json``) or embeddings dataset (``embeddings.json``).
        modalities: which to load (None: all present).
        embeddings: read rows from this embeddings dataset instead of the index's rows
            tables (e.g. when the index was built without residual columns); the index is
            then not used for search.
    """
    root = Path(path)
    if (root / "manifest.json").is_file() and embeddings is None:
        from specsearch.index import open_index

        index = open_index(root, verify=verify)
        present = list(index.modalities)
        want = _want(modalities, present, root)
        tables, searchers = {}, {}
        for m in want:
            tables[m], searchers[m] = table_from_index(index, m)
        prov = {"index": str(root), "source": index.manifest.source,
                "model_hash": index.manifest.model_hash}
        return Loaded(tables, searchers, "index", root, prov, index)
    emb_root = Path(embeddings) if embeddings is not None else root
    if not (emb_root / "embeddings.json").is_file():
        raise CatalogError(f"{root}: neither an index directory (manifest.json) nor an "
                           f"embeddings dataset (embeddings.json); build one with "
                           f"`specsearch index build` or `specsearch embed`")
    from specsearch.io.embeddings import open_embeddings

    emb = open_embeddings(emb_root)
    want = _want(modalities, emb.modalities, emb_root)
    tables = {m: table_from_embeddings(emb_root, m) for m in want}
    prov = {"embeddings": str(emb_root), "catalog": emb.manifest.get("catalog", ""),
            "model_hash": emb.model_hash}
    return Loaded(tables, {}, "embeddings", emb_root, prov)


def _want(modalities: Sequence[str] | None, present: Sequence[str], root: Path) -> list[str]:
    if not modalities:
        return sorted(present)
    missing = [m for m in modalities if m not in present]
    if missing:
        raise ConfigError(f"{root}: no {missing} data (modalities present: {sorted(present)})")
    return list(modalities)


def find_catalog(catalog: str | Path | None = None, *, recorded: str | None = None,
                 source: str | Path | None = None) -> Path | None:
    """The catalog to screen: ``catalog`` if given; else ``recorded`` (an embeddings
    manifest's ``catalog``); else the catalog recorded by the embeddings dataset at
    ``source`` (an index manifest's ``source``). None when none of them is a catalog.
    """
    if catalog is not None:
        return Path(catalog)
    candidates = [recorded]
    if source and (Path(source) / "embeddings.json").is_file():
        try:
            candidates.append(json.loads((Path(source) / "embeddings.json").read_text())
                              .get("catalog"))
        except (OSError, ValueError):
            pass
    for c in candidates:
        if c and (Path(c) / "catalog.json").is_file():
            return Path(c)
    return None
