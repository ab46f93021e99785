"""The Gaia DR3 XP instrument model as precomputed design matrices (no GaiaXPy at run time).

A Gaia DR3 XP continuous spectrum is 55 BP + 55 RP coefficients of a Hermite-function basis.
GaiaXPy's ``calibrate`` samples it on a wavelength grid as::

    flux_band = coef_band @ D_band                       # D_band: (55, n_grid)
    flux      = w_bp * flux_bp + w_rp * flux_rp          # W m^-2 nm^-1
    flux_error = sqrt(w_bp^2 err_bp^2 + w_rp^2 err_rp^2)
    err_band^2 = diag(D_band^T C_band D_band)            # C = coefficient covariance

:func:`xp_design` builds ``D_bp``, ``D_rp``, ``w_bp``, ``w_rp`` once per grid from the files
that ship in the installed ``gaiaxpy`` package (``gaiaxpy/config/``; the reading lives in
:mod:`specsearch.io._xp_model`), exactly as GaiaXPy 2.1 does:

* default grid (``grid_nm=None``, 336-1020 nm in 2 nm steps, 343 points): the precomputed
  ``XpSampling`` and ``XpMerge`` tables of ``config/filters/XpFilter_v375wiv142r.xml``
  (BP model v375wi, RP model v142r); this is what ``gaiaxpy.calibrate(sampling=None)`` uses.
* any other grid: the external-calibration instrument model
  (``config/{bp,rp}C03_<model>_bases.csv``, ``_dispersion.csv``, ``_response.csv``):
  Hermite functions at the grid's pseudo-wavelengths, the inverse-basis and transformation
  matrices, and the photon-to-energy normalisation h c / (pupil area * response * lambda);
  merge weights linear across 635-643 nm. This is
  GaiaXPy's ``calibrate(sampling=grid)`` path.

GaiaXPy itself is never imported (that pulls in pandas and takes a second) and nothing is
read at import time.

What GaiaXPy's default ``calibrate`` does, and :func:`sample` reproduces (flux to ~1e-14;
errors to ~1e-14 with ``error_precision="double"``, ~1e-6 with the default ``"single"``):

* errors: with coefficient correlations (Gaia archive rows carry the 1485 lower-triangle
  values) C = diag(e) R diag(e) and the full quadratic form diag(D^T C D) is used (the
  correlation terms change sigma by up to a factor ~2 on real spectra). GaiaXPy divides the
  errors by the LSQ ``standard_deviation`` and multiplies the result back, which cancels, so
  it is not needed; it does require the column, which is why it cannot read the 18 Sco file.
  GaiaXPy cannot take rows without correlations; here they mean a diagonal C.
  :func:`pair_variance` evaluates the correlation part as one GEMM over the 1485 pairs,
  by default in float32 (errors are uncertain at the percent level; sigma stays within
  1e-5 of GaiaXPy, and the archive stores the correlations in single precision anyway).
* truncation: off (``truncation=False``); ``n_relevant_bases`` is used only when asked, and
  then coefficients and covariance are cut to the first n (0 means no cut).
* a missing band (all-null BP or RP, e.g. source 5405570973190252288): the other band alone,
  unweighted, where it contributes (RP: lambda > 635 nm; BP: lambda < 643 nm), NaN elsewhere.
  No band at all is an error in GaiaXPy; here the row is NaN.

:func:`project_to_coefficients` goes the other way (model SED -> coefficients) for the
synthetic survey; see its docstring for what it is and is not.
"""

from __future__ import annotations

import contextlib
import os
import queue
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from specsearch.errors import ConfigError, SpectrumError
from specsearch.io._xp_model import (BP_HIGH_NM, CORR_I, CORR_J, DEFAULT_GRID_NM,
                                     GRID_LIMITS_NM, N_COEFF, N_CORR, N_CORR_PADDED,
                                     RP_LOW_NM, BandOperators, XPDesign, gaiaxpy_config_dir,
                                     hermite_functions, merge_weights, xp_design)
