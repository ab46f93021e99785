"""How well could any LAMOST -> Gaia XP partner search do? Ceilings for issue 14.

The cross-modal partner task asks a LAMOST spectrum to pick its own star's XP spectrum
among ``n``. What bounds it is how much of the XP spectrum the LAMOST side can know and how
noisy the XP gallery is. Four idealised searchers set the ceiling, each told the star's
*noiseless* XP coefficients (the same DR3 instrument model, realism correction and
extinction as the survey) up to what a LAMOST spectrum leaves open:

* ``exact``: the XP spectrum up to its overall scale (the brightness; the embedding drops it);
* ``sed_known``: up to scale, and a slope and curvature of the SED known to the accuracy of
  the synthetic LAMOST flux calibration (1 sigma 3% / 2% in ``x = (lambda - 6400 A) /
  2700 A`` and ``x^2 - 0.3``, :func:`specsearch.synth.lamost.observe_lamost`): what a LAMOST
  input that keeps its SED could know at best;
* ``sed_real``: as ``sed_known`` at the flux-calibration scatter of real LAMOST
  (``REAL_CALIBRATION_SIGMA``, measured on its repeat visits): an SED-keeping input on real
  spectra at best;
* ``sed_free``: up to scale, slope and curvature, all free: what a continuum-normalised
  LAMOST spectrum (the shipped model's input) could know at best.

Each scores gallery spectrum ``j`` for query star ``i`` by the likelihood ratio
``p(y_j | template_i) / p(y_j)`` (the marginal over the ``n`` templates, so that a noisy
gallery spectrum, which fits every template, is not preferred: ranking by chi-square alone
picks faint spectra for bright queries), with the XP coefficient covariance of the noise
model (errors x correlations) and the template's free parameters profiled out. The
embedding is scored on the same stars (cosine, the first visit of each star), so the rows
read as "fraction of the ceiling reached". The ceilings are upper bounds: a real LAMOST
spectrum (S/N 10-100) pins the XP spectrum down less well than "exactly". Cost:
O(n^2 x 110^2); n = 2000 takes ~15 s.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from identity_tasks import SNR_RANGE, partner_ranks, rank_summary, unit

from specsearch.preprocess import TELLURIC_BANDS, band_mask

CALIBRATION_SIGMA = (0.03, 0.02)
"""1-sigma slope and curvature of the synthetic LAMOST flux calibration (see the doc)."""
REAL_CALIBRATION_SIGMA = (0.11, 0.03)
"""The same for real LAMOST, measured on its repeat visits: between two visits of one star
(16 DR10 + 3 DR8 pairs in ../shared) the fitted log SED slope differs by median |0.048| dex
and the curvature by |0.011-0.024| dex, against 0.0126 / 0.0098 between two visits of the
synthetic survey (whose 3% / 2% they scale)."""
G_BINS = ((0.0, 14.0), (14.0, 16.0), (16.0, 17.0), (17.0, 99.0))
BATCH = 1000


def _stars(model, n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` survey-like stars: noiseless XP templates (n, 3, 110) for the SED family
    (1, x, x^2 - 0.3), one noisy XP observation (coefficients + errors), G, and the
    embeddings of one LAMOST and one XP visit."""
    from specsearch.synth.grid import model_grid
    from specsearch.synth.individuality import draw as draw_individuality
    from specsearch.synth.individuality import extinction_for
    from specsearch.synth.labels import resolve_fractions
    from specsearch.synth.lamost import observe_lamost
    from specsearch.synth.mix import sample_labels
    from specsearch.synth.model import model_spectra
    from specsearch.synth.xp import noiseless_coefficients, observe_xp

    x = (model_grid().wavelength - 6400.0) / 2700.0
    family = (np.ones_like(x), 2.0 + x, 2.0 + x * x - 0.3)   # positive: G flux stays > 0
    parts: dict[str, list[np.ndarray]] = {}
    for b, start in enumerate(range(0, n, BATCH)):
        m = min(BATCH, n - start)
        star_ss, visit_ss = np.random.SeedSequence([seed, b]).spawn(2)
        rng = np.random.default_rng(star_ss)
        labels = sample_labels(rng, m, resolve_fractions(None, 1.0))
        ind = draw_individuality(rng, labels.teff, labels.logg)
        ext = (model_spectra(labels, ind) * 10.0 ** (-0.4 * labels.ebv[:, None]
                                                     * extinction_for(ind.r_v))
               ).astype(np.float32)
        # noiseless_coefficients scales each input to G; undo it to get the linear
        # projection of each family member, then put all on the star's own scale
        lin = []
        for f in family:
            bp, rp, sc = noiseless_coefficients(ext * f[None, :].astype(np.float32),
                                                labels.mag_g, labels.teff)
            lin.append(np.c_[bp, rp] / sc[:, None])
        s0 = noiseless_coefficients(ext, labels.mag_g, labels.teff)[2][:, None]
        templates = np.stack([lin[0], lin[1] - 2.0 * lin[0], lin[2] - 2.0 * lin[0]], 1)
        vrng = np.random.default_rng(visit_ss)
        xp = observe_xp(ext, labels.mag_g, vrng, labels.teff)
        lam = observe_lamost(ext, xp.scale, labels.rv, vrng.uniform(*SNR_RANGE, m),
                             labels.mag_g, vrng, teff=labels.teff)
        for key, value in (
                ("templates", templates * s0[:, :, None]),
                ("coefs", np.c_[xp.bp_coefficients, xp.rp_coefficients]),
                ("errors", np.c_[xp.bp_coefficient_errors, xp.rp_coefficient_errors]),
                ("mag_g", labels.mag_g),
                ("emb_lamost", model.embed_numpy("lamost", lam.flux, lam.ivar).embedding),
                ("emb_xp", model.embed_numpy("xp", xp.flux, xp.ivar).embedding)):
            parts.setdefault(key, []).append(np.asarray(value))
    return {k: np.concatenate(v) for k, v in parts.items()}


