"""Model architectures as small JSON-able configs, and the registry of named ones.

Architecture is one axis (this module), weights are another (a checkpoint directory holds
both: ``config.json`` + ``model.safetensors``). ``list_models()`` says which named
architectures exist; ``model_config(name)`` returns one, and an unknown name lists the valid
ones.

The two registered architectures:

* ``small`` (the default): residual MLP encoders. The LAMOST encoder's first layer is one
  dense (3909 -> 256) matrix product, the cheapest way on a CPU to let every pixel reach the
  features (a strided 1-D conv stem measured ~6k spectra/s here against ~40k/s for the dense
  layer in float32). The XP trunk and the heads are 128 wide: at 256 they cost 2.4x more
  time per XP spectrum (the builder's goal is >= 50k XP spectra/s on 2 cores) for no
  needed accuracy. Trains on a 2-core CPU.
* ``specclip``: the SpecCLIP sizes (Zhao et al. 2025): a 768-d, 6-layer, 6-head transformer
  over 20-pixel patches for LAMOST and a width-1290 MLP (auto)encoder for XP, with a 768-d
  embedding. For GPU training and as the speed baseline.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from specsearch.errors import ConfigError
from specsearch.preprocess.model_input import sed_columns

FORMAT_VERSION = 1
"""Checkpoint format version; a checkpoint of another version is refused on load."""

MODALITIES: tuple[str, ...] = ("lamost", "xp")


@dataclass(frozen=True)
class EncoderConfig:
    """One modality's encoder.

    Attributes:
        kind: ``mlp`` (dense input layer + residual MLP blocks) or ``transformer`` (patches).
        npix: input pixels (the modality's canonical grid).
        hidden: width of the MLP trunk, or the transformer's model width.
        depth: residual MLP blocks after the input layer, or transformer layers.
        mlp_ratio: inner width of a block / ``hidden`` (capacity vs speed).
        heads: attention heads (transformer only).
        patch: pixels per patch (transformer only).
        mask_pool: pixels per block of the coarse mask summary the encoder also sees
            (so it knows *where* data is missing; 0 disables it).
        dropout: dropout inside the blocks (training regularisation).
        snr_film: condition the first hidden layer on the spectrum's quality (log S/N and
            good-pixel fraction) by a learned scale and shift (FiLM), so the encoder can
            undo what the noise-dependent input shrinkage does to a star's features and
            place a star at S/N 10 where it places it at S/N 100.
        film_snr: when set, the FiLM sees this fixed S/N per pixel in place of the
            spectrum's own (the good-pixel fraction stays the spectrum's): with
            ``input_shrinkage`` off too, nothing in the encoder depends on the noise level
            except the pixels themselves (a "noise-blind" encoder, see
            :func:`specsearch.model.conversions.make_noise_blind`). The heads still see the
            spectrum's own S/N.
        sed_bins: SED values read after the pixels (0: none). A LAMOST spectrum's
            continuum normalisation divides out its SED; with ``sed_bins`` set to
            :data:`specsearch.preprocess.SED_BINS` the encoder also reads the SED columns
            of the prepared input (slope, curvature, reddening: what the XP spectrum of the
            same star shows too), through its own zero-initialised input weights, so a
            model converted from one without them starts out unchanged. A spectrum
            without those columns (or with them unmeasured) is encoded as one whose SED
            is unknown.
        own_noise: read the spectrum's own noise even where the model's normaliser is
            noise-blind (``ModelConfig.shrinkage_snr``): the input shrinkage uses each
            pixel's own inverse variance (a Wiener filter per pixel, so a noisy blue end
            or a telluric band counts for less) and the FiLM the spectrum's own S/N.
            For identity encoders trained on visits whose S/N say nothing about each
            other (``specsearch train-identity --own-noise``).
        ignore_bands: wavelength ranges ``(lo, hi)`` in Angstrom (the modality's grid,
            vacuum) the encoder never reads: their pixels enter as masked ones, in
            training and at inference alike. For identity encoders (``specsearch
            train-identity --ignore-bands telluric``): a telluric band's residual is the
            night's atmosphere, not the star, and differs from one visit to the next.
    """

    kind: str
    npix: int
    hidden: int = 256
    depth: int = 2
    mlp_ratio: float = 2.0
    heads: int = 0
    patch: int = 0
    mask_pool: int = 32
    dropout: float = 0.0
    snr_film: bool = False
    film_snr: float | None = None
    sed_bins: int = 0
    own_noise: bool = False
    ignore_bands: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        # JSON gives lists; keep the config hashable and comparable
        bands = tuple((float(lo), float(hi)) for lo, hi in self.ignore_bands)
        if any(not (lo < hi) for lo, hi in bands):
            raise ValueError(f"ignore_bands must be (lo, hi) ranges with lo < hi; got {bands}")
        object.__setattr__(self, "ignore_bands", bands)


@dataclass(frozen=True)
class DecoderConfig:
    """A decoder from the embedding to one modality's spectrum (reconstruction/translation).

    Attributes:
        hidden: width of the hidden layers.
        depth: hidden layers (>= 1).
    """

    hidden: int = 256
    depth: int = 1


@dataclass(frozen=True)
class HeadConfig:
    """The per-modality parameter/classifier head on the embedding.

    Attributes:
        hidden: width of the hidden layers.
        depth: hidden layers (>= 1).
        coverage_bins: besides the embedding and the quality (log S/N, good fraction), the
            head reads the good-pixel fraction in this many equal stretches of the
            modality's pixel grid (:func:`specsearch.model.layers.coverage_features`), so it
            knows which part of the spectrum the embedding saw: a LAMOST-grid spectrum
            without its red arm (MILES, libraries, a failed arm) is read with its own
            calibration instead of the one of whole spectra. 0: not read.
    """

    hidden: int = 256
    depth: int = 2
    coverage_bins: int = 0


@dataclass(frozen=True)
class FillConfig:
    """The heads of one modality read a spectrum whose missing end is filled in by the
    model's own reconstruction (:meth:`specsearch.model.network.SpecCLIPNet.head_features`).

    A spectrum that lacks the red end of its grid (a library or slit spectrum that stops at
    7,400 A, a failed red arm) embeds away from whole spectra of its kind, and heads trained
    on whole spectra read it biased. Here each masked pixel from ``start`` on is replaced by
    the decoded spectrum of the current embedding, and the spectrum is embedded again,
    ``rounds`` times; the heads read the last embedding (with the quality of the spectrum as
    observed, so the uncertainties still know what was missing). Only spectra with at least
    ``min_missing`` of the pixels from ``start`` on masked are filled; the search embedding
    is never changed.

    Attributes:
        start: first pixel of the stretch that is filled.
        rounds: decode-fill-encode rounds (>= 1).
        min_missing: fraction of the stretch that must be masked for a spectrum to be filled.
    """

    start: int
    rounds: int = 3
    min_missing: float = 0.1


@dataclass(frozen=True)
class ModelConfig:
    """A complete architecture (plus the data-dependent names filled in by training).

    Attributes:
        name: registry name this config came from.
        embedding_dim: dimension of the shared, L2-normalised embedding.
        encoders: per-modality encoder configs.
        decoders: per-target-modality decoder configs (one decoder per source->target pair).
        head: the parameter head config (one head per modality).
        shared_decoders: one decoder per *target* modality, used for both reconstruction
            (own embedding) and translation (the other modality's embedding): half the
            parameters, and the aligned space must decode to the same spectrum from either
            side. False: one decoder per source->target pair (SpecCLIP's layout).
        input_shrinkage: scale each standardised pixel by s*w/(s*w+1) (s: the training set's
            per-pixel signal variance, w: the pixel's inverse variance), so noisy pixels fade
            towards the mean and masked pixels (w=0) contribute exactly nothing.
        shrinkage_snr: when set, the input shrinkage uses this fixed S/N per pixel in place
            of each pixel's own inverse variance: the same Wiener filter for every spectrum,
            so the encoder's input does not depend on the noise level (see
            :func:`specsearch.model.conversions.noise_blind_config`).
        init_temperature: initial InfoNCE temperature (learnable).
        label_names: regression labels of the heads (filled by training).
        class_names: classes of the rare-population classifier (empty: no classifier).
        identity_encoders: optional per-modality *identity* encoders (empty: none): a
            second encoder of the same input, trained for nothing but telling a star from
            its look-alikes (two visits of one star must find each other among many
            stars; ``specsearch train-identity``), into its own L2-normalised space of
            ``identity_dim``. The shared embedding keeps "what kind of star" for
            cross-modal search and the heads; the identity vectors answer "which star"
            within one instrument (:meth:`SpecCLIPNet.identity`).
        identity_dim: dimension of the identity vectors.
        head_fill: per modality, the heads read spectra with their missing end filled in
            (:class:`FillConfig`); empty: the heads read the embedding.
    """

    name: str
    embedding_dim: int
    encoders: dict[str, EncoderConfig]
    decoders: dict[str, DecoderConfig]
    head: HeadConfig = field(default_factory=HeadConfig)
    shared_decoders: bool = False
    input_shrinkage: bool = True
    shrinkage_snr: float | None = None
    init_temperature: float = 0.07
    label_names: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()
    identity_encoders: dict[str, EncoderConfig] = field(default_factory=dict)
    identity_dim: int = 128
    head_fill: dict[str, FillConfig] = field(default_factory=dict)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in self.encoders)

    def with_data(self, *, label_names: tuple[str, ...] | list[str],
                  class_names: tuple[str, ...] | list[str]) -> "ModelConfig":
        return dataclasses.replace(self, label_names=tuple(label_names),
                                   class_names=tuple(class_names))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"label_names": list(self.label_names),
                                           "class_names": list(self.class_names)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Rebuild from :meth:`to_dict` output; ConfigError names a bad or missing field."""
        try:
            return cls(
                name=str(data["name"]),
                embedding_dim=int(data["embedding_dim"]),
                encoders={m: EncoderConfig(**c) for m, c in data["encoders"].items()},
                decoders={m: DecoderConfig(**c) for m, c in data["decoders"].items()},
                head=HeadConfig(**data.get("head", {})),
                shared_decoders=bool(data.get("shared_decoders", False)),
                input_shrinkage=bool(data.get("input_shrinkage", True)),
                shrinkage_snr=(None if data.get("shrinkage_snr") is None
                               else float(data["shrinkage_snr"])),
                init_temperature=float(data.get("init_temperature", 0.07)),
                label_names=tuple(data.get("label_names", ())),
                class_names=tuple(data.get("class_names", ())),
                identity_encoders={m: EncoderConfig(**c) for m, c
                                   in data.get("identity_encoders", {}).items()},
                identity_dim=int(data.get("identity_dim", 128)),
                head_fill={m: FillConfig(**c) for m, c in data.get("head_fill", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"model config is malformed ({type(exc).__name__}: {exc}); "
                              f"expected the fields of ModelConfig") from exc

    def validate(self) -> "ModelConfig":
        if self.embedding_dim < 2:
            raise ConfigError(f"embedding_dim must be >= 2, got {self.embedding_dim}")
        if not 0 <= self.head.coverage_bins <= 64:
            raise ConfigError(f"head.coverage_bins must be in 0-64, got "
                              f"{self.head.coverage_bins}")
        for m, enc in self.encoders.items():
            if m not in MODALITIES:
                raise ConfigError(f"encoder for unknown modality {m!r}; expected {MODALITIES}")
            if enc.kind not in ("mlp", "transformer"):
                raise ConfigError(f"encoders.{m}.kind must be 'mlp' or 'transformer', "
                                  f"got {enc.kind!r}")
            if enc.kind == "transformer" and (enc.patch < 1 or enc.heads < 1
                                              or enc.hidden % enc.heads):
                raise ConfigError(f"encoders.{m}: a transformer needs patch >= 1 and a width "
                                  f"divisible by heads; got {enc}")
            if enc.film_snr is not None and not (enc.snr_film and enc.film_snr > 0):
                raise ConfigError(f"encoders.{m}.film_snr needs snr_film and a positive S/N; "
                                  f"got {enc.film_snr}")
            if enc.sed_bins not in (0, sed_columns(m)):
                raise ConfigError(f"encoders.{m}.sed_bins must be 0 or {sed_columns(m)} (the "
                                  f"SED columns of a prepared {m} spectrum); got "
                                  f"{enc.sed_bins}")
            if enc.ignore_bands:
                raise ConfigError(f"encoders.{m}.ignore_bands: only identity encoders leave "
                                  f"bands out; got {enc.ignore_bands}")
        if self.shrinkage_snr is not None and not self.shrinkage_snr > 0:
            raise ConfigError(f"shrinkage_snr must be a positive S/N; got {self.shrinkage_snr}")
        for m, enc in self.identity_encoders.items():
            if m not in self.encoders:
                raise ConfigError(f"identity_encoders.{m}: the model has no {m} encoder "
                                  f"(modalities {list(self.modalities)})")
            if enc.kind != "mlp" or enc.npix != self.encoders[m].npix or enc.sed_bins:
                raise ConfigError(f"identity_encoders.{m} must be an 'mlp' encoder of the "
                                  f"{self.encoders[m].npix} {m} pixels without SED inputs; "
                                  f"got {enc}")
        for m, fill in self.head_fill.items():
            if m not in self.encoders:
                raise ConfigError(f"head_fill.{m}: the model has no {m} encoder "
                                  f"(modalities {list(self.modalities)})")
            if not (0 <= fill.start < self.encoders[m].npix and 1 <= fill.rounds <= 10
                    and 0.0 < fill.min_missing <= 1.0):
                raise ConfigError(f"head_fill.{m} needs 0 <= start < {self.encoders[m].npix}, "
                                  f"rounds in 1-10 and min_missing in (0, 1]; got {fill}")
        if self.identity_encoders and self.identity_dim < 2:
            raise ConfigError(f"identity_dim must be >= 2, got {self.identity_dim}")
        if set(self.decoders) != set(self.encoders):
            raise ConfigError(f"decoders {sorted(self.decoders)} must match encoders "
                              f"{sorted(self.encoders)}")
        return self


def _small() -> ModelConfig:
    return ModelConfig(
        name="small", embedding_dim=128,
        encoders={"lamost": EncoderConfig(kind="mlp", npix=3909, hidden=256, depth=2,
                                          mlp_ratio=2.0, mask_pool=32, snr_film=True),
                  "xp": EncoderConfig(kind="mlp", npix=343, hidden=128, depth=2,
                                      mlp_ratio=2.0, mask_pool=7, snr_film=True)},
        decoders={"lamost": DecoderConfig(hidden=256, depth=1),
                  "xp": DecoderConfig(hidden=256, depth=1)},
        head=HeadConfig(hidden=128, depth=2),
        shared_decoders=True,
    )


def _medium() -> ModelConfig:
    """``small`` with a LAMOST encoder twice as wide (512): more room for what tells one
    star from a look-alike (repeat-visit retrieval); XP, decoders and heads as ``small``."""
    cfg = _small()
    lam = dataclasses.replace(cfg.encoders["lamost"], hidden=512)
    return dataclasses.replace(cfg, name="medium", encoders={**cfg.encoders, "lamost": lam})


def _specclip() -> ModelConfig:
    return ModelConfig(
        name="specclip", embedding_dim=768,
        encoders={"lamost": EncoderConfig(kind="transformer", npix=3909, hidden=768, depth=6,
                                          heads=6, patch=20, mlp_ratio=4.0, mask_pool=0),
                  "xp": EncoderConfig(kind="mlp", npix=343, hidden=1290, depth=3,
                                      mlp_ratio=1.0, mask_pool=7)},
        decoders={"lamost": DecoderConfig(hidden=768, depth=2),
                  "xp": DecoderConfig(hidden=1290, depth=2)},
        head=HeadConfig(hidden=512, depth=2),
    )


_REGISTRY = {"small": _small, "medium": _medium, "specclip": _specclip}


def list_models() -> list[str]:
    """Names of the registered architectures."""
    return sorted(_REGISTRY)


def model_config(name: str, *, embedding_dim: int | None = None) -> ModelConfig:
    """The registered architecture ``name`` (optionally with another embedding dimension)."""
    try:
        cfg = _REGISTRY[name]()
    except KeyError:
        raise ConfigError(f"unknown model architecture {name!r}; valid names: "
                          f"{', '.join(list_models())}") from None
    if embedding_dim is not None:
        cfg = dataclasses.replace(cfg, embedding_dim=int(embedding_dim))
    return cfg.validate()
