"""FITS header scanning without astropy: structure and declared sizes checked before parsing.

:func:`scan_fits` reads the header cards itself and checks the card count, the structural
keywords (``BITPIX``, ``NAXIS``, ``NAXISn``, ``PCOUNT``, ``GCOUNT``, ``TFIELDS``: integers
within the FITS standard's ranges) and that the data each header declares fits in the file
and under the :class:`~specsearch.io.limits.InputLimits` caps, so astropy never sees a
header bomb (``TFIELDS = 99999999999999999999``, ``NAXIS1 = 9223372036854775807``).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from specsearch.errors import ReaderError
from specsearch.fsutil import is_gzip
from specsearch.io.limits import CappedReader, InputLimits, current_limits, too_large

FITS_BLOCK = 2880
CARD = 80
BITPIX_VALUES = (8, 16, 32, 64, -32, -64)
MAX_NAXIS = 999
MAX_TFIELDS = 999
"""The FITS standard's own bounds on NAXIS and TFIELDS (keywords NAXISn/TFORMn have 3 digits)."""

_INT = re.compile(rb"^[+-]?\d+$")


@dataclass
class HduHeader:
    """What :func:`scan_fits` learned about one HDU (structural keywords only)."""

    index: int
    xtension: str | None
    bitpix: int
    naxis: tuple[int, ...]
    pcount: int = 0
    gcount: int = 1
    tfields: int | None = None
    ttypes: dict[int, str] = field(default_factory=dict)
    header_offset: int = 0
    data_offset: int = 0
    data_bytes: int = 0
    ncards: int = 0


def _value(card: bytes) -> bytes:
    """The value field of a ``KEY     = value / comment`` card, stripped (strings keep quotes)."""
    text = card[10:].strip()
    if text.startswith(b"'"):
        end = text.find(b"'", 1)
        while end != -1 and text[end + 1:end + 2] == b"'":   # '' is an escaped quote
            end = text.find(b"'", end + 2)
        return text if end == -1 else text[:end + 1]
    return text.split(b"/", 1)[0].strip()


def _int_card(cards: dict[bytes, bytes], key: bytes, path, hdu: int, *, lo: int, hi: int,
              default: int | None = None) -> int:
    raw = cards.get(key)
    if raw is None:
        if default is None:
            raise ReaderError(path, f"damaged FITS header: HDU {hdu} has no {key.decode()} "
                                    f"card; fetch the file again")
        return default
    if not _INT.match(raw):
        raise ReaderError(path, f"damaged FITS header: HDU {hdu} card {key.decode()} holds "
                                f"{raw[:30].decode('ascii', 'replace')!r}, expected an integer")
    value = int(raw)
    if not lo <= value <= hi:
        raise ReaderError(path, f"damaged FITS header: HDU {hdu} card {key.decode()} = "
                                f"{value}, outside the valid range {lo}..{hi}")
    return value


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = fh.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _skip(fh: BinaryIO, n: int) -> int:
    """Skip ``n`` bytes; the number actually skipped (less at end of file)."""
    if n <= 0:
        return 0
    if fh.seekable():
        here = fh.tell()
        end = fh.seek(0, io.SEEK_END)
        target = min(end, here + n)
        fh.seek(target)
        return target - here
    done = 0
    while done < n:
        chunk = fh.read(min(1 << 20, n - done))
        if not chunk:
            break
        done += len(chunk)
    return done


