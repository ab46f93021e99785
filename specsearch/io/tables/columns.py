"""Column helpers shared by the table readers: array strings as lists, column selection."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from specsearch.errors import ReaderError


def parse_array_strings(column: pa.Array | pa.ChunkedArray) -> pa.Array | None:
    """``"(1, 2)"`` / ``"[1, 2]"`` strings -> ``list<double>``; None if not such a column.

    Nulls stay null, ``nan``/``null``/``None`` elements become NaN, ``()`` an empty list.
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return None
    valid = arr.drop_null()
    if len(valid) == 0:
        return None
    trimmed = pc.utf8_trim_whitespace(valid)
    opens = pc.or_(pc.starts_with(trimmed, "("), pc.starts_with(trimmed, "["))
    closes = pc.or_(pc.ends_with(trimmed, ")"), pc.ends_with(trimmed, "]"))
    if not pc.all(pc.and_(opens, closes)).as_py():
        return None
    inner = pc.utf8_trim(pc.utf8_trim_whitespace(arr), "()[]")
    lengths = pc.fill_null(pc.utf8_length(pc.utf8_trim_whitespace(inner)), 0)
    parts = pc.split_pattern(pc.if_else(pc.equal(lengths, 0), pa.scalar(None, pa.string()),
                                        inner), ",")
    flat = pc.utf8_trim_whitespace(pc.list_flatten(parts))
    missing = pc.is_in(pc.utf8_lower(flat), value_set=pa.array(["null", "none", "", "--"]))
    flat = pc.if_else(missing, "nan", flat)
    try:
        values = pc.cast(flat, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None   # e.g. nested "((..),(..))" or text in brackets: leave the strings
    counts = pc.fill_null(pc.list_value_length(parts), 0).to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    # Empty "()" cells (no parts) are empty lists, null cells stay null; 64-bit offsets only
    # when a column holds more than 2**31 numbers.
    big = offsets[-1] >= 2 ** 31
    cls = pa.LargeListArray if big else pa.ListArray
    return cls.from_arrays(pa.array(offsets if big else offsets.astype(np.int32)), values,
                           mask=pc.is_null(arr))


def parse_array_columns(table: pa.Table) -> pa.Table:
    """Every string column that holds only array strings, as ``list<double>``."""
    for i in range(table.num_columns):
        parsed = parse_array_strings(table.column(i))
        if parsed is not None:
            field = table.schema.field(i).with_type(parsed.type)
            table = table.set_column(i, field, parsed)
    return table


def select_columns(table: pa.Table, columns: Sequence[str] | None, path: Path) -> pa.Table:
    """``table`` with only ``columns`` (in that order; all when None); ReaderError listing
    the columns present when one is missing."""
    if columns is None:
        return table
    check_columns(table.column_names, columns, path)
    return table.select(list(columns))


def check_columns(present: Sequence[str], wanted: Sequence[str], path: Path) -> None:
    """ReaderError naming the missing columns of ``wanted`` and those present."""
    missing = [c for c in wanted if c not in present]
    if missing:
        raise ReaderError(path, f"missing column(s) {missing}; the table has {list(present)}")
