"""The configuration dataclasses of training (augmentations, loss, ``train``,
``train-heads``, ``finetune``): plain data, no torch, so that the CLI takes its defaults
from here instead of copying them."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from specsearch.errors import ConfigError


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and amplitudes of each augmentation (0 disables one).

    Attributes:
        p_noise, max_snr_drop: probability of degrading the S/N, and the largest factor.
        p_shift, max_shift_px: probability and largest |shift| in pixels (LAMOST: 69 km/s
            a pixel; catalogs are in the rest frame up to the survey's RV errors).
        p_mask, max_segments, max_segment_frac: masked segments (count, fraction of npix).
        p_tilt, tilt_lamost, tilt_xp: probability and largest end-to-end slope amplitude.
        p_red_cut, red_cut_a: probability that a LAMOST spectrum loses everything redward
            of a wavelength drawn uniformly in ``red_cut_a`` (A): the coverage of MILES and
            other libraries (to 7410 A), or a lost red arm.
        p_sed_tilt, sed_tilt, sed_curve: probability, largest slope and largest curvature
            (log10, at the ends of the grid) of a flux-calibration error added to LAMOST SED
            columns (p 0: off, the default, so that models without SED inputs train on the
            random stream they always did). The amplitudes match real LAMOST: between two
            visits of one star (16 DR10 + 3 DR8 repeat pairs) the log SED differs by a slope
            of median |0.048| (90th percentile 0.12) and a curvature of median |0.011-0.024|;
            the synthetic survey's own per-visit calibration gives 0.013 and 0.010, so the
            augmentation adds mostly slope (uniform +-0.09: 0.052 rms per view).
    """

    p_noise: float = 0.5
    max_snr_drop: float = 4.0
    p_shift: float = 0.5
    max_shift_px: float = 0.5
    p_mask: float = 0.3
    max_segments: int = 2
    max_segment_frac: float = 0.15
    p_tilt: float = 0.5
    tilt_lamost: float = 0.02
    tilt_xp: float = 0.03
    p_red_cut: float = 0.0
    red_cut_a: tuple[float, float] = (6800.0, 8200.0)
    p_sed_tilt: float = 0.0
    sed_tilt: float = 0.09
    sed_curve: float = 0.02


VIEW_AUGMENT = AugmentConfig(p_noise=0.9, max_snr_drop=8.0, p_shift=0.8, max_shift_px=0.8,
                             p_mask=0.4, max_segments=2, max_segment_frac=0.12, p_tilt=0.8,
                             tilt_lamost=0.05, tilt_xp=0.04)
"""The nuisances of the second view of a real spectrum in ``finetune``'s optional
real-view term (stronger than the training default: S/N down to 1/8, RV residual up to
55 km/s, 5% continuum tilt)."""


@dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms and the noise floors (prepared-flux units).

    Attributes:
        contrastive, recon, translation, labels, classes: term weights (0 disables one).
        floor_lamost, floor_xp: per-pixel error floors added in quadrature to the noise.
            The spectral terms are kept weak (recon/translation 0.01, 2% floors): on the
            synthetic survey, stronger ones (0.05 and 1%/0.5% floors) cost a factor ~2 in
            parameter precision and ~4 in top-1 retrieval after the same number of epochs.
        nll_beta: beta of the beta-NLL (0: plain Gaussian NLL; 0.5 keeps the means well
            trained when some stars are hard).
    """

    contrastive: float = 1.0
    recon: float = 0.01
    translation: float = 0.01
    labels: float = 1.0
    classes: float = 0.3
    floor_lamost: float = 0.02
    floor_xp: float = 0.02
    nll_beta: float = 0.5

    def floor(self, modality: str) -> float:
        return self.floor_lamost if modality == "lamost" else self.floor_xp


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the checkpoint for --resume).

    Attributes:
        arch: registered architecture (``list_models()``); embedding_dim overrides its D.
        epochs, batch_size, lr, weight_decay, warmup_steps: the optimisation (AdamW, linear
            warm-up then cosine decay to lr/20 over ``epochs``).
        patience: epochs without a better validation loss before stopping early.
        seed: seeds shuffling, augmentation, dropout and initialisation.
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``; amp: ``auto`` (bf16
            autocast on CUDA only), ``bf16`` or ``off``.
        val_fraction, test_fraction: the split by source_id hash (test stars are never
            read by training; ``specsearch evaluate`` uses them).
        max_val_pairs: validation subset size (speed).
        labels: label columns for the heads (None: every known label column present).
        max_minutes: wall-clock budget; the run validates, saves and stops when it is spent.
        keep_cache: keep OUT/cache after a finished run (reused by train-heads).
        identity, identity_temperature: weight and fixed temperature of the identity term:
            a star's independent second visit (a catalog made with ``specsearch synth
            --repeat-fraction``) must find its first among all views of the batch
            (NT-Xent), in each modality (:mod:`specsearch.model.training.identity`).
        snr_slope: weight of the penalty on the systematic move of the embedding with
            S/N between two views of the same star (see
            :func:`specsearch.model.training.loss.snr_slope`).
        noise_blind: when set, the encoders are noise-blind from the start (input shrinkage
            off, FiLM at this fixed S/N per pixel:
            :func:`specsearch.model.conversions.noise_blind_config`); None: the architecture's.
        sed_inputs: the LAMOST encoder also reads the SED columns of its input
            (:func:`specsearch.model.conversions.sed_inputs_config`), with the SED
            flux-calibration augmentation at probability ``augment.p_sed_tilt`` (set it).
    """

    arch: str = "small"
    embedding_dim: int | None = None
    epochs: int = 30
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    patience: int = 5
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    max_val_pairs: int = 4096
    labels: tuple[str, ...] | None = None
    max_minutes: float | None = None
    keep_cache: bool = False
    identity: float = 1.0
    identity_temperature: float = 0.07
    snr_slope: float = 1.0
    noise_blind: float | None = None
    sed_inputs: bool = False
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        d["loss"] = LossConfig(**d.get("loss", {}))
        d["augment"] = AugmentConfig(**d.get("augment", {}))
        if d.get("labels") is not None:
            d["labels"] = tuple(d["labels"])
        return cls(**d)


@dataclass
class HeadsConfig:
    """Options of ``train-heads`` (labels None: as ``train`` chooses them)."""

    labels: tuple[str, ...] | None = None
    epochs: int = 40
    batch_size: int = 1024
    lr: float = 2e-3
    patience: int = 6
    nll_beta: float = 0.5
    class_weight: float = 0.3
    seed: int = 0
    device: str = "auto"


