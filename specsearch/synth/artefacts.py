"""Instrument artefacts imprinted on LAMOST-like spectra (labelled, not astrophysics).

Kinds (``artefact_kind``):

* ``dead_fibre``: a contiguous 100-800 pixel segment where the fibre delivered (almost) no
  light - flux drops to 0-5% plus noise, while the pipeline's ivar is unchanged (unflagged,
  which is what makes it an artefact rather than a masked region);
* ``sky_residual``: 3-12 strong positive or negative spikes at night-sky line wavelengths
  (5577, Na D, 6300/6364, OH) from a bad sky subtraction;
* ``flux_tilt``: a wrong flux calibration, the spectrum multiplied by (lambda/5500)^p with
  |p| in 1.5-4;
* ``arm_join``: the blue and red arms joined with a wrong relative scale (x0.45-0.75 or
  x1.35-2.0 redward of a join between 5750 and 5950 A).
"""

from __future__ import annotations

import numpy as np

from specsearch.preprocess import LAMOST_GRID, air_to_vacuum
from specsearch.synth.grid import C_KMS
from specsearch.synth.labels import ARTEFACT_KINDS
from specsearch.synth.lamost import OH_BANDS_AIR, SKY_LINES_AIR


def draw_artefacts(rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
    """(n,) artefact kind per spectrum ('' for none): floor(f n) + Bernoulli remainder."""
    exact = fraction * n
    k = min(n, int(np.floor(exact) + (rng.random() < exact - np.floor(exact))))
    kinds = np.full(n, "", dtype=object)
    rows = rng.choice(n, size=k, replace=False)
    kinds[rows] = np.array(ARTEFACT_KINDS, dtype=object)[rng.integers(0, len(ARTEFACT_KINDS),
                                                                      k)]
    return kinds


def apply_artefacts(flux: np.ndarray, ivar: np.ndarray, kinds: np.ndarray, rv_est: np.ndarray,
                    rng: np.random.Generator) -> None:
    """Imprint the artefacts ``kinds`` (n,) on LAMOST-grid ``flux``/``ivar`` in place."""
    wave = LAMOST_GRID.wavelength
    npix = wave.size
    sky = np.concatenate([air_to_vacuum(np.array(SKY_LINES_AIR)),
                          air_to_vacuum(np.concatenate([np.linspace(lo, hi, 6)
                                                        for lo, hi in OH_BANDS_AIR]))])
    for i in np.flatnonzero(kinds != ""):
        kind = kinds[i]
        good = ivar[i] > 0
        level = float(np.median(np.abs(flux[i, good]))) if good.any() else 1.0
        if kind == "dead_fibre":
            length = int(rng.integers(100, 801))
            start = int(rng.integers(0, npix - length))
            seg = slice(start, start + length)
            sigma = np.where(ivar[i, seg] > 0, 1.0 / np.sqrt(np.maximum(ivar[i, seg], 1e-30)),
                             0.0)
            flux[i, seg] = flux[i, seg] * rng.uniform(0.0, 0.05) \
                + sigma * rng.standard_normal(length)
        elif kind == "sky_residual":
            k = int(rng.integers(3, 13))
            centres = rng.choice(sky, size=k, replace=False) / (1.0 + rv_est[i] / C_KMS)
            amps = rng.uniform(0.5, 5.0, k) * level * np.where(rng.random(k) < 0.7, 1.0, -1.0)
            for c, a in zip(centres, amps):
                flux[i] += a * np.exp(-0.5 * ((wave - c) / 1.5) ** 2)
        elif kind == "flux_tilt":
            p = rng.uniform(1.5, 4.0) * (1.0 if rng.random() < 0.5 else -1.0)
            factor = (wave / 5500.0) ** p
            flux[i] *= factor
            ivar[i] /= factor ** 2
        elif kind == "arm_join":
            join = rng.uniform(5750.0, 5950.0)
            f = rng.uniform(0.45, 0.75) if rng.random() < 0.5 else rng.uniform(1.35, 2.0)
            red = wave > join
            flux[i, red] *= f
            ivar[i, red] /= f * f
        else:  # pragma: no cover - kinds come from ARTEFACT_KINDS
            raise ValueError(f"unknown artefact kind {kind!r}")