def scan_fits(fh: BinaryIO, path: str | Path | None, *, limits: InputLimits | None = None,
              size: int | None = None, stop_after_table: bool = False,
              max_hdus: int | None = None) -> list[HduHeader]:
    """Check the structure of a FITS stream header by header, without astropy.

    Args:
        fh: the (decompressed) FITS bytes, positioned at the start.
        path: for messages.
        size: total bytes of the stream when known (seekable files: found by seeking).
        stop_after_table: return as soon as the first table HDU is scanned (column names).
        max_hdus: scan at most this many HDUs (e.g. 1: the primary header only).
    Returns:
        One :class:`HduHeader` per HDU found; trailing bytes that do not start an
        ``XTENSION`` header end the scan (astropy ignores them too).
    Raises:
        ReaderError: not FITS, a structural card that is missing, not an integer or out of
            range, a header without END, data running past the end of the file (truncated);
            InputTooLargeError: too many cards or HDUs, declared data over the cap.
    """
    limits = limits or current_limits()
    hdus: list[HduHeader] = []
    total_cards = 0
    offset = 0
    while True:
        if len(hdus) >= (max_hdus or limits.max_hdus):
            if max_hdus is None and _read_exact(fh, 8).startswith(b"XTENSIO"):
                raise too_large(path, "number of HDUs", f"more than {limits.max_hdus}",
                                limits.max_hdus, "max_hdus")
            return hdus
        header_offset = offset
        first = _read_exact(fh, FITS_BLOCK)
        offset += len(first)
        if not first:
            return hdus
        if hdus and not first.startswith(b"XTENSION"):
            return hdus  # padding or junk after the last HDU
        if not hdus and not first.startswith(b"SIMPLE  ="):
            raise ReaderError(path, f"not a FITS file: it starts with {first[:16]!r}, "
                                    f"expected the card 'SIMPLE  ='")
        cards, ncards, nblocks = _header_cards(fh, first, path, len(hdus),
                                               limits.max_header_cards - total_cards, limits)
        offset += (nblocks - 1) * FITS_BLOCK
        total_cards += ncards
        hdu = _structure(cards, path, len(hdus))
        hdu.header_offset, hdu.data_offset, hdu.ncards = header_offset, offset, ncards
        if hdu.data_bytes > limits.max_decompressed_bytes:
            raise too_large(path, f"data declared by HDU {hdu.index}",
                            f"{hdu.data_bytes:,} bytes", limits.max_decompressed_bytes,
                            "max_decompressed_bytes")
        padded = -(-hdu.data_bytes // FITS_BLOCK) * FITS_BLOCK
        remaining = None if size is None else size - offset
        if remaining is not None and hdu.data_bytes > remaining:
            raise ReaderError(path, f"truncated FITS file: HDU {hdu.index} declares "
                                    f"{hdu.data_bytes:,} data bytes but only {remaining:,} "
                                    f"follow its header; fetch the file again")
        skipped = _skip(fh, padded)
        offset += skipped
        if skipped < hdu.data_bytes:
            raise ReaderError(path, f"truncated FITS file: HDU {hdu.index} declares "
                                    f"{hdu.data_bytes:,} data bytes but the file ends after "
                                    f"{skipped:,}; fetch the file again")
        hdus.append(hdu)
        if stop_after_table and hdu.tfields is not None:
            return hdus


def _header_cards(fh: BinaryIO, first: bytes, path, index: int, budget: int,
                  limits: InputLimits) -> tuple[dict[bytes, bytes], int, int]:
    """Read one header from its first block to its END card: (the first value of each
    ``KEY     = value`` card, cards read, blocks read). At most ``budget`` cards."""
    cards: dict[bytes, bytes] = {}
    ncards, nblocks, block = 0, 1, first
    while True:
        if len(block) < FITS_BLOCK:
            raise ReaderError(path, f"corrupt FITS structure: no END card in the header of "
                                    f"HDU {index} (truncated or damaged file); "
                                    f"fetch the file again")
        ended = False
        for i in range(0, FITS_BLOCK, CARD):
            card = block[i:i + CARD]
            key = card[:8].rstrip()
            if key == b"END":
                ended = True
                break
            ncards += 1
            if key and card[8:10] == b"= " and key not in cards:
                cards[key] = _value(card)
        if ncards > budget:
            raise too_large(path, "FITS header cards", f"more than {limits.max_header_cards:,}",
                            limits.max_header_cards, "max_header_cards")
        if ended:
            return cards, ncards, nblocks
        block = _read_exact(fh, FITS_BLOCK)
        nblocks += 1


def _structure(cards: dict[bytes, bytes], path, index: int) -> HduHeader:
    xtension = None
    if index:
        xtension = cards.get(b"XTENSION", b"").strip(b"' ").decode("ascii", "replace").upper()
    bitpix = _int_card(cards, b"BITPIX", path, index, lo=-64, hi=64)
    if bitpix not in BITPIX_VALUES:
        raise ReaderError(path, f"damaged FITS header: HDU {index} BITPIX = {bitpix}, "
                                f"expected one of {BITPIX_VALUES}")
    naxis = _int_card(cards, b"NAXIS", path, index, lo=0, hi=MAX_NAXIS)
    dims = tuple(_int_card(cards, b"NAXIS%d" % (i + 1), path, index, lo=0, hi=2 ** 62)
                 for i in range(naxis))
    pcount = _int_card(cards, b"PCOUNT", path, index, lo=0, hi=2 ** 62, default=0)
    gcount = _int_card(cards, b"GCOUNT", path, index, lo=0, hi=2 ** 62, default=1)
    tfields = None
    if xtension in ("BINTABLE", "TABLE", "A3DTABLE"):
        tfields = _int_card(cards, b"TFIELDS", path, index, lo=0, hi=MAX_TFIELDS)
    elif b"TFIELDS" in cards:  # astropy may still build a table from it: bound it too
        _int_card(cards, b"TFIELDS", path, index, lo=0, hi=MAX_TFIELDS)
    if naxis == 0:
        elements = 0
    else:
        elements = 1
        # Random groups (primary, NAXIS1 = 0, GROUPS = T): NAXIS1 does not count.
        for i, n in enumerate(dims):
            if not (i == 0 and n == 0 and index == 0 and b"GROUPS" in cards):
                elements *= n
    data_bytes = abs(bitpix) // 8 * gcount * (pcount + elements) if naxis else 0
    ttypes = {}
    if tfields:
        for i in range(1, tfields + 1):
            raw = cards.get(b"TTYPE%d" % i)
            if raw is not None:
                ttypes[i] = raw.strip(b"'").rstrip().decode("ascii", "replace")
    return HduHeader(index=index, xtension=xtension, bitpix=bitpix, naxis=dims,
                     pcount=pcount, gcount=gcount, tfields=tfields, ttypes=ttypes,
                     data_bytes=data_bytes)


def scan_fits_bytes(raw: bytes, path: str | Path | None,
                    limits: InputLimits | None = None) -> list[HduHeader]:
    """:func:`scan_fits` over bytes already in memory."""
    return scan_fits(io.BytesIO(raw), path, limits=limits, size=len(raw))


def scan_fits_file(path: str | Path, *, stop_after_table: bool = False,
                   max_hdus: int | None = None) -> list[HduHeader]:
    """:func:`scan_fits` over a (possibly gzipped) file, reading headers only.

    Plain files are scanned by seeking (cheap whatever their size); gzip streams are
    decompressed as far as needed, under the decompressed-bytes cap.
    """
    path = Path(path)
    try:
        if is_gzip(path):
            with CappedReader(path) as fh:
                return scan_fits(io.BufferedReader(fh), path,
                                 stop_after_table=stop_after_table, max_hdus=max_hdus)
        with open(path, "rb") as fh:
            return scan_fits(fh, path, size=path.stat().st_size,
                             stop_after_table=stop_after_table, max_hdus=max_hdus)
    except OSError as exc:
        raise ReaderError(path, f"cannot read the file: {exc.strerror or exc}") from exc
