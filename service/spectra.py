"""Client spectra -> canonical-grid arrays, and spectra -> curves for the web page's plot.

Uploads are parsed in a worker process (:mod:`service.parse_pool`, through
:func:`specsearch.io.registry.read_spectra_bytes`: a private temp dir, the client's file
name never used as a path); arrays become a :class:`Spectrum` and follow the same path. Putting a spectrum on a grid is the catalog's own function
(:func:`specsearch.io.ingest.spectrum_row`: same rest-frame and resampling rules as the
indexed spectra), so a query is prepared exactly like the objects it is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from specsearch.errors import QueryError, SpectrumError
from specsearch.io.generic import estimate_noise
from specsearch.io.ingest import spectrum_row
from specsearch.preprocess import air_to_vacuum, grid_for, prepare_model_input, state_telluric
from specsearch.preprocess.lsf import resolution_match, state_resolution
from specsearch.spectrum import Spectrum

XP_SPACING_A = 10.0
"""A generic spectrum whose median pixel is wider than this (Angstrom) is taken as Gaia XP
(XP samples are 20 A apart; LAMOST pixels ~1-2.5 A)."""

MAX_ABS_VALUE = 1e30
"""JSON values beyond this are refused (their squares overflow float64)."""

DISPLAY_POINTS = 1200
"""Curves sent to the browser are binned to at most this many points."""


@dataclass
class GridSpectrum:
    """A client spectrum on a canonical grid, ready for the model."""

    spectrum: Spectrum
    modality: str
    flux: np.ndarray            # (npix,) float32 on grid_for(modality)
    ivar: np.ndarray            # (npix,) float32, 0 = no data
    filename: str | None = None
    spectra_in_file: int | None = None
    row: int | None = None
    medium: str | None = None          # air/vacuum as read (generic files, arrays)
    medium_from: str | None = None
    rv_kms: float | None = None        # the radial velocity removed (None: none)
    rv_source: str | None = None       # header, measured or header+measured
    broader_fwhm_A: tuple[float, float] | None = None  # broader than the model reads:
    #                                     (its FWHM or 2 pixels, the model's FWHM) in A
    spikes_masked: int = 0             # its pixels masked as cosmic rays / hot pixels
    telluric_uncorrected: bool = False  # the request said so: its bands are masked

    @property
    def good_fraction(self) -> float:
        return float(np.mean(self.ivar > 0))


def choose_modality(spectrum: Spectrum, requested: str | None) -> str:
    """The grid a spectrum goes on: the requested one, the survey's own, or by pixel spacing.

    Raises:
        QueryError: the request names a modality the file's survey contradicts.
    """
    if requested is not None:
        grid_for(requested)  # ConfigError for an unknown name
        if spectrum.modality not in (None, requested):
            raise QueryError(f"{spectrum.path or 'spectrum'}: this is a {spectrum.modality} "
                             f"spectrum; it cannot be searched as {requested} (use "
                             f"target=cross to find {requested} matches)")
        return requested
    if spectrum.modality is not None:
        return spectrum.modality
    spacing = float(np.median(np.diff(spectrum.wavelength)))
    return "xp" if spacing > XP_SPACING_A else "lamost"


class OnGrid(NamedTuple):
    """A spectrum on its modality's grid (:func:`to_grid`)."""

    flux: np.ndarray
    ivar: np.ndarray
    rv_kms: float | None            # the radial velocity removed, None if none
    rv_source: str | None           # how it was found
    broader_fwhm_A: tuple[float, float] | None   # broader than the model's resolution:
    #                            (its FWHM or 2 of its pixels, the model's FWHM) in A
    spikes_masked: int                   # its pixels masked as single-pixel spikes


def to_grid(spectrum: Spectrum, modality: str) -> OnGrid:
    """The spectrum on the modality's canonical grid, as the catalog builder does it.

    Raises:
        SpectrumError: no usable pixel, no overlap with the grid, bad arrays.
    """
    row = spectrum_row(spectrum, modality)
    rv = row["rv"]
    match = resolution_match(spectrum, modality)
    broader = None
    if match is not None and match.broader and match.input_fwhm_A is not None:
        broader = (float(match.input_fwhm_A), float(match.target_fwhm_A))
    return OnGrid(np.asarray(row["flux"], np.float32), np.asarray(row["ivar"], np.float32),
                  None if rv is None else float(rv), row["rv_source"], broader,
                  int(row["spikes_masked"]))


