"""Gaia XP spectra in memory: continuous (coefficients) and sampled, and their calibration.

:func:`calibrate` equals ``gaiaxpy.calibrate`` (default: no truncation, correlations used
when present) but does each band as a few matrix products over all sources at once; see
:mod:`specsearch.io.xp_basis` for the model and the error propagation. Wavelengths are in
nm (vacuum; see :mod:`specsearch.io.gaia_xp`), flux in W m^-2 nm^-1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specsearch.io import xp_basis as xb
from specsearch.preprocess import XP_FLUX_SCALE

BANDS = ("bp", "rp")


@dataclass
class XPContinuous:
    """Gaia XP continuous spectra of N sources (per band ``b`` in bp, rp).

    Attributes:
        source_id: (N,) int64 Gaia DR3 source_id.
        bp_coefficients, rp_coefficients: (N, 55) float64; NaN rows where the band is missing.
        bp_coefficient_errors, rp_coefficient_errors: (N, 55) float64 (1-sigma).
        bp_coefficient_correlations, rp_coefficient_correlations: (N, 1485) float64 lower
            triangles in archive order, or None when the file has none.
        bp_n_relevant_bases, rp_n_relevant_bases: (N,) int (0 = unknown: no truncation).
        bp_standard_deviation, rp_standard_deviation: (N,) float64 (NaN if absent).
        ra, dec: (N,) float64 degrees (NaN if absent).
        path: the source file.
    """

    source_id: np.ndarray
    bp_coefficients: np.ndarray
    rp_coefficients: np.ndarray
    bp_coefficient_errors: np.ndarray
    rp_coefficient_errors: np.ndarray
    bp_coefficient_correlations: np.ndarray | None
    rp_coefficient_correlations: np.ndarray | None
    bp_n_relevant_bases: np.ndarray
    rp_n_relevant_bases: np.ndarray
    bp_standard_deviation: np.ndarray
    rp_standard_deviation: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    path: str | None = None

    def __len__(self) -> int:
        return int(self.source_id.shape[0])

    def band(self, b: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """(coefficients, errors, correlations or None, n_relevant_bases) of band ``b``."""
        return (getattr(self, f"{b}_coefficients"), getattr(self, f"{b}_coefficient_errors"),
                getattr(self, f"{b}_coefficient_correlations"),
                getattr(self, f"{b}_n_relevant_bases"))

    def has(self, b: str) -> np.ndarray:
        """(N,) bool: the source has band ``b``."""
        return np.isfinite(getattr(self, f"{b}_coefficients")).all(axis=1)


@dataclass
class XPSampled:
    """Sampled XP spectra (GaiaXPy ``calibrate`` output form).

    Attributes:
        source_id: (N,) int64.
        wavelength_nm: (n,) sampling in nm (vacuum; see the module docstring).
        flux, flux_error: (N, n) W m^-2 nm^-1; NaN where undefined (a missing band's range).
        ra, dec: (N,) float64 degrees or NaN.
        path: the source file.
        continuous: the :class:`XPContinuous` it was calibrated from (None if read sampled).
    """

    source_id: np.ndarray
    wavelength_nm: np.ndarray
    flux: np.ndarray
    flux_error: np.ndarray
    ra: np.ndarray | None = None
    dec: np.ndarray | None = None
    path: str | None = None
    continuous: XPContinuous | None = None

    def __len__(self) -> int:
        return int(self.source_id.shape[0])

    def catalog_flux(self, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
        """(flux, ivar) in the catalog unit (XP_FLUX_SCALE); 0 / 0 where undefined."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ivar = np.square(XP_FLUX_SCALE / self.flux_error).astype(dtype)
            flux = (self.flux / XP_FLUX_SCALE).astype(dtype)
        bad = ~(np.isfinite(ivar) & (ivar > 0) & np.isfinite(flux))
        ivar[bad] = 0.0
        flux[bad] = 0.0
        return flux, ivar

    def snr(self) -> np.ndarray:
        """(N,) float32 median of flux / flux_error over the defined pixels (NaN if none)."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ratio = (self.flux / self.flux_error).astype(np.float32)   # half the traffic
        good = np.isfinite(ratio) & (self.flux_error > 0)
        count = good.sum(axis=1)
        out = np.full(len(count), np.nan, dtype=np.float32)
        full = count == ratio.shape[1]          # the usual case: a partition, not a sort
        out[full] = np.median(ratio[full], axis=1)
        part = np.flatnonzero(~full & (count > 0))
        if part.size:   # a varying number of good pixels: sort with the bad ones last (inf)
            r = np.sort(np.where(good[part], ratio[part], np.inf), axis=1)
            c = count[part][:, None]
            lo = np.take_along_axis(r, (c - 1) // 2, axis=1)[:, 0]
            out[part] = 0.5 * (lo + np.take_along_axis(r, c // 2, axis=1)[:, 0])
        return out


def calibrate(xp: XPContinuous, *, grid_nm: np.ndarray | None = None, truncation: bool = False,
              correlations: bool = True, batch_size: int = 16384,
              error_precision: str = "single") -> XPSampled:
    """Sample continuous XP spectra: GaiaXPy's ``calibrate`` for all sources at once.

    Args:
        xp: the continuous spectra.
        grid_nm: sampling in nm (None: GaiaXPy's default 336-1020 nm, 2 nm).
        truncation: keep only the first ``n_relevant_bases`` coefficients per band (GaiaXPy's
            ``truncation=True``; off by default there and here; 0 = keep all).
        correlations: use the coefficient correlations when the table has them (as GaiaXPy
            does); False propagates the errors as if uncorrelated (faster, underestimates).
        batch_size: sources per block: bounds the temporaries (~10 kB a source) besides the
            (N, n) float64 outputs.
        error_precision: arithmetic of the correlation term of the errors: ``"single"``
            (twice as fast, within ~1e-6 of double) or ``"double"`` (see ``xp_basis.sample``).
    Returns:
        :class:`XPSampled` with flux and flux_error in W m^-2 nm^-1. Where a band is missing
        the other band is used alone and its uncovered range is NaN; sources with neither
        band are all NaN.
    """
    design = xb.xp_design(grid_nm)
    n = len(xp)
    flux = np.empty((n, design.npix))
    error = np.empty((n, design.npix))
    keys = [f"{b}_{k}" for k in ("coefficients", "coefficient_errors",
                                  "coefficient_correlations") for b in BANDS]
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        arrays = {k: None if getattr(xp, k) is None else getattr(xp, k)[sl] for k in keys}
        if not correlations:
            arrays["bp_coefficient_correlations"] = arrays["rp_coefficient_correlations"] = None
        if truncation:
            for b in BANDS:
                nrel = getattr(xp, f"{b}_n_relevant_bases")[sl]
                cut = np.arange(xb.N_COEFF) >= np.where(nrel > 0, nrel, xb.N_COEFF)[:, None]
                # A zero error drops the coefficient from every covariance term too.
                for k in (f"{b}_coefficients", f"{b}_coefficient_errors"):
                    arrays[k] = np.where(cut, 0.0, arrays[k])
        xb.sample(*arrays.values(), design=design, out=(flux[sl], error[sl]),
                  error_precision=error_precision)
    return XPSampled(source_id=xp.source_id.copy(), wavelength_nm=design.wavelength_nm.copy(),
                     flux=flux, flux_error=error, ra=xp.ra, dec=xp.dec, path=xp.path,
                     continuous=xp)
