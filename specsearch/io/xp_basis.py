"""The Gaia DR3 XP instrument model as precomputed design matrices (no GaiaXPy at run time).

A Gaia DR3 XP continuous spectrum is 55 BP + 55 RP coefficients of a Hermite-function basis.
GaiaXPy's ``calibrate`` samples it on a wavelength grid as::

    flux_band = coef_band @ D_band                       # D_band: (55, n_grid)
    flux      = w_bp * flux_bp + w_rp * flux_rp          # W m^-2 nm^-1
    flux_error = sqrt(w_bp^2 err_bp^2 + w_rp^2 err_rp^2)
    err_band^2 = diag(D_band^T C_band D_band)            # C = coefficient covariance

This module builds ``D_bp``, ``D_rp``, ``w_bp``, ``w_rp`` once from the files that ship in the
installed ``gaiaxpy`` package (``gaiaxpy/config/``), exactly as GaiaXPy 2.1 does:

* default grid (``grid_nm=None``, 336-1020 nm in 2 nm steps, 343 points): the precomputed
  ``XpSampling`` and ``XpMerge`` tables of ``config/filters/XpFilter_v375wiv142r.xml``
  (BP model v375wi, RP model v142r); this is what ``gaiaxpy.calibrate(sampling=None)`` uses.
* any other grid: the external-calibration instrument model (``config/xpC03_<model>_bases.csv``,
  ``_dispersion.csv``, ``_response.csv``): Hermite functions at the grid's pseudo-wavelengths,
  the inverse-basis and transformation matrices, and the photon-to-energy normalisation
  h c / (pupil area * response * lambda); merge weights linear across 635-643 nm. This is
  GaiaXPy's ``calibrate(sampling=grid)`` path.

The package is located with :func:`importlib.util.find_spec` (GaiaXPy itself is never
imported: importing it pulls in pandas and takes a second). Nothing is read at import time.

Error propagation follows GaiaXPy: with coefficient correlations (Gaia archive rows carry
the 1485 lower-triangle values), C = diag(e) R diag(e) and the full quadratic form is used;
GaiaXPy divides by and then multiplies by the LSQ ``standard_deviation``, which cancels, so
it is not needed. With errors only, C is diagonal. :func:`band_variance` evaluates the full
form for thousands of sources in one GEMM over the 1485 pair products (see its docstring).

:func:`project_to_coefficients` goes the other way (model SED -> coefficients) for the
synthetic survey; see its docstring for what it is and is not.
"""

from __future__ import annotations

import csv
import functools
import importlib.metadata
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

from specsearch.errors import ConfigError, SpectrumError

N_COEFF = 55
"""Coefficients per band in Gaia DR3 XP continuous spectra."""
N_CORR = N_COEFF * (N_COEFF - 1) // 2
"""Off-diagonal correlation values per band (1485) as the Gaia archive stores them."""

DEFAULT_GRID_NM = np.arange(336.0, 1020.0 + 1.0, 2.0)
"""GaiaXPy's default sampling (nm): 343 points, 336-1020 nm, 2 nm steps."""

# From gaiaxpy.core.satellite / nature (GaiaXPy 2.1), used for non-default grids.
BP_HIGH_NM = 643.0   # BP_WL.high: BP contributes below this wavelength
RP_LOW_NM = 635.0    # RP_WL.low: RP contributes above this wavelength
TELESCOPE_PUPIL_AREA_M2 = 0.7278
HC_NM = 1.0e9 * 2.99792458e8 * 6.62607004e-34   # h c in J nm (GaiaXPy's constants)
GRID_LIMITS_NM = (330.0, 1050.0)                 # GaiaXPy's validate_wl_sampling
BP_MODEL, RP_MODEL = "v375wi", "v142r"

# Archive order of the correlation values: row-major lower triangle, k = -1 (GaiaXPy's
# array_to_symmetric_matrix). CORR_I[k], CORR_J[k] are the coefficient pair of value k.
CORR_I, CORR_J = np.tril_indices(N_COEFF, k=-1)


