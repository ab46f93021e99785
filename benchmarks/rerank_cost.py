"""Timing shared by the re-rank cost benchmarks (``bench_identity_search.py``,
``bench_agreement_search.py``): one query at a time, warm, the re-ranked search against the
same engine and queries without the re-rank."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def time_ms(fn: Callable[[int], object], queries: np.ndarray) -> np.ndarray:
    """Wall time (ms) of ``fn(query)`` for each query, one at a time."""
    out = []
    for q in queries:
        t0 = time.perf_counter()
        fn(int(q))
        out.append(time.perf_counter() - t0)
    return np.asarray(out) * 1e3


def cost_rows(search: Callable[[int, int, bool], object], queries: np.ndarray,
              ks: list[int], ranked_by: str) -> list[dict[str, float]]:
    """Per k: p50/p95 of ``search(query, k, rerank)`` with and without the re-rank (20
    warm-up queries each first), and their p50 ratio; checks that the re-ranked search
    says ``ranked_by``."""
    rows = []
    for k in ks:
        for flag in (True, False):
            time_ms(lambda s: search(s, k, flag), queries[:20])        # warm
        reranked = time_ms(lambda s: search(s, k, True), queries)
        plain = time_ms(lambda s: search(s, k, False), queries)
        got = search(int(queries[0]), k, True).query.get("ranked_by")
        assert got == ranked_by, f"expected ranked_by {ranked_by!r}, got {got!r}"
        rows.append({"k": k, "window": max(50, 5 * k),
                     "embedding_ms_p50": float(np.median(plain)),
                     "embedding_ms_p95": float(np.percentile(plain, 95)),
                     "reranked_ms_p50": float(np.median(reranked)),
                     "reranked_ms_p95": float(np.percentile(reranked, 95)),
                     "ratio_p50": float(np.median(reranked) / np.median(plain))})
    return rows


def print_rows(rows: list[dict[str, float]]) -> None:
    """The table of :func:`cost_rows`."""
    print(f"{'k':>5} {'window':>7} {'embedding p50/p95 ms':>22} {'re-ranked p50/p95 ms':>22} "
          f"{'ratio':>6}")
    for r in rows:
        print(f"{r['k']:>5} {r['window']:>7} "
              f"{r['embedding_ms_p50']:>10.3f} / {r['embedding_ms_p95']:<9.3f} "
              f"{r['reranked_ms_p50']:>10.3f} / {r['reranked_ms_p95']:<9.3f} "
              f"{r['ratio_p50']:>6.2f}")