from specsearch.preprocess import Grid, rebinner

__all__ = ["BP_HIGH_NM", "CORR_I", "CORR_J", "DEFAULT_GRID_NM", "ERROR_PRECISIONS",
           "GRID_LIMITS_NM", "N_COEFF", "N_CORR", "RP_LOW_NM", "BandOperators", "XPDesign",
           "band_variance", "gaiaxpy_config_dir", "hermite_functions", "merge_weights",
           "pair_variance", "project_to_coefficients", "sample", "xp_design"]


# --------------------------------------------------------------------------- forward

ERROR_PRECISIONS = ("single", "double")


def pair_variance(errors: np.ndarray, correlations: np.ndarray, ops: BandOperators, *,
                  precision: str = "single", threads: int | None = None) -> np.ndarray:
    """(N, m) correlation part of one band's flux variance on its columns.

    The full quadratic form diag(D^T diag(e) R diag(e) D) minus its diagonal part,
    ``sum_pairs R_ij e_i e_j 2 D_i D_j``, as one GEMM over the 1485 archive-order pairs
    (half the flops of forming C @ D per source; ~1 Mflop a source for both bands, which
    bounds the speed of calibrating archive rows with correlations).

    ``precision="single"`` forms the pair products and runs the GEMM in float32 (twice
    the GEMM speed; errors are scaled per source and the matrix per column, so nothing
    under- or overflows): sigma then agrees with the double-precision result to ~1e-6
    relative (measured on the real archive rows; GaiaXPy agreement is tested at 1e-5).
    Sources are processed in cache-sized blocks (products + GEMM) on ``threads`` threads
    (None: all cores; see :class:`_PairWorkspace`).
    """
    out = np.zeros((errors.shape[0], ops.columns.size))
    with _PairWorkspace(precision, threads, errors.shape[0]) as work:
        work.accumulate(out, errors, correlations, ops, weight_sq=None)
    return out