@dataclass(frozen=True, eq=False)
class XPDesign:
    """Sampled BP/RP bases and merge weights on one wavelength grid.

    Attributes:
        wavelength_nm: (n,) sampling in nm (Gaia XP wavelengths; see ``gaia_xp`` on vacuum).
        bp, rp: (55, n) flux in W m^-2 nm^-1 of a unit coefficient of each basis function.
        weight_bp, weight_rp: (n,) merge weights (sum to 1; zero where a band does not
            contribute).
        source: where the matrices came from (file name inside ``gaiaxpy/config``).
        gaiaxpy_version: the installed GaiaXPy version that supplied the files.
    """

    wavelength_nm: np.ndarray
    bp: np.ndarray
    rp: np.ndarray
    weight_bp: np.ndarray
    weight_rp: np.ndarray
    source: str
    gaiaxpy_version: str
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def npix(self) -> int:
        return int(self.wavelength_nm.shape[0])

    def columns(self, band: str) -> np.ndarray:
        """Indices of the grid points where ``band`` contributes (merge weight > 0).

        These are also exactly the points GaiaXPy keeps when the other band is missing
        (BP-only: lambda < 643 nm; RP-only: lambda > 635 nm).
        """
        return np.flatnonzero(self.weights(band) > 0)

    def weights(self, band: str) -> np.ndarray:
        return {"bp": self.weight_bp, "rp": self.weight_rp}[band]

    def matrix(self, band: str) -> np.ndarray:
        return {"bp": self.bp, "rp": self.rp}[band]

    def band_operators(self, band: str) -> "BandOperators":
        """Per-band matrices restricted to the contributing columns (built once, cached)."""
        ops = self._cache.get(band)
        if ops is None:
            cols = self.columns(band)
            d = np.ascontiguousarray(self.matrix(band)[:, cols])
            ops = BandOperators(columns=cols, design=d, design_sq=d * d,
                                pair=np.ascontiguousarray(2.0 * d[CORR_I] * d[CORR_J]),
                                weight=self.weights(band)[cols])
            self._cache[band] = ops
        return ops

    def projector(self, band: str, ridge: float) -> tuple[np.ndarray, np.ndarray]:
        """(columns, (m, 55) operator): ``coef = flux[:, columns] @ operator`` (cached).

        A Tikhonov-regularised pseudo-inverse of the band's sampled basis, via the SVD of
        D^T: on a finite grid the 55 sampled functions are nearly degenerate (high orders
        live mostly outside the grid), so a plain inverse would turn noise into huge
        coefficients. ``ridge`` is relative to the largest singular value.
        """
        key = ("projector", band, ridge)
        if key not in self._cache:
            ops = self.band_operators(band)
            u, s, vt = np.linalg.svd(ops.design.T, full_matrices=False)
            alpha = ridge * s[0]
            self._cache[key] = (ops.columns, (u * (s / (s * s + alpha * alpha))) @ vt)
        return self._cache[key]


@dataclass(frozen=True)
class BandOperators:
    """One band's design restricted to its contributing columns.

    Attributes:
        columns: (m,) grid indices.
        design: (55, m) D.
        design_sq: (55, m) D**2 (diagonal error term).
        pair: (1485, m) 2 D[i] D[j] for the archive's (i, j) pair order (correlation term).
        weight: (m,) merge weight on those columns.
    """

    columns: np.ndarray
    design: np.ndarray
    design_sq: np.ndarray
    pair: np.ndarray
    weight: np.ndarray


# --------------------------------------------------------------------------- package files

def gaiaxpy_config_dir() -> Path:
    """``gaiaxpy/config`` of the installed package, located without importing GaiaXPy."""
    spec = importlib.util.find_spec("gaiaxpy")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the gaiaxpy package is not installed; it ships the Gaia DR3 XP "
                          "instrument model (pip install 'gaiaxpy>=2.1')")
    config = Path(list(spec.submodule_search_locations)[0]) / "config"
    if not config.is_dir():
        raise ConfigError(f"{config}: gaiaxpy is installed but has no config folder; "
                          f"reinstall gaiaxpy")
    return config


