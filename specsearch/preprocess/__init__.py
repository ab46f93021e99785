"""Grids, wavelength conventions, resampling, continuum normalisation and model scaling.

This package is the single implementation of the spectral science that every stage shares:
ingest puts spectra on the canonical grids with :func:`resample`, the synthetic survey and
the model use the same grids, and training, embedding and the query path all call
:func:`prepare_model_input`. One module per job:

* :mod:`~specsearch.preprocess.grids`: the canonical ``lamost`` and ``xp`` grids;
* :mod:`~specsearch.preprocess.wavelengths`: air/vacuum, rest frame, pixel edges;
* :mod:`~specsearch.preprocess.resample`: flux-conserving rebinning onto a grid;
* :mod:`~specsearch.preprocess.lsf`: resolution matching of sharper spectra before it;
* :mod:`~specsearch.preprocess.spikes`: cosmic rays and hot pixels, masked before it;
* :mod:`~specsearch.preprocess.rv`: radial velocities of spectra that come without one
  (:mod:`~specsearch.preprocess.rv_correlation`: the cross-correlation it runs);
* :mod:`~specsearch.preprocess.continuum`: the pseudo-continuum (torch, CPU or GPU);
* :mod:`~specsearch.preprocess.model_input`: the scaling every encoder expects.

Everything public is importable from ``specsearch.preprocess`` itself.
"""

from specsearch.preprocess.continuum import (CONTINUUM_BIN, binned_continuum_torch,
                                             continuum, continuum_normalise, continuum_torch)
from specsearch.preprocess.grids import (GRIDS, LAMOST_DLOGLAM, LAMOST_GRID, LAMOST_LOGLAM0,
                                         LAMOST_NPIX, TELLURIC_BANDS, XP_FLUX_SCALE, XP_GRID,
                                         Grid, band_mask, grid_for)
from specsearch.preprocess.lsf import (LAMOST_RESOLUTION, ResolutionMatch, broadened_flux,
                                       resolution_match)
from specsearch.preprocess.model_input import (BATCH_PIXELS, GPU_BATCH_FACTOR,
                                               MIN_GOOD_FRACTION, SED_BINS, ModelInput,
                                               as_tensor, default_batch_size,
                                               prepare_model_input, prepare_model_input_torch,
                                               prepared_width, sed_columns, split_sed)
from specsearch.preprocess.resample import (REST_FRAME_MAX_Z, RV_MIN_GAIN, RV_MODES,
                                            CanonicalSpectrum, Rebinner, rebinner, resample,
                                            state_telluric, to_canonical_grid)
from specsearch.preprocess.rv import RVMeasurement, measure_rv
from specsearch.preprocess.wavelengths import (C_KMS, air_to_vacuum, pixel_edges,
                                               to_rest_frame, vacuum_to_air)

__all__ = [
    "BATCH_PIXELS", "CONTINUUM_BIN", "GPU_BATCH_FACTOR", "GRIDS", "LAMOST_DLOGLAM",
    "LAMOST_GRID", "LAMOST_LOGLAM0", "LAMOST_NPIX", "LAMOST_RESOLUTION", "ResolutionMatch",
    "TELLURIC_BANDS", "band_mask", "broadened_flux", "resolution_match", "MIN_GOOD_FRACTION",
    "REST_FRAME_MAX_Z", "RV_MIN_GAIN", "RV_MODES", "RVMeasurement", "C_KMS",
    "CanonicalSpectrum", "measure_rv",
    "SED_BINS", "XP_FLUX_SCALE", "XP_GRID", "Grid", "ModelInput", "Rebinner",
    "air_to_vacuum", "as_tensor", "binned_continuum_torch", "continuum",
    "continuum_normalise", "continuum_torch", "default_batch_size", "grid_for",
    "pixel_edges", "prepare_model_input", "prepare_model_input_torch", "prepared_width",
    "rebinner", "resample", "sed_columns", "split_sed", "state_telluric",
    "to_canonical_grid",
    "to_rest_frame", "vacuum_to_air",
]
