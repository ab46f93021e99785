"""One catalog batch through the model: the output columns of its good rows.

:class:`Encoder` is what specsearch needs of a model, here and in spectrum queries
(:class:`specsearch.query.SearchEngine`); ``specsearch.model.SpecModel`` provides it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from specsearch.embed.spectra import SpectraChunk, spectra_arrays
from specsearch.io.embeddings import IDENTITY_COLUMN
from specsearch.preprocess.lsf import BROADER_FACTOR


class Encoder(Protocol):
    """A model that embeds canonical-grid spectra (``specsearch.model.load_model()``)."""

    model_hash: str
    embedding_dim: int
    label_names: Sequence[str]
    class_names: Sequence[str]

    def embed_numpy(self, modality: str, flux: np.ndarray, ivar: np.ndarray, *,
                    with_residual: bool = False) -> Any:
        """Embed (n, npix) canonical-grid spectra; returns an object with ``embedding``
        (n, D), ``good`` (n,), ``predictions``/``uncertainties`` (n, L), optional
        ``class_prob`` (n, C), residuals and ``identity`` (n, identity_dim).

        A model with identity encoders (``SpecModel.has_identity``) also takes
        ``with_identity=True``; see :func:`identity_dim_of`."""


def identity_dim_of(model: Encoder, modality: str) -> int:
    """Dimension of ``model``'s identity vectors of ``modality``; 0 when it has none
    (encoders without the optional ``has_identity``/``identity_dim`` have none)."""
    has = getattr(model, "has_identity", None)
    if has is None or not has(modality):
        return 0
    return int(getattr(model, "identity_dim", 0))


def _row_picker(good: np.ndarray):
    """(numpy take, arrow take) of the good rows; identities when all rows are good."""
    if good.all():
        return (lambda a: a), (lambda a: a)
    idx = np.flatnonzero(good)
    return (lambda a: a[idx]), (lambda a: a.take(pa.array(idx)))


def _head_columns(model: Encoder, out: Any, take, n: int, with_residual: bool
                  ) -> dict[str, Any]:
    """Label predictions/errors, the most probable class and residuals of the good rows."""
    cols: dict[str, Any] = {}
    predictions = take(np.asarray(out.predictions, np.float32))
    uncertainties = take(np.asarray(out.uncertainties, np.float32))
    for j, name in enumerate(model.label_names):
        cols[f"{name}_pred"] = np.ascontiguousarray(predictions[:, j])
        cols[f"{name}_err"] = np.ascontiguousarray(uncertainties[:, j])
    class_prob = getattr(out, "class_prob", None)
    if class_prob is not None and len(model.class_names):
        probs = take(np.asarray(class_prob))
        best = probs.argmax(axis=1)
        names = pa.array(list(model.class_names), pa.string())
        cols["class_pred"] = names.take(pa.array(best.astype(np.int32)))
        cols["class_prob"] = probs[np.arange(n), best].astype(np.float32)
    for name in ("recon_residual", "translation_residual", "recon_relative"):
        values = getattr(out, name, None)
        if with_residual and values is not None:
            cols[name] = take(np.asarray(values, np.float32))
    flags = getattr(out, "out_of_domain", None)
    if with_residual and flags is not None:     # the model has a domain check
        cols["out_of_domain"] = take(np.asarray(flags, bool))
    return cols


def _telluric_checked(model: Encoder, batch: pa.RecordBatch, flux: Any, ivar: Any
                      ) -> tuple[Any, Any]:
    """(ivar with the telluric bands masked where the model finds them, the check) of a
    LAMOST-grid chunk (:mod:`specsearch.model.telluric`; the bands sit at each row's
    observed wavelengths: the catalog's ``rv`` puts them back)."""
    from specsearch.model.telluric import mask_where_found

    rv = None
    if "rv" in batch.schema.names:
        rv = np.asarray(batch.column("rv").to_numpy(zero_copy_only=False), np.float64)
    return mask_where_found(model, np.asarray(flux, np.float32),
                            np.asarray(ivar, np.float32), rv)


def embed_chunk(model: Encoder, modality: str, chunk: SpectraChunk, *,
                with_residual: bool, meta_columns: Sequence[pa.Field],
                skipped: Counter, precision: str = "auto",
                check_telluric: bool = False) -> dict[str, Any] | None:
    """Encode one chunk; returns the output columns of its good rows (or None).
    ``check_telluric``: LAMOST-grid rows are checked for telluric absorption left in and
    embedded with the bands masked where it is found (``telluric_depth`` and
    ``telluric_masked`` columns; models without a decoder are not checked)."""
    skipped.update(chunk.skipped)
    batch = chunk.batch
    if batch.num_rows == 0:
        return None
    extra: dict[str, Any] = {} if precision == "auto" else {"autocast": precision}
    if identity_dim_of(model, modality):
        extra["with_identity"] = True
    ivar, telluric = chunk.ivar, None
    if check_telluric and modality == "lamost" and hasattr(model, "decode"):
        ivar, telluric = _telluric_checked(model, batch, chunk.flux, chunk.ivar)
    out = model.embed_numpy(modality, chunk.flux, ivar, with_residual=with_residual,
                            **extra)
    good = np.asarray(out.good, dtype=bool)
    n_bad = int((~good).sum())
    if n_bad:
        skipped["too few good pixels (masked / NaN / zero flux)"] += n_bad
    if not good.any():
        return None
    take, take_arrow = _row_picker(good)
    n = int(good.sum())
    cols: dict[str, Any] = {
        "spectrum_id": take_arrow(batch.column("spectrum_id")),
        "source_id": take_arrow(batch.column("source_id")),
        "modality": pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(n, np.int32)), pa.array([modality])).cast(pa.string()),
        "embedding": take(np.asarray(out.embedding, dtype=np.float32)),
        **_head_columns(model, out, take, n, with_residual),
    }
    names = batch.schema.names
    if "out_of_domain" in cols and "fwhm_ratio" in names:
        # broader than the model reads (ingest's fwhm_ratio): its [Fe/H] reads low
        ratio = take_arrow(batch.column("fwhm_ratio")).to_numpy(zero_copy_only=False)
        cols["out_of_domain"] = cols["out_of_domain"] | (
            np.nan_to_num(np.asarray(ratio, np.float64), nan=0.0) > BROADER_FACTOR)
    if telluric is not None:
        cols["telluric_depth"] = take(telluric.depth.astype(np.float32))
        cols["telluric_masked"] = take(telluric.detected)
    if extra.get("with_identity") and getattr(out, "identity", None) is not None:
        cols[IDENTITY_COLUMN] = take(np.asarray(out.identity, dtype=np.float32))
    for f in meta_columns:
        if f.name in cols:
            continue
        if f.name in names:
            cols[f.name] = take_arrow(batch.column(f.name))
        else:
            cols[f.name] = pa.nulls(n, type=f.type)
    return cols


def embed_table(model: Encoder, modality: str, batch: pa.RecordBatch, *,
                with_residual: bool, meta_columns: Sequence[pa.Field],
                skipped: Counter, precision: str = "auto",
                check_telluric: bool = False) -> dict[str, Any] | None:
    """Encode one catalog batch; returns output columns for the good rows (or None)."""
    from specsearch.preprocess import grid_for

    chunk = spectra_arrays(batch, grid_for(modality).npix)
    return embed_chunk(model, modality, chunk, with_residual=with_residual,
                       meta_columns=meta_columns, skipped=skipped, precision=precision,
                       check_telluric=check_telluric)
