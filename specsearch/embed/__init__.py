"""The embedding builder: a catalog in, an embeddings dataset out.

``build_embeddings`` (local engine, :mod:`specsearch.embed.builder`) streams a catalog
through a model; ``build_embeddings_ray`` (:mod:`specsearch.embed.ray_engine`, needs the
``ray`` extra) runs the same steps as a Ray Data pipeline so the same command scales to a
cluster.
"""

from specsearch.embed.builder import EmbedConfig, EmbedReport, build_embeddings

__all__ = ["EmbedConfig", "EmbedReport", "build_embeddings"]