def _log_likelihoods(stars: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """(n, n) log-likelihood (up to a per-gallery constant) of gallery j under template i,
    for each searcher."""
    from specsearch.synth.xp import load_noise_model

    noise = load_noise_model()
    inv_chol = [np.linalg.inv(noise.chol[band]) for band in ("bp", "rp")]

    def whiten(v: np.ndarray, err: np.ndarray) -> np.ndarray:
        out = np.empty_like(v)
        for k, (lo, hi) in enumerate(((0, 55), (55, 110))):
            out[..., lo:hi] = (v[..., lo:hi] / err[lo:hi]) @ inv_chol[k].T
        return out

    n = len(stars["coefs"])
    penalties = {k: np.diag([0.0, *(1.0 / np.square(sigma))])
                 for k, sigma in (("sed_known", CALIBRATION_SIGMA),
                                  ("sed_real", REAL_CALIBRATION_SIGMA))}
    out = {k: np.empty((n, n)) for k in ("exact", "sed_known", "sed_real", "sed_free")}
    for j in range(n):
        u = whiten(stars["coefs"][j], stars["errors"][j])
        v = whiten(stars["templates"], stars["errors"][j])          # (n, 3, 110)
        gram = np.einsum("nkp,nlp->nkl", v, v)
        h = v @ u
        uu = u @ u
        out["exact"][:, j] = uu - h[:, 0] ** 2 / gram[:, 0, 0]
        sol = np.linalg.solve(gram, h[..., None])[..., 0]
        out["sed_free"][:, j] = uu - (sol * h).sum(1)
        # the calibration prior is on slope/curvature relative to the scale: penalise with
        # the scale fitted alone
        a2 = (h[:, 0] / gram[:, 0, 0]) ** 2
        for key, penalty in penalties.items():
            sol = np.linalg.solve(gram + a2[:, None, None] * penalty, h[..., None])[..., 0]
            out[key][:, j] = uu - (sol * h).sum(1)
    return {k: -0.5 * v for k, v in out.items()}


def _ratio_ranks(ll: np.ndarray) -> np.ndarray:
    """Rank of each query's own gallery spectrum by the likelihood ratio (1 = top)."""
    from scipy.special import logsumexp

    score = ll - logsumexp(ll, axis=0, keepdims=True)
    own = np.diag(score)
    return (score > own[:, None]).sum(1) + 1


def xp_partner_ceilings(model, n: int = 2000, seed: int = 27_182) -> dict[str, Any]:
    """Embedding vs the four ceilings on the LAMOST -> XP partner task among ``n``."""
    stars = _stars(model, n, seed)
    ranks = {"embedding": partner_ranks(unit(stars["emb_lamost"]), unit(stars["emb_xp"]))}
    ranks |= {k: _ratio_ranks(ll) for k, ll in _log_likelihoods(stars).items()}
    g = stars["mag_g"]
    return {"n_stars": n, "seed": seed, "calibration_sigma": list(CALIBRATION_SIGMA),
            "real_calibration_sigma": list(REAL_CALIBRATION_SIGMA),
            **{k: rank_summary(r) for k, r in ranks.items()},
            "top1_by_g": {f"{lo:g}-{hi:g}": {k: float(np.mean(r[sel] == 1))
                                             for k, r in ranks.items()} | {"n": int(sel.sum())}
                          for lo, hi in G_BINS if (sel := (g >= lo) & (g < hi)).any()}}


# ----------------------------------------------------------------------------- other visit

TELLURIC_BANDS_A = TELLURIC_BANDS
"""Telluric absorption bands (A) the systematics-aware searcher leaves out
(:data:`specsearch.preprocess.TELLURIC_BANDS`: O2 B and A bands, the water bands,
everything redward of 8900 A)."""
VISIT_TOP = 32
"""Stars kept in each spectrum's posterior by the Bayes searcher (the rest weigh ~0)."""


def _scale_free_loglik(q: np.ndarray, w: np.ndarray, t: np.ndarray, t2: np.ndarray
                       ) -> np.ndarray:
    """(b, n) log-likelihood (up to a per-query constant) of noisy spectra ``q`` (b, npix)
    with inverse variances ``w`` under each noiseless spectrum ``t`` (n, npix) times a free
    positive scale: the chi-square with the best scale is sum w q^2 - cross^2 / norm."""
    cross = (w * q) @ t.T
    norm = w @ t2.T
    return 0.5 * np.where((cross > 0) & (norm > 0), cross * cross / np.maximum(norm, 1e-300),
                          0.0)


def _poly_loglik(q: np.ndarray, w: np.ndarray, t: np.ndarray, t2: np.ndarray,
                 x: np.ndarray) -> np.ndarray:
    """As :func:`_scale_free_loglik` with a free quadratic multiplicative continuum
    (1, x, x^2) in place of the scale: a flux-calibration error is fitted out."""
    basis = (np.ones_like(x), x, x * x)
    k = len(basis)
    gram = np.empty((q.shape[0], t.shape[0], k, k))
    rhs = np.empty((q.shape[0], t.shape[0], k))
    for a in range(k):
        rhs[..., a] = (w * q * basis[a]) @ t.T
        for b in range(a, k):
            gram[..., a, b] = gram[..., b, a] = (w * basis[a] * basis[b]) @ t2.T
    gram += np.eye(k) * (1e-9 * gram[..., :1, :1] + 1e-300)
    sol = np.linalg.solve(gram, rhs[..., None])[..., 0]
    return 0.5 * (sol * rhs).sum(-1)


def _own_rank(score: np.ndarray, start: int) -> np.ndarray:
    """Rank of column ``start + i`` in row ``i`` (ties count against it)."""
    rows = np.arange(score.shape[0])
    own = score[rows, start + rows]
    return (score >= own[:, None]).sum(1)


def visit_ceiling(truth: np.ndarray, flux: np.ndarray, ivar: np.ndarray, ivar_b: np.ndarray,
                  wavelength: np.ndarray, *, seed: int, block: int = 250
                  ) -> dict[str, np.ndarray]:
    """How well could any searcher find a star's other LAMOST visit among ``n``?

    The task: a noisy query visit, and a gallery of every star's other noisy visit, each
    visit with its own systematics (velocity residual, telluric residual, flux
    calibration). Three searchers that know every star's systematics-free noiseless
    spectrum (``truth``, (n, npix)) bound what the spectra hold:

    * ``noise_only``: the query is the star's ``truth`` plus Gaussian noise at the query
      visit's ``ivar`` (its masked pixels too), the gallery is the ``truth`` spectra, and
      the searcher takes the highest likelihood (smallest chi-square, free positive scale:
      the embedding drops the brightness). Any searcher of the real task could be run on
      this easier one (add the gallery's noise and both sides' systematics, drawn without
      regard to which star is which), so none does better than this one does here.
    * ``bayes_noisy``: both sides noisy (the query as above; the gallery each star's
      ``truth`` plus noise at its other visit's ``ivar_b``) and no systematics; each
      spectrum's posterior over which of the ``n`` stars it is (scale-free likelihood, the
      ``VISIT_TOP`` best kept), and gallery spectrum ``j`` scored by the overlap of its
      posterior with the query's (the probability that both are the same star): the best
      searcher of the task's noise when the stars' spectra are known.
    * ``observed_poly``: the actual query visit (``flux``, with its systematics) against
      the ``truth`` spectra, with a free quadratic continuum in place of the scale and the
      telluric bands (``TELLURIC_BANDS_A``) left out: what modelling the visit's
      systematics leaves of them.

    None reads an embedding. Returns (n,) ranks (1 = top; ties count against the star).
    Cost at n = 10,000 on 2 cores: ~2 min (float64 products over all pairs).
    """
    import scipy.sparse as sparse

    rng = np.random.default_rng(seed)
    t = np.asarray(truth, np.float64)
    t2 = t * t
    n = t.shape[0]
    x = (np.asarray(wavelength, np.float64) - 6400.0) / 2700.0
    telluric = band_mask(wavelength, TELLURIC_BANDS_A)

    def noisy(s: int, e: int, w: np.ndarray) -> np.ndarray:
        sigma = np.where(w > 0, 1.0 / np.sqrt(np.maximum(w, 1e-300)), 0.0)
        return t[s:e] + sigma * rng.standard_normal(w.shape)

    ranks = {k: np.empty(n, np.int64) for k in ("noise_only", "bayes_noisy", "observed_poly")}
    posts = {"a": ([], [], []), "b": ([], [], [])}
    for s in range(0, n, block):
        e = min(n, s + block)
        wa = np.asarray(ivar[s:e], np.float64)
        ll = _scale_free_loglik(noisy(s, e, wa), wa, t, t2)
        ranks["noise_only"][s:e] = _own_rank(ll, s)
        for side, w, lik in (("a", wa, ll), ("b", np.asarray(ivar_b[s:e], np.float64), None)):
            if lik is None:
                lik = _scale_free_loglik(noisy(s, e, w), w, t, t2)
            top = np.argpartition(-lik, VISIT_TOP, axis=1)[:, :VISIT_TOP]
            lt = np.take_along_axis(lik, top, 1)
            p = np.exp(lt - lt.max(1, keepdims=True))
            rows, cols, vals = posts[side]
            rows.append(np.repeat(np.arange(s, e), VISIT_TOP))
            cols.append(top.ravel())
            vals.append((p / p.sum(1, keepdims=True)).ravel())
        wm = wa * ~telluric
        ranks["observed_poly"][s:e] = _own_rank(
            _poly_loglik(np.asarray(flux[s:e], np.float64), wm, t, t2, x), s)
    pa, pb = (sparse.csr_matrix((np.concatenate(v), (np.concatenate(r), np.concatenate(c))),
                                shape=(n, n)) for r, c, v in posts.values())
    overlap = (pa @ pb.T).tocsr()
    for i in range(n):
        row = overlap.getrow(i)
        own = overlap[i, i]
        ranks["bayes_noisy"][i] = (row.data >= own).sum() if own > 0 else n
    return ranks
