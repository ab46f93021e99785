"""Stellar labels of the synthetic survey: a LAMOST-like Galactic mix plus rare populations.

Normal stars come from three Galactic components (thin disk, thick disk, halo) with their own
metallicity distributions, [alpha/Fe] trends, extinction and velocity dispersions, and lie on
isochrone-like tracks: FGK and M dwarfs, hot main-sequence stars, subgiants, the red-giant
branch, the red clump / horizontal branch and bright (AGB) giants. The mix is tuned so that
[Fe/H] < -2 occurs in ~0.5% of stars (the default ``vmp`` + ``emp`` fractions; normal stars
are truncated at [Fe/H] = -2 so that the metal-poor tail is exactly the controllable
``vmp``/``emp`` populations).

Rare populations each have a label (``population``) and a fraction (:data:`DEFAULT_FRACTIONS`);
per batch the count of each is ``fraction * n`` rounded stochastically, so fractions hold
in every shard, not only on average. Instrument artefacts are independent of the population
(any star can have one) and only affect the LAMOST spectrum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtr, ndtri

from specsearch.errors import ConfigError

POPULATIONS: tuple[str, ...] = ("normal", "vmp", "emp", "carbon", "white_dwarf", "wd_md",
                                "emission", "hot_ob", "binary", "ultracool")
"""Population labels (``population`` column)."""

DEFAULT_FRACTIONS: dict[str, float] = {
    "vmp": 0.004,          # -3 <= [Fe/H] < -2: ~0.4% of a magnitude-limited disk+halo sample
    "emp": 0.0004,         # [Fe/H] < -3
    "carbon": 0.003,       # CEMP / CH / carbon giants (strong CH, C2, CN)
    "white_dwarf": 0.004,  # DA (broad Balmer), DB (He I), DC (featureless)
    "wd_md": 0.001,        # white dwarf + M dwarf unresolved pairs
    "emission": 0.005,     # dMe, Be and T Tauri-like (Balmer / Ca II in emission)
    "hot_ob": 0.003,       # O/B main sequence, sdB/sdO
    "binary": 0.05,        # unresolved pairs of two normal main-sequence stars
    "ultracool": 0.0,      # late-M / early-L dwarfs from real SDSS co-adds (synth/ultracool.py)
}
"""Default fraction of each rare population; ``normal`` takes the rest. ``ultracool`` is off
by default, so that surveys made before it existed come out the same for the same seed
(a population of fraction 0 draws nothing); the shipped model's training survey sets it."""

ARTEFACT_KINDS: tuple[str, ...] = ("dead_fibre", "sky_residual", "flux_tilt", "arm_join")
DEFAULT_ARTEFACT_FRACTION = 0.01
"""Fraction of LAMOST spectra with an instrument artefact (kinds drawn uniformly)."""

LABEL_RANGES: dict[str, tuple[float, float]] = {
    "teff": (1900.0, 60000.0),    # K
    "logg": (-0.5, 9.5),          # dex (cgs)
    "feh": (-4.5, 0.7),           # dex
    "alpha_fe": (-0.2, 0.7),      # dex
    "ebv": (0.0, 1.5),            # mag
    "rv": (-700.0, 700.0),        # km/s, heliocentric
    "mag_g": (9.0, 18.5),         # Gaia G (Vega)
    "snr": (2.0, 1000.0),         # LAMOST median S/N per pixel, 4000-5500 A
}
"""Declared ranges of the labels (NaN allowed where a label is undefined, e.g. [Fe/H] of a
white dwarf)."""

COMPONENTS: dict[str, dict[str, float]] = {
    # weight, MDF mean / sigma, E(B-V) scale (mag), RV mean / sigma (km/s)
    "thin": dict(weight=0.80, feh_mu=-0.10, feh_sigma=0.22, ebv=0.12, rv_mu=-5.0, rv_sigma=28.0),
    "thick": dict(weight=0.17, feh_mu=-0.60, feh_sigma=0.28, ebv=0.06, rv_mu=-20.0,
                  rv_sigma=55.0),
    "halo": dict(weight=0.03, feh_mu=-1.55, feh_sigma=0.50, ebv=0.03, rv_mu=0.0,
                 rv_sigma=120.0),
}
NORMAL_FEH_FLOOR = -2.0
"""Normal stars are drawn with [Fe/H] >= this; below it a star is ``vmp`` or ``emp``."""


@dataclass
class StellarLabels:
    """Labels of a batch of synthetic stars (arrays of one length ``n``).

    Attributes:
        teff: effective temperature (K) of the star (the primary for binaries; NaN for
            ``wd_md`` composites, whose two components are in ``extra``).
        logg: surface gravity (dex, cgs).
        feh: [Fe/H] (dex; NaN for white dwarfs).
        alpha_fe: [alpha/Fe] (dex; NaN for white dwarfs).
        ebv: E(B-V) (mag).
        rv: heliocentric radial velocity (km/s).
        mag_g: Gaia G magnitude (Vega).
        population: population label per star (see :data:`POPULATIONS`).
        component: Galactic component ('thin', 'thick', 'halo', or '' for compact stars).
        state: evolutionary state ('dwarf', 'mdwarf', 'hot_ms', 'subgiant', 'rgb', 'clump',
            'agb', 'bhb', 'wd', 'sd', ...).
        extra: population-specific arrays (NaN where not applicable): ``teff2``/``logg2``
            (companion), ``radius_ratio2`` (companion/primary radius), ``c_fe``,
            ``halpha_ew`` (emission EW, A, negative = emission), ``wd_type`` (0 DA, 1 DB,
            2 DC).
    """

    teff: np.ndarray
    logg: np.ndarray
    feh: np.ndarray
    alpha_fe: np.ndarray
    ebv: np.ndarray
    rv: np.ndarray
    mag_g: np.ndarray
    population: np.ndarray
    component: np.ndarray
    state: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.teff.shape[0])


