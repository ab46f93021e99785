"""Malformed, damaged and hostile input files, built on the fly (nothing big is committed).

Used by ``tests/test_fuzz_inputs.py`` (a bounded slice) and ``benchmarks/soak_inputs.py``
(>= 10,000 cases). Every case is ``(name, filename, bytes)``; ``cases(rng, n)`` mixes:

* mutations of real survey files (LAMOST image and COADD FITS, MILES FITS, Gaia XP FITS /
  VOTable / archive CSV): truncations, byte flips, damaged structural cards;
* FITS header bombs: huge TFIELDS / NAXISn / GCOUNT / PCOUNT, string NAXIS, too many cards,
  too many HDUs; valid files with long headers (must still read);
* gzip bombs (FITS, CSV, text) that inflate far beyond the limits, made by streaming
  compression (a few hundred kB on disk);
* row bombs (Parquet / CSV XP tables with more rows than an upload may hold);
* text/CSV spectra with inf, NaN, 1e300, text in numbers, huge lines.
"""

from __future__ import annotations

import gzip
import io
import random
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

REAL = Path(__file__).resolve().parent / "data"   # the committed real samples
Case = tuple[str, str, bytes]


def seeds() -> list[tuple[str, bytes]]:
    """(file name, bytes) of the committed real samples (tests/data) the mutations start from."""
    picks = [
        *sorted((REAL / "lamost" / "dr1" / "spectra").glob("*.fits"))[:2],
        *sorted((REAL / "lamost" / "format_samples").glob("*.fits.gz")),
        *sorted((REAL / "miles" / "spectra").glob("*.fits"))[:1],
        REAL / "gaia_xp" / "archive_format" / "XP_CONTINUOUS_RAW.csv",
        REAL / "gaia_xp" / "xp_continuous_combined_weiler2023_examples.vot",
    ]
    out = [(p.name, p.read_bytes()) for p in picks if p.is_file()]
    xp_fits = REAL / "gaia_xp" / "xp_continuous_combined_chunk0_20rows.fits"
    if xp_fits.is_file():
        out.append((xp_fits.name, _shrink_xp_fits(xp_fits.read_bytes(), rows=3)))
    return out + synthetic_seeds()