def _gaiaxpy_version() -> str:
    try:
        return importlib.metadata.version("gaiaxpy")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _xml_values(node: ElementTree.Element | None, what: str, path: Path) -> np.ndarray:
    if node is None:
        raise ConfigError(f"{path}: no {what} element; the gaiaxpy install looks damaged")
    return np.array([float(v.text) for v in node], dtype=np.float64)


def _default_design() -> XPDesign:
    path = gaiaxpy_config_dir() / "filters" / f"XpFilter_{BP_MODEL}{RP_MODEL}.xml"
    root = ElementTree.parse(path).getroot()
    merge = root.find("XpMerge")
    wave = _xml_values(merge.find("sampleMeanWavelengths") if merge is not None else None,
                       "XpMerge/sampleMeanWavelengths", path)
    w_bp = _xml_values(merge.find("bpWeights"), "XpMerge/bpWeights", path)
    w_rp = _xml_values(merge.find("rpWeights"), "XpMerge/rpWeights", path)
    mats = {}
    for band in ("bp", "rp"):
        node = root.find(f"XpSampling/{band}SampledBases")
        values = _xml_values(node, f"XpSampling/{band}SampledBases", path)
        dim = int(node.attrib["dimension"])
        # Stored wavelength-major (n_grid, 55), as GaiaXPy's get_xp_sampling_matrix reads it.
        mats[band] = np.ascontiguousarray(values.reshape(-1, dim).T)
    return XPDesign(wavelength_nm=wave, bp=mats["bp"], rp=mats["rp"], weight_bp=w_bp,
                    weight_rp=w_rp, source=path.name, gaiaxpy_version=_gaiaxpy_version())


def _read_two_row_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = np.genfromtxt(path, delimiter=",")
    return rows[0], rows[1]


def _read_bases_csv(path: Path) -> dict:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    row = rows[0]
    out = {k: float(row[k]) for k in ("pwlRangeMin", "pwlRangeMax", "normRangeMin",
                                      "normRangeMax")}
    n = int(row["nBases"])
    n_inv = int(row["nInverseBasesCoefficients"])
    n_tr = int(row["nTransformedBases"])
    parse = lambda text: np.array(text.strip("()[] ").split(","), dtype=np.float64)  # noqa: E731
    out["inverse"] = parse(row["inverseBasesCoefficients"]).reshape(n, n_inv)
    out["transformation"] = parse(row["transformationMatrix"]).reshape(n, n_tr)
    return out


def hermite_functions(n: int, x: np.ndarray) -> np.ndarray:
    """(n, len(x)) orthonormal Hermite functions psi_0..psi_{n-1} (GaiaXPy's recurrence)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty((n, x.size))
    out[0] = np.pi ** -0.25 * np.exp(-0.5 * x * x)
    if n > 1:
        out[1] = np.sqrt(2.0) * x * out[0]
    for k in range(2, n):
        out[k] = np.sqrt(2.0 / k) * x * out[k - 1] - np.sqrt((k - 1) / k) * out[k - 2]
    return out


def merge_weights(grid_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GaiaXPy's BP/RP merge weights on an arbitrary grid (linear ramp over 635-643 nm)."""
    g = np.asarray(grid_nm, dtype=np.float64)
    ramp = (g - RP_LOW_NM) / (BP_HIGH_NM - RP_LOW_NM)
    w_bp = np.where(g < RP_LOW_NM, 1.0, np.where(g > BP_HIGH_NM, 0.0, 1.0 - ramp))
    w_rp = np.where(g < RP_LOW_NM, 0.0, np.where(g > BP_HIGH_NM, 1.0, ramp))
    return w_bp, w_rp


