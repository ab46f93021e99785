"""The index ``specsearch serve`` serves when given none: the demo's, else a small synthetic one.

Nothing here is new science: a synthetic paired survey (:func:`specsearch.synth.
generate_survey`), embedded by the shipped model (:func:`specsearch.embed.build_embeddings`)
and indexed (:func:`specsearch.index.build_index`), cached under ``indexes/default`` so only
the first start pays for it (about a minute for the default size on 2 cores). Each stage is
skipped when its output exists; the index directory is written atomically by
``build_index``, so an interrupted first start leaves nothing half-built to serve.
"""

from __future__ import annotations

import logging
from pathlib import Path

from specsearch.index.manifest import MANIFEST

log = logging.getLogger("specsearch.service")

DEFAULT_ROOT = Path("indexes")
DEMO_INDEXES = (Path("demo-output") / "index", DEFAULT_ROOT / "demo" / "index")
"""Where ``specsearch demo`` leaves its index (its default ``--out demo-output``), relative
to the working directory; the first that exists is served."""
DEFAULT_STARS = 5000


def build_synthetic_index(root: str | Path, *, n: int = DEFAULT_STARS, seed: int = 0,
                          model_dir: str | Path | None = None, shards: int = 1,
                          progress: bool = False) -> Path:
    """Catalog -> embeddings -> index under ``root`` (reusing finished stages); the index.

    Layout: ``root/catalog``, ``root/embeddings``, ``root/index``.
    """
    root = Path(root)
    catalog, embeddings, index = root / "catalog", root / "embeddings", root / "index"
    if (index / MANIFEST).is_file():
        return index
    from specsearch.embed import EmbedConfig, build_embeddings
    from specsearch.index import BuildOptions, build_index
    from specsearch.model import load_model
    from specsearch.synth import generate_survey

    model = load_model(model_dir)  # first: a missing model fails before any work
    log.info("building the default index under %s (%d synthetic stars; first start only)",
             root, n)
    generate_survey(catalog, n=n, seed=seed, progress=progress)
    build_embeddings(catalog, model, embeddings,
                     EmbedConfig(with_residual=True, progress=progress))
    build_index(embeddings, index, BuildOptions(kind="auto", shards=shards))
    return index


def ensure_default_index(root: str | Path = DEFAULT_ROOT, *,
                         model_dir: str | Path | None = None,
                         demo_indexes: tuple[Path, ...] = DEMO_INDEXES) -> Path:
    """The demo's index if ``specsearch demo`` built one, else the cached synthetic default
    ``root/default`` (built now with ``model_dir``'s model, default: the shipped one)."""
    for demo in demo_indexes:
        if (Path(demo) / MANIFEST).is_file():
            return Path(demo)
    return build_synthetic_index(Path(root) / "default", model_dir=model_dir)
