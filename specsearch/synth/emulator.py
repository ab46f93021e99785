"""The data-driven part of the model spectra: a piecewise Cannon-style MILES emulator.

Fitted by :mod:`specsearch.synth.fit_miles` and shipped as
``specsearch/data/synth/miles_emulator.npz`` (plain arrays, loaded with
``allow_pickle=False``). For each Teff bin it holds quadratic-in-labels coefficients of

* the continuum-normalised flux N(lambda) on the MILES pixels (3541-7412 A vacuum, 2.5 A FWHM),
* the smooth SED s(node) = ln(pseudo-continuum / pi B_lambda(Teff)) at 40 A nodes, with the
  MILES stars' own reddening fitted out.

Neighbouring bins are blended linearly in Teff over +-4% around each bin edge. Labels are
clamped to each bin's training range (1st-99th percentile): the caller extrapolates beyond
it with physics (metal-poor line scaling, see :mod:`specsearch.synth.model`), never with the
quadratic.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specsearch.errors import ConfigError
from specsearch.synth.fit_miles import design_matrix

DATA_FILE = Path(__file__).resolve().parents[1] / "data" / "synth" / "miles_emulator.npz"
HULL_RADIUS = 0.5
"""Labels farther than this (in units of the bin's label standard deviations) from every
training star in the (log Teff, log g) plane are pulled towards the nearest one: a
per-label clamp alone still allows combinations MILES never saw (a 3000 K, log g 5.1 dwarf
is inside both ranges of the coolest bin but far from its giants), where the quadratic
explodes."""
BLEND = 0.04
"""Half-width of the Teff blending zone around each bin edge (fraction of the edge)."""
TAPER_A = 40.0
"""Width (A) of the cosine taper between MILES coverage and the physics-only regions."""


@dataclass(frozen=True)
class EmulatorOutput:
    """Emulator prediction for a batch.

    Attributes:
        norm_flux: (n, m) continuum-normalised flux on the model pixels ``pixels``.
        sed_nodes: (n, k) ln(continuum / pi B_lambda) at ``node_wave``.
        feh_clamped: (n,) the [Fe/H] the emulator was evaluated at (after clamping).
    """

    norm_flux: np.ndarray
    sed_nodes: np.ndarray
    feh_clamped: np.ndarray


@dataclass(frozen=True, eq=False)
class MilesEmulator:
    """The fitted emulator resampled onto the model grid (see :func:`load_emulator`).

    Attributes:
        pixels: slice of model-grid pixels covered by MILES.
        coverage: (m,) weight of the emulator on those pixels (1 inside, cosine taper to 0
            at the edges).
        coef_n: (bins, 10, m) float32 coefficients of the normalised flux N (or of -ln N
            where ``is_tau``).
        is_tau: (bins,) bool.
        coef_s: (bins, 10, k) coefficients of the SED nodes.
        node_wave: (k,) node wavelengths (vacuum A).
        edges: (bins - 1,) Teff bin edges (K).
        offset, scale, lo, hi: (bins, 3) label scaling and clamp ranges in
            (log10 Teff, log g, [Fe/H]).
        train_xy: per bin, (k, 2) scaled (log Teff, log g) of its training stars.
        meta: the fit's description (JSON).
    """

    pixels: slice
    coverage: np.ndarray
    coef_n: np.ndarray
    is_tau: np.ndarray
    coef_s: np.ndarray
    node_wave: np.ndarray
    edges: np.ndarray
    offset: np.ndarray
    scale: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    train_xy: tuple[np.ndarray, ...]
    meta: dict

    def bin_weights(self, teff: np.ndarray) -> np.ndarray:
        """(n, bins) blending weights of each Teff bin."""
        teff = np.asarray(teff, dtype=np.float64)
        nb = self.coef_n.shape[0]
        w = np.zeros((teff.size, nb))
        core = np.searchsorted(self.edges, teff)
        w[np.arange(teff.size), core] = 1.0
        for e_idx, edge in enumerate(self.edges):
            d = (teff - edge) / (BLEND * edge)         # -1 .. 1 inside the blend zone
            z = np.abs(d) < 1.0
            right = 0.5 * (1.0 + d[z])
            w[z, e_idx] = 1.0 - right
            w[z, e_idx + 1] = right
        return w

    def predict(self, teff: np.ndarray, logg: np.ndarray, feh: np.ndarray) -> EmulatorOutput:
        """Normalised flux and SED nodes at the given labels (clamped per bin)."""
        lab = np.stack([np.log10(teff), logg, feh], axis=1).astype(np.float64)
        w = self.bin_weights(teff)
        n, m, k = lab.shape[0], self.coef_n.shape[2], self.coef_s.shape[2]
        norm = np.zeros((n, m), dtype=np.float32)
        sed = np.zeros((n, k))
        feh_c = np.zeros(n)
        for b in range(w.shape[1]):
            rows = np.flatnonzero(w[:, b] > 0)
            if rows.size == 0:
                continue
            clamped = self._clamp(b, lab[rows])
            x = design_matrix((clamped - self.offset[b]) / self.scale[b])
            wb = w[rows, b][:, None]
            pred = x.astype(np.float32) @ self.coef_n[b]
            if self.is_tau[b]:
                pred = np.exp(-pred)
            norm[rows] += (wb * pred).astype(np.float32)
            sed[rows] += wb * (x @ self.coef_s[b])
            feh_c[rows] += w[rows, b] * clamped[:, 2]
        return EmulatorOutput(norm_flux=norm, sed_nodes=sed, feh_clamped=feh_c)


    def _clamp(self, b: int, lab: np.ndarray) -> np.ndarray:
        """Per-label clamp to the bin's range, then the (log Teff, log g) hull pull."""
        out = np.clip(lab, self.lo[b], self.hi[b])
        xy = (out[:, :2] - self.offset[b, :2]) / self.scale[b, :2]
        ref = self.train_xy[b]
        d2 = ((xy[:, None, :] - ref[None, :, :]) ** 2).sum(axis=2)
        near = np.argmin(d2, axis=1)
        dist = np.sqrt(d2[np.arange(xy.shape[0]), near])
        far = dist > HULL_RADIUS
        if far.any():
            p = ref[near[far]]
            xy[far] = p + (xy[far] - p) * (HULL_RADIUS / dist[far])[:, None]
            out[:, :2] = xy * self.scale[b, :2] + self.offset[b, :2]
        return out


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(
            f"{path}: the synthetic-spectrum emulator file is missing; regenerate it with "
            f"`python -m specsearch.synth.fit_miles ../shared/data/real/miles --out {path}`")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable emulator file ({exc}); regenerate it with "
                          f"python -m specsearch.synth.fit_miles") from exc


