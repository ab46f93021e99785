"""Seeded random hostile inputs for the soak: header and size bombs, gzip and row bombs,
garbage tables, and mutations, one case per index.

:func:`case_at` builds case ``i`` of a run from ``(seed, i)`` alone, so parallel workers
build disjoint slices of the same corpus and a failing case can be rebuilt by its index.
Bombs are expensive to build (a 128 MiB gzip stream takes a second), so :class:`CaseMaker`
keeps one of each kind and size and varies it (damaged tails, flipped bytes) per case.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Callable

import hostile_inputs as hi

Case = hi.Case
BIG_INTS = ("99999999999999999999", "9223372036854775807", "9223372036854775808",
            "4611686018427387904", "2147483648", "1000000000000", "-1", "-9223372036854775808",
            "1E400", "1.5", "nan", "'text'", "''", "T", "", "0x10", "1_000")
KINDS = ("mutation",) * 12 + ("fits-bomb",) * 3 + ("size-bomb",) * 3 + ("garbage",) * 4 + (
    "gzip-bomb", "row-bomb")
"""The draw of a random case's kind (mutations of real files are the most varied; bombs
are cheap to refuse except gzip and row bombs, which must be read up to a cap)."""


def fits_bomb(rng: random.Random) -> Case:
    """A FITS file whose header lies: a structural card with a huge, negative or non-integer
    value, a flood of cards or HDUs, or a missing END; sometimes gzipped."""
    what = rng.choice(("primary-card", "table-card", "card-flood", "hdu-flood", "no-end",
                       "dup-cards"))
    value = rng.choice(BIG_INTS)
    data = b"\0" * 2880 * rng.randint(0, 2)
    if what == "primary-card":
        key = rng.choice(("NAXIS", "NAXIS1", "NAXIS2", "BITPIX", "GCOUNT", "PCOUNT"))
        cards = [hi.card("SIMPLE", "T"), hi.card("BITPIX", "-32"), hi.card("NAXIS", "2"),
                 hi.card("NAXIS1", "10"), hi.card("NAXIS2", "10")]
        cards = [hi.card(key, value) if c.startswith(key.ljust(8).encode()) else c
                 for c in cards] + ([hi.card(key, value)] if key in ("GCOUNT", "PCOUNT") else [])
        raw = hi.header(cards) + data
    elif what == "table-card":
        args = {"tfields": "1", "naxis1": "4", "naxis2": "1"}
        args[rng.choice(list(args))] = value
        extra = [hi.card(rng.choice(("TFORM1", "TDIM1", "THEAP", "TNULL1", "TSCAL1")), value)]
        raw = hi.primary() + hi.bintable(**args, extra=extra if rng.random() < 0.5 else None)
        raw += data
    elif what == "card-flood":
        n = rng.choice((1_500, 9_000, 10_001, 20_000, 60_000))
        raw = hi.primary([hi.card(f"K{i:06d}", str(i)) for i in range(n)]) + data
    elif what == "hdu-flood":
        ext = hi.header([hi.card("XTENSION", "'IMAGE'"), hi.card("BITPIX", "8"),
                         hi.card("NAXIS", "0"), hi.card("PCOUNT", "0"), hi.card("GCOUNT", "1")])
        raw = hi.primary() + ext * rng.choice((200, 257, 1_000, 3_000))
    elif what == "no-end":
        raw = b"".join(hi.card(f"K{i:06d}", "1") for i in range(36 * rng.randint(1, 40)))
        raw = hi.card("SIMPLE", "T") + raw
    else:   # the same structural card many times with different values
        cards = [hi.card("SIMPLE", "T"), hi.card("BITPIX", "8"), hi.card("NAXIS", "1"),
                 *[hi.card("NAXIS1", rng.choice(BIG_INTS)) for _ in range(rng.randint(2, 50))]]
        raw = hi.header(cards) + data
    name = f"fits-bomb-{what}"
    if rng.random() < 0.25:
        return name, "bomb.fits.gz", gzip.compress(raw, 1)
    return name, rng.choice(("bomb.fits", "bomb.fit", "spec.fits")), raw


def size_bomb(rng: random.Random) -> Case:
    """Valid structural cards that declare far more data than the file holds or any cap
    allows: image dimensions, table rows x widths, random groups, heaps."""
    what = rng.choice(("image", "table", "groups", "heap", "short-data"))
    if what == "image":
        dims = tuple(rng.choice((2 ** 16, 2 ** 20, 2 ** 31 - 1, 10 ** 9)) for _ in range(
            rng.randint(1, 4)))
        raw = hi.primary(naxis=dims) + b"\0" * 2880
    elif what == "table":
        raw = hi.primary() + hi.bintable(naxis1=str(rng.choice((4, 4096, 2 ** 30))),
                                         naxis2=str(rng.choice((10 ** 6, 10 ** 9, 2 ** 40))))
        raw += b"\0" * 2880
    elif what == "groups":
        raw = hi.header([hi.card("SIMPLE", "T"), hi.card("BITPIX", "-64"),
                         hi.card("NAXIS", "2"), hi.card("NAXIS1", "0"),
                         hi.card("NAXIS2", str(10 ** rng.randint(6, 12))),
                         hi.card("GROUPS", "T"), hi.card("PCOUNT", "3"),
                         hi.card("GCOUNT", str(10 ** rng.randint(3, 9)))])
    elif what == "heap":
        raw = hi.primary() + hi.bintable(extra=[hi.card("THEAP", "8")])
        raw = raw.replace(hi.card("PCOUNT", "0"), hi.card("PCOUNT", str(2 ** rng.randint(30, 61))))
        raw = raw.replace(hi.card("TFORM1", "'E'"), hi.card("TFORM1", "'1PE(9)'"))
    else:   # a real-looking header with its data cut short
        raw = hi.primary(naxis=(rng.randint(1000, 100_000),))[:2880] + b"\0" * rng.randint(0, 2880)
    return f"size-bomb-{what}", "size.fits", raw


def garbage_table(rng: random.Random) -> Case:
    """A text/CSV/VOTable/ECSV/XP table with hostile cells: inf, NaN, 1e308, words, ragged
    rows, odd delimiters, BOMs, NULs, huge fields."""
    n = rng.randint(0, 400)
    junk = ("inf", "-inf", "nan", "NaN", "1e308", "-1e308", "1e-320", "abc", "", "0", "-0",
            "1,5", "0x1p3", "1e", "--", "null", "9" * 400, "\x00", "1.0.0", "+-1")
    pick = lambda: rng.choice(junk) if rng.random() < 0.3 else f"{rng.uniform(-5, 1e4):.4f}"
    kind = rng.choice(("csv", "txt", "vot", "ecsv", "xp-csv", "tsv"))
    if kind in ("csv", "txt", "tsv"):
        sep = {"csv": rng.choice((",", ";", "|")), "txt": rng.choice((" ", "\t", "  ")),
               "tsv": "\t"}[kind]
        head = rng.choice(("wavelength{0}flux", "wave{0}flux{0}err", "loglam{0}flux{0}ivar",
                           "# lambda flux sigma", "", "wavelength_nm{0}flux{0}mask"))
        rows = [sep.join(pick() for _ in range(rng.randint(1, 4))) for _ in range(n)]
        text = "\n".join(([head.format(sep)] if head else []) + rows)
        if rng.random() < 0.1:
            text = "\ufeff" + text
        data = text.encode("utf-8", "replace")
        name = f"s.{kind}"
    elif kind == "vot":
        cells = "".join(f"<TR><TD>{pick()}</TD><TD>{pick()}</TD></TR>" for _ in range(n))
        data = (f"<?xml version='1.0'?><VOTABLE><RESOURCE><TABLE>"
                f"<FIELD name='source_id' datatype='long'/>"
                f"<FIELD name='bp_coefficients' datatype='double' arraysize='*'/>"
                f"<DATA><TABLEDATA>{cells}</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>")
        data = data.encode()[:rng.randint(50, 10 ** 6)]
        name = "x.vot"
    elif kind == "ecsv":
        rows = "\n".join(f"{i} {pick()}" for i in range(n))
        data = ("# %ECSV 1.0\n# ---\n# datatype:\n# - {name: source_id, datatype: int64}\n"
                f"# - {{name: flux, datatype: {rng.choice(('float64', 'string', 'int8'))}}}\n"
                f"source_id flux\n{rows}\n").encode()
        name = "x.ecsv"
    else:
        width = rng.choice((55, 54, 1, 0, 56, 1485))
        arr = lambda: '"(' + ",".join(pick() for _ in range(width)) + ')"'
        head = "source_id,bp_coefficients,bp_coefficient_errors,rp_coefficients," \
               "rp_coefficient_errors"
        rows = [f"{rng.choice((i, -i, 2 ** 63, 'x'))},{arr()},{arr()},{arr()},{arr()}"
                for i in range(min(n, 40))]
        data = "\n".join([head] + rows).encode()
        name = "xp.csv"
    if rng.random() < 0.2:
        return f"garbage-{kind}", name + ".gz", gzip.compress(data, 1)
    return f"garbage-{kind}", name, data


class CaseMaker:
    """Builds case ``i`` of a corpus (fixed cases first, then seeded random kinds)."""

    def __init__(self, seed: int, *, bomb_bytes: int, bomb_rows: int,
                 fixed: list[Case] | None = None) -> None:
        self.seed = seed
        self.bomb_bytes = bomb_bytes
        self.bomb_rows = bomb_rows
        self.fixed = fixed if fixed is not None else hi.fixed_cases(bomb_bytes, bomb_rows)
        self.seeds = hi.seeds()
        self._cache: dict[tuple, list[Case]] = {}

    def _cached(self, key: tuple, build: Callable[[], list[Case]]) -> list[Case]:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def gzip_bomb(self, rng: random.Random) -> Case:
        size = rng.choice((self.bomb_bytes // 2, self.bomb_bytes))
        name, filename, data = rng.choice(self._cached(("gz", size),
                                                       lambda: hi.gzip_bombs(size)))
        return _damage_tail(f"{name}-{size >> 20}MiB", filename, data, rng)

    def row_bomb(self, rng: random.Random) -> Case:
        rows = rng.choice((self.bomb_rows // 10, self.bomb_rows))
        name, filename, data = rng.choice(self._cached(("rows", rows),
                                                       lambda: hi.row_bombs(rows)))
        return _damage_tail(f"{name}-{rows}", filename, data, rng)

    def case(self, i: int) -> Case:
        """Case ``i``: the fixed cases in order, then a random kind seeded by (seed, i)."""
        if i < len(self.fixed):
            return self.fixed[i]
        rng = random.Random(f"{self.seed}-{i}")
        kind = rng.choice(KINDS)
        if kind == "mutation" and self.seeds:
            name, data = rng.choice(self.seeds)
            return hi.mutate(name, data, rng)
        if kind == "fits-bomb":
            return fits_bomb(rng)
        if kind == "size-bomb":
            return size_bomb(rng)
        if kind == "gzip-bomb":
            return self.gzip_bomb(rng)
        if kind == "row-bomb":
            return self.row_bomb(rng)
        return garbage_table(rng)


def _damage_tail(name: str, filename: str, data: bytes, rng: random.Random) -> Case:
    """Half the time the bomb is left whole; otherwise cut short or given a flipped byte
    in its last kilobytes (a damaged gzip trailer, Parquet footer or CSV tail)."""
    roll = rng.random()
    if roll < 0.5:
        return name, filename, data
    buf = bytearray(data)
    if roll < 0.75:
        return f"{name}-cut", filename, bytes(buf[:rng.randrange(len(buf) // 2, len(buf))])
    at = max(0, len(buf) - rng.randint(1, min(len(buf), 4096)))
    buf[at] ^= 1 << rng.randrange(8)
    return f"{name}-flip", filename, bytes(buf)