def synthetic_seeds() -> list[tuple[str, bytes]]:
    """Valid files of the formats no committed sample has: an XP Parquet table, text
    spectra (CSV with comments, whitespace TXT.gz), an XP ECSV table."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(xp_table(4, seed=1), buf)
    wave = np.linspace(3800.0, 9000.0, 600)
    flux = 1.0 + 0.2 * np.sin(wave / 300.0)
    csv = "# spectrum_id = soak-1\n# medium = vacuum\nwavelength,flux,error\n" + "\n".join(
        f"{w:.3f},{f:.5f},0.01" for w, f in zip(wave, flux))
    txt = "# lambda flux\n" + "\n".join(f"{w / 10:.4f}  {f:.5f}" for w, f in zip(wave, flux))
    arr = "[" + ", ".join(f"{v:.4f}" for v in np.linspace(-1, 1, 55)) + "]"
    ecsv = ("# %ECSV 1.0\n# ---\n# datatype:\n# - {name: source_id, datatype: int64}\n"
            + "".join(f"# - {{name: {c}, datatype: string, subtype: 'float64[55]'}}\n"
                      for c in ("bp_coefficients", "bp_coefficient_errors", "rp_coefficients",
                                "rp_coefficient_errors"))
            + "# schema: astropy-2.0\nsource_id bp_coefficients bp_coefficient_errors "
              "rp_coefficients rp_coefficient_errors\n"
            + "".join(f"{i} " + " ".join([f'"{arr}"'] * 4) + "\n" for i in (1, 2)))
    return [("xp_continuous.parquet", buf.getvalue()), ("spectrum.csv", csv.encode()),
            ("spectrum.txt.gz", gzip.compress(txt.encode())), ("xp.ecsv", ecsv.encode()),
            *fits_table_seeds(wave, flux)]


def fits_table_seeds(wave: np.ndarray, flux: np.ndarray) -> list[tuple[str, bytes]]:
    """Spectra in FITS tables: an SDSS-like spec file (per-pixel rows, a one-row SPALL) and
    an ESO-like one-row table of array cells (nm, SPEC_RES, TUCD)."""
    from astropy.io import fits

    n = wave.size
    head = fits.Header()
    head.update(TELESCOP="SDSS 2.5-M", PLATEID=266, MJD=51630, FIBERID=3)
    coadd = fits.BinTableHDU.from_columns(
        [fits.Column("flux", "E", array=flux), fits.Column("loglam", "E", array=np.log10(wave)),
         fits.Column("ivar", "E", array=np.full(n, 100.0)),
         fits.Column("and_mask", "J", array=np.zeros(n, np.int32)),
         fits.Column("wdisp", "E", array=np.full(n, 1.05))], name="COADD")
    spall = fits.BinTableHDU.from_columns([fits.Column("Z", "E", array=[1e-4])], name="SPALL")
    sdss, eso = io.BytesIO(), io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(header=head), coadd, spall]).writeto(sdss)
    table = fits.BinTableHDU.from_columns(
        [fits.Column("WAVE", f"{n}D", unit="nm", array=wave[None] / 10.0),
         fits.Column("FLUX", f"{n}E", array=flux[None]),
         fits.Column("ERR", f"{n}E", array=np.full((1, n), 0.01)),
         fits.Column("QUAL", f"{n}J", array=np.zeros((1, n), np.int32))], name="SPECTRUM")
    table.header["TUCD1"] = "em.wl;obs.atmos"
    primary = fits.PrimaryHDU()
    primary.header["SPEC_RES"] = 40000.0
    fits.HDUList([primary, table]).writeto(eso)
    return [("spec-0266-51630-0003.fits", sdss.getvalue()), ("ADP.eso.fits", eso.getvalue())]


def _shrink_xp_fits(data: bytes, rows: int) -> bytes:
    from astropy.io import fits

    with fits.open(io.BytesIO(data)) as hdul:
        table = hdul[1]
        small = fits.BinTableHDU(data=table.data[:rows], header=table.header)
        buf = io.BytesIO()
        fits.HDUList([fits.PrimaryHDU(), small]).writeto(buf)
    return buf.getvalue()


# --------------------------------------------------------------------------- FITS

def card(key: str, value: str) -> bytes:
    return f"{key:<8}= {value:>20}".ljust(80).encode()


def header(cards: list[bytes]) -> bytes:
    raw = b"".join(cards) + b"END".ljust(80)
    return raw + b" " * (-len(raw) % 2880)


def primary(extra: list[bytes] | None = None, naxis: tuple[int, ...] = ()) -> bytes:
    cards = [card("SIMPLE", "T"), card("BITPIX", "-32"), card("NAXIS", str(len(naxis)))]
    cards += [card(f"NAXIS{i + 1}", str(n)) for i, n in enumerate(naxis)]
    cards += [card("EXTEND", "T"), *(extra or [])]
    return header(cards)


def bintable(tfields: str = "1", naxis1: str = "4", naxis2: str = "1",
             extra: list[bytes] | None = None) -> bytes:
    cards = [card("XTENSION", "'BINTABLE'"), card("BITPIX", "8"), card("NAXIS", "2"),
             card("NAXIS1", naxis1), card("NAXIS2", naxis2), card("PCOUNT", "0"),
             card("GCOUNT", "1"), card("TFIELDS", tfields), card("TTYPE1", "'FLUX'"),
             card("TFORM1", "'E'"), *(extra or [])]
    return header(cards)


def fits_bombs() -> list[Case]:
    """Header bombs: each must be refused quickly, before any allocation."""
    data = b"\0" * 2880
    flux = (1.0 + 0.1 * np.sin(np.arange(500) / 9.0)).astype(">f4").tobytes()
    long_header = primary([card("CRVAL1", "3800.0"), card("CDELT1", "10.0"),
                           card("CRPIX1", "1.0"), card("CTYPE1", "'WAVE'"),
                           *[card(f"K{i:06d}", str(i)) for i in range(1500)]],
                          naxis=(500,)) + flux + b"\0" * (-len(flux) % 2880)
    return [
        ("tfields-huge", "bomb.fits", primary() + bintable("99999999999999999999") + data),
        ("tfields-999999", "bomb.fits", primary() + bintable("999999") + data),
        ("naxis1-int64max", "bomb.fits", primary(naxis=(9223372036854775807,))),
        ("naxis2-huge-table", "bomb.fits", primary() + bintable(naxis2="4611686018427387904")
         + data),
        ("naxis-string", "bomb.fits", header([card("SIMPLE", "T"), card("BITPIX", "8"),
                                              card("NAXIS", "'abc'")])),
        ("naxis-1000", "bomb.fits", header([card("SIMPLE", "T"), card("BITPIX", "8"),
                                            card("NAXIS", "1000")])),
        ("naxis-negative", "bomb.fits", primary(naxis=(-5,))),
        ("bitpix-odd", "bomb.fits", header([card("SIMPLE", "T"), card("BITPIX", "7"),
                                            card("NAXIS", "0")])),
        ("gcount-huge", "bomb.fits", primary() + header(
            [card("XTENSION", "'IMAGE'"), card("BITPIX", "8"), card("NAXIS", "1"),
             card("NAXIS1", "10"), card("PCOUNT", "0"), card("GCOUNT", "99999999999")])),
        ("cards-50000", "bomb.fits", primary([card(f"K{i:06d}", str(i))
                                              for i in range(50_000)])),
        ("hdus-2000", "bomb.fits", primary() + b"".join(
            header([card("XTENSION", "'IMAGE'"), card("BITPIX", "8"), card("NAXIS", "0"),
                    card("PCOUNT", "0"), card("GCOUNT", "1")]) for _ in range(2000))),
        ("no-end", "bomb.fits", b"".join(card(f"K{i:06d}", "1") for i in range(36 * 30))),
        # Valid, with 1,500+ cards: must be read like any other 1-D spectrum header.
        ("long-header-valid", "long.fits", long_header),
    ]


# --------------------------------------------------------------------------- gzip bombs

def gzip_stream(prefix: bytes, filler: bytes, total: int, level: int = 9) -> bytes:
    """``prefix`` + ``filler`` repeated up to ``total`` bytes, gzipped without holding it."""
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    out = [comp.compress(prefix)]
    block = filler * max(1, (1 << 20) // len(filler))
    left = total - len(prefix)
    while left > 0:
        piece = block[:left]
        out.append(comp.compress(piece))
        left -= len(piece)
    out.append(comp.flush())
    return b"".join(out)


def gzip_bombs(total: int) -> list[Case]:
    """Decompression bombs inflating to ``total`` bytes."""
    fits_head = primary(naxis=(total // 4 - 2880,))
    return [
        ("gz-fits-zeros", "bomb.fits.gz", gzip_stream(fits_head, b"\0", total)),
        ("gz-csv-one-line", "bomb.csv.gz", gzip_stream(b"wavelength,flux\n", b"1", total)),
        ("gz-csv-rows", "bomb.csv.gz", gzip_stream(b"wavelength,flux\n", b"5000.0,1.0\n",
                                                   total)),
        ("gz-txt-spaces", "bomb.txt.gz", gzip_stream(b"# wave flux\n", b" ", total)),
        ("gz-xp-csv", "xp.csv.gz", gzip_stream(b"source_id,bp_coefficients,rp_coefficients\n",
                                               b"1,\"(1.0)\",\"(1.0)\"\n", total)),
    ]


# --------------------------------------------------------------------------- row bombs

def xp_table(rows: int, *, seed: int = 0) -> "pa.Table":  # noqa: F821
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    coeff = rng.normal(size=55).astype(np.float32)
    flat = np.tile(coeff, rows)
    err = np.abs(flat) * 0.01 + 0.1

    def lists(values: np.ndarray) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(values), 55)

    return pa.table({"source_id": pa.array(np.arange(1, rows + 1, dtype=np.int64)),
                     "bp_coefficients": lists(flat), "bp_coefficient_errors": lists(err),
                     "rp_coefficients": lists(flat), "rp_coefficient_errors": lists(err)})


def row_bombs(rows: int) -> list[Case]:
    """XP tables of ``rows`` rows (Parquet compresses the repeated rows to little)."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(xp_table(rows), buf, compression="zstd")
    csv_head = b"source_id,bp_coefficients,bp_coefficient_errors,rp_coefficients," \
               b"rp_coefficient_errors\n"
    arr = '"(' + ", ".join(["1.0"] * 55) + ')"'
    line = ("{}," + ",".join([arr] * 4) + "\n")
    # The CSV variant stays at 20k rows (over any upload row limit) to keep it quick to build.
    csv = csv_head + "".join(line.format(i + 1) for i in range(min(rows, 20_000))).encode()
    return [("rows-parquet", "rows.parquet", buf.getvalue()),
            ("rows-csv-gz", "rows.csv.gz", gzip.compress(csv, 6))]


