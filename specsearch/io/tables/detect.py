"""Which table format a file holds: from its first bytes, then its extension."""

from __future__ import annotations

import zlib
from pathlib import Path

from specsearch.errors import ReaderError
from specsearch.fsutil import read_head

TABLE_FORMATS = ("csv", "ecsv", "fits", "votable", "parquet", "arrow")
"""The table formats :func:`specsearch.io.tables.read_table` reads."""
_SUFFIXES = {".csv": "csv", ".txt": "csv", ".tsv": "csv", ".ecsv": "ecsv",
             ".fits": "fits", ".fit": "fits", ".fts": "fits", ".vot": "votable",
             ".votable": "votable", ".xml": "votable", ".parquet": "parquet", ".pq": "parquet",
             ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow"}


def head_bytes(path: Path, nbytes: int = 4096) -> bytes:
    """The first ``nbytes`` of the (gunzipped) content; ReaderError naming the file."""
    try:
        return read_head(path, nbytes)
    except FileNotFoundError:
        raise ReaderError(path, "no such file") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise ReaderError(path, f"cannot read the file: {exc}") from exc


def is_tsv(path: Path) -> bool:
    """Tab-separated by name (``.tsv``, ``.tsv.gz``)."""
    return path.name.lower().removesuffix(".gz").endswith(".tsv")


def detect_table_format(path: str | Path) -> str:
    """One of :data:`TABLE_FORMATS`, from the content first, then the extension.

    Raises:
        ReaderError: missing, empty, or not a recognisable table.
    """
    path = Path(path)
    head = head_bytes(path)
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
                                f"expected one of {', '.join(TABLE_FORMATS)}")
    return "csv"
