"""CSV / TSV tables (gzip looked through) with pyarrow's streaming reader, under the caps.

Leading ``#`` comment lines are skipped (pyarrow's reader has no comment character);
columns whose every cell is an array string (``"(1.0, 2.0)"``) become ``list<double>``.
Decompressed bytes are counted as they are read (:class:`~specsearch.io.limits.CappedReader`)
and rows are checked against the row limit block by block, so a bomb stops early.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from specsearch.errors import ReaderError
from specsearch.io.limits import CappedReader, check_table_rows, current_limits
from specsearch.io.tables.columns import parse_array_columns, select_columns
from specsearch.io.tables.detect import head_bytes, is_tsv

CSV_BLOCK_BYTES = 1 << 24
"""CSV read block: column types are inferred from the first block (16 MB)."""
NULL_VALUES = ["", "null", "NULL", "NaN", "nan", "--"]


def _skip_rows(path: Path) -> int:
    """Leading '#' comment lines."""
    n = 0
    for line in head_bytes(path, 65536).splitlines():
        if not line.lstrip().startswith(b"#"):
            break
        n += 1
    return n


def _options(path: Path, column_types: dict | None = None) -> dict[str, Any]:
    import pyarrow.csv as pcsv

    return dict(
        read_options=pcsv.ReadOptions(skip_rows=_skip_rows(path), block_size=CSV_BLOCK_BYTES),
        parse_options=pcsv.ParseOptions(delimiter="\t" if is_tsv(path) else ",",
                                        newlines_in_values=False),
        convert_options=pcsv.ConvertOptions(column_types=column_types or {},
                                            null_values=NULL_VALUES, strings_can_be_null=True))


def csv_column_names(path: Path) -> list[str]:
    """The header line's column names (reads at most 1 MB)."""
    skip = _skip_rows(path)
    lines = head_bytes(path, 1 << 20).splitlines()
    if len(lines) <= skip:
        raise ReaderError(path, "no header line")
    header = lines[skip].decode("utf-8", "replace")
    return next(csv.reader([header], delimiter="\t" if is_tsv(path) else ","))


def _parse_error(path: Path, exc: Exception) -> ReaderError:
    if isinstance(exc, UnicodeDecodeError):
        return ReaderError(path, f"the CSV header is not UTF-8 text (damaged file?): {exc}")
    return ReaderError(path, f"cannot parse as CSV (truncated row, wrong number of fields, "
                             f"a value of another type, or not a table?): {exc}")


def read_csv_table(path: Path) -> pa.Table:
    """A whole CSV table; stops as soon as the rows pass the row limit (when one is set)."""
    import pyarrow.csv as pcsv

    try:
        if current_limits().max_table_rows is None:
            with CappedReader(path) as stream:
                table = pcsv.read_csv(stream, **_options(path))
        else:
            batches = []
            with pcsv.open_csv(CappedReader(path), **_options(path)) as reader:
                rows = 0
                for batch in reader:
                    rows += batch.num_rows
                    check_table_rows(path, rows)
                    batches.append(batch)
                table = pa.Table.from_batches(batches, schema=reader.schema)
        table.schema.names   # noqa: B018 - names are decoded lazily: fail here, named
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise _parse_error(path, exc) from exc
    check_table_rows(path, table.num_rows)
    return parse_array_columns(table)


def iter_csv_batches(path: Path, batch_size: int,
                     columns: Sequence[str] | None) -> Iterator[pa.RecordBatch]:
    """Stream a CSV table as batches of ``batch_size`` rows (bounded memory)."""
    import pyarrow.csv as pcsv

    streamed = current_limits().max_streamed_bytes
    try:
        reader = pcsv.open_csv(CappedReader(path, streamed), **_options(path))
        # Types are inferred on the first block only: force all-null columns there to string
        # (reading again) so a later block with values does not fail to convert.
        types = {f.name: pa.string() for f in reader.schema if pa.types.is_null(f.type)}
        if types:
            reader.close()
            reader = pcsv.open_csv(CappedReader(path, streamed), **_options(path, types))
        pending: list[pa.RecordBatch] = []
        rows = total = 0
        for batch in reader:
            pending.append(batch)
            rows += batch.num_rows
            total += batch.num_rows
            check_table_rows(path, total)
            while rows >= batch_size:
                table = pa.Table.from_batches(pending)
                head, rest = table.slice(0, batch_size), table.slice(batch_size)
                yield from _finish_batch(head, columns, path)
                pending, rows = rest.to_batches(), rest.num_rows
        if rows:
            yield from _finish_batch(pa.Table.from_batches(pending), columns, path)
        reader.close()
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise _parse_error(path, exc) from exc


def _finish_batch(table: pa.Table, columns: Sequence[str] | None,
                  path: Path) -> Iterator[pa.RecordBatch]:
    table = select_columns(parse_array_columns(table), columns, path)
    yield from table.combine_chunks().to_batches()
