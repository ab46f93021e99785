"""Label tables joined to spectra at ingest: teff, logg, feh, alpha_fe, ids and positions.

A label table is any table :func:`specsearch.io.tables.read_table` reads; one of its
columns is the key (``--on COLUMN[=FIELD]``) matched against each spectrum's file name,
``spectrum_id``, ``source_id`` or a header value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from specsearch.errors import ReaderError
from specsearch.io.catalog import LABEL_COLUMNS
from specsearch.io.tables import read_table
from specsearch.spectrum import Spectrum

LABEL_TARGETS = (*LABEL_COLUMNS, "source_id", "ra", "dec", "snr")
"""Catalog columns a label table may fill (matched by column name, case-insensitive)."""

LABEL_VALID_RANGES = {"teff": (1000.0, 200_000.0), "logg": (-2.0, 10.0),
                      "feh": (-6.0, 2.0), "alpha_fe": (-2.0, 2.0)}
"""Physically possible label values; anything outside (e.g. the 9999 'unknown' sentinel of
the MILES compilation) is read as missing."""


def _label_value(name: str, value: Any) -> Any:
    if value is None or name not in LABEL_VALID_RANGES:
        return value
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    lo, hi = LABEL_VALID_RANGES[name]
    return v if np.isfinite(v) and lo <= v <= hi else None


@dataclass
class LabelTable:
    """Labels keyed on one column, matched to spectra by ``key_field``."""

    by_key: dict[str, dict[str, Any]]
    key_field: str

    @classmethod
    def read(cls, path: str | Path, on: str,
             rename: dict[str, str] | None = None) -> "LabelTable":
        """Read a label table; ``on`` is ``COLUMN`` or ``COLUMN=FIELD``.

        ``rename`` maps label-table column names to catalog columns, e.g.
        ``{"gaia_dr3_source_id": "source_id"}``.

        FIELD says what the column matches on the spectrum side: ``filename`` (the file's
        name), ``spectrum_id``, ``source_id``, or a header value in ``Spectrum.meta``.
        Without ``=FIELD`` a column named filename/file matches the file name, obsid matches
        spectrum_id, and anything else matches the field of the same name.
        """
        column, _, key_field = on.partition("=")
        table = read_table(path)
        names = {n.lower(): n for n in table.column_names}
        for src, dst in (rename or {}).items():
            if src.lower() not in names:
                raise ReaderError(path, f"label table has no column {src!r} to rename; "
                                        f"columns: {table.column_names}")
            names[dst.lower()] = names[src.lower()]
        if column.lower() not in names:
            raise ReaderError(path, f"label table has no column {column!r}; "
                                    f"columns: {table.column_names}")
        key_field = key_field or {"filename": "filename", "file": "filename",
                                  "obsid": "spectrum_id"}.get(column.lower(), column.lower())
        keys = table.column(names[column.lower()]).to_pylist()
        wanted = {t: names[t] for t in LABEL_TARGETS if t in names}
        cols = {t: table.column(src).to_pylist() for t, src in wanted.items()}
        by_key = {}
        for i, key in enumerate(keys):
            if key is not None:
                by_key[str(key).strip()] = {t: _label_value(t, v[i]) for t, v in cols.items()}
        return cls(by_key=by_key, key_field=key_field)

    def lookup(self, spec: Spectrum) -> dict[str, Any] | None:
        if self.key_field == "filename":
            key = Path(spec.path or "").name
        elif self.key_field in ("spectrum_id", "source_id"):
            key = getattr(spec, self.key_field)
        else:
            key = spec.meta.get(self.key_field)
        return None if key is None else self.by_key.get(str(key).strip())
