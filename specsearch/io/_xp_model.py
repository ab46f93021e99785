"""Reading the Gaia DR3 XP instrument model shipped in the installed ``gaiaxpy`` package.

Builds :class:`XPDesign` (sampled BP/RP bases + merge weights on a grid) from
``gaiaxpy/config``, exactly as GaiaXPy 2.1 does; :mod:`specsearch.io.xp_basis` holds the
linear algebra that uses it (and re-exports these names). The package is located with
:func:`importlib.util.find_spec`: GaiaXPy itself is never imported (that pulls in pandas
and takes a second). Nothing is read at import time; designs are cached per grid.
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

from specsearch.errors import ConfigError

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
N_CORR_PADDED = 1488
"""Pairs padded with zero rows to a multiple of 16 (a faster GEMM shape)."""


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

    def stacked(self) -> tuple[np.ndarray, np.ndarray]:
        """(110, n) weighted design [w_bp D_bp; w_rp D_rp] and its square (cached): the
        merged flux of both bands is one product with the (N, 110) coefficients."""
        if "stacked" not in self._cache:
            d = np.vstack([self.bp * self.weight_bp, self.rp * self.weight_rp])
            self._cache["stacked"] = (d, d * d)
        return self._cache["stacked"]

    def band_operators(self, band: str) -> "BandOperators":
        """Per-band matrices restricted to the contributing columns (built once, cached)."""
        ops = self._cache.get(band)
        if ops is None:
            cols = self.columns(band)
            d = np.ascontiguousarray(self.matrix(band)[:, cols])
            if np.any(np.diff(cols) != 1):   # cannot happen with monotonic merge weights
                raise ConfigError(f"{band} contributes to a non-contiguous set of grid points")
            span = slice(int(cols[0]), int(cols[-1]) + 1) if cols.size else slice(0, 0)
            pair = 2.0 * d[CORR_I] * d[CORR_J]                       # (1485, m)
            # Unit-max columns: D_i D_j ~ 1e-35 would be subnormal in float32.
            scale = np.max(np.abs(pair), axis=0) if cols.size else np.ones(0)
            scale = np.where(scale > 0, scale, 1.0)
            padded = np.zeros((N_CORR_PADDED, -(-cols.size // 16) * 16))
            padded[:N_CORR, :cols.size] = pair / scale
            ops = BandOperators(columns=cols, span=span,
                                design=d, design_sq=d * d,
                                pair=padded, pair32=padded.astype(np.float32),
                                pair_scale=scale, weight=self.weights(band)[cols])
            self._cache[band] = ops
        return ops

    def projector(self, bands: tuple[str, ...], ridge: float) -> tuple[np.ndarray, np.ndarray]:
        """(columns, (m, 55 * len(bands)) operator): ``coef = flux[:, columns] @ operator``.

        A Tikhonov-regularised pseudo-inverse (via SVD) of the sampled basis of ``bands``:
        with both bands, of the merged model ``w_bp D_bp + w_rp D_rp`` over the whole grid
        (so a sampled XP spectrum, overlap included, is in its span); with one band, of that
        band alone on its columns (GaiaXPy's single-band output). On a finite grid the 55
        sampled functions are nearly degenerate (condition ~1e7: high orders live mostly
        outside the grid); ``ridge`` (relative to the largest singular value) keeps noise
        from turning into huge coefficients. Cached per (bands, ridge).
        """
        key = ("projector", bands, ridge)
        if key not in self._cache:
            if len(bands) == 1:
                ops = self.band_operators(bands[0])
                cols, a = ops.columns, ops.design
            else:
                cols = np.flatnonzero((self.weight_bp > 0) | (self.weight_rp > 0))
                a = self.stacked()[0][:, cols]
            u, sv, vt = np.linalg.svd(a.T, full_matrices=False)
            alpha = ridge * sv[0]
            self._cache[key] = (cols, (u * (sv / (sv * sv + alpha * alpha))) @ vt)
        return self._cache[key]


@dataclass(frozen=True)
class BandOperators:
    """One band's design restricted to its contributing columns.

    Attributes:
        columns: (m,) grid indices (a contiguous run).
        span: the same run as a slice (cheaper than fancy indexing).
        design: (55, m) D.
        design_sq: (55, m) D**2 (diagonal error term).
        pair: (1488, m') the correlation term's matrix 2 D[i] D[j] / pair_scale, rows in the
            archive's (i, j) pair order, zero-padded to 1488 rows and m' (a multiple of 16)
            columns, the shapes that single-precision GEMM kernels run fastest on.
        pair32: ``pair`` in float32.
        pair_scale: (m,) the largest |2 D[i] D[j]| of each column (``pair`` is divided by it).
        weight: (m,) merge weight on those columns.
    """

    columns: np.ndarray
    span: slice
    design: np.ndarray
    design_sq: np.ndarray
    pair: np.ndarray
    pair32: np.ndarray
    pair_scale: np.ndarray
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
    design = _default_design() if key is None else \
        _instrument_model_design(np.frombuffer(key, dtype=np.float64).copy())
    for arr in (design.wavelength_nm, design.bp, design.rp, design.weight_bp,
                design.weight_rp):
        arr.flags.writeable = False   # shared by every caller: never modified in place
    return design


def xp_design(grid_nm: np.ndarray | None = None) -> XPDesign:
    """The sampled XP bases on ``grid_nm`` (nm; None = GaiaXPy's default 343-point grid).

    Cached per grid. A grid equal to the default grid returns the default (XML) design,
    i.e. what GaiaXPy uses for ``sampling=None``; note that GaiaXPy given that same grid
    explicitly would rebuild it from the instrument model, whose BP matrix differs from the
    published XML one by up to 0.3% of its peak (RP: 1e-6). The arrays are read-only.

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
