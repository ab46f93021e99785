"""In-place conversions of a network: new inputs, heads, classes or an identity encoder.

Each function changes a :class:`~specsearch.model.network.SpecCLIPNet` and its config in
place and keeps its weights, so the converted model embeds and predicts as before until it
is trained (``specsearch finetune --noise-blind/--sed-inputs/--coverage-inputs/--head-fill/
--new-classes``, ``specsearch train-identity``); the ``*_config`` functions make the same
change to a config a new model is built from (``specsearch train``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from specsearch.errors import ConfigError
from specsearch.model.config import EncoderConfig, FillConfig, ModelConfig
from specsearch.model.layers import build_encoder
from specsearch.model.network import SpecCLIPNet
from specsearch.preprocess.model_input import sed_columns


def make_noise_blind(net: SpecCLIPNet, snr: float) -> SpecCLIPNet:
    """Make ``net``'s encoders blind to the noise level, in place (weights are kept): the
    input shrinkage uses the fixed S/N ``snr`` for every pixel (``shrinkage_snr``) and each
    FiLM sees ``snr`` in place of the spectrum's own (``EncoderConfig.film_snr``).

    With the shrinkage and FiLM driven by each spectrum's own noise, noisy spectra of
    similar stars are transformed alike before the first layer, so they embed near each
    other: neighbours follow the query's S/N (Spearman rho 0.72 on the identity benchmark).
    Noise-blind, a star at S/N 10 differs from itself at S/N 100 only by the noise in its
    pixels. Masked pixels still count for nothing, and the heads keep seeing the spectrum's
    real S/N, so their uncertainties still grow with the noise.
    """
    net.cfg = noise_blind_config(net.cfg, snr)
    for m, norm in net.normalisers.items():
        norm.fixed_snr = net.cfg.shrinkage_snr
        net.encoders[m].cfg = net.cfg.encoders[m]
    return net


def add_sed_inputs(net: SpecCLIPNet) -> SpecCLIPNet:
    """Give ``net``'s encoders SED inputs where their modality has SED columns (LAMOST), in
    place; weights are kept and the new input weights start at zero, so the converted model
    embeds every spectrum exactly as before until it is fine-tuned
    (``specsearch finetune --sed-inputs``)."""
    from specsearch.model.layers import _sed_input

    net.cfg = sed_inputs_config(net.cfg)
    for m, enc in net.encoders.items():
        enc.cfg = net.cfg.encoders[m]
        if enc.cfg.sed_bins and getattr(enc, "inp_sed", None) is None:
            ref = next(enc.parameters())
            enc.inp_sed = _sed_input(enc.cfg).to(device=ref.device, dtype=ref.dtype)
    return net


def add_coverage_inputs(net: SpecCLIPNet, bins: int) -> SpecCLIPNet:
    """Give ``net``'s heads ``bins`` coverage inputs (``HeadConfig.coverage_bins``), in
    place: each head's first layer grows by ``bins`` zero-initialised input columns, so the
    converted model predicts exactly as before until it is trained
    (``specsearch finetune --coverage-inputs``). A model that already reads coverage
    keeps its heads when ``bins`` is its own and refuses another number."""
    have = net.cfg.head.coverage_bins
    if have == bins:
        return net
    if have:
        raise ConfigError(f"the model's heads already read {have} coverage bins; "
                          f"cannot change to {bins}")
    net.cfg = dataclasses.replace(net.cfg, head=dataclasses.replace(
        net.cfg.head, coverage_bins=int(bins))).validate()
    for head in net.heads.values():
        first = head.net[0]
        grown = nn.Linear(first.in_features + bins, first.out_features).to(
            device=first.weight.device, dtype=first.weight.dtype)
        with torch.no_grad():
            grown.weight.zero_()
            grown.weight[:, :first.in_features].copy_(first.weight)
            grown.bias.copy_(first.bias)
        head.net[0] = grown
    return net


def set_head_fill(net: SpecCLIPNet, modality: str, start_a: float, rounds: int = 3,
                  min_missing: float = 0.1) -> SpecCLIPNet:
    """Make ``net``'s ``modality`` heads read spectra whose grid beyond ``start_a``
    (Angstrom) is at least ``min_missing`` masked with the missing pixels filled by the
    model's own reconstruction (:class:`~specsearch.model.config.FillConfig`), in place; no
    weights change (the heads then want refitting: ``specsearch finetune --heads-only
    --head-fill``)."""
    from specsearch.preprocess import grid_for

    wave = grid_for(modality).wavelength
    start = int(np.searchsorted(wave, start_a))
    if not 0 <= start < wave.size:
        raise ConfigError(f"head fill from {start_a} A lies outside the {modality} grid "
                          f"({wave[0]:.0f}-{wave[-1]:.0f} A)")
    net.cfg = dataclasses.replace(net.cfg, head_fill={
        **net.cfg.head_fill, modality: FillConfig(start=start, rounds=int(rounds),
                                                  min_missing=float(min_missing))}).validate()
    return net


NEW_CLASS_LOGIT = -10.0
"""Starting logit of a class the heads grow (:func:`add_population_classes`)."""


def add_population_classes(net: SpecCLIPNet, classes: list[str] | tuple[str, ...]
                           ) -> SpecCLIPNet:
    """Give ``net``'s heads the population classes ``classes`` (which must include every
    class the model has), in place: each head's last layer keeps its label outputs and
    each old class's row (moved to the class's place in ``classes``); a new class starts
    with zero weights and a constant logit of :data:`NEW_CLASS_LOGIT` below the old ones'
    lowest bias, so the converted model classifies as before until it is trained
    (``specsearch finetune --new-classes``)."""
    old = list(net.cfg.class_names)
    new = list(classes)
    missing = sorted(set(old) - set(new))
    if missing or len(set(new)) != len(new):
        raise ConfigError(f"population classes {new} must hold each of the model's {old} "
                          f"once (missing {missing})")
    if new == old:
        return net
    L = len(net.cfg.label_names)
    net.cfg = net.cfg.with_data(label_names=net.cfg.label_names, class_names=new)
    for head in net.heads.values():
        last = head.net[-1]
        grown = nn.Linear(last.in_features, 2 * L + len(new)).to(
            device=last.weight.device, dtype=last.weight.dtype)
        with torch.no_grad():
            grown.weight.zero_()
            grown.weight[:2 * L].copy_(last.weight[:2 * L])
            grown.bias[:2 * L].copy_(last.bias[:2 * L])
            floor = (float(last.bias[2 * L:].min()) if old else 0.0) + NEW_CLASS_LOGIT
            grown.bias[2 * L:] = floor
            for i, name in enumerate(new):
                if name in old:
                    j = 2 * L + old.index(name)
                    grown.weight[2 * L + i].copy_(last.weight[j])
                    grown.bias[2 * L + i] = last.bias[j]
        head.net[-1] = grown
        head.n_classes = len(new)
    return net


def add_identity_encoder(net: SpecCLIPNet, modality: str, hidden: int, depth: int,
                         dim: int, own_noise: bool = False,
                         ignore_bands: tuple[tuple[float, float], ...] = ()) -> SpecCLIPNet:
    """Give ``net`` a freshly initialised ``modality`` identity encoder, in place
    (``ModelConfig.identity_encoders``; ``specsearch train-identity``): an MLP encoder of
    the same pixels with ``hidden`` width and ``depth`` residual blocks into ``dim``
    dimensions, reading the input the way the modality's embedding encoder does (its mask
    summary, and its FiLM with the same fixed S/N when that encoder is noise-blind; with
    ``own_noise``, the spectrum's own per-pixel noise and S/N: ``EncoderConfig.
    own_noise``). It never reads the pixels in ``ignore_bands`` (``EncoderConfig.
    ignore_bands``). One the model already has is replaced. Nothing else changes:
    embeddings and predictions stay as they were."""
    main = net.cfg.encoders.get(modality)
    if main is None:
        raise ConfigError(f"the model has no {modality} encoder (modalities "
                          f"{list(net.cfg.modalities)})")
    enc = EncoderConfig(kind="mlp", npix=main.npix, hidden=int(hidden), depth=int(depth),
                        mlp_ratio=1.0, mask_pool=main.mask_pool,
                        snr_film=main.snr_film or own_noise,
                        film_snr=None if own_noise else main.film_snr, own_noise=own_noise,
                        ignore_bands=tuple(ignore_bands))
    # the other modalities' identity encoders stay when the dimension does
    identity = {m: c for m, c in net.cfg.identity_encoders.items()
                if m != modality and int(dim) == net.cfg.identity_dim}
    net.cfg = dataclasses.replace(net.cfg, identity_encoders={**identity, modality: enc},
                                  identity_dim=int(dim)).validate()
    ref = next(net.parameters())
    modules = {m: v for m, v in getattr(net, "identity_encoders", {}).items() if m in identity}
    modules[modality] = build_encoder(enc, int(dim)).to(device=ref.device, dtype=ref.dtype)
    net.identity_encoders = nn.ModuleDict(modules)
    return net


def sed_inputs_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with every encoder reading its modality's SED columns (see
    :func:`add_sed_inputs`)."""
    encoders = {m: dataclasses.replace(e, sed_bins=sed_columns(m))
                for m, e in cfg.encoders.items()}
    return dataclasses.replace(cfg, encoders=encoders).validate()


def has_sed_inputs(cfg: ModelConfig) -> bool:
    return any(e.sed_bins for e in cfg.encoders.values())


def noise_blind_config(cfg: ModelConfig, snr: float) -> ModelConfig:
    """``cfg`` with a fixed-S/N input shrinkage and every FiLM at the fixed S/N ``snr`` (see
    :func:`make_noise_blind`; ``specsearch train --noise-blind`` starts from it)."""
    encoders = {m: dataclasses.replace(e, film_snr=float(snr)) if e.snr_film else e
                for m, e in cfg.encoders.items()}
    return dataclasses.replace(
        cfg, encoders=encoders,
        shrinkage_snr=float(snr) if cfg.input_shrinkage else None).validate()
