"""The metal-poor star hunt: calibrated P([Fe/H] < threshold) from the parameter heads,
combined across modalities, optionally re-ranked by similarity to seed spectra, with the
expected purity and completeness of every list size."""

from specsearch.hunt.calibration import FehCalibration, HuntCalibration
from specsearch.hunt.calibration_fit import fit_calibration, fit_measurement, fit_prior
from specsearch.hunt.hunt import CutSummary, HuntResult, hunt
from specsearch.hunt.rank import (HuntConfig, StarEstimates, fit_hunt_calibration,
                                  seed_similarity, star_estimates)

__all__ = ["FehCalibration", "HuntCalibration", "fit_calibration", "fit_measurement",
           "fit_prior", "CutSummary", "HuntResult",
           "hunt", "HuntConfig", "StarEstimates", "fit_hunt_calibration", "seed_similarity",
           "star_estimates"]