class _PairWorkspace:
    """Threads and per-thread buffers for :func:`pair_variance`, shared by both bands of a
    call (fresh pages cost microseconds each on a busy machine: allocate once).

    Each task fills the pair products of :data:`_CHUNK_ROWS` sources (1.5 MB of float32,
    inside a core's L2 cache) and runs their GEMM at once. With several threads, numpy's
    BLAS is held to one thread meanwhile (as scikit-learn does around its own threads): its
    worker threads would otherwise fight ours for the cores, which costs a third more CPU
    on a loaded machine (measured).
    """

    def __init__(self, precision: str, threads: int | None, n: int) -> None:
        if precision not in ERROR_PRECISIONS:
            raise ConfigError(f"error precision must be one of {ERROR_PRECISIONS}; "
                              f"got {precision!r}")
        self.dtype = np.float32 if precision == "single" else np.float64
        self.rows = max(1, min(n, _CHUNK_ROWS))
        self.n_threads = max(1, min(threads or os.cpu_count() or 1, -(-n // _CHUNK_ROWS)))
        self.buffers: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(self.n_threads):
            self.buffers.put({"prod": np.zeros((self.rows, N_CORR_PADDED), self.dtype)})
        self.pool: ThreadPoolExecutor | None = None
        self.blas = None

    def __enter__(self) -> "_PairWorkspace":
        if self.n_threads > 1:
            self.pool = ThreadPoolExecutor(self.n_threads)
            self.blas = _single_threaded_blas()   # takes effect here, undone on exit
            self.blas.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        if self.blas is not None:
            self.blas.__exit__(*exc)

    def accumulate(self, out: np.ndarray, errors: np.ndarray, correlations: np.ndarray,
                   ops: BandOperators, weight_sq: np.ndarray | None) -> None:
        """out (N, m) += weight_sq * pair variance (out may be a strided column view)."""
        matrix = ops.pair32 if self.dtype == np.float32 else ops.pair
        # Unit-max errors per source keep e_i e_j inside float32's range.
        scale = np.max(np.abs(errors), axis=1)
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        e = (errors / scale[:, None]).astype(self.dtype)
        col_scale = ops.pair_scale if weight_sq is None else ops.pair_scale * weight_sq

        def chunk(start: int) -> None:
            stop = min(errors.shape[0], start + self.rows)
            buf = self.buffers.get()
            try:
                if buf.get("res") is None or buf["res"].shape[1] != matrix.shape[1]:
                    buf["res"] = np.empty((self.rows, matrix.shape[1]), self.dtype)
                    buf["tmp"] = np.empty((self.rows, matrix.shape[1]))
                rows, m = stop - start, ops.columns.size
                prod, res, tmp = buf["prod"][:rows], buf["res"][:rows], buf["tmp"][:rows, :m]
                _fill_pairs(e[start:stop], correlations[start:stop], prod)
                np.matmul(prod, matrix, out=res)
                np.multiply(res[:, :m], col_scale, out=tmp)
                tmp *= np.square(scale[start:stop])[:, None]
                out[start:stop] += tmp
            finally:
                self.buffers.put(buf)

        starts = range(0, errors.shape[0], self.rows)
        if self.pool is None:
            for start in starts:
                chunk(start)
        else:
            list(self.pool.map(chunk, starts))


def _single_threaded_blas():
    """Context: numpy's BLAS on one thread (threadpoolctl when installed, else a no-op)."""
    try:
        from threadpoolctl import threadpool_limits
        return threadpool_limits(1, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()


def _fill_pairs(e: np.ndarray, correlations: np.ndarray, prod: np.ndarray) -> None:
    """prod[:, :1485] = R_ij e_i e_j in archive pair order for a block of sources."""
    # e_i e_j for archive row i is e[:, i] * e[:, :i], a contiguous run: no gather.
    for i in range(1, N_COEFF):
        np.multiply(e[:, :i], e[:, i:i + 1], out=prod[:, _ROW_START[i]:_ROW_START[i] + i])
    np.multiply(prod[:, :N_CORR], correlations, out=prod[:, :N_CORR], casting="same_kind")


def band_variance(errors: np.ndarray, ops: BandOperators,
                  correlations: np.ndarray | None = None, *, precision: str = "single",
                  threads: int | None = None) -> np.ndarray:
    """(N, m) flux variance of one band on its columns (errors (N, 55), correlations (N, 1485)
    in archive order or None for a diagonal covariance; see :func:`pair_variance`)."""
    var = (errors * errors) @ ops.design_sq
    if correlations is not None:
        with _PairWorkspace(precision, threads, errors.shape[0]) as work:
            work.accumulate(var, errors, correlations, ops, weight_sq=None)
    return var


_CHUNK_ROWS = 256
"""Sources per pair-product fill + GEMM task (1.5 MB of float32 products)."""
_ROW_START = np.concatenate([[0], np.cumsum(np.arange(N_COEFF))])[:N_COEFF]
"""Offset of archive row i (pairs (i, 0..i-1)) in the 1485 correlation values."""


def sample(bp_coefficients: np.ndarray, rp_coefficients: np.ndarray,
           bp_errors: np.ndarray | None = None, rp_errors: np.ndarray | None = None,
           bp_correlations: np.ndarray | None = None, rp_correlations: np.ndarray | None = None,
           *, design: XPDesign | None = None,
           out: tuple[np.ndarray, np.ndarray | None] | None = None,
           error_precision: str = "single", threads: int | None = None,
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """Sampled flux (and error) in W m^-2 nm^-1 from (N, 55) BP/RP coefficients.

    GaiaXPy's merge, vectorised: ``flux = w_bp f_bp + w_rp f_rp`` and
    ``error = sqrt(w_bp^2 var_bp + w_rp^2 var_rp)``, computed as one GEMM of the
    (N, 110) coefficients with the weighted, stacked design (and one for the diagonal
    variance) plus :func:`pair_variance` per band when correlations are given. A band whose
    coefficient row is not all finite counts as missing; then, as in GaiaXPy, the other band
    is used alone (unweighted) where it contributes and the rest of the row is NaN; rows with
    neither band are NaN.

    Args:
        bp_coefficients, rp_coefficients: (N, 55).
        bp_errors, rp_errors: (N, 55) 1-sigma coefficient errors; error is None without them.
        bp_correlations, rp_correlations: (N, 1485) archive-order correlations or None.
        design: the sampled basis (default: GaiaXPy's default grid).
        out: optional preallocated C-contiguous (flux, error) arrays (N, npix) to fill.
        error_precision: arithmetic of the correlation term (:func:`pair_variance`):
            ``"single"`` (twice as fast; sigma within ~1e-6 of double) or ``"double"``.
            The flux and the diagonal error term are always float64.
        threads: threads for forming the correlation products (None: all cores).
    Returns:
        (flux, error): (N, npix) float64; error None when no errors were given.
    """
    design = design or xp_design()
    bands = ("bp", "rp")
    coef = dict(zip(bands, (np.atleast_2d(bp_coefficients), np.atleast_2d(rp_coefficients))))
    errs = dict(zip(bands, (bp_errors, rp_errors)))
    corrs = dict(zip(bands, (bp_correlations, rp_correlations)))
    with_err = bp_errors is not None and rp_errors is not None
    if error_precision not in ERROR_PRECISIONS:
        raise ConfigError(f"error_precision must be one of {ERROR_PRECISIONS}; "
                          f"got {error_precision!r}")
    n = coef["bp"].shape[0]
    if out is None:
        out = (np.empty((n, design.npix)), np.empty((n, design.npix)) if with_err else None)
    flux, error = out
    has = {b: np.isfinite(coef[b]).all(axis=1) for b in bands}
    clean = {b: (lambda a, h=has[b]: a if a is None or h.all() else
                 np.where(h[:, None], a, 0.0)) for b in bands}   # missing band -> zeros
    stacked, stacked_sq = design.stacked()
    np.matmul(np.hstack([clean[b](coef[b]) for b in bands]), stacked, out=flux)
    if with_err:
        e = np.hstack([clean[b](errs[b]) for b in bands])
        np.matmul(e * e, stacked_sq, out=error)
        if any(corrs[b] is not None for b in bands):
            with _PairWorkspace(error_precision, threads, n) as work:
                for b in bands:
                    if corrs[b] is not None:
                        # Correlations are not cleaned (a 12 kB copy a source): a missing
                        # band's zeroed errors make its rows 0 or NaN here; they are redone
                        # below.
                        ops = design.band_operators(b)
                        work.accumulate(error[:, ops.span], clean[b](errs[b]), corrs[b], ops,
                                        weight_sq=ops.weight ** 2)
        np.sqrt(error, out=error)
    # GaiaXPy's single-band rows: that band unweighted on its columns, NaN elsewhere.
    for b, other in (("bp", "rp"), ("rp", "bp")):
        only = np.flatnonzero(has[b] & ~has[other])
        if only.size:
            ops = design.band_operators(b)
            flux[only] = np.nan
            flux[only, ops.span] = coef[b][only] @ ops.design
            if with_err:
                corr = None if corrs[b] is None else corrs[b][only]
                error[only] = np.nan
                error[only, ops.span] = np.sqrt(band_variance(
                    errs[b][only], ops, corr, precision=error_precision, threads=threads))
    none = ~(has["bp"] | has["rp"])
    if none.any():
        flux[none] = np.nan
        if with_err:
            error[none] = np.nan
    return flux, error


# --------------------------------------------------------------------------- inverse

def project_to_coefficients(flux_W_m2_nm: np.ndarray, wavelength_nm: np.ndarray, *,
                            design: XPDesign | None = None, ridge: float = 1e-7,
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares BP/RP coefficients whose sampled spectrum best matches a model SED.

    The SED is first rebinned (flux-conserving bin means) onto the design grid, then BP and
    RP are fitted jointly to the merged model ``w_bp D_bp + w_rp D_rp`` over the whole grid
    (a band the SED does not cover is left NaN and the other fitted alone). One matrix
    product for all N spectra (the Tikhonov pseudo-inverse is cached on the design).

    Measured round trips (sample -> project -> sample, default ridge): real XP spectra
    (18 Sco, the 2000-source chunk) come back to <= 3e-6 relative (3e-10 with ridge=0);
    blackbodies of 3500-20000 K to <= 0.9% (worst at the 336-350 nm and 980-1020 nm ends),
    median 8e-4.

    What this is not: Gaia's forward model. Real coefficients come from fitting epoch data in
    pseudo-wavelength with the instrument's line-spread function; this inverts the *sampled*
    basis only. The coefficients reproduce the sampled spectrum but are not those Gaia would
    publish (the 336-1020 nm samples do not pin down the basis functions' out-of-grid parts:
    condition number ~1e7), a high-resolution SED comes back as its best 110-function
    approximation (narrow lines smoothed with some ringing, not convolved with the true XP
    LSF), and no coefficient errors or correlations are produced. Convolve the SED to XP
    resolution first for realism.

    Args:
        flux_W_m2_nm: (N, m) or (m,) SED in W m^-2 nm^-1.
        wavelength_nm: (m,) strictly increasing wavelengths (nm); must cover the band(s).
        design: the basis (default: GaiaXPy's default grid).
        ridge: Tikhonov strength relative to the largest singular value of the design
            (0: plain least squares, exact for XP spectra but noise-amplifying).
    Returns:
        (bp_coefficients, rp_coefficients), each (N, 55) float64 (rows of NaN for a band the
        SED does not cover).
    Raises:
        SpectrumError: shapes disagree or the SED overlaps neither band.
    """
    design = design or xp_design()
    flux = np.atleast_2d(np.asarray(flux_W_m2_nm, dtype=np.float64))
    wave = np.asarray(wavelength_nm, dtype=np.float64)
    if wave.ndim != 1 or flux.shape[1] != wave.size:
        raise SpectrumError(f"flux must be (N, {wave.size}) for {wave.size} wavelengths; "
                            f"got {flux.shape}")
    if wave.size == design.npix and np.allclose(wave, design.wavelength_nm, atol=1e-9):
        on_grid = flux
        covered = np.ones(design.npix, dtype=bool)
    else:
        grid = Grid(name="xp-design", wavelength=design.wavelength_nm * 10.0,
                    flux_unit="W m-2 nm-1", log_spacing=False)
        # Rebin in a scaled unit: the rebinner works in float32 and SEDs are ~1e-15.
        scale = np.nanmax(np.abs(flux), axis=1, keepdims=True)
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        rb = rebinner(wave * 10.0, grid)
        f, iv = rb(flux / scale, np.ones_like(flux), min_coverage=0.999)
        on_grid = f.astype(np.float64) * scale
        covered = (iv > 0).all(axis=0)
    bands = tuple(b for b in ("bp", "rp") if covered[design.columns(b)].all())
    if not bands:
        raise SpectrumError(
            f"the SED ({wave[0]:.1f}-{wave[-1]:.1f} nm) covers neither the BP "
            f"({design.wavelength_nm[0]:.0f}-{BP_HIGH_NM:.0f} nm) nor the RP "
            f"({RP_LOW_NM:.0f}-{design.wavelength_nm[-1]:.0f} nm) range of the XP grid")
    cols, operator = design.projector(bands, float(ridge))
    coef = on_grid[:, cols] @ operator
    out = {b: np.full((flux.shape[0], N_COEFF), np.nan) for b in ("bp", "rp")}
    for k, b in enumerate(bands):
        out[b] = coef[:, k * N_COEFF:(k + 1) * N_COEFF]
    return out["bp"], out["rp"]