def from_arrays(wavelength: list[float], flux: list[float | None],
                ivar: list[float | None] | None, *, modality: str | None,
                air: bool, resolving_power: float | None = None,
                telluric_uncorrected: bool = False) -> GridSpectrum:
    """A JSON spectrum (NaN/None flux = bad pixel; no ivar = DER_SNR noise estimate).

    Raises:
        SpectrumError: arrays of different lengths, non-increasing wavelengths, no usable
            pixel (NaN-only, all zero).
    """
    wave = np.asarray(wavelength, dtype=np.float64)
    f = np.array([np.nan if v is None else v for v in flux], dtype=np.float64)
    if wave.shape != f.shape:
        raise SpectrumError(f"wavelength has {wave.size} values but flux has {f.size}; "
                            f"send one flux value a wavelength")
    iv = None if ivar is None else np.array([0.0 if v is None else v for v in ivar],
                                            dtype=np.float64)
    for name, values in (("wavelength", wave), ("flux", f), ("ivar", iv)):
        if values is not None and np.any(np.abs(values[np.isfinite(values)]) > MAX_ABS_VALUE):
            raise SpectrumError(f"{name} has values beyond +-{MAX_ABS_VALUE:g}; rescale the "
                                f"spectrum (units do not matter, only the shape)")
    if iv is None:
        noise = estimate_noise(f)
        if noise is None:
            raise SpectrumError(f"flux has fewer than 5 finite non-zero values (of {f.size}); "
                                f"nothing to search with")
        iv = np.full(f.shape, 1.0 / noise ** 2)
    else:
        if iv.shape != f.shape:
            raise SpectrumError(f"ivar has {iv.size} values but flux has {f.size}")
    if air:
        if not np.all(np.isfinite(wave)):
            raise SpectrumError("wavelength must be finite")
        wave = air_to_vacuum(wave)
    spec = Spectrum(wavelength=wave, flux=f, ivar=iv, mask=~np.isfinite(f),
                    spectrum_id="query", path="request body")
    spec = spec.validated()
    state_resolution(spec, resolving_power, "request resolving_power")
    state_telluric(spec, telluric_uncorrected, "request telluric_uncorrected")
    mod = choose_modality(spec, modality)
    on = to_grid(spec, mod)
    return GridSpectrum(spectrum=spec, modality=mod, flux=on.flux, ivar=on.ivar,
                        medium="air" if air else "vacuum", medium_from="request field air",
                        rv_kms=on.rv_kms, rv_source=on.rv_source,
                        broader_fwhm_A=on.broader_fwhm_A, spikes_masked=on.spikes_masked,
                        telluric_uncorrected=telluric_uncorrected)


def display_curve(flux: np.ndarray, ivar: np.ndarray, modality: str
                  ) -> tuple[list[float], list[float | None]]:
    """(wavelength, normalised flux) as the model sees it, binned for a browser plot.

    LAMOST: continuum-normalised; XP: divided by the mean (``prepare_model_input``).
    Masked pixels are None (gaps in the plot).
    """
    grid = grid_for(modality)
    mi = prepare_model_input(flux[None, :], ivar[None, :], modality)
    x, w = mi.flux[0].astype(np.float64), mi.weight[0]
    wave = np.asarray(grid.wavelength, dtype=np.float64)
    step = max(1, int(np.ceil(wave.size / DISPLAY_POINTS)))
    n = wave.size // step * step
    good = (w[:n] > 0).reshape(-1, step)
    xs = np.where(w[:n] > 0, x[:n], 0.0).reshape(-1, step)
    count = good.sum(axis=1)
    binned = np.where(count > 0, xs.sum(axis=1) / np.maximum(count, 1), np.nan)
    waves = wave[:n].reshape(-1, step).mean(axis=1)
    return ([round(float(v), 2) for v in waves],
            [None if not np.isfinite(v) else round(float(v), 5) for v in binned])


def model_curve(values: np.ndarray, modality: str) -> tuple[list[float], list[float | None]]:
    """A model spectrum already in ``prepare_model_input`` units (e.g. a translation),
    binned like :func:`display_curve`."""
    return _bin_plain(values, modality)


def _bin_plain(values: np.ndarray, modality: str) -> tuple[list[float], list[float | None]]:
    wave = np.asarray(grid_for(modality).wavelength, dtype=np.float64)
    step = max(1, int(np.ceil(wave.size / DISPLAY_POINTS)))
    n = wave.size // step * step
    v = np.asarray(values, np.float64)[:n].reshape(-1, step).mean(axis=1)
    w = wave[:n].reshape(-1, step).mean(axis=1)
    return ([round(float(a), 2) for a in w],
            [None if not np.isfinite(b) else round(float(b), 5) for b in v])
