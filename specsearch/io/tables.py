"""Read any tabular file into a pyarrow Table: CSV, ECSV, FITS tables, VOTable, Parquet, Arrow.

One entry point, :func:`read_table`, used for Gaia XP tables and for label tables
(``specsearch ingest --labels FILE --on COLUMN``). The format is recognised from the file's
first bytes (Parquet/Arrow magic, ``SIMPLE  =``, ``<?xml``/``<VOTABLE``, ``# %ECSV``; gzip is
looked through) and only then from the extension, so a misnamed file still reads.

Array cells come back as Arrow list columns whatever the format: the Gaia archive's CSV
writes arrays as ``"(1.0, 2.0, ...)"`` strings, ECSV/GaiaXPy as ``"[1.0, 2.0]"``; a string
column whose every non-null cell is bracketed like that and parses as numbers becomes
``list<double>`` (``nan``/``null`` entries become NaN). FITS vector columns become
fixed-size lists, VOTable variable-length arrays lists; masked/TNULL cells become nulls.
Table metadata (FITS header cards, ECSV ``meta``, VOTable PARAMs, e.g. GaiaXPy's
``sampling``) is kept as JSON under the schema metadata key ``b"specsearch.meta"``.

Every failure (empty, truncated, garbled, missing column) is a :class:`ReaderError` naming
the file. :func:`iter_table_batches` streams Parquet and CSV in bounded memory; other
formats are read whole and then sliced.
"""

from __future__ import annotations

import gzip
import io
import json
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from specsearch.errors import ReaderError
from specsearch.io.limits import (CappedReader, current_limits, read_bytes_capped,
                                  scan_fits_bytes, scan_fits_file, too_large)

META_KEY = b"specsearch.meta"
CSV_BLOCK_BYTES = 1 << 24
"""CSV read block: column types are inferred from the first block (16 MB)."""
FORMATS = ("csv", "ecsv", "fits", "votable", "parquet", "arrow")
_SUFFIXES = {".csv": "csv", ".txt": "csv", ".tsv": "csv", ".ecsv": "ecsv",
             ".fits": "fits", ".fit": "fits", ".fts": "fits", ".vot": "votable",
             ".votable": "votable", ".xml": "votable", ".parquet": "parquet", ".pq": "parquet",
             ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow"}


# --------------------------------------------------------------------------- detection

def _head(path: Path, nbytes: int = 4096) -> bytes:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(nbytes)
        if raw[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as fh:
                raw = fh.read(nbytes)
        return raw
    except FileNotFoundError:
        raise ReaderError(path, "no such file") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise ReaderError(path, f"cannot read the file: {exc}") from exc


def detect_format(path: str | Path) -> str:
    """One of :data:`FORMATS`, from the content first, then the extension.

    Raises:
        ReaderError: missing, empty, or not a recognisable table.
    """
    path = Path(path)
    head = _head(path)
    if not head.strip():
        raise ReaderError(path, "empty file: no header and no rows")
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"ARROW1"):
        return "arrow"
    if head.startswith(b"SIMPLE  ="):
        return "fits"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"<?xml") or text[:200].upper().find(b"<VOTABLE") >= 0:
        return "votable"
    if text.startswith(b"# %ECSV"):
        return "ecsv"
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    fmt = _SUFFIXES.get(suffixes[-1]) if suffixes else None
    if fmt in ("parquet", "arrow", "fits", "votable"):
        raise ReaderError(path, f"the extension says {fmt} but the content does not start "
                                f"like one ({head[:16]!r}): damaged or misnamed file")
    if b"\x00" in head:
        raise ReaderError(path, f"unrecognised binary file (starts with {head[:16]!r}); "
                                f"expected one of {', '.join(FORMATS)}")
    return "csv"


# --------------------------------------------------------------------------- array strings

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


def _parse_array_columns(table: pa.Table) -> pa.Table:
    for i in range(table.num_columns):
        parsed = parse_array_strings(table.column(i))
        if parsed is not None:
            field = table.schema.field(i).with_type(parsed.type)
            table = table.set_column(i, field, parsed)
    return table


# --------------------------------------------------------------------------- astropy

