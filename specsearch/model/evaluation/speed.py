"""Encoder throughput (spectra/s), used by ``specsearch evaluate`` and benchmarks/bench_model.py.

*Raw forward*: the encoder on already prepared tensors (no I/O, no preprocessing), the upper
bound of any pipeline. *With preprocessing*: ``SpecModel.embed_numpy`` on canonical-grid
flux/ivar, i.e. including :func:`specsearch.preprocess.prepare_model_input` and the heads.
Inputs are realistic in shape and value range; weights do not change the speed, so the
``specclip`` baseline is a randomly initialised network of that architecture.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from specsearch.model.config import model_config
from specsearch.model.network import SpecCLIPNet
from specsearch.preprocess import grid_for


@dataclass
class SpeedResult:
    """One throughput measurement."""

    arch: str
    modality: str
    what: str              # "raw forward" or "embed_numpy (with preprocessing)"
    batch_size: int
    spectra: int
    seconds: float
    spectra_per_s: float
    threads: int
    device: str


def fake_inputs(modality: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Canonical-grid flux/ivar that look like spectra (smooth SED, lines, S/N ~ 50)."""
    rng = np.random.default_rng(seed)
    wave = grid_for(modality).wavelength
    slope = rng.uniform(-1.5, 0.5, (n, 1))
    flux = (wave / wave.mean())[None, :] ** slope
    if modality == "lamost":
        centres = rng.uniform(wave[0], wave[-1], 40)
        flux *= 1 - 0.5 * np.exp(-0.5 * ((wave[None, :] - centres[:, None]) / 3.0) ** 2).sum(0)
    sigma = flux / 50.0
    flux = flux + rng.normal(size=flux.shape) * sigma
    return flux.astype(np.float32), (1.0 / sigma ** 2).astype(np.float32)


@torch.inference_mode()
def raw_forward_speed(net: SpecCLIPNet, modality: str, *, batch_size: int,
                      min_seconds: float = 2.0, device: str = "cpu",
                      autocast: bool = False, arch: str | None = None) -> SpeedResult:
    """Encoder-only throughput on prepared inputs (``net.encode``)."""
    from specsearch.preprocess import prepare_model_input

    dev = torch.device(device)
    net = net.to(dev).eval()
    mi = prepare_model_input(*fake_inputs(modality, batch_size), modality)
    x = torch.from_numpy(mi.flux).to(dev)
    w = torch.from_numpy(mi.weight).to(dev)
    ctx = (torch.autocast(dev.type, dtype=torch.bfloat16) if autocast
           else torch.autocast(dev.type, enabled=False))
    with ctx:
        net.encode(modality, x, w)                       # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        n, t0 = 0, time.perf_counter()
        while True:
            net.encode(modality, x, w)
            n += batch_size
            if dev.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            if dt >= min_seconds:
                break
    return SpeedResult(arch=arch or net.cfg.name, modality=modality, what="raw forward",
                       batch_size=batch_size, spectra=n, seconds=dt, spectra_per_s=n / dt,
                       threads=torch.get_num_threads(), device=str(dev))


def embed_speed(model, modality: str, *, n: int = 8192, batch_size: int = 4096,
                repeats: int = 1, with_domain: bool = False) -> SpeedResult:
    """``model.embed_numpy`` throughput (preprocessing + encoder + heads; with
    ``with_domain`` also the decoder pass of the domain check)."""
    flux, ivar = fake_inputs(modality, n, seed=1)
    kw = {"batch_size": batch_size, "with_domain": with_domain}
    model.embed_numpy(modality, flux[:batch_size], ivar[:batch_size], **kw)
    t0 = time.perf_counter()
    for _ in range(repeats):
        if batch_size == 1:      # one spectrum a call, as a service request embeds it
            for i in range(n):
                model.embed_numpy(modality, flux[i], ivar[i], **kw)
        else:
            model.embed_numpy(modality, flux, ivar, **kw)
    dt = time.perf_counter() - t0
    what = "embed_numpy (with preprocessing)" + (" + domain check" if with_domain else "")
    return SpeedResult(arch=model.config.name, modality=modality, what=what,
                       batch_size=batch_size, spectra=n * repeats, seconds=dt,
                       spectra_per_s=n * repeats / dt, threads=torch.get_num_threads(),
                       device=str(model.device))


BASELINE_BATCH = {("specclip", "lamost"): 16, ("specclip", "xp"): 1024}


def compare_speed(net: SpecCLIPNet, *, device: str = "cpu", min_seconds: float = 2.0,
                  batch_size: int = 4096, autocast: bool = False) -> list[SpeedResult]:
    """Raw forward throughput of ``net`` and of a ``specclip``-size network, per modality."""
    base = SpecCLIPNet(model_config("specclip").with_data(label_names=(), class_names=()))
    results = []
    for m in net.cfg.modalities:
        results.append(raw_forward_speed(net, m, batch_size=batch_size, device=device,
                                         min_seconds=min_seconds, autocast=autocast))
        results.append(raw_forward_speed(
            base, m, batch_size=BASELINE_BATCH.get(("specclip", m), 256)
            if device == "cpu" else batch_size // 4,
            device=device, min_seconds=min_seconds, autocast=autocast, arch="specclip"))
    return results


def format_speed(results: list[SpeedResult]) -> str:
    lines = [f"{'arch':<10} {'modality':<8} {'what':<48} {'batch':>6} {'spectra/s':>11}"]
    for r in results:
        lines.append(f"{r.arch:<10} {r.modality:<8} {r.what:<48} {r.batch_size:>6} "
                     f"{r.spectra_per_s:>11,.0f}")
    return "\n".join(lines)
