"""Gaia XP spectra of synthetic stars, made through the real DR3 instrument model.

For each star: the (extincted) model spectrum on the model grid is smoothed with an
approximate XP line-spread function (Gaussian; BP FWHM = 1.0 pseudo-wavelength sample,
i.e. ~3 nm at 330 nm to ~27 nm at 680 nm, RP FWHM 15 -> 25 nm over 640-1050 nm, the
ranges quoted by Carrasco et al. 2021 / De Angeli et al. 2023), projected onto the 55+55
DR3 basis functions (:func:`specsearch.io.xp_basis.project_to_coefficients`: the same
design matrices the XP reader uses; among the coefficient vectors that reproduce it the one
most probable for real DR3 sources, see :func:`prior_projection`), scaled so that its synthetic Gaia G (GaiaXPy's
Gaia_DR3_Vega filter in coefficient space) equals the star's ``mag_g``, given coefficient
errors from the error model fitted on the real DR3 sky patch (:mod:`.fit_xp_noise`) and
correlated Gaussian noise with the mean real correlation matrix, and finally sampled on the
343-point grid with :func:`specsearch.io.gaia_xp.calibrate`, exactly as real XP rows are
ingested. Sampled flux and ivar are in the catalog unit (1e-17 W m^-2 nm^-1).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import scipy.sparse as sp

from specsearch.errors import ConfigError
from specsearch.io import xp_basis as xb
from specsearch.synth.fit_xp_noise import correlation_matrix
from specsearch.synth.grid import model_wavelength

NOISE_FILE = Path(__file__).resolve().parents[1] / "data" / "synth" / "xp_noise_model.npz"
BP_DISPERSION_FILE = "bpC03_v375wi_dispersion.csv"
"""GaiaXPy's BP dispersion (pseudo-wavelength vs nm) of the DR3 model v375wi (the model
behind the default 343-point sampling)."""
SURFACE_TO_SI = 1e-2
"""erg s^-1 cm^-2 A^-1 -> W m^-2 nm^-1."""


@dataclass(frozen=True, eq=False)
class XPNoiseModel:
    """Coefficient error model per band (see :mod:`specsearch.synth.fit_xp_noise`)."""

    poly: dict[str, np.ndarray]          # (55, 3) log10 error quadratic in log10 coef_0
    level_range: dict[str, np.ndarray]   # (2,) fitted range of log10 coef_0
    sigma_star: dict[str, float]
    sigma_coef: dict[str, np.ndarray]    # (55,)
    corr_lower: dict[str, np.ndarray]    # (1485,) archive order
    chol: dict[str, np.ndarray]          # (55, 55) Cholesky factor of the correlation
    prior_mean: np.ndarray               # (110,) [bp, rp] / mean sampled flux, real sources
    prior_cov: np.ndarray                # (110, 110)

    def errors(self, band: str, coef0: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(n, 55) 1-sigma coefficient errors for noiseless coefficient-0 values ``coef0``."""
        lo, hi = self.level_range[band]
        level = np.log10(np.maximum(coef0, 1e-3))
        inside = np.clip(level, lo, hi)
        a = np.stack([np.ones_like(inside), inside, inside ** 2], axis=1)
        # Outside the fitted range, extrapolate as photon noise (error ~ sqrt(flux)).
        loge = a @ self.poly[band].T + 0.5 * (level - inside)[:, None]
        loge = loge + rng.normal(0.0, self.sigma_star[band], (coef0.size, 1)) \
            + rng.normal(0.0, 1.0, (coef0.size, 55)) * self.sigma_coef[band][None, :]
        return 10.0 ** loge


