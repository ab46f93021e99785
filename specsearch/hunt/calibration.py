"""Calibrating the [Fe/H] heads into probabilities P([Fe/H] < threshold).

The heads give a prediction and a 1-sigma uncertainty per star. Turning them into honest
probabilities needs a model of how predictions relate to the truth, fitted on a labelled
held-out set, and Bayes' rule:

1. **Measurement model** (per modality): ``pred = g(true) + noise``, with ``g`` an isotonic
   (monotone, non-parametric) regression of the prediction on the true [Fe/H] (heads pull
   metal-poor stars towards the mean: ``g`` is flatter than the identity there) and the
   noise Student-t with squared scale ``(scale * err)^2 + floor^2`` and ``nu`` degrees of
   freedom (maximum likelihood; ``scale`` fixes over/under-confident errors, ``floor`` adds
   what the heads do not know about, ``nu`` the heavy tails: the rare star predicted far
   from its truth, which a Gaussian would turn into a confident false detection).
2. **Prior**: the labelled set's [Fe/H] distribution (a smoothed histogram on a grid, plus a
   small uniform floor so a star may be more metal-poor than any calibration star).
3. **Posterior** on the grid: prior x the likelihood of every available measurement of the
   star (several visits, LAMOST and XP: independent noise given the truth, so likelihoods
   multiply). ``P([Fe/H] < t)`` is the posterior mass below ``t``; a Gaussian around a
   regressed mean cannot get this right for a population with a long metal-poor tail.

The fitting is in :mod:`specsearch.hunt.calibration_fit`; the prior refitted to a pool of
stars in :mod:`specsearch.hunt.pool_prior`. Stored as JSON (no pickle).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from specsearch.errors import ConfigError
from specsearch.fsutil import write_json_atomic

FORMAT_VERSION = 2
GRID = np.round(np.arange(-5.0, 1.0 + 1e-9, 0.02), 4)
"""[Fe/H] grid (dex) of the posterior."""


@dataclass
class FehCalibration:
    """The measurement model of one modality's [Fe/H] head (see the module docstring).

    Attributes:
        modality: ``lamost`` or ``xp``.
        knots_true, knots_pred: the isotonic map true -> expected prediction (np.interp
            knots, flat beyond the ends), dex.
        scale: multiplier of the head's uncertainty.
        floor: uncertainty (dex) added in quadrature.
        nu: degrees of freedom of the Student-t noise (None: Gaussian). Heads have
            heavier tails than a Gaussian (a normal star now and then predicted very
            metal-poor); a Gaussian likelihood would then call such a star certain.
        width_true, width_mult: the noise width as a function of the true [Fe/H]
            (np.interp knots; empty: 1). A head is often much less precise for the rare
            metal-poor stars than its per-star errors say (XP: ~4x), which a single
            scale fitted on all stars cannot capture.
        n: labelled stars used.
        checks: reliability measured by 2-fold cross-fitting on the labelled set.
    """

    modality: str
    knots_true: list[float]
    knots_pred: list[float]
    scale: float = 1.0
    floor: float = 0.0
    nu: float | None = None
    width_true: list[float] = field(default_factory=list)
    width_mult: list[float] = field(default_factory=list)
    n: int = 0
    checks: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def identity(cls, modality: str) -> "FehCalibration":
        """No calibration: predictions unbiased, uncertainties taken at face value."""
        return cls(modality=modality, knots_true=[-10.0, 10.0], knots_pred=[-10.0, 10.0])

    def loglik(self, pred: np.ndarray, err: np.ndarray, grid: np.ndarray = GRID
               ) -> np.ndarray:
        """(n, G) log-likelihood of each (pred, err) for true [Fe/H] on ``grid``; rows
        with a NaN input are 0 (no information)."""
        pred = np.asarray(pred, dtype=np.float64)[:, None]
        err = np.asarray(err, dtype=np.float64)[:, None]
        expected = np.interp(grid, self.knots_true, self.knots_pred)[None, :]
        mult = (np.interp(grid, self.width_true, self.width_mult) if self.width_true
                else np.ones(grid.size))[None, :]
        var = ((self.scale * err) ** 2 + self.floor ** 2) * mult ** 2
        ok = np.isfinite(pred) & np.isfinite(var) & (var > 0)
        var = np.where(ok, var, 1.0)
        r2 = (np.where(ok, pred, 0.0) - expected) ** 2 / var
        if self.nu is None:
            out = -0.5 * (r2 + np.log(var))
        else:   # Student-t (constants dropped: they cancel in the posterior)
            out = -0.5 * np.log(var) - 0.5 * (self.nu + 1.0) * np.log1p(r2 / self.nu)
        return np.where(ok, out, 0.0)


@dataclass
class HuntCalibration:
    """Measurement models of each modality plus the prior.

    Attributes:
        modalities: modality -> :class:`FehCalibration` (missing: identity model).
        prior: (G,) prior on :data:`GRID` (empty: flat).
        label: the label column calibrated (``feh``).
        model_hash: the model whose heads were calibrated (only valid for that model).
        created, source: provenance.
    """

    modalities: dict[str, FehCalibration]
    prior: list[float] = field(default_factory=list)
    label: str = "feh"
    model_hash: str = ""
    created: str = ""
    source: str = ""

    def for_modality(self, modality: str) -> FehCalibration:
        return self.modalities.get(modality) or FehCalibration.identity(modality)

    @property
    def calibrated(self) -> bool:
        return bool(self.modalities)

    @property
    def log_prior(self) -> np.ndarray:
        if not self.prior:
            return np.zeros(GRID.size)
        return np.log(np.maximum(np.asarray(self.prior, dtype=np.float64), 1e-300))

    def posterior(self, loglik: np.ndarray) -> np.ndarray:
        """(n, G) normalised posterior from summed log-likelihoods (n, G)."""
        lp = loglik + self.log_prior[None, :]
        lp -= lp.max(axis=1, keepdims=True)
        post = np.exp(lp)
        return post / post.sum(axis=1, keepdims=True)

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "kind": "specsearch.hunt_calibration",
                "label": self.label, "model_hash": self.model_hash, "created": self.created,
                "source": self.source, "grid": {"start": float(GRID[0]),
                                                "stop": float(GRID[-1]), "n": GRID.size},
                "prior": list(map(float, self.prior)),
                "modalities": {m: dataclasses.asdict(c) for m, c in self.modalities.items()}}

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "HuntCalibration":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: unreadable hunt calibration: {exc}") from exc
        if d.get("kind") != "specsearch.hunt_calibration" or \
                d.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"{path}: not a specsearch hunt calibration of format "
                              f"{FORMAT_VERSION} (kind {d.get('kind')!r}, version "
                              f"{d.get('format_version')!r}); refit it with "
                              f"`specsearch hunt-calibrate`")
        grid = d.get("grid", {})
        if grid.get("n") != GRID.size or grid.get("start") != GRID[0]:
            raise ConfigError(f"{path}: prior grid {grid} differs from this specsearch's "
                              f"({GRID[0]}..{GRID[-1]}, {GRID.size} points); refit it")
        try:
            mods = {m: FehCalibration(**c) for m, c in d["modalities"].items()}
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: malformed hunt calibration ({exc})") from None
        return cls(modalities=mods, prior=list(d.get("prior", [])),
                   label=d.get("label", "feh"), model_hash=d.get("model_hash", ""),
                   created=d.get("created", ""), source=d.get("source", ""))


def posterior_summaries(post: np.ndarray, threshold: float
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P(x < threshold), posterior mean, posterior sd) of (n, G) posteriors on GRID."""
    # Each grid point stands for a cell of one grid step; a cell cut by the threshold
    # counts with the fraction of it that lies below.
    step = GRID[1] - GRID[0]
    frac = np.clip((threshold - (GRID - step / 2)) / step, 0.0, 1.0)
    p = post @ frac
    mean = post @ GRID
    sd = np.sqrt(np.maximum(post @ GRID ** 2 - mean ** 2, 0.0))
    return p, mean, sd
