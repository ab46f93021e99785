"""Choosing a backend (``--kind auto``) and tuning query knobs to a target recall.

Auto choice, in the spirit of autofaiss:

* up to :data:`EXACT_MAX_VECTORS` rows a modality: exact ``flat`` (a scan is cheap and
  recall is 1 by construction);
* else FAISS HNSW over SQ8 codes + exact re-ranking from the stored vectors, if its RAM
  (codes + graph, :func:`ram_bytes_per_vector`) fits ``memory_budget``;
* else IVF-PQ + re-ranking with the largest code size that fits.

Given a sample of the vectors whose top :data:`PCA_DIM` uncentred principal components hold
at least :data:`CONCENTRATED_VARIANCE` of the mean square (model embeddings), the codes go
on those components instead: HNSW over PCA-32 fp16 codes for shards of up to
:data:`PCA_HNSW_MAX_ROWS` rows, else (or when the graph does not fit) IVF-PQ over PCA-32
with 32 B codes (:func:`concentrated_variance`).

Tuning measures recall@k of *held-out* queries: random stored rows that the builder left
out of the training sample (cells, codebooks, PCA) and that are taken out of the search (a
filter mask over every tuning row) and out of the exact answer, so each meets the index as
a new spectrum would. (Excluding only each query's own hit from a k+1 search lets the
query's own code take one of the ``refine_factor * (k+1)`` re-ranked candidates, a deeper
re-ranking than a new spectrum gets; IVF-PQ tuned that way to 0.95 on 100k model
embeddings gave 0.918 on new ones.) It walks a ladder of ``nprobe`` / ``ef_search`` values
up from the cheapest and keeps the first that reaches the target by one standard error of
the measured recall (:data:`TUNING_MARGIN_SE`; for quantised backends,
a deeper ``refine_factor`` is tried when the top of the ladder falls short). Recall at a
fixed re-ranking depth plateaus just under what codes allow, so the first setting found may
sit far up the ladder (measured: ef 768 at x4 on 1M model embeddings, where x8 reaches the
target at a small ef); quantised backends therefore also walk the cheaper steps at deeper
re-ranking and keep whichever setting searched the tuning queries fastest. The measured
recall is written to the manifest.
"""

from __future__ import annotations

import logging
import os
import re
import time

import numpy as np

from specsearch.errors import ConfigError
from specsearch.index.config import (FlatConfig, HNSWConfig, HnswlibConfig, IndexConfig,
                                     IVFFlatConfig, IVFPQConfig, SearchKnobs)
from specsearch.index.manifest import Tuning
from specsearch.index.reader import ModalityIndex, global_ids, merge_topk, split_ids

log = logging.getLogger(__name__)

EXACT_MAX_VECTORS = 200_000
EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
NPROBE_LADDER = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)
MAX_REFINE = 32.0
_clock = time.perf_counter
"""Timer of the tuning searches (which setting is cheapest); a module attribute for tests."""
TUNING_MARGIN_SE = 1.0
"""A knob setting counts as reaching the target when its recall on the tuning queries is
above it by this many standard errors: the first setting that just crosses the target on
one sample of queries falls below it on the next (measured at 10M model embeddings: tuned
to 0.95 at nprobe 4 / re-ranking x16, 0.9415 on other held-out queries)."""
PCA_DIM = 32
"""Components the codes of a concentrated dataset are put on (auto choice)."""
CONCENTRATED_VARIANCE = 0.99
PCA_HNSW_MAX_ROWS = 2_000_000
"""Largest shard given an HNSW graph over PCA-32 codes by ``auto``. Measured on model
embeddings (bench_scale.py): held-out recall@10 0.985 at 100k, 0.968 at 1M, but at 10M the
graph walk over the compressed codes caps it at 0.92 (ef 1024, re-ranking x32), where
IVF-PQ over the same components reaches 0.954 (nprobe 4, x32). Between 1M and 10M the
switch is not measured; 2M keeps a margin above the last good point."""
"""Fraction of the uncentred variance (mean square) the top :data:`PCA_DIM` components
must hold for ``--kind auto`` to put the codes on them. Model embeddings (128-d, 99%+ in
24-32 directions, neighbours near-ties) lose recall to codes spread over all D: on 1M of
them IVF-PQ over 128 dimensions reached 0.875 held-out recall@10 (every list probed,
re-ranking x32) and HNSW-SQ8 ~0.93-0.95, while IVF-PQ over PCA-32 reached 0.957-0.969 and
HNSW over PCA-32 fp16 0.968-0.985 (BENCHMARKS.md, issue 17). Below 0.99 the discarded
components carry enough of the inner product to reorder near neighbours beyond what the
re-ranking depth repairs, so the all-dimension codes stay."""
AUTO_SAMPLE_ROWS = 20_000
"""Rows the builder samples to measure :func:`concentrated_variance`."""

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 1024, "m": 1e6, "mb": 1e6,
          "mib": 1024 ** 2, "g": 1e9, "gb": 1e9, "gib": 1024 ** 3, "t": 1e12, "tb": 1e12,
          "tib": 1024 ** 4}