@functools.lru_cache(maxsize=1)
def load_noise_model(path: str | None = None) -> XPNoiseModel:
    p = Path(path) if path else NOISE_FILE
    if not p.is_file():
        raise ConfigError(f"{p}: the synthetic XP noise model is missing; regenerate it with "
                          f"`python -m specsearch.synth.fit_xp_noise ../shared/data/real/"
                          f"gaia_xp --out {p}`")
    with np.load(p, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    bands = ("bp", "rp")
    return XPNoiseModel(
        poly={b: d[f"{b}_err_poly"] for b in bands},
        level_range={b: d[f"{b}_level_range"] for b in bands},
        sigma_star={b: float(d[f"{b}_sigma_star"]) for b in bands},
        sigma_coef={b: d[f"{b}_sigma_coef"] for b in bands},
        corr_lower={b: d[f"{b}_corr_mean"] for b in bands},
        chol={b: np.linalg.cholesky(correlation_matrix(d[f"{b}_corr_mean"])) for b in bands},
        prior_mean=d["prior_mean"], prior_cov=d["prior_cov"])


@functools.lru_cache(maxsize=1)
def g_band_vectors() -> tuple[np.ndarray, np.ndarray, float]:
    """(bp (55,), rp (55,), zero point): Gaia G = -2.5 log10(bp.c_bp + rp.c_rp) + zp.

    Read from GaiaXPy's Gaia_DR3_Vega filter file (coefficient-space synthetic photometry).
    """
    path = xb.gaiaxpy_config_dir() / "filters" / "XpFilter_GaiaDr3Vega_v375wiv142r.xml"
    root = ElementTree.parse(path).getroot()
    bands = [i.text for i in root.find("bands")]
    zps = np.array([float(v.text) for v in root.find("zeropoints")])
    out = {}
    for band in ("bp", "rp"):
        node = root.find(f"XpSampling/{band}SampledBases")
        vals = np.array([float(v.text) for v in node])
        out[band] = vals.reshape(-1, int(node.attrib["dimension"]))   # (n_bands, 55)
    g = bands.index("G")
    return out["bp"][g], out["rp"][g], float(zps[g])


PREBIN = 4
"""Model pixels averaged before the XP line-spread function (0.6-1.7 A bins: far below the
XP resolution, 4x less work)."""


def prebin(flux: np.ndarray) -> np.ndarray:
    """(n, npix) model-grid flux -> (n, npix // PREBIN) bin means."""
    n, m = flux.shape
    k = m // PREBIN
    return flux[:, :k * PREBIN].reshape(n, k, PREBIN).mean(axis=2)


def _lsf_matrix(fwhm_nm: np.ndarray) -> sp.csr_matrix:
    """(343, npix/PREBIN) Gaussian LSF + 2 nm pixel from the pre-binned model grid onto the
    XP design grid."""
    design = xb.xp_design()
    wave_nm = prebin(model_wavelength()[None, :])[0] / 10.0
    dw = np.gradient(wave_nm)
    rows, cols, vals = [], [], []
    for j, (lam, fw) in enumerate(zip(design.wavelength_nm, fwhm_nm)):
        sig = np.sqrt((fw / 2.3548) ** 2 + 2.0 ** 2 / 12.0)
        i0, i1 = np.searchsorted(wave_nm, [lam - 4 * sig, lam + 4 * sig])
        w = np.exp(-0.5 * ((wave_nm[i0:i1] - lam) / sig) ** 2) * dw[i0:i1]
        rows.append(np.full(i1 - i0, j))
        cols.append(np.arange(i0, i1))
        vals.append(w / w.sum())
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(design.npix, wave_nm.size))


@functools.lru_cache(maxsize=1)
def lsf_operators() -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(BP, RP) smoothing operators from the model grid to the XP design grid."""
    lam = xb.xp_design().wavelength_nm
    disp = np.genfromtxt(xb.gaiaxpy_config_dir() / BP_DISPERSION_FILE, delimiter=",")
    nm_per_sample = np.abs(1.0 / np.gradient(disp[1], disp[0]))
    fwhm_bp = np.clip(np.interp(lam, disp[0], nm_per_sample), 2.0, 60.0)
    fwhm_rp = np.interp(lam, [640.0, 1050.0], [15.0, 25.0])
    return _lsf_matrix(fwhm_bp), _lsf_matrix(fwhm_rp)


@dataclass
class SyntheticXP:
    """XP data of a batch (catalog units: sampled flux in 1e-17 W m^-2 nm^-1)."""

    bp_coefficients: np.ndarray
    rp_coefficients: np.ndarray
    bp_coefficient_errors: np.ndarray
    rp_coefficient_errors: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    snr: np.ndarray
    noiseless_bp: np.ndarray
    noiseless_rp: np.ndarray
    scale: np.ndarray


PRIOR_SIGMA = 1e-3
"""Tolerance of the prior projection: the sampled spectrum of the coefficients matches the
LSF-smoothed model SED to ~0.1% of its mean flux."""


@functools.lru_cache(maxsize=1)
def _prior_operator() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stacked design S (110, 343), prior mean m (110,), operator P (343, 110))."""
    noise = load_noise_model()
    stacked, _ = xb.xp_design().stacked()
    c = noise.prior_cov
    sc = stacked.T @ c                                      # (343, 110)
    gram = sc @ stacked + PRIOR_SIGMA ** 2 * np.eye(stacked.shape[1])
    return stacked, noise.prior_mean, np.linalg.solve(gram, sc)