def _instrument_model_design(grid_nm: np.ndarray) -> XPDesign:
    from scipy.interpolate import splev, splrep

    config = gaiaxpy_config_dir()
    w = {}
    w["bp"], w["rp"] = merge_weights(grid_nm)
    mats = {}
    for band, model in (("bp", BP_MODEL), ("rp", RP_MODEL)):
        stem = config / f"{band}C03_{model}"
        disp_wl, disp_pwl = _read_two_row_csv(Path(f"{stem}_dispersion.csv"))
        resp_wl, resp = _read_two_row_csv(Path(f"{stem}_response.csv"))
        bases = _read_bases_csv(Path(f"{stem}_bases.csv"))
        scale = ((bases["normRangeMax"] - bases["normRangeMin"])
                 / (bases["pwlRangeMax"] - bases["pwlRangeMin"]))
        offset = bases["normRangeMin"] - bases["pwlRangeMin"] * scale
        pwl = splev(grid_nm, splrep(disp_wl, disp_pwl, s=0), der=0)
        herm = hermite_functions(bases["inverse"].shape[1], pwl * scale + offset)
        herm[:, w[band] <= 0] = 0.0   # GaiaXPy evaluates a band only where it is weighted
        design = bases["transformation"] @ (bases["inverse"] @ herm)
        r = splev(grid_nm, splrep(resp_wl, resp, s=0), der=0)
        good = r > 0
        norm = np.zeros_like(r)
        norm[good] = HC_NM / (TELESCOPE_PUPIL_AREA_M2 * r[good] * grid_nm[good])
        mats[band] = np.ascontiguousarray(design * norm)
    return XPDesign(wavelength_nm=np.array(grid_nm, dtype=np.float64), bp=mats["bp"],
                    rp=mats["rp"], weight_bp=w["bp"], weight_rp=w["rp"],
                    source=f"{{bp,rp}}C03_{BP_MODEL}/{RP_MODEL} instrument model",
                    gaiaxpy_version=_gaiaxpy_version())


@functools.lru_cache(maxsize=8)
def _cached_design(key: bytes | None) -> XPDesign:
    if key is None:
        return _default_design()
    return _instrument_model_design(np.frombuffer(key, dtype=np.float64).copy())


def xp_design(grid_nm: np.ndarray | None = None) -> XPDesign:
    """The sampled XP bases on ``grid_nm`` (nm; None = GaiaXPy's default 343-point grid).

    Cached per grid. A grid equal to the default grid returns the default (XML) design,
    as GaiaXPy would for ``sampling=None``.

    Raises:
        ConfigError: gaiaxpy missing, or a grid that is not strictly increasing inside
            330-1050 nm (GaiaXPy's limits).
    """
    if grid_nm is None:
        return _cached_design(None)
    g = np.ascontiguousarray(grid_nm, dtype=np.float64)
    if g.ndim != 1 or g.size < 2 or not np.all(np.diff(g) > 0):
        raise ConfigError(f"grid_nm must be 1-D and strictly increasing; got shape {g.shape}")
    if g[0] < GRID_LIMITS_NM[0] or g[-1] > GRID_LIMITS_NM[1]:
        raise ConfigError(f"grid_nm must lie within {GRID_LIMITS_NM[0]:.0f}-"
                          f"{GRID_LIMITS_NM[1]:.0f} nm (Gaia XP coverage); got "
                          f"{g[0]:.1f}-{g[-1]:.1f} nm")
    if g.shape == DEFAULT_GRID_NM.shape and np.array_equal(g, DEFAULT_GRID_NM):
        return _cached_design(None)
    return _cached_design(g.tobytes())


# --------------------------------------------------------------------------- forward

def band_variance(errors: np.ndarray, ops: BandOperators,
                  correlations: np.ndarray | None = None) -> np.ndarray:
    """(N, m) flux variance of one band on its columns, from coefficient errors.

    ``var = (e^2) @ D^2 + (R_pairs * e_i * e_j) @ (2 D_i D_j)``: the full quadratic form
    diag(D^T diag(e) R diag(e) D) written as one GEMM over the 1485 off-diagonal pairs
    (half the flops of forming C @ D per source). ``correlations`` is (N, 1485) in archive
    order or None (diagonal covariance). Rows with NaN errors give NaN.
    """
    var = (errors * errors) @ ops.design_sq
    if correlations is not None:
        prod = np.take(errors, CORR_I, axis=1)
        prod *= np.take(errors, CORR_J, axis=1)
        prod *= correlations
        var += prod @ ops.pair
    return var