def resolve_fractions(fractions: dict[str, float] | None = None,
                      metal_poor_boost: float = 1.0) -> dict[str, float]:
    """Merge user fractions into the defaults, apply the metal-poor boost, check the sum.

    Raises:
        ConfigError: an unknown population, a negative fraction, or fractions summing to > 1.
    """
    out = dict(DEFAULT_FRACTIONS)
    for name, value in (fractions or {}).items():
        if name not in out:
            raise ConfigError(f"unknown population {name!r} in fractions; expected one of "
                              f"{sorted(out)} ('normal' takes the remainder)")
        out[name] = float(value)
    if metal_poor_boost <= 0:
        raise ConfigError(f"metal_poor_boost must be > 0, got {metal_poor_boost}")
    out["vmp"] *= metal_poor_boost
    out["emp"] *= metal_poor_boost
    bad = {k: v for k, v in out.items() if not (0.0 <= v <= 1.0)}
    if bad:
        raise ConfigError(f"population fractions must lie in [0, 1]; got {bad}")
    total = sum(out.values())
    if total > 1.0 + 1e-9:
        raise ConfigError(f"rare population fractions sum to {total:.3f} > 1 (after the "
                          f"metal-poor boost {metal_poor_boost}); lower some of {out}")
    return out


def population_counts(rng: np.random.Generator, n: int,
                      fractions: dict[str, float]) -> dict[str, int]:
    """Counts per population for a batch of ``n``: floor(f n) plus a Bernoulli remainder
    (a population of fraction 0 takes no draw from ``rng``)."""
    counts = {}
    for name in POPULATIONS[1:]:
        exact = fractions.get(name, 0.0) * n
        if exact <= 0.0:
            counts[name] = 0
            continue
        counts[name] = int(np.floor(exact) + (rng.random() < exact - np.floor(exact)))
    excess = sum(counts.values()) - n
    for name in reversed(POPULATIONS[1:]):   # only with fractions summing to ~1
        take = min(max(excess, 0), counts[name])
        counts[name] -= take
        excess -= take
    counts["normal"] = n - sum(counts.values())
    return counts


# --------------------------------------------------------------------------- helpers

def truncated_normal(rng: np.random.Generator, mu, sigma, lo, hi, size) -> np.ndarray:
    """Normal(mu, sigma) truncated to [lo, hi] by inverse-CDF sampling (vectorised)."""
    mu, sigma = np.broadcast_to(mu, size), np.broadcast_to(sigma, size)
    a, b = ndtr((lo - mu) / sigma), ndtr((hi - mu) / sigma)
    u = a + (b - a) * rng.random(size)
    return mu + sigma * ndtri(np.clip(u, 1e-12, 1 - 1e-12))


def ms_logg(teff: np.ndarray, feh: np.ndarray) -> np.ndarray:
    """Zero-age-ish main-sequence log g vs Teff (dex), slightly higher for metal-poor stars."""
    t = np.array([2800, 3200, 3600, 4000, 4500, 5000, 5500, 6000, 6500, 7000, 8000,
                  10000, 15000, 25000, 40000], dtype=float)
    g = np.array([5.20, 5.05, 4.85, 4.70, 4.62, 4.55, 4.48, 4.38, 4.28, 4.20, 4.15,
                  4.12, 4.10, 4.05, 4.00])
    return np.interp(teff, t, g) - 0.04 * np.minimum(feh, 0.0)


def ms_radius(teff: np.ndarray) -> np.ndarray:
    """Main-sequence radius (R_sun) vs Teff, for the flux ratio of unresolved pairs."""
    t = np.array([2800, 3200, 3500, 3800, 4200, 4700, 5200, 5800, 6300, 7000, 8500, 10000],
                 dtype=float)
    r = np.array([0.12, 0.20, 0.35, 0.50, 0.65, 0.75, 0.85, 1.00, 1.20, 1.50, 1.80, 2.30])
    return np.interp(teff, t, r)


def rgb_teff(logg: np.ndarray, feh: np.ndarray) -> np.ndarray:
    """Red-giant-branch Teff (K) vs log g and [Fe/H] (metal-poor branches are hotter)."""
    return 4620.0 + 290.0 * (logg - 2.5) - 170.0 * feh


def alpha_for(rng: np.random.Generator, feh: np.ndarray, component: np.ndarray) -> np.ndarray:
    """[alpha/Fe] from the component's trend with [Fe/H] plus 0.04 dex scatter."""
    thin = np.clip(-0.12 * feh, -0.05, 0.2)
    thick = np.clip(0.15 - 0.25 * feh, 0.1, 0.32)
    low_alpha_halo = rng.random(feh.shape) < 0.25     # accreted, low-alpha halo stars
    halo = np.where(low_alpha_halo, 0.15, 0.33)
    base = np.where(component == "thin", thin, np.where(component == "thick", thick, halo))
    return np.clip(base + rng.normal(0.0, 0.04, feh.shape), *LABEL_RANGES["alpha_fe"])
