"""Is a spectrum inside the model's domain? ``domain_check.json`` beside the model.

The heads read any spectrum they are given, including stars unlike anything the model was
trained on: real Gaia XP spectra of M8-L1 dwarfs (~2,400-2,700 K; the synthetic survey has
no dwarfs below 2,900 K) come out at 4,900-5,400 K with ordinary uncertainties. What gives
them away is the model's own reconstruction of the spectrum: for stars it knows, the
decoder redraws the spectrum from the embedding to a few per cent; for these it misses by
half the flux or more. A spectrum too noisy to read misses too (the relative error of
pure noise is ~1: one real XP source at S/N 0.95 scores 0.85); either way its
parameters are unreliable, which is what the flag says.

The measure is :func:`relative_residual`, the median over good pixels of
|recon - x| / |x| (prepared units), which unlike a reduced chi does not grow with S/N: a
noiseless mean template of a normal star scores as low as a noisy survey spectrum.
A model's threshold per modality is fitted on real spectra (:func:`fit_domain_check`):
``margin`` times a high quantile of the ``train`` and ``cal`` splits of the real sets
(real LAMOST and MILES on the LAMOST grid, the real Gaia XP sky patch), so on real survey
spectra a flag is rare by construction and the held-out ``test`` split measures how rare.
The file is written for one model hash, like ``anomaly_defaults.json``; a file made for
another model is ignored, and a malformed one is an error naming it.

A spectrum can also lack what the model reads most: a LAMOST-grid spectrum without its
blue end (a failed blue arm, the red arm of another spectrograph, a short echelle range)
reconstructs well where it has data, yet its Teff comes out 150-1,100 K too cool with
uncertainties up to 7 times too small (BENCHMARKS.md, "Spectra without their blue end"). The
check's ``coverage`` rule flags a spectrum with less than ``min_fraction`` of its pixels
good in the modality's window (:data:`DEFAULT_COVERAGE`: 3850-5000 A, the Balmer lines,
Ca II H&K and the G band); no real spectrum of the reference sets comes close to it.

``SpecModel.embed_numpy(..., with_residual=True)`` (or ``with_domain=True``) then returns
``recon_relative`` and ``out_of_domain`` per spectrum: the embedding parquet, the service's
predictions and search queries, and the hunt's candidates carry them.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specsearch.errors import ConfigError
from specsearch.fsutil import write_json_atomic

log = logging.getLogger(__name__)

DOMAIN_FILE = "domain_check.json"
KIND = "specsearch.domain_check"
FORMAT_VERSION = 1
MAX_BYTES = 64 * 1024
MIN_ABS = 0.05          # |x| below this (prepared units ~1) is skipped: saturated line cores
QUANTILE = 0.999
MARGIN = 2.0
DEFAULT_COVERAGE: dict[str, dict[str, Any]] = {
    "lamost": {"window_A": [3850.0, 5000.0], "min_fraction": 0.5}}
"""The coverage rule :func:`fit_domain_check` writes: per modality, the wavelength window
(Angstrom) and the least fraction of its grid pixels a spectrum must have good. Measured on
real DR10 spectra cut from the blue end (BENCHMARKS.md): with less than half of 3850-5000 A
Teff turns 150-430 K too cool and twice as scattered while its uncertainties stay; with two
thirds or more it reads as the whole spectrum does."""
# Which real sets are the reference of each modality (see real_sets.load_all).
REFERENCE_SETS = {"lamost": ("lamost_dr10", "lamost_dr1", "lamost_dr8", "miles"),
                  "xp": ("xp_patch",)}


def relative_residual(pred: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
                      min_abs: float = MIN_ABS) -> torch.Tensor:
    """(B,) the median over good pixels (w > 0, |x| > ``min_abs``) of |pred - x| / |x|;
    NaN for a row without such pixels. The measure of the evaluation's translation error
    (``evaluation.metrics.median_relative_error``, numpy, which inference may not import),
    in torch on the model's device; ``torch.nanmedian`` takes the lower middle value.
    SED columns of ``x, w`` after the pixels that ``pred`` has are left out."""
    x, w = x[..., :pred.shape[-1]], w[..., :pred.shape[-1]]
    good = (w > 0) & (x.abs() > min_abs) & torch.isfinite(pred)
    rel = torch.where(good, (pred - x).abs() / torch.where(good, x.abs(), 1.0),
                      torch.full_like(x, float("nan")))
    return torch.nanmedian(rel.float(), dim=-1).values


def window_coverage(w: torch.Tensor, wavelength: np.ndarray,
                    window_a: tuple[float, float] | list[float]) -> torch.Tensor:
    """(B,) the fraction of the grid pixels inside ``window_a`` (Angstrom) that are good
    (prepared weight > 0) in each row of ``w`` (B, npix [+ SED columns, left out])."""
    inside = (wavelength >= window_a[0]) & (wavelength < window_a[1])
    cols = torch.as_tensor(np.flatnonzero(inside), device=w.device)
    good = (w[..., :wavelength.size].index_select(-1, cols) > 0).float()
    return good.mean(-1)


class DomainCheck:
    """Per-modality thresholds on :func:`relative_residual` for one model, and the coverage
    rule (``coverage``: per modality ``{"window_A": [lo, hi], "min_fraction": f}``)."""

    def __init__(self, model_hash: str, thresholds: dict[str, float],
                 reference: dict[str, dict[str, Any]] | None = None, source: str = "",
                 coverage: dict[str, dict[str, Any]] | None = None) -> None:
        self.model_hash = model_hash
        self.thresholds = dict(thresholds)
        self.reference = reference or {}
        self.source = source
        self.coverage = copy.deepcopy(dict(coverage or {}))
        _check_thresholds(self.thresholds, "domain check")
        _check_coverage(self.coverage, "domain check")

    def flags(self, modality: str, recon_relative: np.ndarray,
              coverage: np.ndarray | None = None) -> np.ndarray | None:
        """(n,) bool: the spectra whose reconstruction misses by more than the threshold
        (False for NaN, i.e. no usable pixels) or, given their ``coverage``
        (:func:`window_coverage` of the modality's window), that have too little of the
        window; None without a threshold for ``modality``."""
        thr = self.thresholds.get(modality)
        if thr is None:
            return None
        v = np.asarray(recon_relative, np.float64)
        out = np.isfinite(v) & (v > thr)
        rule = self.coverage.get(modality)
        if rule is not None and coverage is not None:
            out |= np.asarray(coverage, np.float64) < rule["min_fraction"]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, "format_version": FORMAT_VERSION, "model_hash": self.model_hash,
                "thresholds": self.thresholds, "coverage": self.coverage,
                "reference": self.reference, "source": self.source}

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict())


def load_domain_check(path: str | Path) -> DomainCheck:
    """Read a ``domain_check.json``.

    Raises:
        ConfigError: naming the file, when it is unreadable, too large, of another kind or
            format, or a threshold is not a finite positive number.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ConfigError(f"{path}: {size} bytes; a domain check is a few hundred")
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable domain check: {exc}") from exc
    if not isinstance(d, dict) or d.get("kind") != KIND or \
            d.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: not a specsearch domain check of format {FORMAT_VERSION}")
    thresholds = d.get("thresholds")
    _check_thresholds(thresholds, str(path))
    coverage = d.get("coverage", {})          # absent in files written before the rule
    _check_coverage(coverage, str(path))
    reference = d.get("reference") if isinstance(d.get("reference"), dict) else {}
    return DomainCheck(str(d.get("model_hash", "")), thresholds, reference,
                       str(d.get("source", "")), coverage)


def find_domain_check(model_hash: str, model_dir: str | Path | None) -> DomainCheck | None:
    """The domain check stored beside the model in ``model_dir`` for ``model_hash``; None
    when there is none, or it was made for another model."""
    if model_dir is None or not model_hash:
        return None
    path = Path(model_dir) / DOMAIN_FILE
    if not path.is_file():
        return None
    check = load_domain_check(path)
    if check.model_hash != model_hash:
        log.info("%s was fitted for model %s, not %s: no domain flags", path,
                 check.model_hash[:12], model_hash[:12])
        return None
    return check


def fit_domain_check(model, real: str | Path, *, cache: str | Path | None = None,
                     quantile: float = QUANTILE, margin: float = MARGIN,
                     ) -> tuple[DomainCheck, dict[str, Any]]:
    """Fit ``model``'s thresholds on the real spectra under ``real`` (see the module
    docstring): per modality, ``margin`` x the ``quantile`` of :func:`relative_residual`
    over the ``train`` + ``cal`` splits of its reference sets.

    Returns the check and a report: per reference set, the flagged share of its ``test``
    split (spectra the fit never saw).

    Raises:
        ConfigError: bad ``quantile`` / ``margin``, or no reference spectra for any modality.
    """
    from specsearch.model.training.real_sets import load_all

    if not 0.5 <= quantile < 1.0 or not margin >= 1.0:
        raise ConfigError(f"quantile must be in [0.5, 1) and margin >= 1; got {quantile}, "
                          f"{margin}")
    sets = load_all(real, cache)
    thresholds: dict[str, float] = {}
    reference: dict[str, dict[str, Any]] = {}
    held_out: dict[str, dict[str, Any]] = {}
    for modality, names in REFERENCE_SETS.items():
        if modality not in model.modalities:
            continue
        fit, sets_used = [], []
        for name in names:
            s = sets.get(name)
            if s is None or not len(s):
                continue
            b = model.embed_numpy(modality, s.flux, s.ivar, with_domain=True)
            v = np.asarray(b.recon_relative, np.float64)
            ok = np.isfinite(v)
            fit.append(v[ok & s.in_split("train", "cal")])
            sets_used.append(name)
            held_out[name] = {"modality": modality,
                              "v": v[ok & s.in_split("test")],
                              "coverage": _set_coverage(s, modality)[ok & s.in_split("test")]}
        values = np.concatenate(fit) if fit else np.zeros(0)
        if values.size < 100:
            log.warning("domain check: %d %s reference spectra; no %s threshold",
                        values.size, modality, modality)
            continue
        q = float(np.quantile(values, quantile))
        thresholds[modality] = margin * q
        reference[modality] = {"sets": sets_used, "n": int(values.size),
                               "quantile": quantile, "value": q, "margin": margin,
                               "median": float(np.median(values))}
    if not thresholds:
        raise ConfigError(f"{real}: no real reference spectra to fit a domain check on")
    check = DomainCheck(model.model_hash, thresholds, reference,
                        source=f"fit_domain_check on {Path(real).name}: {margin:g} x "
                               f"q{quantile:g} of the train+cal splits",
                        coverage={m: copy.deepcopy(rule) for m, rule in
                                  DEFAULT_COVERAGE.items() if m in thresholds})
    report = {}
    for name, h in held_out.items():
        thr = thresholds.get(h["modality"])
        if thr is None:
            continue
        v = h["v"]
        flagged = check.flags(h["modality"], v, h["coverage"])
        report[name] = {"n_test": int(v.size), "flagged": int(flagged.sum()),
                        "flagged_fraction": float(flagged.mean()) if v.size else math.nan,
                        "flagged_by_coverage": int((flagged & ~(v > thr)).sum()),
                        "max": float(v.max()) if v.size else math.nan}
    return check, report


def _set_coverage(s, modality: str) -> np.ndarray:
    """(n,) :func:`window_coverage` of a real set's spectra (all ones without a rule)."""
    rule = DEFAULT_COVERAGE.get(modality)
    if rule is None:
        return np.ones(len(s))
    from specsearch.preprocess import grid_for, prepare_model_input

    weight = prepare_model_input(s.flux, s.ivar, modality).weight   # the model's good pixels
    return window_coverage(torch.from_numpy(weight), grid_for(modality).wavelength,
                           rule["window_A"]).numpy()


def _check_thresholds(thresholds: Any, where: str) -> None:
    if not isinstance(thresholds, dict) or not thresholds or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v) and v > 0 for k, v in thresholds.items()):
        raise ConfigError(f"{where}: thresholds must map modality names to finite positive "
                          f"numbers; got {thresholds!r}")


def _check_coverage(coverage: Any, where: str) -> None:
    ok = isinstance(coverage, dict)
    for modality, rule in (coverage.items() if ok else ()):
        window = rule.get("window_A") if isinstance(rule, dict) else None
        frac = rule.get("min_fraction") if isinstance(rule, dict) else None
        ok &= (isinstance(modality, str) and isinstance(window, list) and len(window) == 2
               and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                       and math.isfinite(x) for x in window)
               and window[0] < window[1]
               and isinstance(frac, (int, float)) and not isinstance(frac, bool)
               and 0.0 < frac <= 1.0)
    if not ok:
        raise ConfigError(f"{where}: coverage must map modality names to "
                          f'{{"window_A": [lo, hi], "min_fraction": f}} with lo < hi and '
                          f"0 < f <= 1; got {coverage!r}")
