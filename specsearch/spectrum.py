"""The one spectrum container used at every boundary (readers, preprocessing, queries).

Wavelengths are always vacuum Angstrom. ``mask`` is True where a pixel is bad; a bad pixel
has ``ivar == 0`` after :meth:`Spectrum.validated`, so downstream code may rely on either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from specsearch.errors import SpectrumError


@dataclass
class Spectrum:
    """One observed spectrum.

    Attributes:
        wavelength: (npix,) vacuum wavelength in Angstrom, strictly increasing.
        flux: (npix,) flux density; units depend on the source (``flux_unit``).
        ivar: (npix,) inverse variance of ``flux`` (0 where unknown or bad).
        mask: (npix,) bool, True for bad pixels.
        spectrum_id: unique per observation (e.g. the LAMOST obsid, or ``gaia-<source_id>``).
        source_id: the star (Gaia DR3 source_id where known, else a survey id), or None.
        modality: ``"lamost"``, ``"xp"`` or None for a generic spectrum.
        ra, dec: ICRS degrees, if known.
        snr: a representative signal-to-noise ratio, if known.
        flux_unit: a free-text unit (astropy-parsable where possible).
        path: the file this spectrum came from, for error messages and provenance.
        meta: survey-specific header values (class, subclass, z, per-band S/N, magnitudes...).
    """

    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray
    spectrum_id: str = ""
    source_id: int | None = None
    modality: str | None = None
    ra: float | None = None
    dec: float | None = None
    snr: float | None = None
    flux_unit: str = ""
    path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def npix(self) -> int:
        return int(self.flux.shape[0])

    def validated(self) -> "Spectrum":
        """Check shapes and values; return a copy with bad pixels masked and ivar zeroed there.

        Raises:
            SpectrumError: arrays of different lengths, non-monotonic wavelengths, or no
                usable pixel (all masked / non-finite / zero flux).
        """
        where = self.path or self.spectrum_id or "spectrum"
        wave = np.asarray(self.wavelength, dtype=np.float64)
        flux = np.asarray(self.flux, dtype=np.float64)
        ivar = np.asarray(self.ivar, dtype=np.float64)
        mask = np.asarray(self.mask, dtype=bool)
        shapes = {a: x.shape for a, x in
                  (("wavelength", wave), ("flux", flux), ("ivar", ivar), ("mask", mask))}
        if any(len(s) != 1 for s in shapes.values()) or len(set(shapes.values())) != 1:
            raise SpectrumError(
                f"{where}: wavelength, flux, ivar and mask must be 1-D arrays of one length; "
                f"got shapes {shapes}")
        if wave.size < 2:
            raise SpectrumError(f"{where}: a spectrum needs at least 2 pixels, got {wave.size}")
        if not np.all(np.isfinite(wave)) or not np.all(np.diff(wave) > 0):
            raise SpectrumError(
                f"{where}: wavelength must be finite and strictly increasing "
                f"(range found {np.nanmin(wave):.6g}-{np.nanmax(wave):.6g} A)")
        bad = mask | ~np.isfinite(flux) | ~np.isfinite(ivar) | (ivar < 0) | (flux == 0)
        if bad.all():
            raise SpectrumError(
                f"{where}: no usable pixel: all {flux.size} pixels are masked, non-finite, "
                f"zero-flux or have negative ivar")
        flux = np.where(np.isfinite(flux), flux, 0.0)
        ivar = np.where(bad, 0.0, ivar)
        return Spectrum(wavelength=wave, flux=flux, ivar=ivar, mask=bad,
                        spectrum_id=self.spectrum_id, source_id=self.source_id,
                        modality=self.modality, ra=self.ra, dec=self.dec, snr=self.snr,
                        flux_unit=self.flux_unit, path=self.path, meta=dict(self.meta))
