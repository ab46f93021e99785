"""Predict parameters (and the translated spectrum) for a client spectrum."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Query, UploadFile

from service import convert
from service.deps import AirParam, MediumParam, State
from service.schemas import ArraysPredict, Curve, Modality, Prediction
from service.schemas import API_ERRORS, TELLURIC_DESCRIPTION, UPLOAD_ERRORS
from service.security import require_api_key
from service.spectra import GridSpectrum, display_curve, from_arrays, model_curve
from service.state import ServiceState
from service.uploads import parse_upload, read_upload, upload_air
from specsearch.errors import SpectrumError

router = APIRouter(prefix="/v1/predict", tags=["predict"],
                   dependencies=[Depends(require_api_key)],
                   responses=API_ERRORS)


def predict_grid(state: ServiceState, grid: GridSpectrum, translate: bool) -> Prediction:
    """Heads' predictions with uncertainties, class probabilities, and the model's spectrum
    of the same star in the other modality (runs in a worker thread)."""
    import torch

    model = state.model
    grid, telluric = convert.telluric(model, grid)
    batch = model.embed_numpy(grid.modality, grid.flux[None], grid.ivar[None],
                              with_domain=True)
    if not bool(batch.good[0]):
        raise SpectrumError(f"{grid.filename or 'spectrum'}: only {grid.good_fraction:.0%} "
                            f"of the {grid.modality} grid has usable pixels; at least 20% "
                            f"are needed")
    preds = {n: convert.Estimate(value=convert.clean(float(batch.predictions[0, i])),
                                 err=convert.clean(float(batch.uncertainties[0, i])))
             for i, n in enumerate(batch.label_names)}
    classes = {}
    if batch.class_prob is not None:
        classes = {n: float(batch.class_prob[0, i]) for i, n in enumerate(batch.class_names)}
    w, f = display_curve(grid.flux, grid.ivar, grid.modality)
    out = Prediction(modality=grid.modality, filename=grid.filename,
                     spectra_in_file=grid.spectra_in_file, row=grid.row,
                     good_fraction=grid.good_fraction, medium=grid.medium,
                     medium_from=grid.medium_from, radial_velocity=convert.rv(grid),
                     broader_than_model=convert.resolution(grid),
                     spikes_masked=grid.spikes_masked, telluric=telluric,
                     predictions=preds,
                     class_probabilities=classes,
                     domain=convert.domain(model, grid.modality, batch,
                                           broader=grid.broader_fwhm_A is not None),
                     input=Curve(label="input", modality=grid.modality, wavelength=w, flux=f))
    others = [m for m in model.modalities if m != grid.modality]
    if translate and others:
        with torch.inference_mode():
            emb = torch.from_numpy(np.asarray(batch.embedding[:1], np.float32))
            t = model.translate(grid.modality, emb)[0].float().numpy()
        w, f = model_curve(t, others[0])
        out.translated = Curve(label=f"translated to {others[0]}", modality=others[0],
                               kind="model", wavelength=w, flux=f)
    return out


@router.post("/upload", responses=UPLOAD_ERRORS, response_model=Prediction,
             summary="parameters and translated spectrum of an uploaded spectrum")
async def predict_upload(
    state: State,
    file: Annotated[UploadFile, File(description="a spectrum file (as for search)")],
    modality: Annotated[Modality | None, Query()] = None,
    medium: MediumParam = None,
    air: AirParam = None,
    row: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    resolving_power: Annotated[float | None, Query(gt=0, allow_inf_nan=False)] = None,
    telluric_uncorrected: Annotated[bool, Query(description=TELLURIC_DESCRIPTION)] = False,
    translate: bool = True,
) -> Prediction:
    stated_air = upload_air(medium, air)
    data = await read_upload(file, state.settings.max_upload_bytes)

    grid = await parse_upload(state, data, file.filename or "upload", modality=modality,
                              air=stated_air, row=row, resolving_power=resolving_power,
                              telluric_uncorrected=telluric_uncorrected)
    return await state.worker.run("predict_upload", predict_grid, state, grid, translate)


@router.post("/spectrum", response_model=Prediction,
             summary="parameters and translated spectrum of JSON arrays")
async def predict_arrays(state: State, body: ArraysPredict) -> Prediction:
    def work() -> Prediction:
        grid = from_arrays(body.wavelength, body.flux, body.ivar, modality=body.modality,
                           air=body.air, resolving_power=body.resolving_power,
                           telluric_uncorrected=body.telluric_uncorrected)
        return predict_grid(state, grid, body.translate)

    return await state.worker.run("predict_arrays", work)
