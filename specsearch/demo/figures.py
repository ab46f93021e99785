"""Figures of the demo report: spectra of query vs matches, anomalies, UMAP maps.

Plain functions: numpy arrays in, a PNG file out (matplotlib's Agg backend, no display).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specsearch.fsutil import atomic_path


def _save(fig, path: Path) -> None:
    """Save a figure atomically (matplotlib picks the format from the suffix)."""
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        fig.savefig(tmp, dpi=110)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


@dataclass
class SpectrumTrace:
    """One spectrum to draw: wavelength (A), flux (already scaled), a label, good pixels."""

    wavelength: np.ndarray
    flux: np.ndarray
    label: str
    good: np.ndarray | None = None


def plot_spectra_panels(panels: Sequence[tuple[str, Sequence[SpectrumTrace]]], path: Path, *,
                        offset: float = 0.6, width: float = 11.0) -> Path:
    """Stacked spectra, one panel per (title, traces); each trace offset vertically."""
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 3.2 * len(panels)),
                             squeeze=False)
    for ax, (title, traces) in zip(axes[:, 0], panels):
        for i, tr in enumerate(traces):
            y = np.where(tr.good if tr.good is not None else True, tr.flux, np.nan)
            ax.plot(tr.wavelength, y + i * offset, lw=0.7, label=tr.label)
            ax.text(tr.wavelength[-1], 1 + i * offset, " " + tr.label, fontsize=7,
                    va="center")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("vacuum wavelength [A]")
        ax.set_ylabel("scaled flux + offset")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def umap_embed(vectors: np.ndarray, *, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """2-D UMAP of unit vectors (cosine metric); deterministic for a seed."""
    import umap

    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=0.1, metric="cosine",
                        random_state=seed, n_jobs=1, low_memory=True)
    return reducer.fit_transform(np.asarray(vectors, dtype=np.float32))


def plot_umap_labels(xy: np.ndarray, teff: np.ndarray, feh: np.ndarray,
                     groups: dict[str, np.ndarray], path: Path, *,
                     title: str = "UMAP of the embedding") -> Path:
    """Two panels coloured by Teff and [Fe/H]; ``groups`` (name -> bool mask) are marked."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6))
    markers = ["*", "D", "s", "^", "v", "P", "X", "o", "h", "<", ">"]
    for ax, values, name, cmap in ((axes[0], teff, "Teff [K]", "RdYlBu"),
                                   (axes[1], feh, "[Fe/H]", "viridis")):
        ok = np.isfinite(values)
        # Percentile limits: a few hot stars or white dwarfs would wash out the colour scale.
        lo, hi = np.percentile(values[ok], [1, 99]) if ok.any() else (0.0, 1.0)
        sc = ax.scatter(xy[ok, 0], xy[ok, 1], c=values[ok], s=2, cmap=cmap, alpha=0.6,
                        rasterized=True, linewidths=0, vmin=lo, vmax=hi)
        ax.scatter(xy[~ok, 0], xy[~ok, 1], c="lightgrey", s=2, alpha=0.4, rasterized=True)
        fig.colorbar(sc, ax=ax, label=name)
        for (gname, mask), marker in zip(groups.items(), markers):
            if mask.any():
                ax.scatter(xy[mask, 0], xy[mask, 1], s=12, marker=marker, facecolors="none",
                           edgecolors="k", linewidths=0.4, alpha=0.7,
                           label=f"{gname} ({mask.sum()})")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{title}: coloured by {name}", fontsize=10)
    axes[1].legend(fontsize=7, loc="best", markerscale=0.8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_alignment(xy: np.ndarray, modality: np.ndarray, pair_index: np.ndarray,
                   path: Path, *, stats: str = "", n_lines: int = 300, seed: int = 0) -> Path:
    """Joint UMAP of LAMOST and XP embeddings of the same stars, with partner lines.

    Args:
        xy: (n, 2) joint UMAP coordinates.
        modality: (n,) array of "lamost"/"xp".
        pair_index: (m, 2) row indices into ``xy`` of (lamost, xp) partners.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    for name, colour in (("lamost", "tab:blue"), ("xp", "tab:orange")):
        m = modality == name
        ax.scatter(xy[m, 0], xy[m, 1], s=2, c=colour, alpha=0.45, label=f"{name} ({m.sum()})",
                   rasterized=True, linewidths=0)
    rng = np.random.default_rng(seed)
    chosen = pair_index[rng.permutation(len(pair_index))[:n_lines]]
    for a, b in chosen:
        ax.plot(xy[[a, b], 0], xy[[a, b], 1], c="k", lw=0.3, alpha=0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("LAMOST vs XP embeddings of the same stars (lines join partners)",
                 fontsize=10)
    if stats:
        ax.text(0.01, 0.01, stats, transform=ax.transAxes, fontsize=8, va="bottom")
    ax.legend(markerscale=5, fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path