def sample_flux(bp_coefficients: np.ndarray, rp_coefficients: np.ndarray,
                design: XPDesign | None = None) -> np.ndarray:
    """(N, n) sampled flux in W m^-2 nm^-1 from (N, 55) BP and RP coefficients.

    A band whose coefficient row has a non-finite value counts as missing; then, as in
    GaiaXPy, the other band alone is used (unweighted) where it contributes and the rest of
    the grid is NaN. Rows with neither band are all NaN.
    """
    design = design or xp_design()
    bp = np.atleast_2d(np.asarray(bp_coefficients, dtype=np.float64))
    rp = np.atleast_2d(np.asarray(rp_coefficients, dtype=np.float64))
    has = {"bp": np.isfinite(bp).all(axis=1), "rp": np.isfinite(rp).all(axis=1)}
    out = np.full((bp.shape[0], design.npix), np.nan)
    both = has["bp"] & has["rp"]
    out[both] = 0.0
    for band, coef in (("bp", bp), ("rp", rp)):
        ops = design.band_operators(band)
        flux = np.where(has[band][:, None], coef, 0.0) @ ops.design
        only = has[band] & ~both
        out[np.ix_(both, ops.columns)] += flux[both] * ops.weight
        out[np.ix_(only, ops.columns)] = flux[only]
    return out


# --------------------------------------------------------------------------- inverse

def project_to_coefficients(flux_W_m2_nm: np.ndarray, wavelength_nm: np.ndarray, *,
                            design: XPDesign | None = None, ridge: float = 1e-5,
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares BP/RP coefficients whose sampled spectrum best matches a model SED.

    The SED is first rebinned (flux-conserving bin means) onto the design grid, then each
    band is fitted separately on the grid points where it contributes (BP: < 643 nm, RP:
    > 635 nm), so the merged sample reproduces the SED in the 635-643 nm overlap as well.
    One matrix product per band for all N spectra (the Tikhonov pseudo-inverse is cached).

    What this is not: Gaia's forward model. Real coefficients come from fitting epoch data in
    pseudo-wavelength with the instrument's line-spread function; this is the inverse of the
    *sampled* basis only. A smooth SED round-trips to ~1e-3 relative; a high-resolution SED
    comes back as its best 55-function approximation (narrow lines are smoothed with some
    ringing rather than convolved with the true XP LSF), and coefficient errors /
    correlations are not produced. Convolve the SED to XP resolution first for realism.

    Args:
        flux_W_m2_nm: (N, m) or (m,) SED in W m^-2 nm^-1.
        wavelength_nm: (m,) strictly increasing wavelengths (nm); must cover the band(s).
        design: the basis (default: GaiaXPy's default grid).
        ridge: Tikhonov strength relative to the largest singular value of the band design.
    Returns:
        (bp_coefficients, rp_coefficients), each (N, 55) float64 (rows of NaN for a band the
        SED does not cover).
    Raises:
        SpectrumError: shapes disagree or the SED overlaps neither band.
    """
    from specsearch.preprocess import Grid, rebinner

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
    out = []
    for band in ("bp", "rp"):
        cols, operator = design.projector(band, float(ridge))
        if not covered[cols].all():
            out.append(np.full((flux.shape[0], N_COEFF), np.nan))
            continue
        out.append(on_grid[:, cols] @ operator)
    if np.isnan(out[0]).all() and np.isnan(out[1]).all():
        raise SpectrumError(
            f"the SED ({wave[0]:.1f}-{wave[-1]:.1f} nm) covers neither the BP "
            f"({design.wavelength_nm[0]:.0f}-{BP_HIGH_NM:.0f} nm) nor the RP "
            f"({RP_LOW_NM:.0f}-{design.wavelength_nm[-1]:.0f} nm) range of the XP grid")
    return out[0], out[1]
