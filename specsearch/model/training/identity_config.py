"""What ``specsearch train-identity`` trains, and how (:class:`IdentityTrainConfig`), and what
a run gave (:class:`IdentityTrainResult`): plain data, no torch, so that the CLI takes its
defaults from here; the training itself is :mod:`specsearch.model.training.identity_encoder`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from specsearch.errors import ConfigError
from specsearch.model.training.configs import AugmentConfig


@dataclass(frozen=True)
class IdentityTrainConfig:
    """What ``specsearch train-identity`` trains, and how.

    Attributes:
        modality: the instrument whose identity encoder is trained (``lamost``).
        hidden, depth, dim: the encoder's width, residual blocks and output dimension.
        steps, batch, lr, weight_decay: AdamW with a cosine schedule over ``steps``
            batches of ``batch`` stars (each seen as both its visits).
        temperature: the NT-Xent temperature (fixed).
        hard_fraction, hard_group: the share of each batch made of groups of
            ``hard_group`` look-alike stars (0: random stars only).
        min_snr: only stars whose two visits both reach this S/N train (and validate):
            the survey's faintest visits share too little to learn from, and a same-star
            search is asked of spectra a survey would trust.
        augment: the augmentations each visit gets (smaller S/N drops and shifts than the
            fine-tuning default: the visits carry their own noise and velocity residuals).
        resample_snr: before the augmentations, lower each visit's S/N to its own
            log-uniform draw between ``min_snr`` and its S/N, independently of the other
            visit. A survey's two visits of a star have similar S/N (its magnitude sets
            both: Spearman 0.68 in the synthetic survey), and an encoder left to it learns
            the noise level as a clue to the star; its neighbours then follow the query's
            S/N.
        memory, memory_start: a cross-batch memory (XBM, Wang et al. 2020): the vectors
            of the last ``memory`` stars' visits (both views, detached) join each batch's
            negatives from step ``memory_start`` on (the encoder's vectors drift slowly
            once the first steps are over). A batch of 1,024 stars asks the encoder to
            tell a star from 1,023 others; a search among millions asks for finer
            distinctions, and the memory gives each step ``memory`` more look-alikes to
            be told apart from at the cost of a matrix product. A star's own earlier
            visits in the memory are left out (they are not negatives). 0: off.
        own_noise: the encoder reads each visit's own noise (``EncoderConfig.own_noise``:
            per-pixel input shrinkage and FiLM by its S/N) instead of the noise-blind
            input of the embedding's encoder; with ``resample_snr`` the two visits' noise
            levels say little about each other, so the noise level is no clue to the star.
        ignore_bands: wavelength ranges (Angstrom) the encoder never reads, in training
            and at inference (``EncoderConfig.ignore_bands``); ``()``: none. ``--ignore-bands
            telluric`` gives :data:`specsearch.preprocess.TELLURIC_BANDS`: two visits'
            telluric residuals differ by the night, not by the star.
        resume: go on training the identity encoder the model already has for
            ``modality`` (its width, depth, dimension and input; ``hidden``, ``depth``,
            ``dim``, ``own_noise`` and ``ignore_bands`` are then ignored) instead of a
            fresh one: a second cosine schedule from its weights (a warm restart).
        val_pairs: validation pairs scored at the end (and every ``val_every`` steps).
        seed: every random draw (batches, augmentations, initialisation).
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    modality: str = "lamost"
    hidden: int = 512
    depth: int = 1
    dim: int = 128
    steps: int = 4000
    batch: int = 1024
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.05
    hard_fraction: float = 0.5
    hard_group: int = 8
    min_snr: float = 10.0
    augment: AugmentConfig = AugmentConfig(max_snr_drop=2.5, max_shift_px=0.15)
    resample_snr: bool = True
    memory: int = 0
    memory_start: int = 500
    own_noise: bool = False
    ignore_bands: tuple[tuple[float, float], ...] = ()
    resume: bool = False
    val_pairs: int = 4096
    val_every: int = 500
    seed: int = 0
    device: str = "auto"

    def validate(self) -> "IdentityTrainConfig":
        if self.steps < 1 or self.batch < 4:
            raise ConfigError(f"steps must be >= 1 and batch >= 4; got {self.steps} and "
                              f"{self.batch}")
        if not 0.0 <= self.hard_fraction <= 1.0 or self.hard_group < 2:
            raise ConfigError(f"hard_fraction must be in [0, 1] and hard_group >= 2; got "
                              f"{self.hard_fraction} and {self.hard_group}")
        if not (self.temperature > 0 and self.lr > 0 and self.hidden >= 8 and self.dim >= 2
                and self.depth >= 0 and self.min_snr >= 0 and self.memory >= 0
                and self.memory_start >= 0):
            raise ConfigError(f"temperature and lr must be > 0, hidden >= 8, dim >= 2, "
                              f"depth >= 0, min_snr, memory and memory_start >= 0; got "
                              f"{self}")
        if any(not (float(lo) < float(hi)) for lo, hi in self.ignore_bands):
            raise ConfigError(f"ignore_bands must be (lo, hi) wavelength ranges with lo < hi; "
                              f"got {self.ignore_bands}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class IdentityTrainResult:
    out: str
    model_hash: str
    steps: int
    seconds: float
    n_stars: int
    val: dict[str, float]
    history: list[dict[str, float]]
    fit: dict[str, float] = dataclasses.field(default_factory=dict)