def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _astropy_column_to_arrow(col: Any) -> pa.Array:
    data = np.ma.getdata(col)
    mask = np.ma.getmaskarray(col) if np.ma.isMaskedArray(col) or hasattr(col, "mask") else None
    if data.dtype.kind == "O":   # VOTable variable-length arrays / strings
        cells = []
        for i, cell in enumerate(data):
            if (mask is not None and np.ndim(mask[i]) == 0 and mask[i]) or cell is None:
                cells.append(None)
            elif isinstance(cell, (str, bytes)):
                cells.append(cell.decode() if isinstance(cell, bytes) else cell)
            else:
                arr = np.ma.filled(np.ma.asarray(cell, dtype=np.float64), np.nan)
                cells.append(arr.ravel())
        return pa.array(cells)
    if data.dtype.kind == "S":
        data = np.char.decode(data, "utf-8", "replace")
    elif data.dtype.byteorder not in ("=", "|"):   # FITS is big-endian; Arrow wants native
        data = data.astype(data.dtype.newbyteorder("="))
    row_mask = None
    if mask is not None and mask.any():
        row_mask = mask if mask.ndim == 1 else mask.reshape(len(mask), -1).all(axis=1)
    if data.ndim == 1:
        return pa.array(data, mask=row_mask)
    width = int(np.prod(data.shape[1:]))
    flat = data.reshape(len(data), width)
    if mask is not None and mask.ndim > 1 and data.dtype.kind == "f":
        flat = np.where(mask.reshape(len(data), width), np.nan, flat)
    values = pa.array(flat.ravel())
    return pa.FixedSizeListArray.from_arrays(
        values, width, mask=None if row_mask is None else pa.array(row_mask))


def astropy_to_arrow(table: Any) -> pa.Table:
    """An astropy Table as a pyarrow Table (masks -> nulls, units -> field metadata)."""
    arrays, fields = [], []
    for name in table.colnames:
        col = table[name]
        arr = _astropy_column_to_arrow(col)
        meta = {b"unit": str(col.unit).encode()} if getattr(col, "unit", None) else None
        arrays.append(arr)
        fields.append(pa.field(name, arr.type, metadata=meta))
    meta = {META_KEY: json.dumps(_jsonable(dict(table.meta))).encode()} if table.meta else None
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=meta))


