"""Post-hoc calibration on validation pairs: uncertainty scales and residual floors.

* Heads: for each modality and label, the z-scores (pred - true) / sigma of the validation
  stars should have unit width. Their robust width (1.4826 x MAD) is measured and stored
  as the head's ``sigma_scale``; widths before and after are reported.
* Real data (:func:`calibrate_real_floor`, used by ``finetune``): the heads' ``sigma_floor``,
  the model-versus-reality term fitted on held-out real labelled stars.
* Residual floors: the per-pixel error of the reconstruction (and of the translation) on
  validation spectra beyond their noise, so that residuals become reduced chi values that
  are ~1 for normal stars at any S/N (used by outlier scores).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from specsearch.model.training.cache import MODS, PairBatch, PairCache
from specsearch.model.evaluation.metrics import robust_sigma
from specsearch.model.network import SpecCLIPNet
from specsearch.model.training.loss import pixels_of


@dataclass
class CalibrationReport:
    """z-score widths per modality and label (robust 1.4826 MAD, and plain std)."""

    z_width_before: dict[str, dict[str, float]] = field(default_factory=dict)
    z_width_after: dict[str, dict[str, float]] = field(default_factory=dict)
    z_std_after: dict[str, dict[str, float]] = field(default_factory=dict)
    sigma_scale: dict[str, dict[str, float]] = field(default_factory=dict)
    n_val: int = 0


def to_device(batch: PairBatch, device: torch.device) -> dict[str, object]:
    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device, non_blocking=True)
    return {"x": {m: t(batch.x[m]) for m in MODS}, "w": {m: t(batch.w[m]) for m in MODS},
            "labels": t(batch.labels), "classes": t(batch.classes),
            "source_id": t(batch.source_id)}


def iterate(cache: PairCache, pos: np.ndarray, device: torch.device,
            batch_size: int = 1024) -> Iterator[tuple[PairBatch, dict]]:
    for p in cache.batches(pos, batch_size, rng=None):
        b = cache.load(p)
        yield b, to_device(b, device)


@torch.no_grad()
def calibrate(net: SpecCLIPNet, cache: PairCache, pos: np.ndarray,
              device: torch.device) -> CalibrationReport:
    """Set the heads' ``sigma_scale`` and the normalisers' residual floors from ``pos``."""
    net.eval()
    mods = net.cfg.modalities
    L = len(net.cfg.label_names)
    z: dict[str, list[np.ndarray]] = {m: [] for m in mods}
    npix = {m: net.cfg.encoders[m].npix for m in mods}
    acc = {(kind, m): [np.zeros(npix[m]) for _ in range(3)]
           for kind in ("recon", "trans") for m in mods}
    for batch, tb in iterate(cache, pos, device):
        outs = {m: net.forward_outputs(m, tb["x"][m], tb["w"][m], decode=True) for m in mods}
        y = (tb["labels"] - net.label_mean) / net.label_std
        for m in mods:
            out = outs[m]
            if L:
                sigma = torch.exp(out.label_log_sigma)
                z[m].append(((y - out.label_mu) / sigma).cpu().numpy())
            other = net.other(m)
            for kind, pred, tgt in (("recon", out.recon, m), ("trans", out.translation, other)):
                if pred is None:
                    continue
                x, w = pixels_of((tb["x"][tgt], tb["w"][tgt]), pred)
                good = (w > 0).double()
                r2 = ((pred - x).double() ** 2) * good
                noise = torch.where(w > 0, 1.0 / w.double().clamp_min(1e-30),
                                    torch.zeros_like(r2))
                a = acc[(kind, tgt)]
                a[0] += good.sum(0).cpu().numpy()
                a[1] += r2.sum(0).cpu().numpy()
                a[2] += noise.sum(0).cpu().numpy()
    report = CalibrationReport(n_val=int(pos.size))
    for m in mods:
        head = net.heads[m]
        zs = np.concatenate(z[m]) if z[m] else np.zeros((0, L))
        before, scale = {}, np.ones(L, np.float32)
        for j, name in enumerate(net.cfg.label_names):
            width = robust_sigma(zs[:, j]) if zs.size else float("nan")
            before[name] = width
            if np.isfinite(width) and width > 0:
                scale[j] = width
        head.sigma_scale.copy_(torch.from_numpy(scale))
        report.z_width_before[m] = before
        report.sigma_scale[m] = dict(zip(net.cfg.label_names, map(float, scale)))
        report.z_width_after[m] = {n: robust_sigma(zs[:, j] / scale[j]) if zs.size
                                   else float("nan")
                                   for j, n in enumerate(net.cfg.label_names)}
        report.z_std_after[m] = {n: _clipped_std(zs[:, j] / scale[j]) if zs.size
                                 else float("nan")
                                 for j, n in enumerate(net.cfg.label_names)}
    for (kind, m), (n, r2, noise) in acc.items():
        if not n.any():
            continue
        nn_ = np.maximum(n, 1)
        floor2 = np.maximum(r2 / nn_ - noise / nn_, 0.0)
        default = 1e-3 if m == "xp" else 2e-3
        floor = np.where(n > 0, np.sqrt(np.maximum(floor2, default ** 2)), 0.05)
        buf = net.normalisers[m].recon_floor if kind == "recon" else \
            net.normalisers[m].trans_floor
        buf.copy_(torch.from_numpy(floor.astype(np.float32)))
    return report


@torch.no_grad()
def calibrate_real_floor(net: SpecCLIPNet, x_real: np.ndarray, w_real: np.ndarray,
                         labels: np.ndarray, groups: np.ndarray | None = None,
                         min_group: int = 15
                         ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Fit each label's real-data ``sigma_floor`` f and scale k so that
    z = (pred - label) / sqrt((k sigma)^2 + f^2) has unit robust width on the real
    calibration stars, in every group of ``groups`` at once (e.g. LAMOST at high and low S/N,
    hot stars, MILES: the cost is the sum of squared log widths over groups with at least
    ``min_group`` labels; one group when None). k multiplies the heads' ``sigma_scale``; f
    goes to ``sigma_floor``; both are copied to every head (the XP side has no labelled real
    spectra: it gets the LAMOST terms). They hold what the synthetic calibration cannot know:
    the model-versus-reality error and the scatter of the catalogue labels themselves, so the
    heads' uncertainties are honest against those catalogues. ``x_real``, ``w_real``:
    prepared LAMOST flux and weight (n, N); ``labels`` (n, L) in physical units, NaN
    unknown. Returns (floors in physical units, scales, pooled z widths after)."""
    net.eval()
    names = net.cfg.label_names
    mus, sig = [], []
    with torch.no_grad():
        for i in range(0, x_real.shape[0], 1024):
            x = torch.from_numpy(x_real[i:i + 1024])
            w = torch.from_numpy(w_real[i:i + 1024])
            out = net.forward_outputs("lamost", x, w, decode=False)
            head = net.heads["lamost"]
            mus.append((net.label_mean + net.label_std * out.label_mu).numpy())
            sig.append((net.label_std * torch.exp(out.label_log_sigma)
                        * head.sigma_scale).numpy())
    mu, s = np.concatenate(mus), np.concatenate(sig)
    groups = np.zeros(len(mu), np.int64) if groups is None else np.asarray(groups)
    floors, scales, widths = {}, {}, {}
    floor_std = np.zeros(len(names), np.float32)
    k_all = np.ones(len(names), np.float32)
    for j, name in enumerate(names):
        ok = np.isfinite(labels[:, j])
        if ok.sum() < 20:
            continue
        r, s0, g = mu[ok, j] - labels[ok, j], s[ok, j], groups[ok]
        k, f = _fit_scale_floor(r, s0, g, min_group)
        floors[name], scales[name] = f, k
        widths[name] = robust_sigma(r / np.sqrt((k * s0) ** 2 + f ** 2))
        floor_std[j] = f / float(net.label_std[j])
        k_all[j] = k
    for m in net.cfg.modalities:
        net.heads[m].sigma_floor.copy_(torch.from_numpy(floor_std))
        net.heads[m].sigma_scale.mul_(torch.from_numpy(k_all))
    return floors, scales, widths


def _fit_scale_floor(r: np.ndarray, s0: np.ndarray, g: np.ndarray, min_group: int
                     ) -> tuple[float, float]:
    """(k, f) minimising the summed squared log z-widths over the groups (grid search)."""
    members = [g == u for u in np.unique(g) if (g == u).sum() >= min_group]
    if not members:
        members = [np.ones(len(r), bool)]
    mag = np.abs(r)
    fs = np.concatenate([[0.0], np.geomspace(0.01 * np.median(mag) + 1e-9,
                                             3.0 * np.percentile(mag, 95) + 1e-9, 60)])
    best = (np.inf, 1.0, 0.0)
    for k in np.geomspace(0.3, 4.0, 48):
        for f in fs:
            z = r / np.sqrt((k * s0) ** 2 + f ** 2)
            cost = sum(np.log(robust_sigma(z[m])) ** 2 for m in members)
            if cost < best[0]:
                best = (cost, float(k), float(f))
    return best[1], best[2]


def _clipped_std(v: np.ndarray, clip: float = 5.0) -> float:
    """Standard deviation of the finite values within +-clip (outliers reported apart)."""
    v = v[np.isfinite(v)]
    v = v[np.abs(v) < clip]
    return float(v.std()) if v.size else float("nan")
