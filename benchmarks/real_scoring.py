"""What the benchmarks on the real sets share (``bench_rv``, ``bench_spikes``,
``bench_telluric``): their command line, the held-out stars they read, and how a reading
is scored against the survey's labels (as ``specsearch evaluate --real-data`` scores it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
LABELS = ("teff", "logg", "feh")


def real_parser(doc: str, out_name: str, *, threads: int, seed: int
                ) -> argparse.ArgumentParser:
    """The options every real-set benchmark takes (``--model``, ``--real-data``,
    ``--real-cache``, ``--threads``, ``--repeats``, ``--seed``, ``--out``); add your own."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--model", help="model directory (default: the shipped default model)")
    p.add_argument("--real-data", type=Path, required=True, help="../shared/data/real")
    p.add_argument("--real-cache", type=Path, help="an .npz of the read real sets (reused)")
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--out", type=Path, default=RESULTS / out_name)
    return p


def mad(x: np.ndarray) -> float:
    """Robust sigma: 1.4826 x the median absolute deviation from the median."""
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def held_out_fgk(realset) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, (n, 3) labels) of a LAMOST set's held-out FGK stars at S/N > 30 (test
    split by star; 4000-7000 K by the survey's labels)."""
    lab = realset.label_matrix(list(LABELS)).astype(np.float64)
    sel = np.flatnonzero(np.isfinite(lab).all(1) & realset.in_split("test")
                         & (realset.snr > 30) & (lab[:, 0] > 4000) & (lab[:, 0] < 7000))
    return sel, lab[sel]


def scores(model, flux: np.ndarray, ivar: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """``{label}_bias``, ``{label}_sigma`` (robust) and ``{label}_z`` (the robust width of
    (prediction - label) / uncertainty) of the model's LAMOST readings against ``truth``."""
    names = list(model.label_names)
    cols = [names.index(n) for n in LABELS]
    b = model.embed_numpy("lamost", flux, ivar)
    d = b.predictions[:, cols].astype(np.float64) - truth
    z = d / b.uncertainties[:, cols]
    out: dict[str, float] = {}
    for k, n in enumerate(LABELS):
        out[f"{n}_bias"] = float(np.median(d[:, k]))
        out[f"{n}_sigma"] = mad(d[:, k])
        out[f"{n}_z"] = float(1.4826 * np.median(np.abs(z[:, k])))
    return out
