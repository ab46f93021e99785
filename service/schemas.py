"""Request and response models of the HTTP API (the OpenAPI schema is generated from them)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Modality = Literal["lamost", "xp"]
Medium = Literal["air", "vacuum"]
"""Wavelength media a client may state (``specsearch.io.registry.MEDIA``)."""
Target = Literal["same", "cross", "lamost", "xp"]
MetadataValue = str | int | float | bool | None

MAX_ARRAY_PIXELS = 200_000
"""Longest wavelength/flux array accepted in JSON (a LAMOST spectrum has ~3,900 pixels)."""


def example_spectrum() -> dict[str, list[float]]:
    """A small usable spectrum for the OpenAPI examples: 3700-9000 A in 50 A steps, a smooth
    continuum with H-alpha and H-beta absorption (searched as Gaia XP from its spacing)."""
    wave = [3700.0 + 50.0 * i for i in range(107)]
    flux = [round((w / 5500) ** -2 * math.exp(-5500 / w)
                  * (1 - 0.3 * math.exp(-((w - 6565) / 40) ** 2)
                     - 0.2 * math.exp(-((w - 4863) / 40) ** 2)), 5) for w in wave]
    return {"wavelength": wave, "flux": flux}


class Estimate(BaseModel):
    """A head prediction: value and 1-sigma uncertainty (K for teff, dex otherwise)."""

    value: float | None
    err: float | None


class Domain(BaseModel):
    """Whether the model knows stars like this one (its domain check, fitted on real
    spectra): out of domain, the parameters are unreliable."""

    recon_relative: float | None = Field(
        description="median relative error of the model's reconstruction of the spectrum")
    threshold: float | None = Field(
        None, description="the model's threshold (None: the model has no domain check)")
    window_coverage: float | None = Field(
        None, description="the fraction of the model's coverage window with data (None: "
                          "no coverage rule for this modality)")
    min_coverage: float | None = Field(
        None, description="the least window_coverage the model reads reliably")
    coverage_window_a: list[float] | None = Field(
        None, description="the coverage window, [lo, hi] in Angstrom")
    out_of_domain: bool | None = Field(
        None, description="recon_relative above the threshold (a star unlike the "
                          "training stars, or a spectrum too noisy to read), "
                          "window_coverage below min_coverage (a spectrum without the "
                          "part the model reads most, e.g. no blue arm), or a spectrum "
                          "broader than the model reads (broader_than_model)")


class RadialVelocity(BaseModel):
    """The radial velocity removed to put an uploaded spectrum in the rest frame."""

    removed_kms: float = Field(description="km/s (positive: the star recedes)")
    source: Literal["header", "measured", "header+measured"] = Field(
        description="header: the file's redshift; measured: cross-correlation with "
                    "templates (the file gave none); header+measured: the spectrum "
                    "contradicted the file's redshift and the measured rest was removed too")


class Neighbour(BaseModel):
    rank: int = Field(description="1-based rank among all results (offset included)")
    source_id: int
    spectrum_id: str
    modality: str
    similarity: float = Field(description="cosine similarity of the embeddings (1 = same)")
    ra: float | None = None
    dec: float | None = None
    snr: float | None = None
    mag_g: float | None = None
    predictions: dict[str, Estimate] = Field(default_factory=dict)
    metadata: dict[str, MetadataValue] = Field(
        default_factory=dict, description="other stored columns (class, true labels...)")


class Curve(BaseModel):
    """A spectrum for display: normalised flux on a wavelength grid (Angstrom, vacuum)."""

    label: str
    modality: str
    kind: Literal["observed", "model"] = "observed"
    role: Literal["query", "neighbour"] = "query"
    wavelength: list[float]
    flux: list[float | None]


MEDIUM_DESCRIPTION = ("the medium the spectrum's wavelengths were read in (converted to "
                      "vacuum); null for Gaia XP files (no wavelengths: basis coefficients) "
                      "and for stored stars")
MEDIUM_FROM_DESCRIPTION = ("what decided the medium: the request (medium or air), a header "
                           "card or column name, or the default of the file type")


class Resolution(BaseModel):
    """An uploaded spectrum broader than the resolution the model reads (LAMOST's R = 1800):
    nothing sharpens it, and the model reads its shallower lines as a lower metallicity."""

    input_fwhm_a: float = Field(description="the spectrum's line-spread FWHM in Angstrom "
                                            "(stated, or two pixels of its sampling: a lower "
                                            "bound)")
    model_fwhm_a: float = Field(description="the FWHM the model reads, at the same wavelength")


TELLURIC_DESCRIPTION = ("the spectrum was not corrected for telluric absorption: its "
                        "telluric bands (observed frame) are masked rather than read as "
                        "the star (left false, the model looks for an O2 A band left in "
                        "and masks the bands where it finds one)")


class Telluric(BaseModel):
    """Telluric absorption in a LAMOST-grid spectrum: masked because the request said the
    spectrum is not corrected, or because the model found the O2 A band left in
    (``specsearch.model.telluric``)."""

    masked: bool = Field(description="the telluric bands were masked before reading")
    source: Literal["request", "detected"] | None = Field(
        None, description="why: the request's telluric_uncorrected, or the A band found")
    a_band_depth: float | None = Field(
        None, description="how far the flux falls below the model's redrawing of the star "
                          "in the O2 A band's core (continuum units; a corrected spectrum "
                          "stays near 0, an uncorrected one reaches 0.4-0.7; null where the "
                          "band has no data or the request stated it)")
    a_band_sigma: float | None = Field(None, description="the noise of a_band_depth")


RESOLUTION_DESCRIPTION = ("set when the spectrum is broader than the model's resolution "
                          "(more than 1.25x its FWHM): its [Fe/H] reads low (about -0.1 dex "
                          "at R = 1200, -0.2 at R = 1000)")
SPIKES_DESCRIPTION = ("pixels of the uploaded spectrum masked as single- or two-pixel spikes "
                      "(cosmic rays, hot pixels: narrower than any line the spectrograph "
                      "records) before it was read; None for stored stars")


RV_DESCRIPTION = ("the radial velocity removed before the model read the spectrum (null: "
                  "none: already in the rest frame, a Gaia XP spectrum, or none found)")


class QueryInfo(BaseModel):
    """What was searched for."""

    kind: Literal["upload", "arrays", "source_id", "embedding"]
    modality: str
    source_id: int | None = None
    spectrum_id: str | None = None
    filename: str | None = None
    spectra_in_file: int | None = None
    row: int | None = None
    good_fraction: float | None = Field(
        None, description="fraction of usable pixels on the canonical grid")
    medium: Medium | None = Field(None, description=MEDIUM_DESCRIPTION)
    medium_from: str | None = Field(None, description=MEDIUM_FROM_DESCRIPTION)
    radial_velocity: RadialVelocity | None = Field(None, description=RV_DESCRIPTION)
    broader_than_model: Resolution | None = Field(None, description=RESOLUTION_DESCRIPTION)
    spikes_masked: int | None = Field(None, description=SPIKES_DESCRIPTION)
    telluric: Telluric | None = Field(None, description="telluric absorption (LAMOST-grid "
                                                        "spectra sent by the client)")
    predictions: dict[str, Estimate] = Field(default_factory=dict)
    domain: Domain | None = Field(None, description="the domain check of an embedded "
                                                    "spectrum (None for stored stars)")


class SearchResponse(BaseModel):
    query: QueryInfo
    target_modality: str
    cross_modal: bool
    k: int
    offset: int
    limit: int
    filters: list[str]
    neighbours: list[Neighbour]
    took_ms: float
    ranked_by: str = Field("embedding", description="embedding; embedding+identity: a "
                           "same-instrument search of an index with identity vectors orders "
                           "its candidates by the mean of the two cosines (the similarity "
                           "shown); embedding+parameters: a cross-modal search orders them "
                           "by the cosine plus the weighted log probability that their "
                           "parameters agree with the query's (the similarity shown)")
    spectra: list[Curve] | None = Field(
        None, description="query then neighbours (include_spectra=true), for plotting")


class SearchOptions(BaseModel):
    """Search parameters shared by every search route. JSON bodies are validated strictly
    (``"true"`` is not a boolean, ``"5"`` not a number), as the schema says."""

    model_config = ConfigDict(extra="forbid", strict=True)

    k: int = Field(10, ge=1, description="neighbours to find (at most the server's max_k)")
    target: Target = Field("same", description="same modality, cross (the other one), or a "
                                               "modality name")
    filters: list[str] = Field(default_factory=list, examples=[["snr>=20", "feh_pred<-1"]],
                               description="e.g. 'snr>=20', 'feh_pred<-2', "
                                           "'cone=RA,DEC,RADIUS_DEG', 'mag_g<15'")
    offset: int = Field(0, ge=0)
    limit: int | None = Field(None, ge=1, description="page size (default: k)")
    include_spectra: bool = Field(False, description="return curves for a plot")
    identity: bool = Field(True, description="same-instrument searches: re-rank by identity "
                                             "vectors where the model and index have them "
                                             "(finds a star's other visits among "
                                             "look-alikes)")
    agreement: bool = Field(True, description="cross-modal searches by source_id or "
                                              "spectrum: re-rank by how well the "
                                              "neighbours' predicted parameters agree with "
                                              "the query's")


class ArraysSearch(SearchOptions):
    """A spectrum as JSON arrays (same length; NaN or null flux marks a bad pixel)."""

    model_config = ConfigDict(extra="forbid", strict=True,
                              json_schema_extra={"examples": [{**example_spectrum(), "k": 5}]})

    wavelength: list[float] = Field(min_length=2, max_length=MAX_ARRAY_PIXELS,
                                    description="Angstrom, strictly increasing")
    flux: list[float | None] = Field(min_length=2, max_length=MAX_ARRAY_PIXELS)
    ivar: list[float | None] | None = Field(
        None, max_length=MAX_ARRAY_PIXELS,
        description="inverse variance; default: uniform weights")
    modality: Modality | None = Field(None, description="grid to put it on (default: "
                                                        "chosen from the pixel spacing)")
    air: bool = Field(False, description="wavelengths are in air (converted to vacuum)")
    resolving_power: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="R = lambda / FWHM of the spectrum: one much sharper than LAMOST is "
                    "broadened to R = 1800 first")
    telluric_uncorrected: bool = Field(
        False, description=TELLURIC_DESCRIPTION)


class EmbeddingSearch(SearchOptions):
    embedding: list[float] = Field(min_length=1, max_length=8192)
    modality: Modality
    identity_vector: list[float] | None = Field(
        None, min_length=1, max_length=8192,
        description="the query's identity vector (an embeddings dataset's identity column, "
                    "or SpecModel.identity_numpy): a same-instrument search of an index with "
                    "identity vectors re-ranks by it, as searches by source_id or spectrum "
                    "do")
    parameters: dict[str, Estimate] | None = Field(
        None, max_length=16, examples=[{"teff": {"value": 5800.0, "err": 60.0},
                                        "feh": {"value": -1.2, "err": 0.1}}],
        description="the query's predicted parameters with uncertainties (an embeddings "
                    "dataset's {label}_pred / {label}_err): a cross-modal search re-ranks "
                    "by their agreement with the neighbours', as searches by source_id or "
                    "spectrum do")


class Prediction(BaseModel):
    """Head predictions for one uploaded spectrum, and its translation."""

    modality: str
    filename: str | None = None
    spectra_in_file: int | None = None
    row: int | None = None
    good_fraction: float
    medium: Medium | None = Field(None, description=MEDIUM_DESCRIPTION)
    medium_from: str | None = Field(None, description=MEDIUM_FROM_DESCRIPTION)
    radial_velocity: RadialVelocity | None = Field(None, description=RV_DESCRIPTION)
    broader_than_model: Resolution | None = Field(None, description=RESOLUTION_DESCRIPTION)
    spikes_masked: int = Field(0, description=SPIKES_DESCRIPTION)
    telluric: Telluric | None = Field(None, description="telluric absorption (LAMOST-grid "
                                                        "spectra)")
    predictions: dict[str, Estimate]
    class_probabilities: dict[str, float] = Field(default_factory=dict)
    domain: Domain | None = None
    input: Curve = Field(description="the spectrum as the model saw it (normalised)")
    translated: Curve | None = Field(None, description="the model's spectrum of the same "
                                                       "star in the other modality")


class ArraysPredict(BaseModel):
    """A spectrum as JSON arrays, as for search, and whether to translate it."""

    model_config = ConfigDict(extra="forbid", strict=True,
                              json_schema_extra={"examples": [example_spectrum()]})

    wavelength: list[float] = Field(min_length=2, max_length=MAX_ARRAY_PIXELS)
    flux: list[float | None] = Field(min_length=2, max_length=MAX_ARRAY_PIXELS)
    ivar: list[float | None] | None = Field(None, max_length=MAX_ARRAY_PIXELS)
    modality: Modality | None = None
    air: bool = False
    resolving_power: float | None = Field(None, gt=0, allow_inf_nan=False)
    telluric_uncorrected: bool = Field(False, description=TELLURIC_DESCRIPTION)
    translate: bool = True


class Page(BaseModel):
    """A page of a ranked candidate list."""

    list: str
    modality: str
    total: int = Field(description="rows passing the filters")
    offset: int
    limit: int
    filters: list[str]
    columns: list[str]
    rows: list[dict[str, MetadataValue]]
    info: dict[str, MetadataValue] = Field(default_factory=dict,
                                           description="how the list was made")


class ObjectRecord(BaseModel):
    """Everything the index stores about one star, per modality and observation."""

    source_id: int
    observations: list[Neighbour]


class Health(BaseModel):
    status: Literal["ok", "starting", "failed"]
    detail: str = ""


class Info(BaseModel):
    version: str
    index: dict[str, object]
    model: dict[str, object]
    limits: dict[str, object]
    threads: dict[str, int]


class ValidationProblem(BaseModel):
    """One problem FastAPI found in a request's parameters or body."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error response: ``detail`` says what is wrong and how to fix it (a list of
    problems for request validation errors), ``error`` is a stable machine-readable kind."""

    detail: str | list[ValidationProblem]
    error: str = Field(description="e.g. bad_query, not_found, too_large, unknown_format, "
                                    "unreadable_file, bad_spectrum, invalid_request, timeout")
    message: str | None = Field(None, description="validation errors: the problems as text")


def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI ``responses`` entries with the :class:`ErrorBody` schema."""
    text = {400: "bad query or parameter", 401: "missing or invalid API key",
            404: "unknown source_id or modality", 413: "upload, decompressed content, table "
            "or FITS header over a server limit", 415: "unrecognised file format",
            422: "unreadable file, unusable spectrum, or invalid request",
            503: "the index or model is unavailable", 504: "the request or the upload's "
            "parse took longer than the server's limit"}
    return {s: {"model": ErrorBody, "description": text.get(s, "error")} for s in statuses}


API_ERRORS = error_responses(400, 401, 404, 413, 422, 503, 504)
"""Errors every /v1 route may answer."""
UPLOAD_ERRORS = error_responses(415)
"""Further errors of the upload routes."""
