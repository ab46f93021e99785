"""The aligned LAMOST <-> Gaia XP model: encoders, decoders, parameter heads, checkpoints.

Public API (what the embedding builder, the query engine and the service call)::

    from specsearch.model import load_model, list_models
    model = load_model()              # shipped default (specsearch/data/models/default)
    batch = model.embed_numpy("xp", flux, ivar)        # -> EmbeddingBatch (numpy)
    emb = model.encode("lamost", x, w)                 # tensor path (prepared inputs)

This package is inference (``api``, ``embedding_batch``, ``network``, ``conversions``,
``layers``, ``config``, ``checkpoint``); training lives in :mod:`specsearch.model.training`
and evaluation in :mod:`specsearch.model.evaluation` (inference never imports either); see
README.md in this folder for the reproducible command that made the default model.
"""

from specsearch.model.api import SpecModel, default_model_path, load_model
from specsearch.model.config import ModelConfig, list_models, model_config
from specsearch.model.embedding_batch import EmbeddingBatch

__all__ = ["EmbeddingBatch", "ModelConfig", "SpecModel", "default_model_path", "list_models",
           "load_model", "model_config"]
