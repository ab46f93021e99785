""""More like this": objects similar to a few examples (source_ids or spectra).

Two ways to turn several examples into one list:

* ``centroid``: search once with the normalised mean of the examples' vectors: finds the
  objects that share what the examples have *in common* (best when the examples are one
  kind of object);
* ``union``: search with every example and merge, each object keeping its best similarity
  and the example it matched: finds neighbours of *any* example (best when the examples are
  a mixed bag, or to widen a class one member at a time).

Search goes through a :class:`specsearch.rows.NeighbourSearch` over one modality's rows
(:class:`specsearch.rows.EmbeddingTable`): the index directory's own (shards merged exactly)
or an in-memory FAISS index; or through the query engine (:func:`more_like_this_engine`).
Examples may come from the other modality: the embedding space is shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from specsearch.errors import ConfigError, QueryError, SpectrumError

if TYPE_CHECKING:  # rows builds on query (its filters): the tables are only annotated here
    from specsearch.rows import EmbeddingTable, NeighbourSearch

MODES = ("centroid", "union")


def _examples(examples: np.ndarray, mode: str) -> np.ndarray:
    """(m >= 1, D) float32 examples; ConfigError for an unknown mode."""
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    ex = np.atleast_2d(np.asarray(examples, dtype=np.float32))
    if ex.shape[0] == 0:
        raise QueryError("more-like-this needs at least one example")
    return ex


def _centroid(examples: np.ndarray) -> np.ndarray:
    """(D,) float32 unit vector along the mean of the examples."""
    c = examples.astype(np.float64).mean(axis=0)
    return (c / max(np.linalg.norm(c), 1e-12)).astype(np.float32)


def example_vectors(table: EmbeddingTable, source_ids: Sequence[int]) -> np.ndarray:
    """(m, D) one unit vector per example star (the mean over its visits)."""
    out = []
    for s in source_ids:
        v = table.vectors[table.rows_of_sources([s])].astype(np.float64).mean(axis=0)
        out.append(v / max(np.linalg.norm(v), 1e-12))
    return np.asarray(out, dtype=np.float32).reshape(len(out), table.vectors.shape[1])


def embed_spectrum_files(paths: Sequence[str | Path], modality: str, model, *,
                         air: bool | None = None) -> np.ndarray:
    """(m, D) embeddings of spectra read from files (any format the readers accept), put on
    ``modality``'s canonical grid as ingest and the search engine do
    (:func:`specsearch.preprocess.to_canonical_grid`: rest frame, resolution, cosmic rays;
    LAMOST-grid spectra checked for telluric absorption left in,
    :func:`specsearch.model.telluric.mask_where_found`) and encoded by ``model``
    (``specsearch.model.SpecModel``). ``air``: the generic files' wavelengths are in air /
    vacuum (``read_spectra``'s ``air=``; a survey file refuses it).

    Raises:
        SpectrumError: a spectrum the model cannot encode (too few good pixels).
        ConfigError: ``air`` given for a survey file.
    """
    from specsearch.io.registry import read_spectra
    from specsearch.preprocess import C_KMS, to_canonical_grid

    flux, ivar, rv, names = [], [], [], []
    for path in paths:
        for spec in read_spectra(path, modality=modality, air=air):
            on = to_canonical_grid(spec, modality)
            flux.append(on.flux)
            ivar.append(on.ivar)
            rv.append(np.nan if on.z_removed is None else on.z_removed * C_KMS)
            names.append(f"{path}:{spec.spectrum_id or len(names)}")
    if not flux:
        raise SpectrumError(f"no spectra in {list(map(str, paths))}")
    fluxes, ivars = np.stack(flux), np.stack(ivar)
    if modality == "lamost" and hasattr(model, "decode"):
        from specsearch.model.telluric import mask_where_found

        ivars, _ = mask_where_found(model, fluxes, ivars, np.array(rv))
    out = model.embed_numpy(modality, fluxes, ivars)
    bad = [n for n, g in zip(names, out.good) if not g]
    if bad:
        raise SpectrumError(f"cannot encode {bad}: too few good pixels on the {modality} grid")
    return np.asarray(out.embedding, dtype=np.float32)


def more_like_this(table: EmbeddingTable, searcher: NeighbourSearch, examples: np.ndarray, *,
                   k: int = 100, mode: str = "centroid",
                   exclude_source_ids: Sequence[int] = ()) -> pa.Table:
    """The ``k`` objects of ``table`` most similar to the examples (ranked table).

    Args:
        table: the rows searched (``searcher`` returns positions in it).
        examples: (m, D) unit vectors (:func:`example_vectors`, :func:`embed_spectrum_files`).
        mode: ``centroid`` or ``union`` (module docstring).
        exclude_source_ids: stars never returned (typically the examples themselves).
    Returns:
        rank, source_id, spectrum_id, similarity, matched_example (union: index of the
        example that found it; centroid: -1), then the table's metadata columns.
    """
    ex = _examples(examples, mode)
    if ex.shape[1] != table.vectors.shape[1]:
        raise QueryError(f"examples must be (m >= 1, {table.vectors.shape[1]}); got {ex.shape}")
    if k < 1:
        raise QueryError(f"k must be >= 1, got {k}")
    excluded = set(int(s) for s in exclude_source_ids)
    sid = table.source_id
    fetch = min(len(table), k + len(excluded) * 4 + 8)
    if mode == "centroid":
        sims, rows = searcher.search(_centroid(ex)[None], fetch)
        best_sim, best_ex = {}, {}
        for s, r in zip(sims[0], rows[0]):
            if r >= 0 and r not in best_sim:
                best_sim[r], best_ex[r] = float(s), -1
    else:
        sims, rows = searcher.search(ex, fetch)
        best_sim, best_ex = {}, {}
        for e in range(ex.shape[0]):
            for s, r in zip(sims[e], rows[e]):
                if r >= 0 and (r not in best_sim or s > best_sim[r]):
                    best_sim[r], best_ex[r] = float(s), e
    cand = [r for r in best_sim if int(sid[r]) not in excluded]
    cand.sort(key=lambda r: (-best_sim[r], r))
    chosen = np.asarray(cand[:k], dtype=np.int64)
    meta = table.meta.take(pa.array(chosen, pa.int64()))
    cols = {
        "rank": pa.array(np.arange(1, chosen.size + 1), pa.int32()),
        "source_id": pa.array(sid[chosen], pa.int64()),
        "spectrum_id": pa.array(table.spectrum_id[chosen].astype(str), pa.string()),
        "modality": pa.array([table.modality] * chosen.size, pa.string()),
        "similarity": pa.array([best_sim[r] for r in chosen], pa.float32()),
        "matched_example": pa.array([best_ex[r] for r in chosen], pa.int32()),
    }
    for name in meta.column_names:
        if name not in cols and not pa.types.is_fixed_size_list(meta.column(name).type):
            cols[name] = meta.column(name)
    return pa.table(cols)


def more_like_this_engine(engine, examples: np.ndarray, *, modality: str, k: int = 100,
                          mode: str = "centroid", filter=None,
                          exclude_source_ids: Sequence[int] = ()) -> pa.Table:
    """:func:`more_like_this` through the query engine (``specsearch.query.SearchEngine``):
    its sharded index, tuned knobs and metadata filters (e.g. ``"snr>=20"``).

    Returns the engine's result columns (rank from 1, similarity, stored metadata) plus
    ``matched_example`` (union: index of the example that found the row; centroid: -1).
    """
    ex = _examples(examples, mode)
    exclude = list(int(s) for s in exclude_source_ids)
    if mode == "centroid":
        found = [engine.search(_centroid(ex), modality=modality, k=k, filter=filter,
                               exclude_source_ids=exclude)]
    else:
        found = engine.search(ex, modality=modality, k=k, filter=filter,
                              exclude_source_ids=exclude)
    tables = []
    for e, nb in enumerate(found):
        t = nb.to_arrow()
        tables.append(t.append_column("matched_example", pa.array(
            [e if mode == "union" else -1] * t.num_rows, pa.int32())))
    table = pa.concat_tables(tables, promote_options="permissive")
    sims = table.column("similarity").to_numpy(zero_copy_only=False)
    key = table.column("spectrum_id").to_pylist() if "spectrum_id" in table.column_names \
        else table.column("source_id").to_pylist()
    order = np.lexsort((np.arange(sims.size), -sims))
    seen, keep = set(), []
    for i in order:
        if key[i] not in seen:
            seen.add(key[i])
            keep.append(i)
    table = table.take(pa.array(keep[:k], pa.int64()))
    return table.set_column(table.column_names.index("rank"), "rank",
                            pa.array(np.arange(1, table.num_rows + 1), pa.int64()))
