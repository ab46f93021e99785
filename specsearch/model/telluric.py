"""Telluric absorption a reduction did not remove, found by the model.

Spectra from reductions without a telluric correction carry the atmosphere's O2 A band
(7594-7630 A observed, 40-70% deep at R = 1800) and water bands, and the model reads them
as the star: at airmass 2 and 3 cm of water Teff scatters 1.9x and [Fe/H] 2.1x
(BENCHMARKS.md, "Telluric absorption left in"); masking the bands
(:func:`specsearch.preprocess.state_telluric`) gives those scores back but costs a
corrected spectrum 0.05 dex of [Fe/H], so it should happen only where the bands are there.

A flux ratio cannot say so: M dwarfs' TiO bands fall on the A band. The model can. It
reads the spectrum with the telluric bands masked (:data:`TELLURIC_BANDS` at the observed
wavelengths: its star, not its atmosphere) and redraws it; the A band's ``depth`` is how
far the observed flux falls below that redrawing there (continuum units, the pixels'
inverse variances as weights). Corrected spectra stay near 0 (real DR10: 99% within -0.04
to +0.03; the SDSS M-dwarf co-adds lie *above* the redrawing), uncorrected ones reach
0.4-0.7 (measured in BENCHMARKS.md, "Telluric absorption found by the model"). A spectrum
is ``detected`` when the depth passes :data:`DETECT_DEPTH` at :data:`DETECT_SIGMA` times
its noise and the redrawing holds elsewhere (the domain check passes: for a spectrum the
model does not know, the redrawing says nothing about the band).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from specsearch.model.domain import relative_residual
from specsearch.preprocess import (C_KMS, LAMOST_GRID, TELLURIC_BANDS, band_mask,
                                   prepare_model_input_torch)

A_BAND_A = (7596.0, 7630.0)
"""The O2 A band's core (vacuum Angstrom, observed frame): where it is deepest."""
DETECT_DEPTH = 0.15
"""Depth (continuum units) above which the A band counts as left in: 1.6x the deepest of
2,017 corrected real DR10 spectra (0.096, S/N 26) and a third of an uncorrected band at
airmass 1."""
DETECT_SIGMA = 4.0
"""... and its significance: at S/N 5 a corrected spectrum's depth scatters by 0.06."""
MIN_COVERED = 0.5
"""The share of the A band's core that must have data for the check to say anything."""


@dataclass(frozen=True)
class TelluricCheck:
    """What :func:`check_telluric` found, one entry a spectrum.

    Attributes:
        depth: (n,) how far the observed flux falls below the model's redrawing in the A
            band's core (continuum units; NaN where the band has too little data).
        sigma: (n,) the noise of ``depth``.
        detected: (n,) bool: the band is there (see the module docstring).
    """

    depth: np.ndarray
    sigma: np.ndarray
    detected: np.ndarray


def telluric_pixels(rv_kms: np.ndarray | float | None, n: int = 1) -> np.ndarray:
    """(n, npix) bool: the LAMOST grid's pixels (rest frame) inside the telluric bands for
    spectra from which radial velocity ``rv_kms`` was removed (the bands sit at observed
    wavelengths, rest x (1 + v/c)); None or NaN is taken as 0."""
    return band_mask(_observed(rv_kms, n), TELLURIC_BANDS)


def _observed(rv_kms: np.ndarray | float | None, n: int) -> np.ndarray:
    """(n, npix) observed wavelengths of the LAMOST grid's rest-frame pixels."""
    v = np.nan_to_num(np.broadcast_to(np.asarray(0.0 if rv_kms is None else rv_kms,
                                                 np.float64), (n,)).astype(np.float64))
    return LAMOST_GRID.wavelength[None, :] * (1.0 + v[:, None] / C_KMS)


def without_telluric(ivar: np.ndarray, rv_kms: np.ndarray | float | None) -> np.ndarray:
    """``ivar`` (n, npix) or (npix,) of LAMOST-grid spectra with the telluric bands masked
    at their observed wavelengths."""
    iv = np.atleast_2d(ivar)
    out = np.where(telluric_pixels(rv_kms, iv.shape[0]), 0, iv).astype(iv.dtype, copy=False)
    return out if np.ndim(ivar) == 2 else out[0]


@torch.inference_mode()
def check_telluric(model, flux: np.ndarray, ivar: np.ndarray,
                   rv_kms: np.ndarray | float | None = None) -> TelluricCheck:
    """Look for the O2 A band in (n, npix) LAMOST-grid spectra (rest frame, radial velocity
    ``rv_kms`` removed; None: 0) with ``model`` (a :class:`~specsearch.model.SpecModel`
    with a LAMOST decoder)."""
    f = np.atleast_2d(np.array(flux, np.float32))        # copies: writable for torch
    iv = np.atleast_2d(np.array(ivar, np.float32))
    n = f.shape[0]
    observed = _observed(rv_kms, n)
    bands = band_mask(observed, TELLURIC_BANDS)
    core = band_mask(observed, (A_BAND_A,))
    device = model.device
    full = prepare_model_input_torch(torch.as_tensor(f, device=device),
                                     torch.as_tensor(iv, device=device), "lamost")
    star = prepare_model_input_torch(torch.as_tensor(f, device=device),
                                     torch.as_tensor(np.where(bands, 0, iv), device=device),
                                     "lamost")
    redrawn = model.decode("lamost", "lamost", model.encode("lamost", star.flux, star.weight))
    npix = LAMOST_GRID.npix
    x, w = full.flux[:, :npix].float(), full.weight[:, :npix].float()
    core_t = torch.as_tensor(core, device=device)
    wc = torch.where(core_t, w, torch.zeros_like(w))
    sw = wc.sum(1)
    depth = (wc * (redrawn[:, :npix].float() - x)).sum(1) / sw.clamp_min(1e-12)
    covered = ((wc > 0).sum(1).float() / core_t.sum(1).clamp_min(1)).cpu().numpy()
    depth = depth.cpu().numpy().astype(np.float64)
    sigma = (1.0 / sw.clamp_min(1e-12).sqrt()).cpu().numpy().astype(np.float64)
    ok = (covered >= MIN_COVERED) & star.good.cpu().numpy()
    depth = np.where(ok, depth, np.nan)
    sigma = np.where(ok, sigma, np.nan)
    known = np.ones(n, bool)
    check = getattr(model, "domain_check", None)
    threshold = None if check is None else check.thresholds.get("lamost")
    if threshold is not None:
        rel = relative_residual(redrawn, star.flux, star.weight).cpu().numpy()
        known = np.isfinite(rel) & (rel <= threshold)
    with np.errstate(invalid="ignore"):
        detected = ok & known & (depth > DETECT_DEPTH) & (depth > DETECT_SIGMA * sigma)
    return TelluricCheck(depth=depth, sigma=sigma, detected=detected)


def mask_where_found(model, flux: np.ndarray, ivar: np.ndarray,
                     rv_kms: np.ndarray | float | None = None
                     ) -> tuple[np.ndarray, TelluricCheck]:
    """(ivar, check) of (n, npix) LAMOST-grid spectra: :func:`check_telluric`, and ``ivar``
    with the telluric bands masked (:func:`without_telluric`) in the rows where the A band
    was found (the input itself where none was)."""
    found = check_telluric(model, flux, ivar, rv_kms)
    if not found.detected.any():
        return ivar, found
    iv = np.atleast_2d(np.asarray(ivar))
    masked = np.where(found.detected[:, None], without_telluric(iv, rv_kms), iv)
    return (masked if np.ndim(ivar) == 2 else masked[0]).astype(iv.dtype, copy=False), found
