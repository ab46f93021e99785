"""The public inference API used by the embedding builder, the query engine and the service.

    from specsearch.model import load_model
    model = load_model()                          # the shipped default model
    batch = model.embed_numpy("lamost", flux, ivar)   # canonical-grid flux / ivar
    batch.embedding, batch.good, batch.predictions, batch.uncertainties

Inside a DataLoader / GPU pipeline use the tensor path: ``model.encode(modality, x, w)`` or
``model.forward_outputs(...)`` on the output of ``prepare_model_input``.
"""

from __future__ import annotations

import contextlib
import importlib.resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specsearch.errors import ConfigError, ModelError, SpectrumError
from specsearch.model.checkpoint import read_model_dir
from specsearch.model.config import ModelConfig
from specsearch.model.domain import (DomainCheck, find_domain_check, relative_residual,
                                     window_coverage)
from specsearch.model.embedding_batch import EmbeddingBatch
from specsearch.model.network import ModelOutputs, SpecCLIPNet
from specsearch.preprocess import (
    as_tensor,
    default_batch_size,
    grid_for,
    prepare_model_input_torch,
)


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available; "
                          "use --device cpu or auto")
    return dev


def default_model_path() -> Path:
    """Where the shipped default model lives (inside the installed package)."""
    return Path(str(importlib.resources.files("specsearch").joinpath("data", "models",
                                                                     "default")))


def reduced_chi(pred: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
                floor: torch.Tensor) -> torch.Tensor:
    """(B,) sqrt of the mean over good pixels of (pred - x)^2 / (1/w + floor^2); ``x, w``
    may carry SED columns after the pixels that ``pred`` has (they are not decoded)."""
    x, w = x[..., :pred.shape[-1]], w[..., :pred.shape[-1]]
    wc = w / (1.0 + w * floor * floor)
    n = (w > 0).sum(-1).clamp_min(1)
    return torch.sqrt((wc * (pred - x).square()).sum(-1) / n)