def _read_fits(path: Path) -> pa.Table:
    from astropy.io import fits
    from astropy.table import Table

    raw = read_bytes_capped(path)
    if len(raw) % 2880:
        raise ReaderError(path, f"truncated FITS file: {len(raw)} bytes is not a whole number "
                                f"of 2880-byte FITS blocks; fetch the file again")
    # Card counts, structural keywords and declared sizes, before astropy allocates.
    headers = scan_fits_bytes(raw, path)
    first = next((h for h in headers if h.tfields is not None), None)
    if first is not None and first.naxis:
        _check_rows(path, first.naxis[-1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with fits.open(io.BytesIO(raw), memmap=False) as hdul:
                hdul.verify("silentfix")
                tables = [h for h in hdul
                          if isinstance(h, (fits.BinTableHDU, fits.TableHDU))]
                if not tables:
                    raise ReaderError(path, f"FITS file has no table HDU (HDUs: "
                                            f"{[h.name or type(h).__name__ for h in hdul]})")
                table = Table.read(tables[0], character_as_bytes=False)
        except ReaderError:
            raise
        except Exception as exc:  # noqa: BLE001 - astropy raises many kinds on damage
            raise ReaderError(path, f"corrupt or truncated FITS table: {exc}") from exc
    bad = [w for w in caught if "truncat" in str(w.message).lower()]
    if bad:
        raise ReaderError(path, f"truncated FITS file: {bad[0].message}; fetch it again")
    table.meta = {k: v for k, v in table.meta.items() if k not in ("COMMENT", "HISTORY")}
    return astropy_to_arrow(table)


def _read_votable(path: Path) -> pa.Table:
    from astropy.io.votable import parse

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # From memory: bounded bytes, and parse errors carry no server path.
            vot = parse(io.BytesIO(read_bytes_capped(path)))
            resource_tables = list(vot.iter_tables())
            if not resource_tables:
                raise ReaderError(path, "VOTable holds no TABLE element")
            vtab = resource_tables[0]
            table = vtab.to_table(use_names_over_ids=True)
    except ReaderError:
        raise
    except Exception as exc:  # noqa: BLE001 - XML / VOTable parse errors of every kind
        raise ReaderError(path, f"corrupt or truncated VOTable: {exc}") from exc
    for param in vtab.params:   # e.g. GaiaXPy's 'sampling' PARAM
        table.meta.setdefault(param.name, _jsonable(param.value))
    return astropy_to_arrow(table)


def _read_ecsv(path: Path) -> pa.Table:
    from astropy.table import Table

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            text = read_bytes_capped(path).decode("utf-8", "replace")
            table = Table.read(text.splitlines(), format="ascii.ecsv")
    except ReaderError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ReaderError(path, f"cannot parse the ECSV file: {exc}") from exc
    return _parse_array_columns(astropy_to_arrow(table))


# --------------------------------------------------------------------------- CSV / Arrow

def _csv_skip_rows(path: Path) -> int:
    """Leading '#' comment lines (pyarrow's CSV reader has no comment character)."""
    n = 0
    for line in _head(path, 65536).splitlines():
        if not line.lstrip().startswith(b"#"):
            break
        n += 1
    return n


def _csv_options(path: Path, column_types: dict | None = None):
    import pyarrow.csv as pcsv

    delimiter = "\t" if path.name.lower().replace(".gz", "").endswith(".tsv") else ","
    return dict(
        read_options=pcsv.ReadOptions(skip_rows=_csv_skip_rows(path),
                                         block_size=CSV_BLOCK_BYTES),
        parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=False),
        convert_options=pcsv.ConvertOptions(
            column_types=column_types or {},
            null_values=["", "null", "NULL", "NaN", "nan", "--"], strings_can_be_null=True))


def _read_csv(path: Path) -> pa.Table:
    import pyarrow.csv as pcsv

    limits = current_limits()
    try:
        if limits.max_table_rows is None:
            with CappedReader(path) as stream:
                table = pcsv.read_csv(stream, **_csv_options(path))
        else:   # stop as soon as the rows pass the limit, not after parsing them all
            batches = []
            with pcsv.open_csv(CappedReader(path), **_csv_options(path)) as reader:
                rows = 0
                for batch in reader:
                    rows += batch.num_rows
                    _check_rows(path, rows)
                    batches.append(batch)
                table = pa.Table.from_batches(batches, schema=reader.schema)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ReaderError(path, f"cannot parse as CSV (truncated row, wrong number of "
                                f"fields, or not a table?): {exc}") from exc
    _check_rows(path, table.num_rows)
    return _parse_array_columns(table)


def _read_whole(path: Path, fmt: str) -> pa.Table:
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    if fmt == "parquet":
        try:
            meta = pq.read_metadata(path)
            _check_parquet(path, meta, whole=True)
            return pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise ReaderError(path, f"corrupt or truncated Parquet file: {exc}") from exc
    if fmt == "arrow":
        size = path.stat().st_size
        limit = current_limits().max_decompressed_bytes
        if size > limit:
            raise too_large(path, "file size", f"{size:,} bytes", limit,
                            "max_decompressed_bytes")
        try:
            table = feather.read_table(path)
            _check_rows(path, table.num_rows)
            return table
        except (pa.ArrowException, OSError) as exc:
            raise ReaderError(path, f"corrupt or truncated Arrow/Feather file: {exc}") from exc
    table = {"csv": _read_csv, "ecsv": _read_ecsv, "fits": _read_fits,
             "votable": _read_votable}[fmt](path)
    _check_rows(path, table.num_rows)
    return table


def _check_rows(path: Path, rows: int) -> None:
    """InputTooLargeError when a table holds more rows than the limits allow."""
    limit = current_limits().max_table_rows
    if limit is not None and rows > limit:
        raise too_large(path, "table rows", f"{rows:,}", limit, "max_table_rows")


def _check_parquet(path: Path, meta: Any, *, whole: bool) -> None:
    """Row count and uncompressed sizes from the footer, before any column is decoded.

    ``whole``: the table is read at once (its total must fit the cap); streaming readers
    hold one row group at a time (each must fit).
    """
    _check_rows(path, meta.num_rows)
    limit = current_limits().max_decompressed_bytes
    sizes = [meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)]
    size = sum(sizes) if whole else max(sizes, default=0)
    if size > limit:
        raise too_large(path, "uncompressed Parquet data" if whole else "a Parquet row group",
                        f"{size:,} bytes", limit, "max_decompressed_bytes")


def _select(table: pa.Table, columns: Sequence[str] | None, path: Path) -> pa.Table:
    if columns is None:
        return table
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ReaderError(path, f"missing column(s) {missing}; the table has "
                                f"{table.column_names}")
    return table.select(list(columns))


