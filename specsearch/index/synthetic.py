"""Seeded, clustered unit vectors that look like contrastive embeddings (for tests/benchmarks).

Real spectral embeddings are not uniform on the sphere: stars fall in families (dwarfs,
giants, hot stars, metal-poor halo stars...) that form clusters with a low intrinsic
dimension, of very unequal sizes. Graph and IVF indexes behave very differently on uniform
noise than on such data, so every recall floor and benchmark in this package uses this
generator instead of ``np.random.randn``.
"""

from __future__ import annotations

import numpy as np


def clustered_unit_vectors(n: int, dim: int = 128, *, n_clusters: int = 256,
                           intrinsic_dim: int = 12, spread: float = 0.35,
                           noise: float = 0.05, seed: int = 0,
                           chunk: int = 200_000) -> np.ndarray:
    """(n, dim) float32 L2-normalised vectors from a Gaussian mixture on the unit sphere.

    Each cluster has a random unit centre, a random ``intrinsic_dim``-dimensional subspace
    along which its members spread (scale ``spread`` times a per-cluster factor in
    [0.5, 1.5]), plus isotropic ``noise`` in all ``dim`` directions; cluster sizes follow a
    Zipf-like law (a few big families, many small ones). Deterministic for a given ``seed``
    and independent of ``chunk`` (generation is chunked to bound memory at ~chunk*dim*8 B).
    """
    if n < 0 or dim < 1 or n_clusters < 1:
        raise ValueError(f"need n >= 0, dim >= 1, n_clusters >= 1; got {n}, {dim}, {n_clusters}")
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    r = min(intrinsic_dim, dim)
    bases = rng.standard_normal((n_clusters, r, dim)) / np.sqrt(r)
    scales = spread * rng.uniform(0.5, 1.5, n_clusters)
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 0.7
    weights /= weights.sum()
    labels = rng.choice(n_clusters, size=n, p=weights)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        # One generator per chunk index keeps the stream independent of earlier chunks' sizes.
        crng = np.random.default_rng([seed, start // chunk])
        lab = labels[start:stop]
        z = crng.standard_normal((stop - start, r))
        x = centres[lab].copy()
        for j in range(r):  # r gathers of (m, dim): never materialise (m, r, dim)
            x += (scales[lab] * z[:, j])[:, None] * bases[lab, j]
        x += noise * crng.standard_normal((stop - start, dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start:stop] = x
    return out


def held_out_queries(vectors: np.ndarray, n_queries: int, *, jitter: float = 0.05,
                     seed: int = 1) -> np.ndarray:
    """(n_queries, dim) queries drawn near random rows of ``vectors`` (unit-normalised).

    Queries are perturbed copies, not rows themselves, so a query never finds itself at
    similarity 1.0 (which would make recall look better than it is).
    """
    rng = np.random.default_rng(seed)
    rows = rng.choice(vectors.shape[0], size=n_queries, replace=n_queries > vectors.shape[0])
    q = vectors[rows].astype(np.float64)
    q += jitter * rng.standard_normal(q.shape) / np.sqrt(vectors.shape[1])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.astype(np.float32)
