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
                           intrinsic_dim: int = 16, spread: float = 0.35,
                           noise: float = 0.02, seed: int = 0,
                           chunk: int = 200_000) -> np.ndarray:
    """(n, dim) float32 L2-normalised vectors from a Gaussian mixture on the unit sphere.

    Each cluster has a random unit centre, a random ``intrinsic_dim``-dimensional subspace
    along which its members spread (scale ``spread`` times a per-cluster factor in
    [0.5, 1.5]), plus isotropic ``noise`` in all ``dim`` directions; cluster sizes follow a
    Zipf-like law (a few big families, many small ones). With the defaults, 1M vectors of
    dimension 128 are about as hard for HNSW as the issue's reference embeddings (hnswlib
    M=16, ef=10: recall@10 ~0.93; ef=32: ~0.99). Deterministic for a given ``seed``
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


SYNTHETIC_LABELS = ("teff", "logg", "feh")


def synthetic_embeddings(root, *, n: int = 5000, dim: int = 32, modalities=("lamost", "xp"),
                         paired_fraction: float = 0.5, partner_noise: float = 0.05,
                         model_hash: str = "synthetic-model", seed: int = 0,
                         n_clusters: int = 40, rows_per_file: int = 100_000):
    """Write a small paired embeddings dataset (tests, benchmarks, demos); returns it opened.

    ``n`` rows per modality. The first ``paired_fraction`` of the stars exist in every
    modality with the same source_id; their other-modality embedding is the first one plus
    ``partner_noise`` (so a star finds its partner cross-modally, as a trained contrastive
    model would make it). Columns follow the embeddings contract: head predictions
    ``teff/logg/feh_pred`` and ``_err`` (correlated with the embedding cluster), ra, dec,
    snr, mag_g (with nulls), class_pred.
    """
    from pathlib import Path

    from specsearch.io.embeddings import EmbeddingsWriter, open_embeddings

    root = Path(root)
    rng = np.random.default_rng(seed)
    base = clustered_unit_vectors(n, dim, n_clusters=n_clusters, seed=seed,
                                  intrinsic_dim=min(8, dim), noise=0.02)
    n_paired = int(round(paired_fraction * n))
    source_id = rng.choice(2 ** 62, size=n + (len(modalities) - 1) * (n - n_paired),
                           replace=False).astype(np.int64)
    # Head predictions follow the embedding (a smooth function of it), like trained heads.
    proj = rng.standard_normal((dim, 3))
    z = base @ proj
    z = (z - z.mean(0)) / z.std(0)
    labels = {"teff": 5500 + 900 * z[:, 0], "logg": 3.5 + 0.9 * z[:, 1],
              "feh": -0.6 + 0.7 * z[:, 2]}
    errors = {"teff": 80.0, "logg": 0.12, "feh": 0.08}
    classes = np.array(["normal", "normal", "normal", "carbon", "emission"])
    # A star has one position: partners share ra/dec with their first-modality row.
    star_ra = rng.uniform(0, 360, n)
    star_dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    extra = iter(source_id[n:])
    for m, modality in enumerate(modalities):
        if m == 0:
            vecs, ids = base, source_id[:n]
        else:
            partner = base[:n_paired] + partner_noise / np.sqrt(dim) * rng.standard_normal(
                (n_paired, dim))
            fresh = clustered_unit_vectors(n - n_paired, dim, n_clusters=n_clusters,
                                           seed=seed + 7919 * m, intrinsic_dim=min(8, dim),
                                           noise=0.02)
            vecs = np.concatenate([partner, fresh]).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            ids = np.concatenate([source_id[:n_paired],
                                  np.array([next(extra) for _ in range(n - n_paired)],
                                           np.int64)])
        mag_g = rng.uniform(9, 18, n).astype(np.float32)
        mag_g[rng.random(n) < 0.05] = np.nan
        cols = {"spectrum_id": [f"{modality}-{i:07d}" for i in range(n)],
                "source_id": ids, "modality": [modality] * n, "embedding": vecs,
                "ra": np.concatenate([star_ra[:n_paired] if m else star_ra[:0],
                                      rng.uniform(0, 360, n - n_paired) if m else star_ra]),
                "dec": np.concatenate([star_dec[:n_paired] if m else star_dec[:0],
                                       np.degrees(np.arcsin(rng.uniform(-1, 1, n - n_paired)))
                                       if m else star_dec]),
                "snr": rng.gamma(2.0, 20.0, n).astype(np.float32), "mag_g": mag_g,
                "class_pred": classes[rng.integers(0, len(classes), n)]}
        for name in SYNTHETIC_LABELS:
            noise = errors[name] * rng.standard_normal(n)
            cols[f"{name}_pred"] = (labels[name][:n] + noise).astype(np.float32)
            cols[f"{name}_err"] = np.full(n, errors[name], np.float32)
        import pyarrow as pa
        mask = np.isnan(mag_g)
        cols["mag_g"] = pa.array(mag_g, mask=mask)
        with EmbeddingsWriter(root, modality, model_hash=model_hash, embedding_dim=dim,
                              label_names=list(SYNTHETIC_LABELS),
                              rows_per_file=rows_per_file) as w:
            w.write(cols)
    return open_embeddings(root)
