"""Search routes: by uploaded file, by JSON arrays, by embedding, by source_id."""

from __future__ import annotations

import functools
import time
from typing import Annotated, Any

import numpy as np
import pydantic_core
from fastapi import APIRouter, Depends, File, Query, Response, UploadFile

from service import convert
from service.batching import BatchKey, SearchJob
from service.deps import AirParam, FilterParam, MediumParam, OffsetParam, SourceIdParam, State
from service.errors import NotFoundError
from service.schemas import (
    ArraysSearch,
    Curve,
    EmbeddingSearch,
    Estimate,
    Modality,
    QueryInfo,
    SearchOptions,
    SearchResponse,
    Target,
)
from service.schemas import API_ERRORS, TELLURIC_DESCRIPTION, UPLOAD_ERRORS
from service.security import require_api_key
from service.spectra import GridSpectrum, display_curve, from_arrays, model_curve
from service.state import ServiceState
from service.uploads import parse_upload, read_upload, upload_air
from specsearch.errors import QueryError, SpectrumError
from specsearch.query import Neighbours

router = APIRouter(prefix="/v1/search", tags=["search"],
                   dependencies=[Depends(require_api_key)],
                   responses=API_ERRORS)

PLOT_NEIGHBOURS = 5
"""Neighbours drawn in the web page's plot (all are in the table)."""


def target_modality(target: str, query_modality: str, modalities: list[str]) -> str:
    """``same``/``cross``/a modality name -> the modality to search."""
    if target == "same":
        return query_modality
    if target == "cross":
        others = [m for m in modalities if m != query_modality]
        if not others:
            raise QueryError(f"cross-modal search needs an index of another modality than "
                             f"{query_modality!r}; this index has {modalities}")
        return others[0]
    return target


def _decoded(state: ServiceState, source: str, target: str, vecs: np.ndarray) -> np.ndarray:
    """(n, N_target) spectra the model decodes from (n, D) embeddings of ``source``."""
    import torch

    with torch.inference_mode():
        emb = torch.from_numpy(np.ascontiguousarray(vecs, dtype=np.float32))
        return state.model.decode(source, target, emb).float().numpy()


def _curves(state: ServiceState, query: GridSpectrum | None, query_vec: np.ndarray,
            query_modality: str, target: str, result) -> list[Curve]:
    """Curves for the page's plot: the query (observed when uploaded, else as the model
    decodes it), its translation when cross-modal, and the top neighbours as the model
    decodes their stored embeddings (the index stores no observed spectra)."""
    curves: list[Curve] = []
    if query is not None:
        w, f = display_curve(query.flux, query.ivar, query.modality)
        curves.append(Curve(label="query", modality=query.modality, wavelength=w, flux=f))
    else:
        w, f = model_curve(_decoded(state, query_modality, query_modality,
                                    query_vec[None])[0], query_modality)
        curves.append(Curve(label="query (model)", modality=query_modality, kind="model",
                            wavelength=w, flux=f))
    if target != query_modality:
        w, f = model_curve(_decoded(state, query_modality, target, query_vec[None])[0],
                           target)
        curves.append(Curve(label=f"query translated to {target} (model)", modality=target,
                            kind="model", wavelength=w, flux=f))
    top = min(PLOT_NEIGHBOURS, len(result))
    if top:
        vecs = np.stack([state.engine.vector_of(int(sid), target)[1]
                         for sid in result.source_id[:top]])
        for i, spec in enumerate(_decoded(state, target, target, vecs)):
            w, f = model_curve(spec, target)
            curves.append(Curve(label=f"#{int(result.rank[i]) + 1} {result.source_id[i]}",
                                modality=target, kind="model", role="neighbour",
                                wavelength=w, flux=f))
    return curves