@functools.lru_cache(maxsize=2)
def load_emulator(path: str | None = None) -> MilesEmulator:
    """Load the shipped emulator and resample it onto the model grid (cached)."""
    from specsearch.synth.grid import model_wavelength

    raw = _read(Path(path) if path else DATA_FILE)
    wave = model_wavelength()
    src = raw["wave_vac"]
    i0, i1 = np.searchsorted(wave, [src[0] + 1.0, src[-1] - 1.0])
    target = wave[i0:i1]
    # Coefficients are linear in flux, so interpolating them interpolates the predictions.
    coef_n = raw["coef_n"]
    out = np.empty(coef_n.shape[:2] + (target.size,), dtype=np.float32)
    for b in range(coef_n.shape[0]):
        for t in range(coef_n.shape[1]):
            out[b, t] = np.interp(target, src, coef_n[b, t])
    lo_edge, hi_edge = target[0], target[-1]
    ramp = np.clip(np.minimum(target - lo_edge, hi_edge - target) / TAPER_A, 0.0, 1.0)
    coverage = 0.5 - 0.5 * np.cos(np.pi * ramp)
    return MilesEmulator(
        pixels=slice(int(i0), int(i1)), coverage=coverage, coef_n=out,
        is_tau=raw["bin_is_tau"].astype(bool),
        coef_s=raw["coef_s"].astype(np.float64), node_wave=raw["node_wave_vac"],
        edges=raw["teff_edges"], offset=raw["label_offset"], scale=raw["label_scale"],
        lo=raw["label_lo"], hi=raw["label_hi"], train_xy=_training_xy(raw),
        meta=json.loads(str(raw["meta_json"])))


def _training_xy(raw: dict) -> tuple[np.ndarray, ...]:
    """Scaled (log Teff, log g) of the training stars of each bin (core +- the fit margin)."""
    lab = raw["train_labels"]
    meta = json.loads(str(raw["meta_json"]))
    edges = np.concatenate([[2000.0], raw["teff_edges"], [60000.0]])
    t = 10.0 ** lab[:, 0]
    out = []
    for b in range(len(edges) - 1):
        sel = (t >= edges[b] * (1 - meta["margin"])) & (t <= edges[b + 1] * (1 + meta["margin"]))
        out.append((lab[sel, :2] - raw["label_offset"][b, :2]) / raw["label_scale"][b, :2])
    return tuple(out)


def holdout_ids(path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train ids, held-out ids) of the MILES stars, as recorded at fit time."""
    raw = _read(Path(path) if path else DATA_FILE)
    return raw["train_ids"], raw["holdout_ids"]
