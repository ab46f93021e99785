"""Single- and two-pixel spikes (cosmic rays, hot pixels): found by their shape.

A reduction that leaves cosmic rays in hands the model pixels that no star makes, and it
reads them as the star: eight raised pixels in a real DR10 spectrum (0.2%) widen the
[Fe/H] scatter 1.7x at twice the stated uncertainty (BENCHMARKS.md, "Cosmic rays left
in"). What tells a spike from an emission line is its width. Anything the instrument
recorded through its optics is at least as wide as the line spread, which a spectrum
sampled at the Nyquist rate or finer spreads over >= 2 pixels: the brighter neighbour of
a line's peak pixel keeps >= 50% of the peak's height at any sub-pixel phase, and >= 30%
down to a FWHM of 1.52 pixels. A particle hit is one pixel, its neighbours at the
continuum. So a pixel is a spike when:

* it departs from the local continuum (the good pixels 2-4 away on either side) by
  ``height``, and its neighbours depart by less than :data:`SIDE_FRACTION` x ``height``
  (the shape);
* it departs from the mean of its two neighbours by > 0.7 ``height``, at ``sigma`` times
  the noise of that difference (the significance);
* ``height`` is at least :data:`SPIKE_REL` of the continuum: at S/N ~500 a 4% wiggle is
  "significant" but no data problem.

:func:`find_spikes` is that test over batches of spectra with the ring's mean as the
continuum; the artefact screening (:mod:`specsearch.anomaly.artefacts`) counts its spikes.
:func:`mask_spikes`, which :func:`~specsearch.preprocess.to_canonical_grid` runs on every
optical spectrum's own pixels, is stricter where a mask must be: the continuum is the
ring's *median* (a wild pixel in the ring does not move it) from two good pixels at least
on either side, a spike departs by :data:`MASK_REL` of it, and the significance is
:data:`MASK_SIGMA`; and it masks raised pixels only (a particle or a hot pixel adds
charge; a one-pixel dip may be an unresolved absorption line of a spectrum sampled coarser
than the Nyquist rate that states no resolution, and a pipeline flags its own dead
pixels). A neighbour that departs either way counts against a spike: between two
absorption lines the continuum's peak is a narrow rise too, so a spike beside a line is
left in rather than a star's pixel masked. It also masks a hit that lands on two pixels:
a pair that rises together by :data:`PAIR_REL` of the continuum while neither pixel
beside it departs by :data:`PAIR_SIDE_FRACTION` of the pair's weaker pixel (a line
centred between two pixels keeps more there down to a FWHM of 1.71 pixels). Wider hits
are left alone: at three pixels a particle and a Nyquist-sampled line cannot be told
apart by shape.
"""

from __future__ import annotations

import numpy as np

SPIKE_REL = 0.2
"""A spike must depart from the continuum by at least this fraction of it."""
SIDE_FRACTION = 0.3
"""A spike's neighbours depart from the continuum by less than this fraction of the
spike's own departure (a line of FWHM >= 1.52 pixels keeps more at any phase)."""
PAIR_SIDE_FRACTION = 0.15
"""Neither pixel beside a two-pixel spike departs from the continuum by this fraction of
the pair's weaker pixel (a line of FWHM >= 1.71 pixels keeps more)."""
MASK_REL = 0.3
""":func:`mask_spikes`' :data:`SPIKE_REL`: a masked spike departs from the continuum by at
least this fraction of it (between two deep absorption lines the continuum's peak pixel
can stand 0.2-0.27 above a ring read inside the lines, at FWHM 1.8-2 pixels)."""
PAIR_REL = 0.5
"""Each pixel of a masked two-pixel spike rises above the continuum by at least this
fraction of it (a two-pixel gap between absorption lines rises up to ~0.25)."""
MASK_SIGMA = 8.0
"""Significance at which :func:`mask_spikes` masks a spike (a noise pixel that also passes
the shape and size tests at 8 sigma is rarer than one in 10^12)."""
MASK_PASSES = 3
"""Passes of :func:`mask_spikes`: a spike in another's continuum ring can hide it until
the first is masked."""
_SINGLE_RING = np.array([-4, -3, -2, 2, 3, 4])
_PAIR_RING = np.array([-4, -3, -2, 3, 4, 5])        # around the pair (i, i + 1)