def _respond(state: ServiceState, info: QueryInfo, vec: np.ndarray, opts: SearchOptions,
             grid: GridSpectrum | None, start: float, *, exclude: int | None = None,
             identity: np.ndarray | None = None,
             parameters: dict[str, tuple[float, float]] | None = None) -> SearchResponse:
    """Search, re-ranked by identity vectors in-modality (``opts.identity``) or by the
    agreement of ``parameters`` (the query's predictions) cross-modal (``opts.agreement``;
    :mod:`specsearch.query.agreement`)."""
    target = target_modality(opts.target, info.modality, state.engine.modalities)
    same = target == info.modality
    result = state.engine.search(vec, modality=target, k=opts.k, offset=opts.offset,
                                 limit=opts.limit, filter=opts.filters,
                                 exclude_source_ids=[exclude] if exclude is not None
                                 and same else None,
                                 identity=identity if same and opts.identity else None,
                                 parameters=(parameters or None) if not same
                                 and opts.agreement else None)
    spectra = _curves(state, grid, vec, info.modality, target, result) \
        if opts.include_spectra else None
    return _response(state, info, opts, target, result, start, spectra)


def _response_fields(state: ServiceState, info: QueryInfo, opts: SearchOptions, target: str,
                     result: Neighbours, start: float) -> dict[str, Any]:
    """The fields of a :class:`SearchResponse` but its spectra, neighbours as plain dicts."""
    return {"query": info, "target_modality": target, "cross_modal": target != info.modality,
            "k": opts.k, "offset": opts.offset, "limit": len(result),
            "filters": list(opts.filters),
            "neighbours": convert.neighbour_dicts(result,
                                                  state.engine.index.manifest.label_names),
            "took_ms": (time.perf_counter() - start) * 1e3,
            "ranked_by": result.query.get("ranked_by", "embedding"), "spectra": None}


def _response(state: ServiceState, info: QueryInfo, opts: SearchOptions, target: str,
              result: Neighbours, start: float, spectra: list[Curve] | None = None
              ) -> SearchResponse:
    fields = _response_fields(state, info, opts, target, result, start)
    return SearchResponse.model_validate({**fields, "spectra": spectra})


def _response_json(state: ServiceState, info: QueryInfo, opts: SearchOptions, target: str,
                   start: float, result: Neighbours) -> bytes:
    """The JSON body of :func:`_response` (no spectra), serialised without building the
    response models (the batched path; runs in the worker thread). Tests check it equals
    the models' JSON."""
    fields = _response_fields(state, info, opts, target, result, start)
    fields["query"] = info.model_dump(mode="json")
    return pydantic_core.to_json(fields)


def search_grid(state: ServiceState, grid: GridSpectrum, opts: SearchOptions,
                kind: str) -> SearchResponse:
    """Embed a gridded client spectrum and search (runs in a worker thread)."""
    start = time.perf_counter()
    grid, telluric = convert.telluric(state.model, grid)
    with_identity = bool(opts.identity and state.engine.has_identity(grid.modality)
                         and target_modality(opts.target, grid.modality,
                                             state.engine.modalities) == grid.modality)
    extra = {"with_identity": True} if with_identity else {}
    batch = state.model.embed_numpy(grid.modality, grid.flux[None], grid.ivar[None],
                                    with_domain=True, **extra)
    name = grid.filename or "spectrum"
    if not bool(batch.good[0]):
        raise SpectrumError(f"{name}: only {grid.good_fraction:.0%} of the {grid.modality} "
                            f"grid has usable pixels; at least 20% are needed to embed it")
    preds = {n: convert.Estimate(value=convert.clean(float(batch.predictions[0, i])),
                                 err=convert.clean(float(batch.uncertainties[0, i])))
             for i, n in enumerate(batch.label_names)}
    info = QueryInfo(kind=kind, modality=grid.modality, filename=grid.filename,
                     spectrum_id=grid.spectrum.spectrum_id or None,
                     source_id=grid.spectrum.source_id, spectra_in_file=grid.spectra_in_file,
                     row=grid.row, good_fraction=grid.good_fraction, medium=grid.medium,
                     medium_from=grid.medium_from, radial_velocity=convert.rv(grid),
                     broader_than_model=convert.resolution(grid),
                     spikes_masked=grid.spikes_masked, telluric=telluric,
                     predictions=preds,
                     domain=convert.domain(state.model, grid.modality, batch,
                                           broader=grid.broader_fwhm_A is not None))
    id_vecs = getattr(batch, "identity", None)
    identity = None if id_vecs is None else id_vecs[0]
    params = {n: (float(batch.predictions[0, i]), float(batch.uncertainties[0, i]))
              for i, n in enumerate(batch.label_names)}
    return _respond(state, info, np.asarray(batch.embedding[0], np.float32), opts, grid,
                    start, identity=identity, parameters=params)