class SpecModel:
    """A loaded model: encoders, decoders and heads with their normalisation constants."""

    def __init__(self, net: SpecCLIPNet, config: dict[str, Any], *,
                 path: Path | None = None, device: str | torch.device = "cpu") -> None:
        self.net = net.eval()
        self.full_config = config
        self.path = path
        self.device = resolve_device(device)
        self.net.to(self.device)

    # --------------------------------------------------------------- description
    @property
    def config(self) -> ModelConfig:
        return self.net.cfg

    @property
    def model_hash(self) -> str:
        return str(self.full_config["model_hash"])

    @property
    def domain_check(self) -> DomainCheck | None:
        """The model's domain check (``domain_check.json`` beside it, for its hash), or
        None; read once.

        Raises:
            ConfigError: the file is malformed (it names the file).
        """
        if not hasattr(self, "_domain_check"):
            self._domain_check = find_domain_check(self.model_hash, self.path)
        return self._domain_check

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.config.label_names

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.config.modalities

    def __repr__(self) -> str:
        return (f"SpecModel({self.config.name!r}, hash={self.model_hash[:12]}, "
                f"D={self.embedding_dim}, labels={list(self.label_names)}, "
                f"device={self.device})")

    def to(self, device: str | torch.device) -> "SpecModel":
        self.device = resolve_device(device)
        self.net.to(self.device)
        return self

    def _check_modality(self, modality: str) -> None:
        if modality not in self.modalities:
            raise ConfigError(f"this model encodes {list(self.modalities)}, not {modality!r}")

    AUTOCAST = {"bf16": "bfloat16", "fp16": "float16"}

    def _autocast(self, precision: bool | str | None):
        """None/"auto": bf16 on CUDA, off on CPU; True/"bf16"; "fp16"; False/"fp32": off."""
        if precision is None or precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        elif precision is True:
            precision = "bf16"
        elif precision is False:
            precision = "fp32"
        if precision == "fp32":
            return contextlib.nullcontext()
        if precision not in self.AUTOCAST:
            raise ConfigError(f"precision must be auto, fp32, bf16 or fp16; got {precision!r}")
        return torch.autocast(self.device.type, dtype=getattr(torch, self.AUTOCAST[precision]))

    # --------------------------------------------------------------- tensor path
    def encode(self, modality: str, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """(B, N) prepared flux and weight -> (B, D) L2-normalised embedding (same device)."""
        self._check_modality(modality)
        return self.net.encode(modality, x, w)

    def forward_outputs(self, modality: str, x: torch.Tensor, w: torch.Tensor, *,
                        decode: bool = False) -> ModelOutputs:
        """Embedding, quality, standardised head outputs and optionally decoded spectra."""
        self._check_modality(modality)
        return self.net.forward_outputs(modality, x, w, decode=decode)

    def translate(self, modality_from: str, embedding: torch.Tensor) -> torch.Tensor:
        """(B, D) embedding of ``modality_from`` -> (B, N) predicted spectrum of the other
        modality, in ``prepare_model_input`` units (LAMOST: continuum-normalised flux;
        XP: flux divided by its mean)."""
        self._check_modality(modality_from)
        return self.net.decode(modality_from, self.net.other(modality_from), embedding)

    def decode(self, modality_from: str, modality_to: str, embedding: torch.Tensor
               ) -> torch.Tensor:
        """(B, D) embedding of ``modality_from`` -> (B, N) spectrum of ``modality_to`` (the
        reconstruction when they are equal, else :meth:`translate`), in
        ``prepare_model_input`` units."""
        self._check_modality(modality_from)
        self._check_modality(modality_to)
        return self.net.decode(modality_from, modality_to, embedding)

    # --------------------------------------------------------------- numpy path
    @torch.inference_mode()
    def embed_numpy(self, modality: str, flux: np.ndarray, ivar: np.ndarray, *,
                    batch_size: int | None = None, with_residual: bool = False,
                    with_domain: bool = False, with_identity: bool = False,
                    partner: tuple[np.ndarray, np.ndarray] | None = None,
                    autocast: bool | str | None = None) -> EmbeddingBatch:
        """Embed (n, N) canonical-grid flux/ivar of ``modality`` (see :class:`EmbeddingBatch`).

        ``flux``/``ivar`` may also be CPU tensors (e.g. pinned host buffers, copied to a GPU
        asynchronously); preprocessing runs on the model's device.

        Args:
            batch_size: spectra per forward pass (None:
                :func:`specsearch.preprocess.default_batch_size`).
            with_residual: the reconstruction and translation residuals (outlier scoring);
                implies ``with_domain``.
            with_domain: the relative reconstruction error and the domain flag only (one
                decoder pass; see :mod:`specsearch.model.domain`).
            with_identity: the identity vectors too, from the same preprocessed input
                (ignored when the model has no identity encoder for ``modality``).
            partner: optional row-aligned (flux, ivar) of the other modality, used for the
                translation residual (implies ``with_residual``).
            autocast: the network's precision: None or "auto" (bf16 autocast on CUDA, fp32
                on CPU), "bf16", "fp16", "fp32" (True/False: bf16/fp32). Preprocessing,
                the L2 normalisation and the head outputs stay float32.
        Raises:
            SpectrumError: wrong number of pixels for the modality's grid.
        """
        self._check_modality(modality)
        npix = grid_for(modality).npix
        flux, ivar = _atleast_2d(flux), _atleast_2d(ivar)
        if flux.shape[-1] != npix or flux.shape != ivar.shape:
            raise SpectrumError(f"{modality} spectra must be (n, {npix}) on the canonical grid; "
                                f"got flux {flux.shape} and ivar {ivar.shape}")
        other = self.net.other(modality)
        if partner is not None:
            with_residual = True
            pf, pi = _atleast_2d(partner[0]), _atleast_2d(partner[1])
            if pf.shape != (flux.shape[0], grid_for(other).npix) or pf.shape != pi.shape:
                raise SpectrumError(f"partner ({other}) spectra must be "
                                    f"({flux.shape[0]}, {grid_for(other).npix}); "
                                    f"got {pf.shape} and {pi.shape}")
        if batch_size is None:
            batch_size = default_batch_size(modality, gpu=self.device.type == "cuda")
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, flux.shape[0], max(1, int(batch_size))):
            sl = slice(start, start + batch_size)
            got = self._embed_chunk(modality, flux[sl], ivar[sl], with_residual,
                                    None if partner is None else (pf[sl], pi[sl]), autocast,
                                    with_domain=with_domain or with_residual,
                                    with_identity=with_identity)
            for k, v in got.items():
                parts.setdefault(k, []).append(v)
        cat = {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in parts.items()}
        L, C = len(self.label_names), len(self.class_names)
        n = flux.shape[0]
        relative = cat.get("recon_relative")
        flags = None
        coverage = cat.get("window_coverage")
        if relative is not None and (check := self.domain_check) is not None:
            flags = check.flags(modality, relative, coverage)
        return EmbeddingBatch(
            embedding=cat.get("embedding", np.zeros((n, self.embedding_dim), np.float32)),
            good=cat.get("good", np.zeros(n, bool)),
            predictions=cat.get("pred", np.zeros((n, L), np.float32)),
            uncertainties=cat.get("err", np.zeros((n, L), np.float32)),
            label_names=self.label_names,
            class_prob=cat.get("class_prob") if C else None,
            class_names=self.class_names,
            recon_residual=cat.get("recon_residual"),
            translation_residual=cat.get("translation_residual"),
            recon_relative=relative, out_of_domain=flags, window_coverage=coverage,
            identity=cat.get("identity"))

    def _tensor(self, a: np.ndarray | torch.Tensor) -> torch.Tensor:
        t = a if isinstance(a, torch.Tensor) else as_tensor(np.asarray(a, np.float32))
        return t.to(self.device, non_blocking=True)

    def has_identity(self, modality: str) -> bool:
        """Whether the model has identity vectors for ``modality`` (:meth:`identity_numpy`)."""
        return self.net.has_identity(modality)

    @property
    def identity_dim(self) -> int:
        """Dimension of the identity vectors (0 for a model without identity encoders)."""
        return int(self.net.cfg.identity_dim) if self.net.cfg.identity_encoders else 0

    @torch.inference_mode()
    def identity_numpy(self, modality: str, flux: np.ndarray, ivar: np.ndarray, *,
                       batch_size: int | None = None) -> np.ndarray:
        """(n, identity_dim) float32 L2-normalised identity vectors of (n, N) canonical-grid
        spectra: "which star" within one instrument, where the embedding says "what kind of
        star" (``ModelConfig.identity_encoders``). NaN rows for the spectra
        ``prepare_model_input`` rejects.

        Raises:
            SpectrumError: wrong number of pixels for the modality's grid.
            ConfigError: the model has no identity encoder for ``modality``.
        """
        self._check_modality(modality)
        if not self.net.has_identity(modality):
            raise ConfigError(f"model {self.model_hash[:12]} has no {modality} identity "
                              f"encoder; add one with specsearch train-identity")
        npix = grid_for(modality).npix
        flux, ivar = _atleast_2d(flux), _atleast_2d(ivar)
        if flux.shape[-1] != npix or flux.shape != ivar.shape:
            raise SpectrumError(f"{modality} spectra must be (n, {npix}) on the canonical grid; "
                                f"got flux {flux.shape} and ivar {ivar.shape}")
        if batch_size is None:
            batch_size = default_batch_size(modality, gpu=self.device.type == "cuda")
        out = np.empty((flux.shape[0], self.net.cfg.identity_dim), np.float32)
        for start in range(0, flux.shape[0], max(1, int(batch_size))):
            sl = slice(start, start + max(1, int(batch_size)))
            mi = prepare_model_input_torch(self._tensor(flux[sl]), self._tensor(ivar[sl]),
                                           modality)
            vec = self.net.identity(modality, mi.flux, mi.weight).float().cpu().numpy()
            vec[~mi.good.cpu().numpy()] = np.nan
            out[sl] = vec
        return out

    def _embed_chunk(self, modality, flux, ivar, with_residual, partner, autocast,
                     with_domain=False, with_identity=False) -> dict[str, np.ndarray]:
        # Preprocessing runs on the model's device (a GPU does it in a fraction of the time
        # the host would need).
        mi = prepare_model_input_torch(self._tensor(flux), self._tensor(ivar), modality)
        x, w = mi.flux, mi.weight
        with self._autocast(autocast):
            out = self.net.forward_outputs(modality, x, w, decode=False)
            value, err = self.net.labels_physical(modality, out.label_mu, out.label_log_sigma)
            result = {"embedding": out.embedding, "pred": value, "err": err,
                      "class_prob": torch.softmax(out.class_logits, -1)}
            if with_identity and self.net.has_identity(modality):
                result["identity"] = self.net.identity(modality, x, w)
            if with_domain:          # implied by with_residual (see embed_numpy)
                out.recon = self.net.decode(modality, modality, out.embedding)
                result["recon_relative"] = relative_residual(out.recon, x, w)
                rule = self.domain_check.coverage.get(modality) if self.domain_check else None
                if rule is not None:
                    result["window_coverage"] = window_coverage(
                        w, grid_for(modality).wavelength, rule["window_A"])
            if with_residual and self.net.other(modality) != modality:
                out.translation = self.net.decode(modality, self.net.other(modality),
                                                  out.embedding)
            if with_residual:
                own = self.net.normalisers[modality]
                result["recon_residual"] = reduced_chi(out.recon, x, w, own.recon_floor)
                other = self.net.other(modality)
                if partner is not None:
                    pm = prepare_model_input_torch(self._tensor(partner[0]),
                                                   self._tensor(partner[1]), other)
                    floor = self.net.normalisers[other].trans_floor
                    res = reduced_chi(out.translation, pm.flux, pm.weight, floor)
                    result["translation_residual"] = torch.where(
                        pm.good, res, torch.full_like(res, float("nan")))
                else:
                    # Round trip: own -> other spectrum -> re-encoded -> own spectrum.
                    t = out.translation
                    tw = torch.full_like(t, 1e4)
                    back = self.net.decode(other, modality, self.net.encode(other, t, tw))
                    result["translation_residual"] = reduced_chi(back, x, w, own.trans_floor)
        result["good"] = mi.good
        good = result.pop("good").cpu().numpy()
        arrays = {k: v.float().cpu().numpy() for k, v in result.items()}
        if not good.all():
            for k in arrays:
                arrays[k][~good] = np.nan
        arrays["good"] = good
        return arrays


def _atleast_2d(a):
    """np.atleast_2d that leaves torch tensors (e.g. pinned host buffers) as tensors."""
    if isinstance(a, torch.Tensor):
        return a if a.ndim >= 2 else a.reshape(1, -1)
    return np.atleast_2d(a)


def load_model(path: str | Path | None = None, *, device: str | torch.device = "cpu"
               ) -> SpecModel:
    """Load and verify a model directory (None: the default model shipped with specsearch).

    Raises:
        ModelError: missing/corrupt/tampered files or another format version.
    """
    if path is None:
        path = default_model_path()
        if not (path / "config.json").is_file():
            raise ModelError(f"the default model is missing from the installation ({path}); "
                             f"reinstall specsearch or pass a model directory")
    path = Path(path)
    cfg, config, tensors = read_model_dir(path)
    net = SpecCLIPNet(cfg)
    missing, unexpected = net.load_state_dict(tensors, strict=False)
    # Models written before the real-data calibration have no sigma_floor: it is 0.
    missing = [k for k in missing if not k.endswith(".sigma_floor")]
    if missing or unexpected:
        raise ModelError(f"{path}: weights do not fit the architecture {cfg.name!r}: missing "
                         f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    return SpecModel(net, config, path=path, device=device)
