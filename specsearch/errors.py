"""The library's exception hierarchy.

Every error the library raises on purpose derives from :class:`SpecsearchError`, so the CLI
and the HTTP service can turn them into a clean message (exit code 2 / JSON 4xx) at the
boundary. Messages name the file or field, what was expected, what was found, and what to do.
"""

from __future__ import annotations

from pathlib import Path


class SpecsearchError(Exception):
    """Base class of every deliberate specsearch error."""


class ReaderError(SpecsearchError):
    """A survey file could not be read: truncated, wrong layout, missing column, no data."""

    def __init__(self, path: str | Path | None, message: str) -> None:
        self.path = None if path is None else str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class UnknownFormatError(ReaderError):
    """No registered reader recognises the file."""


class SpectrumError(SpecsearchError):
    """A spectrum's arrays are inconsistent or unusable (wrong length, all masked, NaN-only)."""


class CatalogError(SpecsearchError):
    """A catalog (Parquet dataset) is missing, malformed or inconsistent."""


class ModelError(SpecsearchError):
    """A model directory is missing, corrupt, tampered with or from another version."""


class SearchIndexError(SpecsearchError):
    """An index directory is missing, corrupt, or inconsistent with its manifest or model."""


class QueryError(SpecsearchError):
    """A query is malformed: bad k, unknown modality, unknown source_id, bad filter."""


class NotFoundError(QueryError):
    """Something a query names (a source_id, a modality's index) does not exist here."""


class ConfigError(SpecsearchError):
    """A configuration value is invalid (unknown architecture name, bad option)."""
