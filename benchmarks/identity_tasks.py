"""Same-star retrieval tasks of the identity benchmark (``bench_identity.py``, issue 14):
synthetic stars observed twice per instrument, and exact retrieval measures on them.

Plain functions, numpy in and out; k-NN results follow the ``D, I`` convention.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

SNR_RANGE = (10.0, 100.0)
TOLERANCE = {"teff": 150.0, "logg": 0.3, "feh": 0.15}
"""Label agreement of a cross-modal neighbour with the query's true labels (K, dex)."""
K_NEIGHBOURS = 10
VISITS = ("a", "b")


# ----------------------------------------------------------------------------- visits

@dataclass
class VisitBatch:
    """One batch of synthetic stars, each observed twice per instrument.

    ``lamost_flux[v]`` etc. are the (n, npix) canonical-grid arrays of visit ``v`` (0 = A,
    1 = B); row ``i`` of every array is star ``i``; ``labels`` holds (n,) true labels.
    ``lamost_truth`` (only when asked for) is each star's noiseless LAMOST spectrum without
    any visit's systematics: the instrument's broadening and sampling, the realism
    correction and the star's flux scale, but no velocity residual, telluric residual or
    flux-calibration error.
    """

    labels: dict[str, np.ndarray]
    lamost_flux: tuple[np.ndarray, np.ndarray]
    lamost_ivar: tuple[np.ndarray, np.ndarray]
    lamost_snr: tuple[np.ndarray, np.ndarray]
    xp_flux: tuple[np.ndarray, np.ndarray]
    xp_ivar: tuple[np.ndarray, np.ndarray]
    lamost_truth: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.lamost_flux[0].shape[0])


def iter_visit_batches(n: int, seed: int, *, batch: int = 1000, rv_error_kms: float = 5.0,
                       with_truth: bool = False) -> Iterator[VisitBatch]:
    """Yield batches of ``n`` synthetic stars with two independent visits each, built as
    :func:`specsearch.synth.survey.generate_batch` builds a star (without artefacts).

    Batch ``b`` draws the star from ``SeedSequence([seed, b])`` and each visit from its own
    child sequence, so the two visits share the star and nothing else. ``with_truth`` adds
    :attr:`VisitBatch.lamost_truth` (the visits are the same either way).
    """
    from specsearch.synth.individuality import draw as draw_individuality
    from specsearch.synth.individuality import extinction_for
    from specsearch.synth.labels import resolve_fractions
    from specsearch.synth.lamost import lamost_operator, observe_lamost
    from specsearch.synth.mix import sample_labels
    from specsearch.synth.model import model_spectra
    from specsearch.synth.realism import load as load_realism
    from specsearch.synth.xp import observe_xp

    fractions = resolve_fractions(None, 1.0)
    for b, start in enumerate(range(0, n, batch)):
        m = min(batch, n - start)
        star_ss, *visit_ss = np.random.SeedSequence([seed, b]).spawn(1 + len(VISITS))
        rng = np.random.default_rng(star_ss)
        labels = sample_labels(rng, m, fractions)
        ind = draw_individuality(rng, labels.teff, labels.logg)
        extincted = (model_spectra(labels, ind) * 10.0 ** (-0.4 * labels.ebv[:, None]
                                                           * extinction_for(ind.r_v))
                     ).astype(np.float32)
        lam, xps = [], []
        for ss in visit_ss:
            vrng = np.random.default_rng(ss)
            xp = observe_xp(extincted, labels.mag_g, vrng, labels.teff)
            snr = vrng.uniform(*SNR_RANGE, m)
            lam.append(observe_lamost(extincted, xp.scale, labels.rv, snr, labels.mag_g,
                                      vrng, rv_error_kms=rv_error_kms, teff=labels.teff))
            xps.append(xp)
        cols = {k: np.asarray(getattr(labels, k), np.float64)
                for k in ("teff", "logg", "feh", "alpha_fe", "ebv", "rv", "mag_g")}
        cols["population"] = labels.population.astype(str)
        truth = None
        if with_truth:     # observe_lamost's noiseless flux before the visit's systematics
            truth = (np.asarray(lamost_operator() @ extincted.T, np.float32).T
                     * (xps[0].scale * 1e17).astype(np.float32)[:, None]
                     * load_realism()["lamost"].factor(labels.teff))
        yield VisitBatch(cols, tuple(v.flux for v in lam), tuple(v.ivar for v in lam),
                         tuple(v.snr for v in lam),
                         tuple(x.flux.astype(np.float32) for x in xps),
                         tuple(x.ivar.astype(np.float32) for x in xps), truth)


