"""Model directories: ``config.json`` + ``model.safetensors``, hashed, never unpickled.

``config.json`` holds the format version, the architecture (:class:`ModelConfig`), the
canonical grids the model was trained on (``Grid.describe()``), label and class names,
training provenance, and ``model_hash``: the SHA-256 over the canonical JSON of everything
else in ``config.json`` and over every tensor (name, dtype, shape, bytes) of the weights
file. Loading recomputes it, so a tampered, truncated or mismatched file is refused with a
:class:`ModelError` instead of giving silently wrong embeddings. Weights hold encoders,
decoders, heads and all normalisation constants (input statistics, label scaling,
uncertainty calibration) as tensors. Only ``safetensors`` is read: nothing executes code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from specsearch.errors import ConfigError, ModelError
from specsearch.fsutil import atomic_path, write_json_atomic
from specsearch.model.config import FORMAT_VERSION, ModelConfig
from specsearch.preprocess import grid_for

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def content_hash(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over ``config`` (minus ``model_hash``) and the tensors, order-free."""
    h = hashlib.sha256()
    body = {k: v for k, v in config.items() if k != "model_hash"}
    h.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_model_dir(path: str | Path, net: torch.nn.Module, cfg: ModelConfig, *,
                   training: Mapping[str, Any] | None = None) -> str:
    """Write ``net``'s weights and config into the directory ``path``; returns the hash.

    The weights file is written first and the config (which carries the hash) last, each
    atomically, so a reader sees either the old model, or a new weights file whose hash
    does not match the old config (refused), never a silently mixed model.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    config: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": "specsearch-model",
        "model": cfg.to_dict(),
        "grids": {m: grid_for(m).describe() for m in cfg.modalities},
        "label_names": list(cfg.label_names),
        "class_names": list(cfg.class_names),
        "training": dict(training or {}),
    }
    config = json.loads(json.dumps(config))      # canonical JSON types (tuples -> lists)
    digest = content_hash(config, tensors)
    config["model_hash"] = digest
    save_tensors_atomic(path / WEIGHTS_FILE, tensors,
                        {"format_version": str(FORMAT_VERSION), "model_hash": digest})
    write_json_atomic(path / CONFIG_FILE, config)
    return digest


def read_model_dir(path: str | Path) -> tuple[ModelConfig, dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify a model directory: (architecture, full config.json, tensors).

    Raises:
        ModelError: missing files, unreadable JSON, another format version, a truncated or
            corrupt weights file, or a content hash that does not match (tampering).
    """
    path = Path(path)
    cfg_path, w_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not path.is_dir():
        raise ModelError(f"{path}: no such model directory (expected a folder with "
                         f"{CONFIG_FILE} and {WEIGHTS_FILE}; train one with `specsearch train`)")
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise ModelError(f"{path}: {p.name} is missing; a model directory holds "
                             f"{CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{cfg_path}: unreadable JSON ({exc})") from exc
    if not isinstance(config, dict) or config.get("kind") != "specsearch-model":
        raise ModelError(f"{cfg_path}: not a specsearch model config (kind "
                         f"{config.get('kind') if isinstance(config, dict) else None!r})")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(f"{cfg_path}: model format_version {version!r} is not supported by "
                         f"this specsearch (reads version {FORMAT_VERSION}); retrain the model "
                         f"or use the specsearch release that wrote it")
    try:
        tensors = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{w_path}: corrupt or truncated weights file ({exc}); "
                         f"re-copy or retrain the model") from exc
    expected = config.get("model_hash")
    actual = content_hash(config, tensors)
    if expected != actual:
        raise ModelError(f"{path}: content hash mismatch: {CONFIG_FILE} says {expected!r} but "
                         f"the files hash to {actual!r}; the weights or config were modified "
                         f"or come from different models. Re-copy or retrain the model")
    try:
        cfg = ModelConfig.from_dict(config["model"]).validate()
    except (KeyError, ConfigError) as exc:
        raise ModelError(f"{cfg_path}: invalid model section: {exc}") from exc
    for m, grid in config.get("grids", {}).items():
        if not _same_grid(grid, grid_for(m).describe()):
            raise ModelError(f"{cfg_path}: the model was trained on a {m} grid {grid} that "
                             f"differs from this specsearch's canonical grid "
                             f"{grid_for(m).describe()}; retrain the model")
    return cfg, config, tensors


def _same_grid(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Grid descriptions agree (wavelength ends to 1e-9 relative: float formatting and
    libm may differ in the last bit between machines)."""
    try:
        return (all(a[k] == b[k] for k in ("name", "npix", "log_spacing", "flux_unit"))
                and all(abs(a[k] - b[k]) <= 1e-9 * abs(b[k]) for k in ("start_A", "end_A")))
    except (KeyError, TypeError):
        return False


def save_tensors_atomic(path: str | Path, tensors: Mapping[str, torch.Tensor],
                        metadata: Mapping[str, str] | None = None) -> None:
    """Write a safetensors file atomically (model weights, optimizer state of resumable runs)."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata=dict(metadata or {}))


def optimizer_to_tensors(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """Flatten ``optimizer.state_dict()`` into tensors + a JSON skeleton (no pickle)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, slots in state["state"].items():
        entry = {}
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                key = f"state.{pid}.{name}"
                tensors[key] = value
                entry[name] = {"tensor": key}
            else:
                entry[name] = value
        skeleton["state"][str(pid)] = entry
    return tensors, json.dumps(skeleton)


def optimizer_from_tensors(tensors: Mapping[str, torch.Tensor], skeleton: str) -> dict[str, Any]:
    data = json.loads(skeleton)
    state = {}
    for pid, slots in data["state"].items():
        state[int(pid)] = {name: (tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v
                                  else v) for name, v in slots.items()}
    return {"param_groups": data["param_groups"], "state": state}