def ring_baseline(flux: np.ndarray, good: np.ndarray, inner: int, outer: int) -> np.ndarray:
    """(B, n) mean of the good pixels ``inner..outer`` pixels away on both sides of each
    pixel: a local continuum that a feature narrower than ``inner`` pixels does not touch
    (O(n) with cumulative sums; 0 where no good pixel is in the ring)."""
    b, n = flux.shape
    fz = np.where(good, flux, 0.0)
    cf = np.concatenate([np.zeros((b, 1)), np.cumsum(fz, axis=1)], axis=1)
    cg = np.concatenate([np.zeros((b, 1)), np.cumsum(good, axis=1)], axis=1)
    i = np.arange(n)

    def seg(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.clip(lo, 0, n), np.clip(hi, 0, n)
        return cf[:, hi] - cf[:, lo], cg[:, hi] - cg[:, lo]

    fl, gl = seg(i - outer, i - inner + 1)
    fr, gr = seg(i + inner, i + outer + 1)
    cnt = gl + gr
    return np.where(cnt > 0, (fl + fr) / np.maximum(cnt, 1), 0.0)


def find_spikes(flux: np.ndarray, ivar: np.ndarray, good: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Single-pixel spike candidates of (B, n) (or (n,)) spectra, the ring's mean as the
    continuum (module docstring; the artefact screening's count).

    Args:
        flux, ivar: the spectra, any pixel sampling (native or a canonical grid).
        good: pixels to read (default: positive, finite ivar and finite flux).
    Returns:
        (spike, sigma), both shaped like ``flux``: whether a good pixel has a spike's shape
        and size, and the significance of its departure from its neighbours' mean (0 at
        the two end pixels and where a pixel or a neighbour is bad). A caller picks its
        own significance: ``spike & (sigma > s)``.
    """
    single = np.ndim(flux) == 1
    f, iv, good = _as_rows(flux, ivar, good)
    cont = ring_baseline(f, good, 2, 4).astype(np.float32)
    f32 = f.astype(np.float32)
    var = np.where(good, 1.0 / np.where(good, iv, 1.0), np.inf).astype(np.float32)
    mid = f32[:, 1:-1]
    d = mid - 0.5 * (f32[:, :-2] + f32[:, 2:])
    sd = np.sqrt(var[:, 1:-1] + 0.25 * (var[:, :-2] + var[:, 2:]))
    inner_sig = np.abs(d) / sd                       # 0 where a pixel is bad (sd = inf)
    height = np.abs(mid - cont[:, 1:-1])
    side = np.maximum(np.abs(f32[:, :-2] - cont[:, :-2]), np.abs(f32[:, 2:] - cont[:, 2:]))
    inner = (side < SIDE_FRACTION * height) & (np.abs(d) > 0.7 * height) \
        & (height > SPIKE_REL * np.abs(cont[:, 1:-1])) & (inner_sig > 0)
    spike = np.zeros(f.shape, bool)
    sig = np.zeros(f.shape, np.float32)
    spike[:, 1:-1] = inner
    sig[:, 1:-1] = inner_sig
    return (spike[0], sig[0]) if single else (spike, sig)


def mask_spikes(flux: np.ndarray, ivar: np.ndarray, *, sigma: float = MASK_SIGMA,
                passes: int = MASK_PASSES) -> tuple[np.ndarray, np.ndarray]:
    """``ivar`` with the one- and two-pixel spikes of ``flux`` set to 0 (the strict test
    of the module docstring), looked for again with those masked, up to ``passes`` times.

    Args:
        flux, ivar: (n,) or (B, n) spectra on their own pixels.
        sigma: the significance a spike needs.
    Returns:
        ``(ivar, masked)``: the inverse variance (the input itself where nothing was
        masked, else a copy of its shape and dtype) and the boolean mask of the pixels
        masked.
    """
    f, iv, good = _as_rows(flux, ivar, None)
    masked = np.zeros(f.shape, bool)
    for row in range(f.shape[0]):
        g = good[row].copy()
        for _ in range(passes):
            hit = _strict_spikes(f[row], iv[row], g, sigma)
            if not hit.any():
                break
            masked[row] |= hit
            g &= ~hit
    if not masked.any():
        return ivar, masked.reshape(np.shape(flux))
    out = np.where(masked.reshape(np.shape(ivar)), 0, ivar)
    return out.astype(np.asarray(ivar).dtype, copy=False), masked.reshape(np.shape(flux))


def _as_rows(flux: np.ndarray, ivar: np.ndarray, good: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    iv = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
    if good is None:
        with np.errstate(invalid="ignore"):
            good = (iv > 0) & np.isfinite(f) & np.isfinite(iv)
    good = np.atleast_2d(good)
    return np.where(good, f, 0.0), iv, good


def _ring_median(f: np.ndarray, good: np.ndarray, at: np.ndarray, offsets: np.ndarray
                 ) -> np.ndarray:
    """Median of the good pixels at ``at + offsets`` for each index in ``at``; NaN where
    fewer than two good pixels lie on either side."""
    n = f.size
    idx = at[:, None] + offsets[None, :]
    ok = (idx >= 0) & (idx < n)
    idx = np.clip(idx, 0, n - 1)
    ok &= good[idx]
    half = offsets.size // 2
    enough = (ok[:, :half].sum(1) >= 2) & (ok[:, half:].sum(1) >= 2)
    vals = np.sort(np.where(ok, f[idx], np.inf), axis=1)
    cnt = ok.sum(1)
    lo = np.take_along_axis(vals, np.maximum((cnt - 1) // 2, 0)[:, None], 1)[:, 0]
    hi = np.take_along_axis(vals, np.minimum(cnt // 2, offsets.size - 1)[:, None], 1)[:, 0]
    return np.where(enough, 0.5 * (lo + hi), np.nan)


def _strict_spikes(f: np.ndarray, ivar: np.ndarray, good: np.ndarray, sigma: float
                   ) -> np.ndarray:
    """One pass of :func:`mask_spikes` over one spectrum: (n,) True on its spikes."""
    n = f.size
    out = np.zeros(n, bool)
    if n < 12:
        return out
    var = np.where(good, 1.0 / np.where(good, ivar, 1.0), np.inf)
    # Significance first (cheap, every pixel); the median continuum only where it passes.
    d = f[1:-1] - 0.5 * (f[:-2] + f[2:])
    sd = np.sqrt(var[1:-1] + 0.25 * (var[:-2] + var[2:]))
    with np.errstate(invalid="ignore"):
        single = np.flatnonzero(d > sigma * sd) + 1        # raised pixels only
        # a pair's summed rise over the pixels beside it is >= 0.85 of its rise over the
        # continuum when those stay within PAIR_SIDE_FRACTION of its weaker pixel
        rise = f[1:-2] + f[2:-1] - f[:-3] - f[3:]
        pair = np.flatnonzero(rise > 0.85 * sigma * np.sqrt(var[1:-2] + var[2:-1])) + 1
    if single.size:
        at = np.concatenate([single - 1, single, single + 1])
        cont = _ring_median(f, good, at, _SINGLE_RING).reshape(3, -1)
        dep = f[at].reshape(3, -1) - cont
        height = dep[1]
        side = np.maximum(np.abs(dep[0]), np.abs(dep[2]))
        with np.errstate(invalid="ignore"):
            hit = ((height > 0) & (side < SIDE_FRACTION * height)
                   & (d[single - 1] > 0.7 * height)
                   & (height > MASK_REL * np.abs(cont[1])) & np.isfinite(cont).all(0))
        out[single[hit]] = True
    if pair.size:
        at = np.concatenate([pair - 1, pair, pair + 1, pair + 2])
        cont = _ring_median(f, good, pair, _PAIR_RING)
        dep = f[at].reshape(4, -1) - cont[None, :]
        weaker = np.minimum(dep[1], dep[2])
        sig = (dep[1] + dep[2]) / np.sqrt(var[pair] + var[pair + 1])
        with np.errstate(invalid="ignore"):
            hit = ((weaker > PAIR_REL * np.abs(cont)) & (sig > sigma)
                   & (np.maximum(np.abs(dep[0]), np.abs(dep[3])) < PAIR_SIDE_FRACTION * weaker)
                   & good[pair - 1] & good[pair + 2] & np.isfinite(cont))
        out[pair[hit]] = out[pair[hit] + 1] = True
    return out & good