def parse_bytes(text: str | int | float) -> int:
    """``"8G"``, ``"512MiB"``, ``"1.5GB"`` or a number of bytes -> bytes (int)."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"memory size {text!r} not understood; use e.g. 512M, 8G, 2GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def default_memory_budget() -> int:
    """Half the machine's physical RAM."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):
        return 8 * 1024 ** 3


def ram_bytes_per_vector(config: IndexConfig, dim: int) -> float:
    """Resident bytes a vector of the ANN structure (stored vectors are memory-mapped from
    disk and touched only for re-ranked candidates, so they are not counted)."""
    if isinstance(config, IVFPQConfig):
        return config.pq_m * config.pq_nbits / 8 + 8  # codes + int64 id in the lists
    if isinstance(config, IVFFlatConfig):
        return 4 * dim + 8
    if isinstance(config, HNSWConfig):
        d = config.pca_dim or dim
        code = {"flat": 4 * d, "fp16": 2 * d, "sq8": d}[config.storage]
        return code + 2 * config.m * 4 * 1.07 + 8  # level-0 links, upper levels, offsets
    if isinstance(config, HnswlibConfig):
        return 4 * dim + 2 * config.m * 4 + 8 + 4 + 8 * 1.07
    return 4 * dim


def concentrated_variance(sample: np.ndarray, n_components: int = PCA_DIM) -> float:
    """Fraction of the uncentred variance (mean square) of ``sample`` rows held by its top
    ``n_components`` uncentred principal components: the axes of the backends' PCA, which
    is trained on {x, -x} (mean 0, covariance = the second moment of x)."""
    x = np.asarray(sample, dtype=np.float64)
    if x.ndim != 2 or not len(x):
        raise ConfigError(f"variance sample must be a non-empty (n, D) array; got shape "
                          f"{x.shape}")
    eig = np.clip(np.linalg.eigvalsh(x.T @ x), 0.0, None)[::-1]
    total = float(eig.sum())
    return float(eig[:n_components].sum() / total) if total > 0 else 1.0


def choose_config(n_vectors: int, dim: int, memory_budget: int | None = None,
                  sample: np.ndarray | None = None, *,
                  rows_per_shard: int | None = None) -> IndexConfig:
    """The backend ``--kind auto`` picks for ``n_vectors`` (see the module docstring);
    ``sample`` (rows of the data, e.g. :data:`AUTO_SAMPLE_ROWS`) lets it put the codes on
    :data:`PCA_DIM` principal components when they hold the variance; ``rows_per_shard``
    (default ``n_vectors``) is the size of one graph (:data:`PCA_HNSW_MAX_ROWS`)."""
    budget = memory_budget or default_memory_budget()
    if n_vectors <= EXACT_MAX_VECTORS and n_vectors * 4 * dim <= budget:
        return FlatConfig()
    fraction = (concentrated_variance(sample) if sample is not None and dim > PCA_DIM
                else None)
    concentrated = fraction is not None and fraction >= CONCENTRATED_VARIANCE
    config = (_concentrated_choice(n_vectors, dim, budget, rows_per_shard or n_vectors)
              if concentrated else None)
    config = config or _default_choice(n_vectors, dim, budget)
    log.info("auto index for %d x %d vectors: %s (top-%d uncentred variance %s, "
             "threshold %.2f)", n_vectors, dim, config.to_dict(), PCA_DIM,
             "not measured" if fraction is None else f"{fraction:.4f}", CONCENTRATED_VARIANCE)
    return config


def _concentrated_choice(n_vectors: int, dim: int, budget: int, rows_per_shard: int
                         ) -> IndexConfig | None:
    """HNSW or IVF-PQ with codes on :data:`PCA_DIM` components; None if neither fits."""
    hnsw = HNSWConfig(pca_dim=PCA_DIM, storage="fp16")
    if (rows_per_shard <= PCA_HNSW_MAX_ROWS
            and n_vectors * ram_bytes_per_vector(hnsw, dim) <= budget):
        return hnsw
    for pq_m in (32, 16, 8, 4):
        cfg = IVFPQConfig(pca_dim=PCA_DIM, pq_m=pq_m).resolved(n_vectors)
        if n_vectors * ram_bytes_per_vector(cfg, dim) <= budget:
            return cfg
    return None


