"""The canonical wavelength grids of the two modalities (vacuum Angstrom).

* ``lamost``: LAMOST's own log-linear sampling (log10 step 1e-4, i.e. 69 km/s a pixel),
  starting at log10(lambda) = 3.5682 (3700 A, the LAMOST LRS start) and running to 9098 A:
  3909 pixels. Real LAMOST DR1-DR9 spectra sit on this lattice, so resampling them is
  nearly an identity.
* ``xp``: GaiaXPy's default sampling, 336-1020 nm in 2 nm steps: 343 pixels. Catalog XP flux
  is in units of 1e-17 W m^-2 nm^-1 (``XP_FLUX_SCALE``) so that ivar stays well inside
  float32 range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specsearch.errors import ConfigError
from specsearch.preprocess.wavelengths import pixel_edges

XP_FLUX_SCALE = 1e-17
"""Catalog XP flux unit in W m^-2 nm^-1 (GaiaXPy's unit is W m^-2 nm^-1)."""


@dataclass(frozen=True)
class Grid:
    """A modality's canonical wavelength grid.

    Attributes:
        name: the modality name (``lamost`` or ``xp``).
        wavelength: (npix,) vacuum wavelength in Angstrom, strictly increasing.
        flux_unit: the unit of catalog flux on this grid.
        log_spacing: True when the grid is uniform in log10(wavelength).
    """

    name: str
    wavelength: np.ndarray
    flux_unit: str
    log_spacing: bool

    @property
    def npix(self) -> int:
        return int(self.wavelength.shape[0])

    def edges(self) -> np.ndarray:
        """(npix + 1,) pixel edges in Angstrom (midpoints in log or linear space)."""
        return pixel_edges(self.wavelength, log=self.log_spacing)

    def describe(self) -> dict:
        """A JSON-able description, stored in model and index manifests."""
        return {"name": self.name, "npix": self.npix,
                "start_A": float(self.wavelength[0]), "end_A": float(self.wavelength[-1]),
                "log_spacing": self.log_spacing, "flux_unit": self.flux_unit}


LAMOST_LOGLAM0 = 3.5682
LAMOST_DLOGLAM = 1e-4
LAMOST_NPIX = 3909

LAMOST_GRID = Grid(
    name="lamost",
    wavelength=10.0 ** (LAMOST_LOGLAM0 + LAMOST_DLOGLAM * np.arange(LAMOST_NPIX)),
    flux_unit="relative F_lambda (LAMOST counts-calibrated)",
    log_spacing=True,
)
XP_GRID = Grid(
    name="xp",
    wavelength=np.arange(3360.0, 10200.0 + 1.0, 20.0),
    flux_unit="1e-17 W m-2 nm-1",
    log_spacing=False,
)
GRIDS: dict[str, Grid] = {"lamost": LAMOST_GRID, "xp": XP_GRID}

TELLURIC_BANDS: tuple[tuple[float, float], ...] = (
    (6860.0, 6960.0), (7160.0, 7340.0), (7590.0, 7700.0), (8100.0, 8380.0), (8900.0, 9300.0))
"""The LAMOST range's telluric absorption bands (Angstrom, with margins): the O2 B and A
bands, the water bands near 7200 and 8200 A, and everything redward of 8900 A (water, with
the strongest sky lines). What a pipeline's telluric correction leaves there changes from
one night to the next."""


def band_mask(wavelength: np.ndarray, bands) -> np.ndarray:
    """(npix,) bool: True where ``wavelength`` lies in one of the ``(lo, hi)`` ``bands``
    (lo inclusive, hi exclusive)."""
    w = np.asarray(wavelength)
    out = np.zeros(w.shape, bool)
    for lo, hi in bands:
        out |= (w >= lo) & (w < hi)
    return out


def grid_for(modality: str) -> Grid:
    """The canonical grid of ``modality`` (``lamost`` or ``xp``)."""
    try:
        return GRIDS[modality]
    except KeyError:
        raise ConfigError(
            f"unknown modality {modality!r}; expected one of {sorted(GRIDS)}") from None