def _options(k: int, target: Target, filters: list[str], offset: int, limit: int | None,
             include_spectra: bool, identity: bool = True, agreement: bool = True
             ) -> SearchOptions:
    return SearchOptions(k=k, target=target, filters=filters, offset=offset, limit=limit,
                         include_spectra=include_spectra, identity=identity,
                         agreement=agreement)


K = Annotated[int, Query(ge=1, le=10_000, description="neighbours (<= server max_k)")]
LimitParam = Annotated[int | None, Query(ge=1, le=10_000, description="page size")]
IdentityParam = Annotated[bool, Query(description="same-instrument searches: re-rank by "
                                                  "identity vectors where the model and index "
                                                  "have them")]
AgreementParam = Annotated[bool, Query(description="cross-modal searches: re-rank by how "
                                                   "well the neighbours' predicted parameters "
                                                   "agree with the query's")]


@router.post("/upload", responses=UPLOAD_ERRORS, response_model=SearchResponse,
             summary="neighbours of an uploaded spectrum file")
async def search_upload(
    state: State,
    file: Annotated[UploadFile, File(description="LAMOST FITS(.gz), generic FITS, CSV/TXT, "
                                                 "Gaia XP CSV/ECSV/VOTable")],
    k: K = 10, target: Target = "same", filters: FilterParam = [],
    offset: OffsetParam = 0, limit: LimitParam = None,
    modality: Annotated[Modality | None, Query(description="grid (default: from the file)")]
    = None,
    medium: MediumParam = None,
    air: AirParam = None,
    resolving_power: Annotated[float | None, Query(
        gt=0, allow_inf_nan=False, description="R = lambda / FWHM of a file that states "
        "none: a spectrum much sharper than LAMOST is broadened to R = 1800 first")] = None,
    row: Annotated[int, Query(ge=0, le=1_000_000, description="spectrum number in a "
                                                               "multi-spectrum file")] = 0,
    telluric_uncorrected: Annotated[bool, Query(description=TELLURIC_DESCRIPTION)] = False,
    include_spectra: bool = False, identity: IdentityParam = True,
    agreement: AgreementParam = True,
) -> SearchResponse:
    stated_air = upload_air(medium, air)
    data = await read_upload(file, state.settings.max_upload_bytes)
    opts = _options(k, target, filters or [], offset, limit, include_spectra, identity,
                    agreement)

    grid = await parse_upload(state, data, file.filename or "upload", modality=modality,
                              air=stated_air, row=row, resolving_power=resolving_power,
                              telluric_uncorrected=telluric_uncorrected)
    return await state.worker.run("search_upload", search_grid, state, grid, opts, "upload")


@router.post("/spectrum", response_model=SearchResponse,
             summary="neighbours of a spectrum sent as JSON arrays")
async def search_arrays(state: State, body: ArraysSearch) -> SearchResponse:
    def work() -> SearchResponse:
        grid = from_arrays(body.wavelength, body.flux, body.ivar, modality=body.modality,
                           air=body.air, resolving_power=body.resolving_power,
                           telluric_uncorrected=body.telluric_uncorrected)
        return search_grid(state, grid, body, "arrays")

    return await state.worker.run("search_arrays", work)


@router.post("/embedding", response_model=SearchResponse,
             summary="neighbours of an embedding vector")
