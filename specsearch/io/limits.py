"""Bounded work per file: limits on decompressed bytes, FITS header cards, declared sizes, rows.

Every reader takes its limits from :func:`current_limits` (defaults: :data:`DEFAULT_LIMITS`,
generous enough for any real survey file). The HTTP service tightens them around an upload
with ``with use_limits(InputLimits(...)):``. Checks run *before* anything is allocated:

* :func:`read_bytes_capped` decompresses gzip with a cap on the output (a 1 MB ``.gz`` that
  inflates to 4 GiB stops at the cap), and :class:`CappedReader` does the same for streams;
* :func:`specsearch.io.fits_scan.scan_fits` reads FITS header cards itself (no astropy) and
  checks card counts, structural keywords and declared sizes against these limits.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from specsearch.errors import ReaderError
from specsearch.fsutil import is_gzip, open_maybe_gzip, read_head



@dataclass(frozen=True)
class InputLimits:
    """How much work one input file may cause. All limits are checked before allocating.

    Attributes:
        max_decompressed_bytes: largest content (after gzip decompression) of a file that
            is read whole: FITS, VOTable, ECSV, text spectra (256 MiB: real spectra and XP
            sample files are < 10 MB; ``specsearch ingest --max-file-mb`` raises it).
        max_streamed_bytes: largest content of a file that is streamed in bounded memory
            (CSV and Parquet tables, e.g. Gaia archive dumps): 1 TiB, a bound, not a budget.
        max_header_cards: FITS header cards in the whole file, all HDUs together (10,000 =
            278 header blocks; real LAMOST/Gaia headers hold 100-400).
        max_hdus: HDUs in a FITS file.
        max_table_rows: rows a table may hold (None: unbounded, for ingest, which streams).
        max_text_lines: lines of a text spectrum (2 million: far beyond any 1-D spectrum;
            a line costs ~100 bytes of memory while it is parsed).
    """

    max_decompressed_bytes: int = 256 * 2 ** 20
    max_streamed_bytes: int = 2 ** 40
    max_header_cards: int = 10_000
    max_hdus: int = 256
    max_table_rows: int | None = None
    max_text_lines: int = 2_000_000


DEFAULT_LIMITS = InputLimits()
_LIMITS: contextvars.ContextVar[InputLimits] = contextvars.ContextVar(
    "specsearch_input_limits", default=DEFAULT_LIMITS)


def current_limits() -> InputLimits:
    """The limits in force in this thread / task (see :func:`use_limits`)."""
    return _LIMITS.get()


@contextlib.contextmanager
def use_limits(limits: InputLimits) -> Iterator[InputLimits]:
    """Apply ``limits`` to every reader called inside the ``with`` block (this context only)."""
    token = _LIMITS.set(limits)
    try:
        yield limits
    finally:
        _LIMITS.reset(token)


def too_large(path: str | Path | None, what: str, size: int | str, limit: int,
              setting: str) -> ReaderError:
    """The ReaderError of an input over a limit (the service answers it with 413)."""
    return InputTooLargeError(path, f"{what} ({size}) exceeds the limit of {limit:,} "
                                    f"({setting}); split or shrink the file")


class InputTooLargeError(ReaderError):
    """An input is over one of the :class:`InputLimits` (HTTP 413 at the service)."""


def check_table_rows(path: str | Path | None, rows: int) -> None:
    """InputTooLargeError when a table holds more rows than the limits allow."""
    limit = current_limits().max_table_rows
    if limit is not None and rows > limit:
        raise too_large(path, "table rows", f"{rows:,}", limit, "max_table_rows")


# --------------------------------------------------------------------------- bytes

def read_bytes_capped(path: str | Path, limit: int | None = None) -> bytes:
    """The file's content, gunzipped if it is gzip, refusing more than ``limit`` bytes.

    Raises:
        ReaderError: unreadable, truncated or corrupt gzip; InputTooLargeError over the cap.
    """
    path = Path(path)
    limit = current_limits().max_decompressed_bytes if limit is None else limit
    gz = False
    try:
        gz = is_gzip(path)
        if not gz and (size := path.stat().st_size) > limit:
            raise too_large(path, "file size", f"{size:,} bytes", limit,
                            "max_decompressed_bytes")
        raw = read_head(path, limit + 1)   # bounded: a gzip bomb stops here
    except ReaderError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        if not gz:
            raise ReaderError(path, f"cannot read the file: {exc}") from exc
        raise ReaderError(path, f"truncated or corrupt gzip stream ({exc}); the download is "
                                f"incomplete or damaged: fetch the file again") from exc
    if len(raw) > limit:
        raise too_large(path, "decompressed size", f"more than {limit:,} bytes", limit,
                        "max_decompressed_bytes")
    return raw


class CappedReader(io.RawIOBase):
    """A read-only stream over a (possibly gzipped) file that fails past ``limit`` bytes.

    For streaming parsers (pyarrow's CSV reader): the decompressed bytes are counted as they
    are read, so a decompression bomb stops at the cap instead of filling memory.
    """

    def __init__(self, path: str | Path, limit: int | None = None) -> None:
        self.path = Path(path)
        self.limit = current_limits().max_decompressed_bytes if limit is None else limit
        self._fh: BinaryIO = open_maybe_gzip(self.path)
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        try:
            data = self._fh.read(len(buffer))
        except (OSError, EOFError, zlib.error) as exc:
            raise ReaderError(self.path, f"truncated or corrupt gzip stream ({exc}); fetch "
                                         f"the file again") from exc
        self.count += len(data)
        if self.count > self.limit:
            raise too_large(self.path, "decompressed size", f"more than {self.limit:,} bytes",
                            self.limit, "max_decompressed_bytes")
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._fh.close()
        super().close()
