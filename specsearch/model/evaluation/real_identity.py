"""Identity rows of the real-data report: same-star retrieval of real repeat visits
(:func:`identity`), each real LAMOST visit's own Gaia XP spectrum (:func:`cross_modal`), and
the raw-pixel baseline both are measured against (:func:`raw_pixels`).

Identity tasks use real repeat visits, which are always ``test`` stars, against a pool of
every real LAMOST spectrum of the folder, with the raw-pixel baseline of the same run
(cosine of continuum-normalised pixels, 4000-5600 A).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from specsearch.model.training.real_sets import RealSet
from specsearch.preprocess import grid_for, prepare_model_input


def raw_pixels(flux: np.ndarray, ivar: np.ndarray, lo: float = 4000.0, hi: float = 5600.0
               ) -> np.ndarray:
    """The raw-pixel baseline vectors: continuum-normalised line depth in [lo, hi] A, masked
    pixels 0, L2-normalised rows."""
    wave = grid_for("lamost").wavelength
    mi = prepare_model_input(flux, ivar, "lamost")
    sel = (wave >= lo) & (wave < hi)
    flux_px, weight_px = mi.flux[:, :wave.size], mi.weight[:, :wave.size]   # no SED columns
    v = np.where(weight_px[:, sel] > 0, flux_px[:, sel] - 1.0, 0.0)
    v -= v.mean(1, keepdims=True)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def same_star_retrieval(vectors: np.ndarray, star: np.ndarray, queries: np.ndarray
                        ) -> dict[str, Any]:
    """For each query row with another spectrum of its star in the pool, the rank of the
    best other visit (1 = top) among all other spectra of the pool (cosine)."""
    usable = np.isfinite(vectors).all(1) & (np.abs(np.nan_to_num(vectors)).sum(1) > 0)
    v = np.nan_to_num(vectors.astype(np.float32))
    ranks = []
    for i in np.flatnonzero(queries):
        if not usable[i]:          # an unusable query ranks its partner last
            ranks.append(len(star))
            continue
        others = np.flatnonzero((star == star[i]) & (np.arange(len(star)) != i))
        if not others.size:
            continue
        sim = v @ v[i]
        sim[i] = -np.inf
        best = sim[others].max()
        ranks.append(int((sim > best).sum()) + 1)
    r = np.array(ranks)
    if not r.size:
        return {"n": 0}
    return {"n": int(r.size), "top1": float(np.mean(r <= 1)), "top5": float(np.mean(r <= 5)),
            "median_rank": float(np.median(r))}


def identity(model, sets: dict[str, RealSet]) -> dict[str, Any]:
    """Real repeat visits among every real LAMOST spectrum: embedding vs raw pixels."""
    lam = [s for k, s in sets.items() if s.modality == "lamost" and k != "miles"]
    if not lam:
        return {"skipped": "no real LAMOST spectra"}
    flux = np.concatenate([s.flux for s in lam])
    ivar = np.concatenate([s.ivar for s in lam])
    star = np.concatenate([np.char.add(f"{s.name.split('_')[0]}:", s.star.astype(str))
                           for s in lam])
    origin = np.concatenate([np.full(len(s), s.name) for s in lam])
    batch = model.embed_numpy("lamost", flux, ivar)
    raw = raw_pixels(flux, ivar)
    vectors = {"embedding": batch.embedding, "raw_pixels": raw}
    if model.has_identity("lamost"):
        # the model's identity vectors, and their cosine averaged with the embedding's
        ident = model.identity_numpy("lamost", flux, ivar)
        vectors["identity"] = ident
        vectors["embedding+identity"] = np.c_[batch.embedding, ident] / np.sqrt(2.0)
    out: dict[str, Any] = {"pool": int(len(star)), "split": "test (repeat-visit stars)"}
    for name in ("lamost_dr10", "lamost_dr8"):
        q = origin == name
        if not q.any():
            continue
        out[name] = {k: same_star_retrieval(v, star, q) for k, v in vectors.items()}
    return out


def cross_modal(model, sets: dict[str, RealSet]) -> dict[str, Any]:
    """Each real DR8 LAMOST visit's own Gaia XP spectrum among the real XP sky patch."""
    lam, xp = sets.get("lamost_dr8"), sets.get("xp_patch")
    if lam is None or xp is None:
        return {"skipped": "no DR8 visits with real XP"}
    bl = model.embed_numpy("lamost", lam.flux, lam.ivar)
    bx = model.embed_numpy("xp", xp.flux, xp.ivar)
    ranks = []
    xsid = xp.meta["source_id"]
    for i, s in enumerate(lam.meta["source_id"]):
        hit = np.flatnonzero(xsid == s)
        if not hit.size or not bl.good[i] or not bx.good[hit[0]]:
            continue
        sims = np.where(bx.good, bx.embedding @ bl.embedding[i], -np.inf)
        ranks.append(int((sims > sims[hit[0]]).sum()) + 1)
    per_star, engine = {}, {}
    for s in np.unique(lam.meta["source_id"]):
        hit = np.flatnonzero(xsid == s)
        k = (lam.meta["source_id"] == s) & bl.good
        if hit.size and k.any():   # the star's visits averaged: one query per star
            q = bl.embedding[k].mean(0)
            q /= np.linalg.norm(q)
            sims = np.where(bx.good, bx.embedding @ q, -np.inf)
            per_star[str(int(s))] = int((sims > sims[hit[0]]).sum()) + 1
            engine[str(int(s))] = _engine_rank(model, bl, bx, k, hit[0], lam.snr)
    return {"xp_pool": int(bx.good.sum()), "partner_rank_per_visit": ranks,
            "partner_rank_per_star": per_star, "partner_rank_per_star_engine": engine}


def _engine_rank(model, bl, bx, visits: np.ndarray, partner: int,
                 snr: np.ndarray | None) -> int:
    """The rank of a star's own XP spectrum as the search engine returns it for a search by
    the star's source_id: its highest-S/N visit's embedding and predictions, the XP
    embedding's top :func:`~specsearch.query.identity.rerank_window` re-ranked by parameter
    agreement (:mod:`specsearch.query.agreement`); outside that window, the cosine rank."""
    from specsearch.index.reader import highest_snr
    from specsearch.query import agreement as agree
    from specsearch.query.identity import rerank_window

    rows = np.flatnonzero(visits)
    best = rows[highest_snr(snr[rows])] if snr is not None else rows[0]
    sims = np.where(bx.good, bx.embedding @ bl.embedding[best], -np.inf)
    rank = int((sims > sims[partner]).sum()) + 1
    window = np.argsort(-sims, kind="stable")[:rerank_window(10, len(sims))]
    names = list(model.label_names)
    params = {n: (float(bl.predictions[best, names.index(n)]),
                  float(bl.uncertainties[best, names.index(n)]))
              for n in agree.TOLERANCE if n in names}
    labels = [n for n in params if np.isfinite(params[n][0]) and params[n][1] > 0]
    if partner not in window or not labels:
        return rank
    _, order = agree.rerank(
        sims[window], window, {n: params[n] for n in labels},
        {n: bx.predictions[window, names.index(n)] for n in labels},
        {n: bx.uncertainties[window, names.index(n)] for n in labels})
    return int(np.flatnonzero(order == partner)[0]) + 1
