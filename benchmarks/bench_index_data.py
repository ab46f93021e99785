"""Vectors for the index benchmarks: the shipped model's XP embeddings, or clustered vectors.

``model`` (the default case): embeddings by a specsearch model (``--model``, default the
shipped one) of synthetic Gaia XP spectra. The synthetic survey costs ~3 ms of CPU a star
(the spectral emulator), too slow to make a million stars for each benchmark run on two
cores, so ``--n-base`` physically synthetic stars (``specsearch.synth``: labels, model
spectra, extinction, the DR3 XP instrument model and noise) are made once, and each
benchmark vector is the embedding of a mixture ``a f_i + (1 - a) f_j`` of the sampled
spectra of a base star and one of its 8 nearest neighbours in (Teff, logg, [Fe/H], E(B-V))
with ``a ~ U(0, 1)`` (inverse variances combined as for independent noise): a continuous
population of spectra between neighbouring stars, embedded by the real encoder. The
mixtures are seeded per chunk of 50,000, so any smaller set is a prefix of a larger one.

``clustered``: ``specsearch.index.synthetic.clustered_unit_vectors`` (seeded Gaussian
mixture on the unit sphere), the vectors of the earlier index benchmarks.

Everything is cached under ``--cache`` (base spectra by seed and size; embeddings by model
hash, size and seed), written atomically, so a rerun with a retrained model only re-embeds.

Usage (also imported by bench_index.py / bench_index_paired.py):
  python benchmarks/bench_index_data.py --n 1000000            # fill the cache
  python benchmarks/bench_index_data.py --n 300000 --model models/mine
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from specsearch.fsutil import atomic_path

DEFAULT_CACHE = Path(os.environ.get("SPECSEARCH_BENCH_CACHE",
                                    Path(tempfile.gettempdir()) / "specsearch-bench"))
N_BASE = 20_000
NEIGHBOURS = 8
CHUNK = 50_000


def _save(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def base_xp_spectra(n_base: int = N_BASE, seed: int = 0,
                    cache: Path = DEFAULT_CACHE) -> dict[str, np.ndarray]:
    """``n_base`` synthetic stars' XP flux/ivar (catalog units) and labels (cached)."""
    path = cache / f"xp_base_{n_base}_seed{seed}.npz"
    if path.is_file():
        with np.load(path) as f:
            return dict(f)
    from specsearch.synth.labels import resolve_fractions
    from specsearch.synth.mix import sample_labels
    from specsearch.synth.model import model_spectra
    from specsearch.synth.survey import extinction_curve
    from specsearch.synth.xp import observe_xp

    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {}
    t0 = time.perf_counter()
    for start in range(0, n_base, 2000):
        n = min(2000, n_base - start)
        labels = sample_labels(rng, n, resolve_fractions(None, 1.0))
        extincted = model_spectra(labels) * 10.0 ** (
            -0.4 * labels.ebv[:, None] * extinction_curve()[None, :])
        xp = observe_xp(extincted.astype(np.float32), labels.mag_g, rng)
        for key, value in (("flux", xp.flux), ("ivar", xp.ivar), ("teff", labels.teff),
                           ("logg", labels.logg), ("feh", labels.feh), ("ebv", labels.ebv)):
            parts.setdefault(key, []).append(np.asarray(value, dtype=np.float32))
        print(f"  base spectra {start + n:,}/{n_base:,} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    out = {k: np.concatenate(v) for k, v in parts.items()}
    _save(path, **out)
    return out


def label_neighbours(base: dict[str, np.ndarray]) -> np.ndarray:
    """(n_base, NEIGHBOURS) nearest other base stars in standardised label space."""
    import faiss

    labels = np.stack([base["teff"] / 1000.0, base["logg"], base["feh"], 3.0 * base["ebv"]],
                      axis=1).astype(np.float32)
    labels = np.ascontiguousarray((labels - labels.mean(0)) / labels.std(0))
    _, nn = faiss.knn(labels, labels, NEIGHBOURS + 1)
    return nn[:, 1:]


def mixed_spectra(base: dict[str, np.ndarray], nn: np.ndarray, chunk: int, n: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(flux, ivar) of ``n`` mixtures of chunk ``chunk`` (seeded per chunk, so a smaller
    benchmark set is a prefix of a larger one)."""
    rng = np.random.default_rng([seed, chunk])
    i = rng.integers(0, len(nn), n)
    j = nn[i, rng.integers(0, NEIGHBOURS, n)]
    a = rng.random(n).astype(np.float32)[:, None]
    flux = a * base["flux"][i] + (1 - a) * base["flux"][j]
    with np.errstate(divide="ignore"):
        var = a ** 2 / base["ivar"][i] + (1 - a) ** 2 / base["ivar"][j]
        ivar = np.where(np.isfinite(var) & (var > 0), 1.0 / var, 0.0).astype(np.float32)
    return flux, ivar


def _cached(cache: Path, stem: str, n: int) -> Path | None:
    """The smallest cached embedding file ``stem_<m>.npy`` with m >= n."""
    best = None
    for path in cache.glob(f"{stem}_*.npy"):
        size = path.stem.rsplit("_", 1)[1]
        if size.isdigit() and int(size) >= n and (best is None or int(size) < best[0]):
            best = (int(size), path)
    return None if best is None else best[1]


def model_embeddings(n: int, *, model: str | None = None, seed: int = 0,
                     n_base: int = N_BASE, cache: Path = DEFAULT_CACHE,
                     threads: int = 2) -> tuple[np.ndarray, str]:
    """((n, D) float32 unit embeddings, model hash); cached by model hash, seed, base size
    (a cached larger set is sliced)."""
    import torch

    from specsearch.model import load_model

    torch.set_num_threads(threads)
    encoder = load_model(model)
    stem = f"xp_emb_{encoder.model_hash[:16]}_seed{seed}_base{n_base}"
    hit = _cached(cache, stem, n)
    if hit is not None:
        return np.load(hit, mmap_mode="r")[:n], encoder.model_hash
    base = base_xp_spectra(n_base, seed, cache)
    nn = label_neighbours(base)
    out = np.empty((n, encoder.embedding_dim), np.float32)
    t0 = time.perf_counter()
    for c, start in enumerate(range(0, n, CHUNK)):
        stop = min(n, start + CHUNK)
        flux, ivar = mixed_spectra(base, nn, c, CHUNK, seed + 1)
        emb = encoder.embed_numpy("xp", flux[:stop - start], ivar[:stop - start]).embedding
        out[start:stop] = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        print(f"  embedded {stop:,}/{n:,} ({time.perf_counter() - t0:.0f} s)", flush=True)
    with atomic_path(cache / f"{stem}_{n}.npy", suffix=".npy") as tmp:
        np.save(tmp, out)
    return out, encoder.model_hash


def benchmark_vectors(case: str, n: int, *, model: str | None = None, dim: int = 128,
                      seed: int = 0, cache: Path = DEFAULT_CACHE) -> tuple[np.ndarray, str]:
    """(vectors, description) of one benchmark case: ``model`` or ``clustered``."""
    if case == "model":
        x, model_hash = model_embeddings(n, model=model, seed=seed, cache=cache)
        return np.ascontiguousarray(x), f"XP embeddings of model {model_hash[:12]}"
    if case == "clustered":
        from specsearch.index.synthetic import clustered_unit_vectors
        return clustered_unit_vectors(n, dim, seed=seed), f"clustered unit vectors ({dim}-d)"
    raise SystemExit(f"unknown vector case {case!r}; use 'model' or 'clustered'")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--model", default=None, help="model directory (default: shipped)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = ap.parse_args()
    t0 = time.perf_counter()
    x, model_hash = model_embeddings(args.n, model=args.model, seed=args.seed,
                                     cache=args.cache)
    print(f"{len(x):,} x {x.shape[1]} embeddings of model {model_hash[:12]} in "
          f"{time.perf_counter() - t0:.0f} s (cache {args.cache})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
