"""The OpenAPI document as the running server answers: auth only when it has keys, and the
served index's embedding dimension.

FastAPI generates the schema from the routes once, on the first ``/openapi.json`` request
(after ``lifespan`` has opened the index). Two facts are only known then, and a contract
that omits them is wrong for some server: whether API keys are configured (routes declare
the ``X-API-Key``/Bearer schemes and their 401 answer for servers that have keys), and how
long an embedding must be.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from service.settings import Settings

EMBEDDING_SCHEMAS = ("EmbeddingSearch",)
"""Request models with an ``embedding`` array of the served dimension."""


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Replace ``app.openapi`` by the generator described in the module docstring."""
    generate = app.openapi
    auth = bool(settings.api_keys or settings.api_keys_file)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        if not auth:
            without_auth(schema)
        state = getattr(app.state, "service", None)
        if state is not None:
            with_embedding_dim(schema, int(state.engine.index.manifest.embedding_dim))
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def without_auth(schema: dict[str, Any]) -> None:
    """No security schemes and no 401 answers (a server without keys)."""
    schema.get("components", {}).pop("securitySchemes", None)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.pop("security", None)
            operation.get("responses", {}).pop("401", None)


def with_embedding_dim(schema: dict[str, Any], dim: int) -> None:
    """``embedding`` arrays hold exactly ``dim`` numbers, with a unit-vector example."""
    models = schema.get("components", {}).get("schemas", {})
    for name in EMBEDDING_SCHEMAS:
        prop = models.get(name, {}).get("properties", {}).get("embedding")
        if prop is not None:
            prop["minItems"] = prop["maxItems"] = dim
            prop["description"] = (f"a vector of this server's embedding space ({dim} "
                                   f"numbers; normalised to unit length)")
            prop["examples"] = [[round(1.0 / dim ** 0.5, 6)] * dim]
