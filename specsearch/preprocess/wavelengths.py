"""Wavelength conventions: air and vacuum, rest frame, pixel edges (Angstrom throughout)."""

from __future__ import annotations

import numpy as np

from specsearch.errors import SpectrumError

C_KMS = 299792.458
"""The speed of light (km/s)."""


def air_to_vacuum(wavelength_air: np.ndarray) -> np.ndarray:
    """Air to vacuum wavelength (Angstrom), IAU standard (Morton 2000 / Ciddor 1996).

    MILES and most laboratory line lists are in air; LAMOST and the canonical grids are in
    vacuum. Valid above 2000 A; shorter wavelengths are returned unchanged.
    """
    wave = np.asarray(wavelength_air, dtype=np.float64)
    sigma2 = (1e4 / wave) ** 2
    n = 1.0 + 8.336624212083e-5 + 2.408926869968e-2 / (1.301065924522e2 - sigma2) \
        + 1.599740894897e-4 / (3.892568793293e1 - sigma2)
    return np.where(wave > 2000.0, wave * n, wave)


def vacuum_to_air(wavelength_vacuum: np.ndarray) -> np.ndarray:
    """Vacuum to air wavelength (Angstrom), IAU standard (Morton 2000); inverse of
    :func:`air_to_vacuum` to better than 1e-8 relative."""
    wave = np.asarray(wavelength_vacuum, dtype=np.float64)
    sigma2 = (1e4 / wave) ** 2
    n = 1.0 + 0.0000834254 + 0.02406147 / (130.0 - sigma2) + 0.00015998 / (38.9 - sigma2)
    return np.where(wave > 2000.0, wave / n, wave)


def to_rest_frame(wavelength: np.ndarray, z: float) -> np.ndarray:
    """Remove a redshift ``z`` (e.g. LAMOST's header ``Z`` = v/c): lambda / (1 + z)."""
    if not np.isfinite(z) or z <= -1.0:
        raise SpectrumError(f"redshift z must be finite and > -1, got {z}")
    return np.asarray(wavelength, dtype=np.float64) / (1.0 + z)


def pixel_edges(wavelength: np.ndarray, *, log: bool) -> np.ndarray:
    """(n + 1,) pixel edges of pixel centres ``wavelength`` (midpoints, extrapolated at ends)."""
    w = np.log(wavelength) if log else np.asarray(wavelength, dtype=np.float64)
    mid = 0.5 * (w[1:] + w[:-1])
    edges = np.concatenate([[w[0] - (mid[0] - w[0])], mid, [w[-1] + (w[-1] - mid[-1])]])
    return np.exp(edges) if log else edges