async def search_embedding(state: State, body: EmbeddingSearch) -> SearchResponse | Response:
    if state.batcher is not None and not body.include_spectra and body.identity_vector is None \
            and body.parameters is None:
        start = time.perf_counter()
        with np.errstate(over="ignore"):  # huge values -> inf, refused by the engine
            vec = np.asarray(body.embedding, dtype=np.float32)
        info = QueryInfo(kind="embedding", modality=body.modality)
        target = target_modality(body.target, body.modality, state.engine.modalities)
        job = SearchJob(key=BatchKey(target, body.k, tuple(body.filters)), vector=vec,
                        offset=body.offset, limit=body.limit,
                        finish=functools.partial(_response_json, state, info, body, target,
                                                 start))
        return Response(await state.batcher.run(job), media_type="application/json")

    def work() -> SearchResponse:
        start = time.perf_counter()
        with np.errstate(over="ignore"):  # huge values -> inf, refused by the engine
            vec = np.asarray(body.embedding, dtype=np.float32)
        info = QueryInfo(kind="embedding", modality=body.modality)
        return _respond(state, info, vec, body, None, start,
                        identity=_identity_vector(body.identity_vector),
                        parameters=_parameters(body.parameters))

    return await state.worker.run("search_embedding", work)


def _parameters(values: dict[str, Estimate] | None) -> dict[str, tuple[float, float]] | None:
    """A request's (value, uncertainty) per label; labels without both are left out (the
    engine uses those the index stores with a finite value and a positive uncertainty)."""
    if not values:
        return None
    return {name: (float(e.value), float(e.err)) for name, e in values.items()
            if e.value is not None and e.err is not None} or None


def _identity_vector(values: list[float] | None) -> np.ndarray | None:
    """A request's identity vector, unit length; QueryError (400) when it is not finite
    and non-zero."""
    if values is None:
        return None
    with np.errstate(over="ignore"):
        vec = np.asarray(values, dtype=np.float32)
    norm = float(np.sqrt(vec.astype(np.float64) @ vec)) if np.isfinite(vec).all() else 0.0
    if not norm > 0:
        raise QueryError("identity_vector must be finite and non-zero")
    return vec / np.float32(norm)


@router.get("/source/{source_id}", response_model=SearchResponse,
            summary="neighbours of a star in the index, by source_id")
async def search_source(
    state: State, source_id: SourceIdParam,
    modality: Annotated[Modality | None, Query(description="which of the star's spectra is "
                                                           "the query (default: first)")]
    = None,
    k: K = 10, target: Target = "same", filters: FilterParam = [],
    offset: OffsetParam = 0, limit: LimitParam = None, include_spectra: bool = False,
    identity: IdentityParam = True, agreement: AgreementParam = True,
) -> SearchResponse:
    opts = _options(k, target, filters or [], offset, limit, include_spectra, identity,
                    agreement)

    def work() -> SearchResponse:
        start = time.perf_counter()
        try:
            query_modality, vec = state.engine.vector_of(source_id, modality)
        except NotFoundError:
            where = modality or "/".join(state.engine.modalities)
            raise NotFoundError(f"source_id {source_id} is not in the {where} index of this "
                                f"server; check the id (GET /v1/objects/{{source_id}})"
                                ) from None
        info = QueryInfo(kind="source_id", modality=query_modality, source_id=source_id)
        row = state.engine.lookup(source_id, query_modality).slice(0, 1).to_pylist()[0]
        info.spectrum_id = str(row.get("spectrum_id") or "") or None
        info.predictions = convert.estimates(row, state.engine.index.manifest.label_names)
        same = target_modality(opts.target, query_modality,
                               state.engine.modalities) == query_modality
        id_vec = (state.engine.identity_of(source_id, query_modality)
                  if opts.identity and same else None)
        params = (state.engine.source_parameters(source_id, query_modality)
                  if opts.agreement and not same else None)
        return _respond(state, info, vec, opts, None, start, exclude=source_id,
                        identity=id_vec, parameters=params)

    return await state.worker.run("search_source", work)
