"""How close synthetic spectra are to real ones (used by benchmarks/bench_synth.py and tests).

MILES fidelity: for a MILES star with labels, the noiseless model spectrum at its labels and
the real spectrum (air -> vacuum) are both rebinned onto the LAMOST grid (both at the MILES
resolution, 2.5 A FWHM), continuum-normalised with :func:`specsearch.preprocess.continuum`
and compared by the RMS of the difference over 3700-7400 A.

XP: synthetic coefficients of a star class are compared with real ones after dividing each
band by its coefficient 0 (shape, not brightness).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specsearch.preprocess import LAMOST_GRID, continuum_normalise, rebinner

FIDELITY_RANGE_A = (3700.0, 7400.0)


@dataclass
class FidelityResult:
    """Per-star RMS of continuum-normalised flux differences.

    Attributes:
        ids, teff, logg, feh: the MILES stars compared.
        rms: (n,) RMS over 3700-7400 A.
        real_norm, synth_norm: (n, npix) continuum-normalised spectra on the LAMOST grid
            (0 outside the compared range).
        wavelength: (npix,) LAMOST grid.
        mask: (npix,) pixels compared.
    """

    ids: np.ndarray
    teff: np.ndarray
    logg: np.ndarray
    feh: np.ndarray
    rms: np.ndarray
    real_norm: np.ndarray
    synth_norm: np.ndarray
    wavelength: np.ndarray
    mask: np.ndarray


def normalise_on_lamost_grid(wave_vac: np.ndarray, flux: np.ndarray
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Rebin (n, m) spectra onto LAMOST_GRID, continuum-normalise within the compared range.

    Returns (normalised flux (n, 3909), compared-pixel mask (3909,)).
    """
    rb = rebinner(wave_vac, LAMOST_GRID)
    scale = np.median(flux, axis=1, keepdims=True)
    f, iv = rb(flux / scale, np.ones_like(flux), min_coverage=0.999)
    w = LAMOST_GRID.wavelength
    mask = (w >= FIDELITY_RANGE_A[0]) & (w <= FIDELITY_RANGE_A[1]) & (iv > 0).all(axis=0)
    iv = np.where(mask[None, :], iv, 0.0)
    norm, _, _ = continuum_normalise(f, iv)
    return np.where(mask[None, :], norm, 0.0), mask


def miles_fidelity(miles: dict, ids: np.ndarray | None = None) -> FidelityResult:
    """Compare the model with MILES stars (``miles`` from
    :func:`specsearch.synth.fit_miles.read_miles`), optionally only ``ids``."""
    from specsearch.synth.grid import model_wavelength
    from specsearch.synth.model import miles_alpha_trend, stellar_spectra

    sel = np.ones(len(miles["ids"]), bool) if ids is None else np.isin(miles["ids"], ids)
    teff, logg, feh = miles["teff"][sel], miles["logg"][sel], miles["feh"][sel]
    real, mask_r = normalise_on_lamost_grid(miles["wave_vac"], miles["flux"][sel])
    synth_flux = stellar_spectra(teff, logg, feh, miles_alpha_trend(feh)).astype(np.float64)
    synth, mask_s = normalise_on_lamost_grid(model_wavelength(), synth_flux)
    mask = mask_r & mask_s
    diff = (real - synth)[:, mask]
    return FidelityResult(ids=miles["ids"][sel], teff=teff, logg=logg, feh=feh,
                          rms=np.sqrt(np.mean(diff ** 2, axis=1)), real_norm=real,
                          synth_norm=synth, wavelength=LAMOST_GRID.wavelength, mask=mask)


def binned_table(values: np.ndarray, by: np.ndarray, edges: list[float]) -> list[dict]:
    """Median / 90th percentile of ``values`` in bins of ``by``."""
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        s = (by >= lo) & (by < hi)
        if s.any():
            rows.append({"lo": lo, "hi": hi, "n": int(s.sum()),
                         "median": float(np.median(values[s])),
                         "p90": float(np.percentile(values[s], 90))})
    return rows


def normalised_coefficients(bp: np.ndarray, rp: np.ndarray, k: int = 15) -> np.ndarray:
    """(n, 2k) the first ``k`` BP and RP coefficients divided by each band's coefficient 0."""
    return np.concatenate([bp[:, 1:k + 1] / bp[:, :1], rp[:, 1:k + 1] / rp[:, :1]], axis=1)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D of finite values."""
    a, b = np.sort(a[np.isfinite(a)]), np.sort(b[np.isfinite(b)])
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, side="right") / a.size
                               - np.searchsorted(b, grid, side="right") / b.size)))