def _default_choice(n_vectors: int, dim: int, budget: int) -> IndexConfig:
    """HNSW-SQ8 if it fits, else IVF-PQ over all D with the largest code that fits."""
    hnsw = HNSWConfig(storage="sq8")
    if n_vectors * ram_bytes_per_vector(hnsw, dim) <= budget:
        return hnsw
    for pq_m in (64, 32, 16, 8, 4):
        if dim % pq_m:
            continue
        cfg = IVFPQConfig(pq_m=pq_m).resolved(n_vectors)
        if n_vectors * ram_bytes_per_vector(cfg, dim) <= budget:
            return cfg
    raise ConfigError(
        f"{n_vectors} vectors of dimension {dim} do not fit a memory budget of {budget} B "
        f"even as IVF-PQ with 4-byte codes (~{ram_bytes_per_vector(IVFPQConfig(pq_m=4), dim)}"
        f" B/vector); raise --memory-budget or use more machines (--shards)")


def set_knobs(index: ModalityIndex, knobs: SearchKnobs) -> None:
    """Make ``knobs`` the defaults of every shard (not thread-safe: setup time only)."""
    index.knobs = knobs
    index.manifest.search = knobs
    for shard in index.shards:
        shard.backend.set_default_knobs(knobs)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row's true ids (ignoring -1) present in the found ids."""
    return recall_with_error(found, truth)[0]


