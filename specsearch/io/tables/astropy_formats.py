"""FITS tables, VOTables and ECSV through astropy, converted to pyarrow.

Masked/TNULL cells become nulls, FITS vector columns fixed-size lists, VOTable
variable-length arrays lists; table metadata (FITS header cards, ECSV ``meta``, VOTable
PARAMs) is kept as JSON under the schema metadata key :data:`META_KEY`. Each reader reads
the file's bytes under the decompressed-bytes cap, and FITS headers are checked by
:func:`specsearch.io.fits_scan.scan_fits` before astropy sees them.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from specsearch.errors import ReaderError
from specsearch.io.fits_scan import scan_fits_bytes
from specsearch.io.limits import check_table_rows, read_bytes_capped
from specsearch.io.tables.columns import parse_array_columns

META_KEY = b"specsearch.meta"
"""Schema metadata key of the table's own metadata (JSON)."""


def jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
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
    meta = {META_KEY: json.dumps(jsonable(dict(table.meta))).encode()} if table.meta else None
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=meta))


def read_fits_table(path: Path) -> pa.Table:
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
        check_table_rows(path, first.naxis[-1])
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


def read_votable(path: Path) -> pa.Table:
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
        table.meta.setdefault(param.name, jsonable(param.value))
    return astropy_to_arrow(table)


def read_ecsv(path: Path) -> pa.Table:
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
    return parse_array_columns(astropy_to_arrow(table))