@dataclass
class FinetuneConfig:
    """Options of ``specsearch finetune``.

    Attributes:
        steps: optimizer steps; synth_batch, real_batch, xp_batch: rows per step of each.
        lr: AdamW peak learning rate (warm-up 50 steps, cosine to lr/20).
        identity: weight of the in-modality view NT-Xent; identity_temperature its fixed T;
            snr_slope: weight of the S/N-slope penalty between the views (as in train).
        real_views: weight of the optional views term on real spectra (two augmented views
            of one real spectrum; 0: off).
        real_labels: weight of the real LAMOST head likelihood.
        augment: the augmentations of the synthetic and real views (and second visits).
        clean_anchor: weight of the noise-invariance term
            (:func:`specsearch.model.training.identity.clean_anchor_loss`; 0: off): spectra
            with S/N >= anchor_min_snr, made noisier down to S/N anchor_snr_floor, must embed
            where they embed clean (the synthetic spectra of ``anchor_modalities``, and, with
            ``anchor_real``, the real LAMOST batch when LAMOST is one of them).
        noise_blind: when set, the S/N per pixel at which the encoders are made blind to the
            noise level before training (:func:`specsearch.model.conversions.make_noise_blind`:
            input shrinkage off, FiLM at this fixed S/N); None keeps the base model's.
        snr_adversary: strength of the reversed gradient from an S/N critic on the
            synthetic second visits (:class:`specsearch.model.training.identity.SnrAdversary`:
            it learns which of two visits of a star is the noisier from their embeddings, the
            encoders learn to hide it); 0: off.
        head_distill: weight of a term that keeps the head predictions on the real LAMOST
            views where the starting model puts them (its frozen copy is the teacher, or
            the ``teacher_model`` given to ``finetune``; mean squared difference in
            standardised label units); 0: off. ``distill_synthetic``
            applies it to the synthetic views of both modalities as well. With a red cut
            the teacher reads each view before its cut, so a spectrum without its red arm
            learns to read as the teacher reads the whole spectrum.
        sed_inputs: give the encoders SED inputs first
            (:func:`specsearch.model.conversions.add_sed_inputs`: the LAMOST encoder also reads
            the SED the continuum normalisation divides out; zero-initialised, so training
            starts from the base model's embedding). sed_tilt_p: probability of the SED
            flux-calibration augmentation (``AugmentConfig.p_sed_tilt``) on a model with SED
            inputs (a model without them trains on the random stream it always did).
            sed_lr_factor: the SED input weights' learning rate / ``lr`` (they start at
            zero while everything else starts trained).
        heads_only: train the parameter heads alone on the frozen encoders (the embedding,
            and so every neighbour, stays exactly the starting model's): the synthetic and
            real label terms (and ``head_distill``) are fitted, the encoder-only terms
            (identity, S/N slope, clean anchor, adversary, real views) are not computed.
        hard_negatives: share of each synthetic batch drawn as groups of ``hard_group``
            look-alike stars (:mod:`specsearch.model.training.hard_negatives`; 0: all random).
        real_red_cut: when > 0, the share of the real LAMOST views that lose their red end
            (beyond a random ``augment.red_cut_a``) in place of ``augment.p_red_cut``, which
            then cuts only the synthetic views: the heads learn spectra without a red arm
            from real labels while the synthetic views keep the whole spectrum.
        coverage_bins: when > 0, give the heads this many coverage inputs first
            (:func:`specsearch.model.conversions.add_coverage_inputs`: the good-pixel fraction
            in equal stretches of the grid, zero-initialised), so that with ``p_red_cut`` /
            ``real_red_cut`` they learn spectra without a red arm apart from whole ones; a
            head change, allowed with ``heads_only``.
        head_fill_a: when > 0, the LAMOST heads read spectra that lack the grid beyond this
            wavelength (Angstrom; at least a tenth of it masked) with the missing pixels
            filled by the model's own reconstruction, ``head_fill_rounds`` times
            (:func:`specsearch.model.conversions.set_head_fill`,
            :class:`specsearch.model.config.FillConfig`); the embedding does not change.
        catalogue_offsets: real sets (of ``real_sets``) whose catalogue labels are on a
            scale of their own: a per-label offset is learnt for each (labels = the heads'
            scale + offset in the likelihood, and in the real-data calibration), so the
            heads report every spectrum on the scale of the other catalogues and the
            synthetic truth. The learnt offsets are recorded in the model's training record.
        new_classes: accept a catalog whose population classes include ones the model
            lacks: the heads grow an output for each
            (:func:`specsearch.model.conversions.add_population_classes`, from a logit of
            -10, so the converted model classifies as before).
        hot_label_noise: (label, uncertainty) pairs: the LAMOST pipeline labels of stars
            with a catalogue Teff >= 7000 K count with at least this uncertainty in the
            likelihood (LASP's A-star log g and [Fe/H] disagree with the synthetic truth and
            MILES' compilation; :func:`specsearch.model.training.real_sets.prepare_real`).
            Empty: each catalogue's one typical uncertainty (``LABEL_NOISE``).
        real_sets: which real sets train the heads (labels) and the views;
            real_set_weights: the share of each in a real batch (MILES, a few hundred stars
            over 3540-7410 A only, would otherwise be a small minority next to LAMOST DR10).
        seed, device, threads: reproducibility and placement.
    """

    steps: int = 1500
    synth_batch: int = 256
    real_batch: int = 128
    xp_batch: int = 128
    lr: float = 2e-4
    weight_decay: float = 0.01
    identity: float = 1.0
    identity_temperature: float = 0.07
    snr_slope: float = 1.0
    real_views: float = 0.0
    real_labels: float = 1.0
    clean_anchor: float = 0.0
    anchor_min_snr: float = 30.0
    anchor_snr_floor: float = 5.0
    anchor_modalities: tuple[str, ...] = ("lamost", "xp")
    anchor_real: bool = True
    noise_blind: float | None = None
    snr_adversary: float = 0.0
    head_distill: float = 0.0
    distill_synthetic: bool = False
    sed_inputs: bool = False
    sed_tilt_p: float = 0.8
    sed_lr_factor: float = 1.0
    heads_only: bool = False
    hard_negatives: float = 0.0
    hard_group: int = 32
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    real_red_cut: float = 0.0
    coverage_bins: int = 0
    head_fill_a: float = 0.0
    head_fill_rounds: int = 3
    catalogue_offsets: tuple[str, ...] = ()
    new_classes: bool = False
    hot_label_noise: tuple[tuple[str, float], ...] = ()
    real_sets: tuple[str, ...] = ("lamost_dr10", "lamost_dr1", "miles")
    real_set_weights: tuple[float, ...] = (0.5, 0.1, 0.4)
    seed: int = 0
    device: str = "cpu"
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        bad = set(self.anchor_modalities) - {"lamost", "xp"}
        if not self.anchor_modalities or bad:
            raise ConfigError(f"anchor_modalities must be a non-empty subset of lamost, xp; "
                              f"got {list(self.anchor_modalities)}")
        if self.snr_adversary < 0 or self.head_distill < 0:
            raise ConfigError(f"snr_adversary and head_distill must be >= 0, got "
                              f"{self.snr_adversary} and {self.head_distill}")
        if self.snr_adversary and not (self.identity or self.snr_slope):
            raise ConfigError("snr_adversary works on the identity term's second visits: "
                              "it needs identity or snr_slope > 0")
        if not 0.0 <= self.real_red_cut <= 1.0:
            raise ConfigError(f"real_red_cut must be a probability; got {self.real_red_cut}")
        for name, value in self.hot_label_noise:
            if not (isinstance(name, str) and math.isfinite(value) and value > 0):
                raise ConfigError(f"hot_label_noise takes (label, uncertainty > 0) pairs; got "
                                  f"{list(self.hot_label_noise)}")
        if not 0 <= self.coverage_bins <= 64:
            raise ConfigError(f"coverage_bins must be in 0-64; got {self.coverage_bins}")
        if not (math.isfinite(self.head_fill_a) and self.head_fill_a >= 0
                and 1 <= self.head_fill_rounds <= 10):
            raise ConfigError(f"head_fill_a must be a wavelength >= 0 (0: off) and "
                              f"head_fill_rounds 1-10; got {self.head_fill_a} and "
                              f"{self.head_fill_rounds}")
        stray = sorted(set(self.catalogue_offsets) - set(self.real_sets))
        if stray:
            raise ConfigError(f"catalogue_offsets names {stray}, which are not among the real "
                              f"sets {list(self.real_sets)}")
        if not 0.0 <= self.sed_tilt_p <= 1.0:
            raise ConfigError(f"sed_tilt_p must be a probability; got {self.sed_tilt_p}")
        if not (math.isfinite(self.sed_lr_factor) and self.sed_lr_factor > 0):
            raise ConfigError(f"sed_lr_factor must be > 0; got {self.sed_lr_factor}")
        w = self.real_set_weights
        if len(w) != len(self.real_sets) or not all(math.isfinite(x) and x >= 0 for x in w) \
                or not sum(w) > 0:
            raise ConfigError(f"real_set_weights must be one finite share >= 0 per real set "
                              f"{list(self.real_sets)}, not all 0; got {list(w)}")
        if self.heads_only:
            moving = {k: v for k, v in (("clean_anchor", self.clean_anchor),
                                        ("snr_adversary", self.snr_adversary),
                                        ("real_views", self.real_views),
                                        ("noise_blind", self.noise_blind),
                                        ("sed_inputs", self.sed_inputs)) if v}
            if moving:
                raise ConfigError(f"heads_only freezes the encoders, so {sorted(moving)} "
                                  f"would do nothing: drop them or drop heads_only")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["real_sets"] = list(self.real_sets)
        d["anchor_modalities"] = list(self.anchor_modalities)
        d["real_set_weights"] = list(self.real_set_weights)
        d["catalogue_offsets"] = list(self.catalogue_offsets)
        d["hot_label_noise"] = {k: v for k, v in self.hot_label_noise}
        return d