def xp_raw(flux: np.ndarray) -> np.ndarray:
    """The XP baseline vectors: sampled spectrum / its median, mean-subtracted, L2-normalised
    (the SED shape, independent of the star's brightness)."""
    v = np.nan_to_num(flux / np.nanmedian(flux, axis=1, keepdims=True))
    v -= v.mean(1, keepdims=True)
    return unit(v)


# ----------------------------------------------------------------------------- retrieval

def unit(v: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length (NaN rows, i.e. unusable spectra, become zero)."""
    v = np.nan_to_num(np.asarray(v, np.float32))
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def partner_ranks(query: np.ndarray, gallery: np.ndarray, *, block: int = 1024
                  ) -> np.ndarray:
    """(n,) rank (1 = top) of gallery row ``i`` among all gallery rows for query row ``i``,
    by inner product (pass :func:`unit` rows for cosine). Ties count against the partner,
    so a zero (unusable) query ranks last."""
    if query.shape != gallery.shape:
        raise ValueError(f"query {query.shape} and gallery {gallery.shape} must be row-paired")
    n = query.shape[0]
    ranks = np.empty(n, np.int64)
    for s in range(0, n, block):
        e = min(n, s + block)
        sim = query[s:e] @ gallery.T
        own = sim[np.arange(e - s), np.arange(s, e)]
        ranks[s:e] = (sim >= own[:, None]).sum(1)
    return ranks


def knn(query: np.ndarray, gallery: np.ndarray, k: int, *,
        exclude: np.ndarray | None = None, block: int = 1024
        ) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by inner product: ``D, I`` of shape (nq, k), best first.
    ``exclude``: (nq, m) gallery indices never returned for that query (-1: none)."""
    nq = query.shape[0]
    D = np.empty((nq, k), np.float32)
    I = np.empty((nq, k), np.int64)
    for s in range(0, nq, block):
        e = min(nq, s + block)
        sim = query[s:e] @ gallery.T
        if exclude is not None:
            rows = np.repeat(np.arange(e - s), exclude.shape[1])
            cols = exclude[s:e].ravel()
            keep = cols >= 0
            sim[rows[keep], cols[keep]] = -np.inf
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(sim, part, 1)
        order = np.argsort(-ps, axis=1, kind="stable")
        I[s:e] = np.take_along_axis(part, order, 1)
        D[s:e] = np.take_along_axis(ps, order, 1)
    return D, I


def reranked_knn(emb_q: np.ndarray, emb_g: np.ndarray, id_q: np.ndarray, id_g: np.ndarray,
                 window: int, *, exclude: np.ndarray | None = None, block: int = 1024
                 ) -> np.ndarray:
    """(nq, window) gallery indices as the search engine ranks a same-instrument query of an
    index with identity vectors (:mod:`specsearch.query.engine`): each query's embedding
    top-``window``, ordered by the mean of the embedding and identity inner products.
    Pass :func:`unit` rows."""
    _, I = knn(emb_q, emb_g, window, exclude=exclude, block=block)
    out = np.empty_like(I)
    for s in range(0, I.shape[0], block):
        e = min(I.shape[0], s + block)
        idx = I[s:e]
        score = 0.5 * (np.einsum("qd,qkd->qk", emb_q[s:e], emb_g[idx])
                       + np.einsum("qd,qkd->qk", id_q[s:e], id_g[idx]))
        out[s:e] = np.take_along_axis(idx, np.argsort(-score, axis=1, kind="stable"), 1)
    return out


def reranked_partner_ranks(emb_q: np.ndarray, emb_g: np.ndarray, id_q: np.ndarray,
                           id_g: np.ndarray, window: int) -> np.ndarray:
    """(n,) rank of gallery row ``i`` for query row ``i`` under :func:`reranked_knn`; a
    partner outside the embedding's window keeps its embedding rank (> window)."""
    order = reranked_knn(emb_q, emb_g, id_q, id_g, window)
    hit = order == np.arange(order.shape[0])[:, None]
    ranks = partner_ranks(emb_q, emb_g)
    found = hit.any(1)
    ranks[found] = hit[found].argmax(1) + 1
    return ranks


def rank_summary(ranks: np.ndarray) -> dict[str, float]:
    """top-1/5/10 fractions and median rank of a rank array."""
    r = np.asarray(ranks)
    return {"n": int(r.size), "top1": float(np.mean(r <= 1)), "top5": float(np.mean(r <= 5)),
            "top10": float(np.mean(r <= 10)), "median_rank": float(np.median(r))}


def snr_neighbour_rho(vectors: np.ndarray, snr: np.ndarray, partner: np.ndarray,
                      k: int = K_NEIGHBOURS, *, identity: np.ndarray | None = None,
                      window: int = 50) -> dict[str, float]:
    """Spearman rho between each row's S/N and the median S/N of its k nearest neighbours
    (inner product), excluding the row itself and ``partner[i]`` (its other visit). With
    ``identity`` (row-aligned unit identity vectors), the neighbours are the engine's
    re-rank of the embedding's top ``window`` (:func:`reranked_knn`)."""
    from scipy.stats import spearmanr

    n = vectors.shape[0]
    exclude = np.stack([np.arange(n), partner], axis=1)
    if identity is None:
        _, I = knn(vectors, vectors, k, exclude=exclude)
    else:
        I = reranked_knn(vectors, vectors, identity, identity, window, exclude=exclude)[:, :k]
    med = np.median(snr[I], axis=1)
    lo, hi = snr < 20, snr >= 80
    return {"n": int(n), "rho": float(spearmanr(snr, med).statistic),
            "neighbour_median_snr_query_snr_lt_20": float(np.median(med[lo])) if lo.any()
            else float("nan"),
            "neighbour_median_snr_query_snr_ge_80": float(np.median(med[hi])) if hi.any()
            else float("nan")}


def label_agreement(neighbours: np.ndarray, query_labels: dict[str, np.ndarray],
                    gallery_labels: dict[str, np.ndarray]) -> dict[str, float]:
    """Fraction of the neighbours (nq, k) whose true labels lie within :data:`TOLERANCE`
    of the query's, over queries with all labels defined (undefined neighbours miss)."""
    ok = np.ones(neighbours.shape, bool)
    defined = np.ones(neighbours.shape[0], bool)
    for name, tol in TOLERANCE.items():
        q, g = query_labels[name], gallery_labels[name][neighbours]
        ok &= np.abs(g - q[:, None]) <= tol     # NaN compares False
        defined &= np.isfinite(q)
    return {"n": int(defined.sum()), "fraction_within": float(ok[defined].mean())}


def cross_modal_synth(lam: tuple[np.ndarray, np.ndarray], xp: tuple[np.ndarray, np.ndarray],
                      labels: dict[str, np.ndarray]) -> dict[str, Any]:
    """Partner ranks and top-10 label agreement, LAMOST -> XP and XP -> LAMOST; ``lam`` and
    ``xp`` are (query, gallery) vectors of each side (the same array twice for cosine)."""
    out = {}
    for name, q, g in (("lamost_to_xp", lam[0], xp[1]), ("xp_to_lamost", xp[0], lam[1])):
        _, I = knn(q, g, K_NEIGHBOURS)
        out[name] = {**rank_summary(partner_ranks(q, g)),
                     "label_agreement_top10": label_agreement(I, labels, labels)}
    return out


def label_vectors(pred: np.ndarray, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(query, gallery) vectors of predicted labels whose inner product ranks like minus the
    Euclidean distance of (teff, logg, feh) in units of :data:`TOLERANCE`."""
    x = np.stack([pred[:, names.index(k)] / t for k, t in TOLERANCE.items()], 1)
    x = np.nan_to_num(x.astype(np.float64), nan=1e6)     # unusable rows: far from all
    q = np.hstack([x, np.ones((len(x), 1))])
    g = np.hstack([2.0 * x, -(x * x).sum(1, keepdims=True)])
    return q, g


def _params(pred: np.ndarray, err: np.ndarray, names: tuple[str, ...], i: int
            ) -> dict[str, tuple[float, float]]:
    """Row ``i``'s (value, uncertainty) of the :data:`TOLERANCE` labels."""
    return {k: (float(pred[i, names.index(k)]), float(err[i, names.index(k)]))
            for k in TOLERANCE}


def agreement_reranked(emb_q: np.ndarray, emb_g: np.ndarray, pred_q: np.ndarray,
                       err_q: np.ndarray, pred_g: np.ndarray, err_g: np.ndarray,
                       names: tuple[str, ...], labels: dict[str, np.ndarray], window: int
                       ) -> dict[str, Any]:
    """The engine's cross-modal re-rank (:mod:`specsearch.query.agreement`): each query's
    top ``window`` gallery rows by cosine, ordered by cosine + weight x log agreement of the
    heads' predictions (query row ``i``'s partner is gallery row ``i``). Partner ranks (a
    partner outside the window keeps its embedding rank) and the top-10's label agreement."""
    from specsearch.query import agreement as agree

    if window < K_NEIGHBOURS:
        raise ValueError(f"the re-rank window ({window}) must hold the top {K_NEIGHBOURS}")
    S, C = knn(emb_q, emb_g, window)
    top = np.empty((len(C), K_NEIGHBOURS), np.int64)
    ranks = partner_ranks(emb_q, emb_g)
    cols = [names.index(k) for k in TOLERANCE]
    for i in range(len(C)):
        params = {k: v for k, v in _params(pred_q, err_q, names, i).items()
                  if np.isfinite(v[0]) and np.isfinite(v[1]) and v[1] > 0}
        values = {k: pred_g[C[i], c] for k, c in zip(TOLERANCE, cols) if k in params}
        errors = {k: err_g[C[i], c] for k, c in zip(TOLERANCE, cols) if k in params}
        _, order = agree.rerank(S[i], C[i], params, values, errors)
        top[i] = order[:K_NEIGHBOURS]
        hit = np.flatnonzero(order == i)
        if hit.size:
            ranks[i] = hit[0] + 1
    return {**rank_summary(ranks), "label_agreement_top10": label_agreement(top, labels, labels)}


def agreement_ceiling(known: np.ndarray, pred: np.ndarray, err: np.ndarray,
                      labels: dict[str, np.ndarray], *, query_side: bool,
                      block: int = 200) -> dict[str, float]:
    """Top-10 label agreement of a searcher that ranks every gallery row by the probability
    that its true (TOLERANCE) labels lie within tolerance of the query's, given Gaussian
    errors. ``query_side``: the query is known by its predictions ``pred`` +- ``err`` and
    the gallery by its true labels ``known``; else the query by ``known`` and the gallery
    by its predictions. Either bounds a re-rank that reads the heads' predictions."""
    from scipy.special import ndtr

    tol = np.array(list(TOLERANCE.values()))
    n = len(known)
    top = np.empty((n, K_NEIGHBOURS), np.int64)
    for s in range(0, n, block):
        e = min(n, s + block)
        if query_side:
            d = known[None, :, :] - pred[s:e, None, :]
            sd = np.broadcast_to(err[s:e, None, :], d.shape)
        else:
            d = pred[None, :, :] - known[s:e, None, :]
            sd = np.broadcast_to(err[None, :, :], d.shape)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = ndtr((tol - d) / sd) - ndtr((-tol - d) / sd)
            score = np.nan_to_num(np.log(np.clip(p, 1e-300, 1.0)).sum(-1), nan=-1e9)
        top[s:e] = np.argsort(-score, axis=1, kind="stable")[:, :K_NEIGHBOURS]
    return label_agreement(top, labels, labels)
