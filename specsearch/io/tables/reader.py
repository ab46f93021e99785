"""The table entry points: read a whole table, its column names, or stream its batches."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from specsearch.errors import ReaderError
from specsearch.io.fits_scan import scan_fits_file
from specsearch.io.limits import check_table_rows, current_limits, too_large
from specsearch.io.tables.astropy_formats import read_ecsv, read_fits_table, read_votable
from specsearch.io.tables.columns import check_columns, select_columns
from specsearch.io.tables.csv_format import csv_column_names, iter_csv_batches, read_csv_table
from specsearch.io.tables.detect import detect_table_format, head_bytes

_FIELD_NAME = re.compile(r"<FIELD\b[^>]*?\bname\s*=\s*\"([^\"]+)\"")


def _check_parquet(path: Path, meta: Any, *, whole: bool) -> None:
    """Row count and uncompressed sizes from the footer, before any column is decoded.

    ``whole``: the table is read at once (its total must fit the cap); streaming readers
    hold one row group at a time (each must fit).
    """
    check_table_rows(path, meta.num_rows)
    limit = current_limits().max_decompressed_bytes
    sizes = [meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)]
    size = sum(sizes) if whole else max(sizes, default=0)
    if size > limit:
        raise too_large(path, "uncompressed Parquet data" if whole else "a Parquet row group",
                        f"{size:,} bytes", limit, "max_decompressed_bytes")


def _read_parquet(path: Path) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        _check_parquet(path, pq.read_metadata(path), whole=True)
        return pq.read_table(path)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise ReaderError(path, f"corrupt or truncated Parquet file: {exc}") from exc


def _read_arrow(path: Path) -> pa.Table:
    import pyarrow.feather as feather

    size = path.stat().st_size
    limit = current_limits().max_decompressed_bytes
    if size > limit:
        raise too_large(path, "file size", f"{size:,} bytes", limit, "max_decompressed_bytes")
    try:
        return feather.read_table(path)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise ReaderError(path, f"corrupt or truncated Arrow/Feather file: {exc}") from exc


_READERS = {"csv": read_csv_table, "ecsv": read_ecsv, "fits": read_fits_table,
            "votable": read_votable, "parquet": _read_parquet, "arrow": _read_arrow}


def _read_whole(path: Path, fmt: str) -> pa.Table:
    table = _READERS[fmt](path)
    check_table_rows(path, table.num_rows)
    return table


def read_table(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a whole table (any of :data:`~specsearch.io.tables.TABLE_FORMATS`) as a pyarrow
    Table.

    Args:
        path: the file (``.gz`` accepted for text formats and FITS).
        columns: keep only these columns (in this order); all when None.
    Raises:
        ReaderError: missing/empty/truncated/garbled file, no rows' header, or a requested
            column that is absent (the message lists the columns present).
    """
    path = Path(path)
    table = _read_whole(path, detect_table_format(path))
    if table.num_columns == 0:
        raise ReaderError(path, "the table has no columns")
    return select_columns(table, columns, path)


def read_column_names(path: str | Path) -> list[str]:
    """Column names only, cheaply (header / schema); for format ``identify`` functions."""
    path = Path(path)
    fmt = detect_table_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq
        try:
            return list(pq.read_schema(path).names)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise ReaderError(path, f"corrupt Parquet file: {exc}") from exc
    if fmt == "csv":
        return csv_column_names(path)
    if fmt == "fits":
        # Headers only, read by the bounded scanner (no astropy: no header bombs).
        for hdu in scan_fits_file(path, stop_after_table=True):
            if hdu.tfields is not None:
                return [hdu.ttypes.get(i + 1, "") for i in range(hdu.tfields)]
        raise ReaderError(path, "FITS file has no table HDU")
    if fmt == "votable":
        names = _FIELD_NAME.findall(head_bytes(path, 1 << 20).decode("utf-8", "replace"))
        if names:
            return names
    return read_table(path).column_names


def iter_table_batches(path: str | Path, batch_size: int = 65536,
                       columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream a table as record batches of at most ``batch_size`` rows.

    Parquet and CSV are streamed (memory bounded by the batch); other formats are read whole
    first. Array strings are parsed per batch, so list columns can be ``null``-typed in a
    batch where every cell is null.
    """
    path = Path(path)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fmt = detect_table_format(path)
    if fmt == "parquet":
        yield from _iter_parquet(path, batch_size, columns)
    elif fmt == "csv":
        yield from iter_csv_batches(path, batch_size, columns)
    else:
        table = select_columns(_read_whole(path, fmt), columns, path)
        yield from table.to_batches(max_chunksize=batch_size)


def _iter_parquet(path: Path, batch_size: int,
                  columns: Sequence[str] | None) -> Iterator[pa.RecordBatch]:
    from specsearch.io.parquet import open_parquet

    try:
        pf = open_parquet(path)
        _check_parquet(path, pf.metadata, whole=False)
        if columns is not None:
            check_columns(pf.schema_arrow.names, columns, path)
        yield from pf.iter_batches(batch_size=batch_size, columns=columns)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise ReaderError(path, f"corrupt or truncated Parquet file: {exc}") from exc
