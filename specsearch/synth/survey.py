"""The synthetic paired survey: labels -> one model spectrum per star -> LAMOST + XP rows.

Determinism: star ``i`` of shard ``k`` is made from ``SeedSequence([seed, k, i // BATCH])``
(fixed internal batch of :data:`BATCH` stars), so a shard can be generated independently,
by any worker, in any order, and gives the same rows; the catalog is a function of
(seed, n, shard_size, fractions, metal_poor_boost, artefact_fraction).

Catalog convention: LAMOST flux is F_lambda in 1e-17 erg s^-1 cm^-2 A^-1 on
:data:`specsearch.preprocess.LAMOST_GRID` in the star's **rest frame** up to the residual
velocity error of the pipeline (``rv_error_kms``, default 5 km/s); ``rv`` is the true
heliocentric velocity. XP flux is in 1e-17 W m^-2 nm^-1 on the 343-point XP grid.
Both are reddened by ``ebv`` (G23, R_V = 3.1) and scaled to ``mag_g``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from specsearch.errors import ConfigError
from specsearch.synth.artefacts import apply_artefacts, draw_artefacts
from specsearch.synth.individuality import draw as draw_individuality
from specsearch.synth.individuality import extinction_curve as g23_curve
from specsearch.synth.individuality import extinction_for
from specsearch.synth.labels import (
    DEFAULT_ARTEFACT_FRACTION,
    LABEL_RANGES,
    StellarLabels,
    resolve_fractions,
)
from specsearch.synth.lamost import observe_lamost
from specsearch.synth.mix import sample_labels
from specsearch.synth.model import model_spectra
from specsearch.synth.xp import observe_xp

BATCH = 500
"""Stars per internal batch (fixed: it is part of the seeding scheme)."""
R_V = 3.1
SOURCE_ID_BASE = 1 << 60
EXTRA_COLUMNS = ("teff2", "logg2", "c_fe", "halpha_ew")
"""Population-specific label columns written to the catalog (NaN/null where n/a)."""


@dataclass
class SynthConfig:
    """What to generate.

    Attributes:
        n: number of stars (each gives one LAMOST and one XP row).
        seed: master seed (source_ids embed ``seed % 2**20``).
        metal_poor_boost: multiplies the ``vmp``/``emp`` fractions (e.g. 20 for training).
        fractions: population -> fraction overrides (see ``labels.DEFAULT_FRACTIONS``).
        artefact_fraction: fraction of LAMOST spectra with an instrument artefact.
        shard_size: stars per shard (one Parquet file per modality and shard).
        rv_error_kms: sigma of the residual velocity left in the rest-frame LAMOST flux.
        realism: apply the realism corrections fitted on real LAMOST and XP spectra
            (:mod:`specsearch.synth.realism`); False gives the physics + emulator survey.
        individuality: give each star individual abundances, rotation and an R_V of its
            own (:mod:`specsearch.synth.individuality`).
        repeat_fraction: fraction of stars observed a second time by both instruments
            (an independent visit: its own S/N, noise, RV residual, calibration, artefacts),
            written as extra rows with the same ``source_id`` (``spectrum_id``
            ``synth<seed>-<i>-v2-<instrument>``): what the identity objective of ``specsearch train`` learns from.
    """

    n: int
    seed: int = 0
    metal_poor_boost: float = 1.0
    fractions: dict[str, float] | None = None
    artefact_fraction: float = DEFAULT_ARTEFACT_FRACTION
    shard_size: int = 50_000
    rv_error_kms: float = 5.0
    realism: bool = True
    individuality: bool = True
    repeat_fraction: float = 0.0
    resolved_fractions: dict[str, float] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")
        if self.shard_size < 1:
            raise ConfigError(f"shard_size must be >= 1, got {self.shard_size}")
        if not 0.0 <= self.artefact_fraction <= 1.0:
            raise ConfigError(f"artefact_fraction must be in [0, 1], got "
                              f"{self.artefact_fraction}")
        if not 0.0 <= self.repeat_fraction <= 1.0:
            raise ConfigError(f"repeat_fraction must be in [0, 1], got {self.repeat_fraction}")
        self.resolved_fractions = resolve_fractions(self.fractions, self.metal_poor_boost)

    @property
    def n_shards(self) -> int:
        return -(-self.n // self.shard_size)

    def shard_rows(self, shard: int) -> int:
        return min(self.shard_size, self.n - shard * self.shard_size)

    def describe(self) -> dict:
        d = asdict(self)
        d.pop("resolved_fractions")
        d["fractions"] = self.resolved_fractions
        return d


def extinction_curve() -> np.ndarray:
    """A(lambda)/E(B-V) on the model grid (G23, R_V = 3.1)."""
    return g23_curve(R_V)


def draw_snr(rng: np.random.Generator, mag_g: np.ndarray) -> np.ndarray:
    """LAMOST-like S/N per pixel (4000-5500 A) vs G: photon-limited when bright, sky-limited
    when faint, with 0.2 dex scatter (observing conditions)."""
    base = 120.0 * 10.0 ** (-0.2 * (mag_g - 13.0)) / np.sqrt(1.0 + 10.0 ** (0.4 * (mag_g
                                                                                 - 16.0)))
    return np.clip(base * 10.0 ** rng.normal(0.0, 0.2, mag_g.shape), *LABEL_RANGES["snr"])


def draw_sky_positions(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform on the sphere within a LAMOST-like footprint (-10 < Dec < 60 deg)."""
    ra = rng.uniform(0.0, 360.0, n)
    s = rng.uniform(np.sin(np.radians(-10.0)), np.sin(np.radians(60.0)), n)
    return ra, np.degrees(np.arcsin(s))