def prior_projection(flux_on_grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bp, rp) coefficients of (n, 343) sampled-grid SEDs (W m^-2 nm^-1), regularised
    towards the real coefficient distribution.

    The sampled basis is nearly degenerate (condition ~1e7), so a plain least-squares
    inverse (:func:`specsearch.io.xp_basis.project_to_coefficients`) returns coefficient
    vectors that reproduce the sampled spectrum but look nothing like published Gaia
    coefficients. Here the SED is divided by its mean s, and the Gaussian-prior (Wiener)
    solution ``c/s = m + (f/s - m S) P`` is taken, m and the covariance behind P being the
    statistics of real DR3 sources (:mod:`.fit_xp_noise`): the data fix every direction they
    constrain, the real-source prior fills the rest.
    """
    stacked, mean, op = _prior_operator()
    f = np.asarray(flux_on_grid, dtype=np.float64)
    s = f.mean(axis=1, keepdims=True)
    s = np.where(s > 0, s, np.abs(f).mean(axis=1, keepdims=True) + 1e-300)
    c = s * (mean + (f / s - mean @ stacked) @ op)
    return c[:, :55], c[:, 55:]


def noiseless_coefficients(flux_surface: np.ndarray, mag_g: np.ndarray,
                           teff: np.ndarray | None = None
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noiseless (n, 55) BP and RP coefficients of model spectra scaled to Gaia G ``mag_g``.

    ``flux_surface`` is (n, npix) on the model grid (any overall scale: it is set by G).
    With ``teff`` (n,), the sampled SED is multiplied by the realism correction fitted on
    real XP (:mod:`specsearch.synth.realism`) before projection.
    Returns (bp, rp, scale) where ``flux_surface * scale`` is the apparent flux
    (same units as ``flux_surface``).
    """
    lsf_bp, lsf_rp = lsf_operators()
    design = xb.xp_design()
    f = prebin(np.asarray(flux_surface, dtype=np.float64)) * SURFACE_TO_SI
    merged = (lsf_bp @ f.T).T * design.weight_bp + (lsf_rp @ f.T).T * design.weight_rp
    if teff is not None:
        from specsearch.synth.realism import load as load_realism

        merged = merged * load_realism()["xp"].factor(teff)
    bp, rp = prior_projection(merged)
    g_bp, g_rp, zp = g_band_vectors()
    g_flux = bp @ g_bp + rp @ g_rp
    g_unit = -2.5 * np.log10(np.maximum(g_flux, 1e-300)) + zp
    scale = 10.0 ** (-0.4 * (np.asarray(mag_g) - g_unit))
    return bp * scale[:, None], rp * scale[:, None], scale


def observe_xp(flux_surface: np.ndarray, mag_g: np.ndarray,
               rng: np.random.Generator, teff: np.ndarray | None = None) -> SyntheticXP:
    """Noisy XP coefficients and their sampled spectra for a batch (see the module doc);
    ``teff`` turns on the realism correction (:func:`noiseless_coefficients`)."""
    from specsearch.io.gaia_xp import XPContinuous, calibrate

    bp, rp, scale = noiseless_coefficients(flux_surface, mag_g, teff)
    noise = load_noise_model()
    n = bp.shape[0]
    coefs, errs = {}, {}
    for band, c in (("bp", bp), ("rp", rp)):
        e = noise.errors(band, c[:, 0], rng)
        z = rng.standard_normal((n, 55)) @ noise.chol[band].T
        coefs[band] = c + e * z
        errs[band] = e
    nanv = np.full(n, np.nan)
    xp = XPContinuous(
        source_id=np.arange(n, dtype=np.int64), bp_coefficients=coefs["bp"],
        rp_coefficients=coefs["rp"], bp_coefficient_errors=errs["bp"],
        rp_coefficient_errors=errs["rp"],
        bp_coefficient_correlations=np.broadcast_to(noise.corr_lower["bp"], (n, 1485)),
        rp_coefficient_correlations=np.broadcast_to(noise.corr_lower["rp"], (n, 1485)),
        bp_n_relevant_bases=np.zeros(n, dtype=np.int64),
        rp_n_relevant_bases=np.zeros(n, dtype=np.int64),
        bp_standard_deviation=nanv, rp_standard_deviation=nanv, ra=nanv, dec=nanv)
    sampled = calibrate(xp)
    flux, ivar = sampled.catalog_flux()
    return SyntheticXP(bp_coefficients=coefs["bp"], rp_coefficients=coefs["rp"],
                       bp_coefficient_errors=errs["bp"], rp_coefficient_errors=errs["rp"],
                       flux=flux, ivar=ivar, snr=sampled.snr(), noiseless_bp=bp,
                       noiseless_rp=rp, scale=scale)
