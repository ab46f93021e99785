"""A model's own anomaly-scoring choice: ``anomaly_defaults.json`` beside the model.

Which score components, combination and residual reference make the best outlier lists
depends on the model that made the embeddings: on the same synthetic calibration survey
the best variant has changed with each retrained default model. So the choice is stored
with the model, for its hash, like the hunt's ``feh_calibration.json``:
``benchmarks/bench_anomaly.py`` picks it on its calibration survey and writes it;
:func:`specsearch.anomaly.pipeline.run_anomalies` uses it for embeddings of that model
whenever the caller leaves those fields of :class:`~specsearch.anomaly.scoring.ScoreConfig`
unset. A file made for another model is ignored; a malformed one is an error naming it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from specsearch.anomaly.robust import COMBINE_METHODS
from specsearch.anomaly.scoring import COMPONENTS
from specsearch.errors import ConfigError
from specsearch.fsutil import write_json_atomic

log = logging.getLogger(__name__)

DEFAULTS_FILE = "anomaly_defaults.json"
KIND = "specsearch.anomaly_defaults"
FORMAT_VERSION = 1
MAX_BYTES = 64 * 1024


def save_choice(path: str | Path, *, model_hash: str, components: tuple[str, ...] | list[str],
                combine: str, residual_reference: str, source: str) -> Path:
    """Write a scoring choice for ``model_hash`` (atomically); returns the path."""
    choice = {"components": list(components), "combine": combine,
              "residual_reference": residual_reference}
    _check(choice, str(path))
    return write_json_atomic(path, {"kind": KIND, "format_version": FORMAT_VERSION,
                                    "model_hash": model_hash, "source": source, **choice})


def load_choice(path: str | Path) -> tuple[str, dict[str, Any]]:
    """(model_hash, {components, combine, residual_reference}) from a choice file.

    Raises:
        ConfigError: naming the file, when it is unreadable, too large, of another kind or
            format, or names an unknown component or method.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes; an anomaly scoring "
                              f"choice is a few hundred")
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable anomaly scoring choice: {exc}") from exc
    if not isinstance(d, dict) or d.get("kind") != KIND or \
            d.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: not a specsearch anomaly scoring choice of format "
                          f"{FORMAT_VERSION}")
    choice = {k: d.get(k) for k in ("components", "combine", "residual_reference")}
    _check(choice, str(path))
    choice["components"] = tuple(choice["components"])
    return str(d.get("model_hash", "")), choice


def find_choice(model_hash: str, model_dir: str | Path | None = None
                ) -> dict[str, Any] | None:
    """The scoring choice stored beside the model (``model_dir``, or the shipped default)
    for embeddings of ``model_hash``; None when there is none for that model."""
    if model_dir is None:
        try:
            from specsearch.model.api import default_model_path
            model_dir = default_model_path()
        except ImportError:  # pragma: no cover - torch missing
            return None
    path = Path(model_dir) / DEFAULTS_FILE
    if not model_hash or not path.is_file():
        return None
    made_for, choice = load_choice(path)
    if made_for != model_hash:
        log.info("%s was chosen for model %s, not %s: library scoring defaults", path,
                 made_for[:12], model_hash[:12])
        return None
    return choice


def _check(choice: dict[str, Any], where: str) -> None:
    comps = choice.get("components")
    if not isinstance(comps, (list, tuple)) or not comps or \
            not all(isinstance(c, str) and c in COMPONENTS for c in comps):
        raise ConfigError(f"{where}: components must be a non-empty list of "
                          f"{list(COMPONENTS)}; got {comps!r}")
    if choice.get("combine") not in COMBINE_METHODS:
        raise ConfigError(f"{where}: combine must be one of {list(COMBINE_METHODS)}; got "
                          f"{choice.get('combine')!r}")
    if choice.get("residual_reference") not in ("global", "neighbours"):
        raise ConfigError(f"{where}: residual_reference must be 'global' or 'neighbours'; "
                          f"got {choice.get('residual_reference')!r}")