# --------------------------------------------------------------------------- text spectra

def text_cases(rng: random.Random) -> list[Case]:
    wave = np.linspace(3800, 9000, 400)
    flux = 1.0 + 0.1 * np.sin(wave / 50)

    def table(values: Callable[[int, float, float], str], head: str = "wavelength,flux") -> bytes:
        lines = [head] + [values(i, w, f) for i, (w, f) in enumerate(zip(wave, flux))]
        return "\n".join(lines).encode()

    return [
        ("text-inf-flux", "s.csv", table(lambda i, w, f: f"{w},{'inf' if i % 7 else f}")),
        ("text-1e300", "s.csv", table(lambda i, w, f: f"{w},{1e300 * f}")),
        ("text-tiny-err", "s.csv", table(lambda i, w, f: f"{w},{f},1e-200",
                                         "wavelength,flux,error")),
        ("text-nan-wave", "s.csv", table(lambda i, w, f: f"{'nan' if i % 3 else w},{f}")),
        ("text-words", "s.csv", table(lambda i, w, f: f"{w},abc")),
        ("text-ragged", "s.csv", table(lambda i, w, f: f"{w},{f}" + ",1" * (i % 3))),
        ("text-neg-ivar", "s.csv", table(lambda i, w, f: f"{w},{f},-5",
                                         "wavelength,flux,ivar")),
        ("text-descending", "s.txt", table(lambda i, w, f: f"{10000 - w} {f}", "wave flux")),
        ("text-dup-wave", "s.csv", table(lambda i, w, f: f"5000,{f}")),
        ("text-huge-line", "s.csv", b"wavelength,flux\n" + b"1" * 2_000_000 + b",2\n"),
        ("text-binary", "s.txt", bytes(rng.randrange(256) for _ in range(4000))),
        ("text-empty-lines", "s.csv", b"\n" * 5000),
        ("votable-garbage", "x.vot", b"<?xml version='1.0'?><VOTABLE><RESOURCE><TABLE>"
                                     b"<FIELD name='bp_coefficients' datatype='double'/>"
                                     b"<DATA><TABLEDATA><TR><TD>x</TD>"),
        ("votable-entity", "x.vot", b"<?xml version='1.0'?><!DOCTYPE v [<!ENTITY a "
                                    b"'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;'>]>"
                                    b"<VOTABLE>&b;</VOTABLE>"),
        ("parquet-garbage", "x.parquet", b"PAR1" + bytes(rng.randrange(256)
                                                          for _ in range(3000)) + b"PAR1"),
        ("ecsv-garbage", "x.ecsv", b"# %ECSV 1.0\n# ---\n# datatype: [{name: a}\nx\n1\n"),
        ("xp-wrong-length", "xp.csv", b"source_id,bp_coefficients,bp_coefficient_errors,"
                                      b"rp_coefficients,rp_coefficient_errors\n"
                                      b'1,"(1,2)","(1,2)","(1,2)","(1,2)"\n'),
        ("xp-inf", "xp.csv", b"source_id,bp_coefficients,bp_coefficient_errors,"
                             b"rp_coefficients,rp_coefficient_errors\n1," +
         b",".join([b'"(' + b",".join([b"1e308"] * 55) + b')"'] * 4) + b"\n"),
    ]


