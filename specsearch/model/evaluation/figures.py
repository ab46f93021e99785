"""Evaluation figures (matplotlib, Agg backend; PNG files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from specsearch.preprocess import grid_for, prepare_model_input


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def parameter_figure(path: Path, title: str, label_names, pred: np.ndarray,
                     true: dict[str, np.ndarray], keep: np.ndarray,
                     colour: np.ndarray | None = None) -> Path:
    """Predicted vs true, one panel per label present in ``true``."""
    plt = _plt()
    names = [n for n in label_names if n in true]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.8 * max(1, len(names)), 3.6),
                             constrained_layout=True)
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, names):
        j = list(label_names).index(name)
        ok = keep & np.isfinite(true[name]) & np.isfinite(pred[:, j])
        sc = ax.scatter(true[name][ok], pred[ok, j], s=2, alpha=0.5,
                        c=None if colour is None else np.log10(np.clip(colour[ok], 1, None)),
                        cmap="viridis")
        lo, hi = np.nanpercentile(true[name][ok], [0.5, 99.5]) if ok.any() else (0, 1)
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.7)
        ax.set_xlabel(f"true {name}")
        ax.set_ylabel(f"predicted {name}")
    if colour is not None and names:
        fig.colorbar(sc, ax=axes.tolist(), label="log10 S/N")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evaluation_figures(folder: Path, model, data: dict[str, dict[str, np.ndarray]],
                       batches: dict[str, Any], true: dict[str, np.ndarray],
                       keep: np.ndarray) -> list[str]:
    """Parameter panels per modality, z-score histograms, translation examples."""
    import torch

    plt = _plt()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for m, b in batches.items():
        paths.append(parameter_figure(folder / f"parameters_{m}.png",
                                      f"held-out synthetic stars, from {m}", model.label_names,
                                      b.predictions, true, keep, data[m].get("snr")))
    # z-scores
    names = [n for n in model.label_names if n in true]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.2 * max(1, len(names)), 2.8))
    grid = np.linspace(-5, 5, 201)
    for ax, name in zip(np.atleast_1d(axes), names):
        j = list(model.label_names).index(name)
        for m, b in batches.items():
            z = (b.predictions[:, j] - true[name]) / b.uncertainties[:, j]
            z = z[keep & np.isfinite(z)]
            ax.hist(np.clip(z, -5, 5), bins=60, range=(-5, 5), density=True, histtype="step",
                    label=m)
        ax.plot(grid, np.exp(-0.5 * grid ** 2) / np.sqrt(2 * np.pi), "k--", lw=0.8)
        ax.set_xlabel(f"z ({name})")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "zscores.png", dpi=110)
    plt.close(fig)
    paths.append(folder / "zscores.png")
    # translation examples: two good stars, both directions
    idx = np.flatnonzero(keep)[:2]
    if idx.size and len(model.modalities) == 2:
        fig, axes = plt.subplots(len(idx), 2, figsize=(11, 2.6 * len(idx)), squeeze=False)
        for r, i in enumerate(idx):
            for c, (src, dst) in enumerate((("xp", "lamost"), ("lamost", "xp"))):
                a = prepare_model_input(data[src]["flux"][i:i + 1], data[src]["ivar"][i:i + 1],
                                        src)
                o = prepare_model_input(data[dst]["flux"][i:i + 1], data[dst]["ivar"][i:i + 1],
                                        dst)
                with torch.inference_mode():
                    emb = model.encode(src, torch.from_numpy(a.flux).to(model.device),
                                       torch.from_numpy(a.weight).to(model.device))
                    pred = model.translate(src, emb).float().cpu().numpy()[0]
                wave = grid_for(dst).wavelength
                ok = o.weight[0, :wave.size] > 0
                ax = axes[r, c]
                ax.plot(wave[ok], o.flux[0, :wave.size][ok], "k-", lw=0.5, label=f"observed {dst}")
                ax.plot(wave, pred, "r-", lw=0.5, alpha=0.8, label=f"predicted from {src}")
                ax.set_xlabel("wavelength [A]")
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / "translation_examples.png", dpi=110)
        plt.close(fig)
        paths.append(folder / "translation_examples.png")
    return [str(p) for p in paths]