def _label_columns(labels: StellarLabels) -> dict[str, np.ndarray]:
    cols = {k: getattr(labels, k).astype(np.float32) for k in
            ("teff", "logg", "feh", "alpha_fe", "ebv", "rv", "mag_g")}
    cols["population"] = labels.population.astype(str)
    for k in EXTRA_COLUMNS:
        cols[k] = labels.extra[k].astype(np.float32)
    return cols


def generate_batch(config: SynthConfig, shard: int, batch: int) -> tuple[dict, dict]:
    """Columns of one internal batch: (lamost columns, xp columns), rows paired by order."""
    start = shard * config.shard_size + batch * BATCH
    n = min(BATCH, shard * config.shard_size + config.shard_rows(shard) - start)
    if n <= 0:
        raise ConfigError(f"batch {batch} of shard {shard} is empty for n={config.n}, "
                          f"shard_size={config.shard_size}")
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, shard, batch]))
    labels = sample_labels(rng, n, config.resolved_fractions)
    ind = draw_individuality(rng, labels.teff, labels.logg) if config.individuality else None
    intrinsic = model_spectra(labels, ind)
    ext = extinction_curve()[None, :] if ind is None else extinction_for(ind.r_v)
    extincted = (intrinsic * 10.0 ** (-0.4 * labels.ebv[:, None] * ext)).astype(np.float32)
    # The realism corrections were fitted for the emulator's stars; the ultracool dwarfs
    # are real co-adds already (NaN Teff turns the correction off).
    teff = (np.where(labels.population == "ultracool", np.nan, labels.teff)
            if config.realism else None)
    lam, xp = _observe(config, extincted, labels.rv, labels.mag_g, teff, rng)
    ra, dec = draw_sky_positions(rng, n)
    index = np.arange(start, start + n, dtype=np.int64)
    source_id = SOURCE_ID_BASE + (config.seed % (1 << 20)) * (1 << 36) + index
    common = {"source_id": source_id, "ra": ra, "dec": dec, **_label_columns(labels)}
    ids = np.array([f"synth{config.seed}-{i}" for i in index])
    if config.repeat_fraction > 0:
        vrng = np.random.default_rng(np.random.SeedSequence([config.seed, shard, batch, 1]))
        again = np.flatnonzero(vrng.random(n) < config.repeat_fraction)
        lam2, xp2 = _observe(config, extincted[again], labels.rv[again],
                             labels.mag_g[again], None if teff is None else teff[again], vrng)
        lam = {k: np.concatenate([lam[k], lam2[k]]) for k in lam}
        xp = {k: np.concatenate([xp[k], xp2[k]]) for k in xp}
        common = {k: np.concatenate([np.asarray(v), np.asarray(v)[again]])
                  for k, v in common.items()}
        ids = np.concatenate([ids, np.char.add(ids[again], "-v2")])
    lamost_cols = {"spectrum_id": [f"{s}-lamost" for s in ids], **common, **lam}
    xp_cols = {"spectrum_id": [f"{s}-xp" for s in ids], **common, **xp}
    return lamost_cols, xp_cols


def _observe(config: SynthConfig, extincted: np.ndarray, rv: np.ndarray, mag_g: np.ndarray,
             teff: np.ndarray | None, rng: np.random.Generator) -> tuple[dict, dict]:
    """One visit of each instrument to the stars of ``extincted``: the (lamost, xp)
    instrument columns (draws from ``rng`` in the survey's fixed order)."""
    n = extincted.shape[0]
    xp = observe_xp(extincted, mag_g, rng, teff)
    snr = draw_snr(rng, mag_g)
    lam = observe_lamost(extincted, xp.scale, rv, snr, mag_g, rng,
                         rv_error_kms=config.rv_error_kms, teff=teff)
    kinds = draw_artefacts(rng, n, config.artefact_fraction)
    apply_artefacts(lam.flux, lam.ivar, kinds, rv, rng)
    lamost = {"flux": lam.flux, "ivar": lam.ivar, "snr": lam.snr,
              "is_artefact": kinds != "", "artefact_kind": kinds.astype(str)}
    xp_cols = {"flux": xp.flux, "ivar": xp.ivar, "snr": xp.snr.astype(np.float32),
               "is_artefact": np.zeros(n, dtype=bool), "artefact_kind": np.full(n, ""),
               "bp_coefficients": xp.bp_coefficients.astype(np.float32),
               "rp_coefficients": xp.rp_coefficients.astype(np.float32),
               "bp_coefficient_errors": xp.bp_coefficient_errors.astype(np.float32),
               "rp_coefficient_errors": xp.rp_coefficient_errors.astype(np.float32)}
    return lamost, xp_cols


def iter_shard(config: SynthConfig, shard: int) -> Iterator[tuple[dict, dict]]:
    """Stream the (lamost, xp) column batches of one shard."""
    n_batches = -(-config.shard_rows(shard) // BATCH)
    for b in range(n_batches):
        yield generate_batch(config, shard, b)


def iter_survey(config: SynthConfig) -> Iterator[tuple[dict, dict]]:
    """Stream all batches of the survey in order (in memory; nothing written)."""
    for shard in range(config.n_shards):
        yield from iter_shard(config, shard)


def generate_columns(n: int, seed: int = 0, **kwargs) -> tuple[dict, dict]:
    """All rows of a small survey as in-memory column dicts (lamost, xp); for tests and
    notebooks - use :func:`specsearch.synth.generate_survey` for anything large."""
    config = SynthConfig(n=n, seed=seed, **kwargs)
    parts = list(iter_survey(config))
    out = []
    for m in range(2):
        keys = parts[0][m].keys()
        out.append({k: np.concatenate([np.asarray(p[m][k]) for p in parts]) for k in keys})
    return out[0], out[1]