# --------------------------------------------------------------------------- mutations

STRUCTURAL = (b"NAXIS ", b"NAXIS1", b"NAXIS2", b"BITPIX", b"TFIELDS", b"PCOUNT", b"GCOUNT",
              b"TFORM1", b"TFORM2", b"COEFF0", b"CRVAL1", b"CDELT1", b"END     ")
BAD_VALUES = (b"99999999999999999999", b"-1", b"'text'", b"1.5", b"0", b"9223372036854775807",
              b"", b"T", b"1E400", b"nan")


def mutate(name: str, data: bytes, rng: random.Random) -> Case:
    """One random damage of ``data`` (gzip files are damaged inside and re-gzipped half the
    time, so the damage reaches the parsers)."""
    gz = data[:2] == b"\x1f\x8b"
    inner = gzip.decompress(data) if gz and rng.random() < 0.5 else None
    body = inner if inner is not None else data
    kind = rng.choice(("truncate", "flip", "card", "card", "splice", "zero-run", "repeat"))
    buf = bytearray(body)
    if kind == "truncate":
        buf = buf[:rng.randrange(0, max(1, len(buf)))]
    elif kind == "flip":
        end = len(buf) if rng.random() < 0.5 else min(len(buf), 5760)
        for _ in range(rng.randint(1, 64)):
            if end:
                buf[rng.randrange(end)] = rng.randrange(256)
    elif kind == "card":
        key = rng.choice(STRUCTURAL)
        at = body.find(key, 0, 2880 * 40)
        if at >= 0 and at % 80 == 0:
            value = rng.choice(BAD_VALUES)
            buf[at:at + 80] = (key.rstrip().ljust(8) + b"= " + value.rjust(20)).ljust(80)
    elif kind == "splice":
        a, b = sorted(rng.randrange(len(buf) + 1) for _ in range(2))
        del buf[a:b]
    elif kind == "zero-run":
        a = rng.randrange(len(buf) + 1)
        buf[a:a + rng.randint(1, 20000)] = bytes(rng.randint(1, 20000))
    else:
        buf = buf * rng.randint(2, 4)
    out = bytes(buf)
    if inner is not None:
        out = gzip.compress(out, 1)
    return f"mut-{kind}", name, out


def fixed_cases(bomb_bytes: int, bomb_rows: int, rng: random.Random | None = None
                ) -> list[Case]:
    """Every named hostile case once: header bombs, broken tables, gzip and row bombs."""
    rng = rng or random.Random(0)
    return fits_bombs() + text_cases(rng) + gzip_bombs(bomb_bytes) + row_bombs(bomb_rows)


def cases(rng: random.Random, n: int, *, bomb_bytes: int = 64 * 2 ** 20,
          bomb_rows: int = 20_000) -> Iterator[Case]:
    """``n`` cases: every fixed hostile case once (bombs, text), then seeded mutations."""
    fixed = fixed_cases(bomb_bytes, bomb_rows, rng)
    base = seeds()
    for i in range(n):
        if i < len(fixed):
            yield fixed[i]
        elif base:
            name, data = base[i % len(base)]
            yield mutate(name, data, rng)