def read_table(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a whole table (any of :data:`FORMATS`) as a pyarrow Table.

    Args:
        path: the file (``.gz`` accepted for text formats and FITS).
        columns: keep only these columns (in this order); all when None.
    Raises:
        ReaderError: missing/empty/truncated/garbled file, no rows' header, or a requested
            column that is absent (the message lists the columns present).
    """
    path = Path(path)
    table = _read_whole(path, detect_format(path))
    if table.num_columns == 0:
        raise ReaderError(path, "the table has no columns")
    return _select(table, columns, path)


def read_column_names(path: str | Path) -> list[str]:
    """Column names only, cheaply (header / schema); for format ``identify`` functions."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq
        try:
            return list(pq.read_schema(path).names)
        except (pa.ArrowException, OSError) as exc:
            raise ReaderError(path, f"corrupt Parquet file: {exc}") from exc
    if fmt == "csv":
        skip = _csv_skip_rows(path)
        lines = _head(path, 1 << 20).splitlines()
        if len(lines) <= skip:
            raise ReaderError(path, "no header line")
        import csv as _csv
        delim = "\t" if path.name.lower().replace(".gz", "").endswith(".tsv") else ","
        return next(_csv.reader([lines[skip].decode("utf-8", "replace")], delimiter=delim))
    if fmt == "fits":
        # Headers only, read by the bounded scanner (no astropy: no header bombs).
        for hdu in scan_fits_file(path, stop_after_table=True):
            if hdu.tfields is not None:
                return [hdu.ttypes.get(i + 1, "") for i in range(hdu.tfields)]
        raise ReaderError(path, "FITS file has no table HDU")
    if fmt == "votable":
        import re
        head = _head(path, 1 << 20).decode("utf-8", "replace")
        names = re.findall(r"<FIELD\b[^>]*?\bname\s*=\s*\"([^\"]+)\"", head)
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
    fmt = detect_format(path)
    if fmt == "parquet":
        from specsearch.io.parquet import open_parquet
        try:
            pf = open_parquet(path)
            _check_parquet(path, pf.metadata, whole=False)
            names = pf.schema_arrow.names
            if columns is not None:
                _select(pa.table({n: pa.array([], pa.null()) for n in names}), columns, path)
            yield from pf.iter_batches(batch_size=batch_size, columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise ReaderError(path, f"corrupt or truncated Parquet file: {exc}") from exc
        return
    if fmt == "csv":
        yield from _iter_csv(path, batch_size, columns)
        return
    table = _select(_read_whole(path, fmt), columns, path)
    yield from table.to_batches(max_chunksize=batch_size)


def _iter_csv(path: Path, batch_size: int,
              columns: Sequence[str] | None) -> Iterator[pa.RecordBatch]:
    import pyarrow.csv as pcsv

    try:
        # Types are inferred on the first block only: force all-null columns there to string
        # so a later block with values does not fail to convert.
        with pcsv.open_csv(CappedReader(path, current_limits().max_streamed_bytes),
                           **_csv_options(path)) as reader:
            schema = reader.schema
        types = {f.name: pa.string() for f in schema if pa.types.is_null(f.type)}
        streamed = current_limits().max_streamed_bytes
        reader = pcsv.open_csv(CappedReader(path, streamed), **_csv_options(path, types))
        pending: list[pa.RecordBatch] = []
        rows = total = 0
        for batch in reader:
            pending.append(batch)
            rows += batch.num_rows
            total += batch.num_rows
            _check_rows(path, total)
            while rows >= batch_size:
                table = pa.Table.from_batches(pending)
                head, rest = table.slice(0, batch_size), table.slice(batch_size)
                yield from _finish_csv_batch(head, columns, path)
                pending, rows = rest.to_batches(), rest.num_rows
        if rows:
            yield from _finish_csv_batch(pa.Table.from_batches(pending), columns, path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ReaderError(path, f"cannot parse as CSV (truncated row, wrong number of "
                                f"fields, or a value of another type?): {exc}") from exc


def _finish_csv_batch(table: pa.Table, columns: Sequence[str] | None,
                      path: Path) -> Iterator[pa.RecordBatch]:
    table = _select(_parse_array_columns(table), columns, path)
    yield from table.combine_chunks().to_batches()