def recall_with_error(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(recall as :func:`recall_at_k`, its standard error over the queries: the spread of
    the per-query recalls / sqrt(queries); a query's misses are correlated, so this is
    wider than a binomial error over all k x queries slots)."""
    hits, total = [], []
    for f, t in zip(found, truth):
        t = t[t >= 0]
        hits.append(len(np.intersect1d(f[f >= 0], t)))
        total.append(len(t))
    h, n = np.asarray(hits, float), np.asarray(total, float)
    if not n.sum():
        return 1.0, 0.0
    recall = float(h.sum() / n.sum())
    used = n > 0
    if used.sum() < 2:
        return recall, 0.0
    per_query = h[used] / n[used]
    return recall, float(per_query.std(ddof=1) / np.sqrt(used.sum()))


def tuning_rows(count: int, live: np.ndarray | None, take: int, *, shard: int,
                seed: int = 0) -> np.ndarray:
    """The (sorted) rows of one shard that tuning uses as queries: ``take`` random live rows,
    seeded by (seed, shard). The builder leaves them out of the training sample, so
    tuning meets codebooks and cells that never saw its queries, as a new spectrum does."""
    rows = np.arange(count) if live is None else np.flatnonzero(live)
    if not take or not len(rows):
        return np.zeros(0, np.int64)
    rng = np.random.default_rng([seed, shard])
    return np.sort(rng.choice(rows, size=min(take, len(rows)), replace=False))


def tuning_take(n_queries: int, live_rows: int, live_total: int) -> int:
    """How many of ``n_queries`` tuning queries a shard of ``live_rows`` contributes."""
    return int(round(n_queries * live_rows / max(live_total, 1)))


def held_out_queries(index: ModalityIndex, n_queries: int, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(queries (m, D), their global ids): the :func:`tuning_rows` of every shard."""
    ids, vecs = [], []
    for shard in index.shards:
        live = shard.live_mask()
        n_live = shard.count if live is None else int(live.sum())
        pick = tuning_rows(shard.count, live, tuning_take(n_queries, n_live, index.count),
                           shard=shard.number, seed=seed)
        if len(pick):
            ids.append(global_ids(shard.number, pick))
            vecs.append(np.asarray(shard.vectors[pick], dtype=np.float32))
    if not ids:
        return np.zeros((0, index.dim), np.float32), np.zeros(0, np.int64)
    return np.concatenate(vecs), np.concatenate(ids)


def without_queries(index: ModalityIndex, query_ids: np.ndarray) -> list[np.ndarray]:
    """Per shard, a bool mask of the live rows other than the tuning queries' own rows."""
    shard_of, row = split_ids(query_ids)
    masks = []
    for shard in index.shards:
        live = shard.live_mask()
        mask = np.ones(shard.count, bool) if live is None else live.copy()
        mask[row[shard_of == shard.number]] = False
        masks.append(mask)
    return masks


def measure_recall(index: ModalityIndex, queries: np.ndarray, masks: list[np.ndarray],
                   truth: np.ndarray, k: int, knobs: SearchKnobs, threads: int
                   ) -> tuple[float, float]:
    """(recall@k, its standard error) of ``knobs`` for queries searched through ``masks``
    (the backends' own filtered search, without the index layer's filter heuristics: exact
    scans of small selections, raised knobs for selective filters)."""
    set_knobs(index, knobs)
    parts = []
    for shard, mask in zip(index.shards, masks):
        if shard.count and mask.any():
            sims, rows = shard.backend.search(queries, k, knobs, mask, threads)
            parts.append((sims, global_ids(shard.number, rows)))
    if not parts:
        return 1.0, 0.0
    return recall_with_error(merge_topk(parts, k)[1], truth)


def tune(index: ModalityIndex, *, target_recall: float | None, k: int = 10,
         n_queries: int = 500, threads: int | None = None, seed: int = 0) -> Tuning:
    """Pick the cheapest knobs reaching ``target_recall`` (None: just measure the current
    knobs) and leave them set on ``index``; returns what was measured."""
    threads = threads or os.cpu_count() or 1
    queries, qids = held_out_queries(index, n_queries, seed)
    config = index.manifest.backend
    base = index.knobs
    if len(queries) == 0:
        return Tuning(target_recall, 1.0, k, 0, base.to_dict())
    masks = without_queries(index, qids)
    _, truth = index.exact_knn(queries, k, masks=masks)

    def measure(knobs: SearchKnobs) -> tuple[float, float]:
        r, se = measure_recall(index, queries, masks, truth, k, knobs, threads)
        log.debug("%s %s: recall@%d = %.4f +- %.4f", index.modality, knobs, k, r, se)
        return r, se

    if target_recall is None or isinstance(config, FlatConfig):
        return Tuning(target_recall, measure(base)[0], k, len(queries), base.to_dict())
    if isinstance(config, IVFFlatConfig):
        ladder = [dict(nprobe=p) for p in NPROBE_LADDER if p <= (config.nlist or 1)]
        if not ladder or ladder[-1]["nprobe"] != config.nlist:
            ladder.append(dict(nprobe=config.nlist))
    else:
        ladder = [dict(ef_search=e) for e in EF_LADDER]
    best: tuple[float, SearchKnobs] | None = None

    def consider(knobs: SearchKnobs) -> tuple[float, float, float]:
        nonlocal best
        start = _clock()
        r, se = measure(knobs)
        seconds = _clock() - start
        if best is None or r > best[0] + 1e-9:
            best = (r, knobs)
        return r, se, seconds

    def walk(refine: float, steps: range) -> tuple[SearchKnobs, float, int, float] | None:
        """The first ladder step (cheapest first) whose recall is above the target by
        ``TUNING_MARGIN_SE`` standard errors: its knobs, recall, ladder step and the
        seconds its tuning searches took."""
        for i in steps:
            knobs = base.replace(refine_factor=refine, **ladder[i])
            r, se, seconds = consider(knobs)
            if r - TUNING_MARGIN_SE * se >= target_recall:
                return knobs, r, i, seconds
        return None

    quantised = index.shards[0].backend.quantised
    refine = base.refine_factor
    found = walk(refine, range(len(ladder)))
    # Quantised backends: graph/cell misses are not repaired by re-ranking, code error is:
    # if the top of the ladder falls short, deepen the re-ranking there, then walk again.
    while found is None and quantised and refine < MAX_REFINE:
        refine = min(MAX_REFINE, refine * 2)
        if walk(refine, range(len(ladder) - 1, len(ladder))) is not None:
            found = walk(refine, range(len(ladder)))
    # ... and when the target was reached high up the ladder, deeper re-ranking may reach
    # it lower down: walk the cheaper steps at 2x, 4x ... and keep the fastest setting.
    if found is not None and quantised:
        options = [found]
        while options[-1][2] > 0 and refine < MAX_REFINE:
            refine = min(MAX_REFINE, refine * 2)
            cheaper = walk(refine, range(options[-1][2]))
            if cheaper is None:
                break
            options.append(cheaper)
        found = min(options, key=lambda o: o[3])
        if len(options) > 1:
            log.info("%s: %s", index.modality, "; ".join(
                f"{o[0].to_dict()} recall {o[1]:.4f} in {o[3]:.3f} s" for o in options))
    if found is not None:
        set_knobs(index, found[0])
        return Tuning(target_recall, found[1], k, len(queries), found[0].to_dict())
    assert best is not None
    log.warning("%s: target recall@%d %.3f not reached; best %.4f with %s", index.modality,
                k, target_recall, best[0], best[1])
    set_knobs(index, best[1])
    return Tuning(target_recall, best[0], k, len(queries), best[1].to_dict())
