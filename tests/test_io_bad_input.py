"""Broken input: every reader fails with a ReaderError naming the file and the problem.

Damaged files are made from the committed real LAMOST/MILES samples (tests/data; mutated
bytes written to tmp_path)."""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from specsearch.errors import ReaderError, SpecsearchError, SpectrumError
from specsearch.io import generic, lamost
from specsearch.io.registry import read_spectra

DR1 = ("dr1", "spectra", "spec-55862-B6212_sp06-005.fits")
DR7 = ("format_samples", "spec-55859-F5902_sp01-001_dr7.fits.gz")
DR8 = ("format_samples", "spec-55859-F5902_sp01-013_dr8.fits.gz")


def _lamost_bytes(real: Path, parts: tuple[str, ...]) -> bytes:
    return real.joinpath("lamost", *parts).read_bytes()


def _fits_bytes(real: Path, parts: tuple[str, ...]) -> bytes:
    """Uncompressed FITS bytes of a real LAMOST file."""
    raw = _lamost_bytes(real, parts)
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def _edited(src: Path, edit: Callable) -> bytes:
    """A real file, loaded with astropy, edited, serialised to bytes."""
    with fits.open(src) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    hdul = edit(hdul) or hdul
    buf = io.BytesIO()
    hdul.writeto(buf, output_verify="silentfix")  # DR8 headers carry stray NAXISn cards
    return buf.getvalue()


def _edit_fits(real: Path, parts: tuple[str, ...], edit: Callable) -> bytes:
    return _edited(real.joinpath("lamost", *parts), edit)


def _replace_card(raw: bytes, key: bytes, card: bytes) -> bytes:
    at = next(i for i in range(0, len(raw), 80) if raw[i:i + 8] == key.ljust(8))
    return raw[:at] + card.ljust(80) + raw[at + 80:]


def _flip_gzip(raw: bytes) -> bytes:
    mid = len(raw) // 2
    return raw[:mid] + bytes(b ^ 0xFF for b in raw[mid:mid + 32]) + raw[mid + 32:]


def _set_row(row: int, value: float):
    def edit(hdul):
        hdul[0].data[row] = value
    return edit


def _coadd_unequal(hdul):
    table = hdul["COADD"].data
    cols = [fits.Column(name=n, format=f"{len(table[n][0]) - (50 if n == 'WAVELENGTH' else 0)}E",
                        array=np.array([table[n][0][:len(table[n][0]) - (50 if n == 'WAVELENGTH'
                                                                          else 0)]]))
            for n in table.columns.names]
    return fits.HDUList([hdul[0], fits.BinTableHDU.from_columns(cols, name="COADD")])


def _coadd_nan(hdul):
    hdul["COADD"].data["FLUX"][0][:] = np.nan


def _drop_coeffs(hdul):
    for key in ("COEFF0", "COEFF1", "CRVAL1", "CD1_1"):
        del hdul[0].header[key]


# (case name, file name, bytes factory, expected words in the message)
LAMOST_CASES = [
    ("truncated-data", "t.fits", lambda r: _fits_bytes(r, DR1)[:46080], "truncated"),
    ("truncated-mid-block", "t.fits", lambda r: _fits_bytes(r, DR1)[:50000], "truncated"),
    ("truncated-header", "t.fits", lambda r: _fits_bytes(r, DR1)[:1000], "truncated"),
    ("truncated-gzip", "t.fits.gz", lambda r: _lamost_bytes(r, DR8)[:30000], "gzip"),
    ("garbled-gzip", "g.fits.gz", lambda r: _flip_gzip(_lamost_bytes(r, DR7)), "gzip"),
    ("garbled-simple", "g.fits", lambda r: b"\x00garbage" * 10 + _fits_bytes(r, DR1)[80:],
     "not a FITS file"),
    ("garbled-no-end", "g.fits", lambda r: _replace_card(_fits_bytes(r, DR1), b"END", b""),
     "corrupt FITS"),
    ("wrong-shape", "w.fits",
     lambda r: _replace_card(_fits_bytes(r, DR1), b"NAXIS2",
                             b"NAXIS2  =                    4"), "wrong shape"),
    ("missing-hdu", "m.fits", lambda r: _edit_fits(r, DR8, lambda h: fits.HDUList([h[0]])),
     "missing HDU"),
    ("nan-flux-image", "n.fits", lambda r: _edit_fits(r, DR7, _set_row(0, np.nan)),
     "no finite flux"),
    ("nan-flux-coadd", "n.fits", lambda r: _edit_fits(r, DR8, _coadd_nan), "no finite flux"),
    ("zero-flux", "z.fits", lambda r: _edit_fits(r, DR7, _set_row(0, 0.0)), "zero everywhere"),
    ("zero-ivar", "z.fits", lambda r: _edit_fits(r, DR7, _set_row(1, 0.0)), "no usable pixel"),
    ("wrong-lengths", "l.fits", lambda r: _edit_fits(r, DR8, _coadd_unequal),
     "wrong array lengths"),
    ("no-wavelength-info", "d.fits", lambda r: _edit_fits(r, DR1, _drop_coeffs),
     "missing wavelength info"),
]


@pytest.mark.parametrize("case, name, make, words", LAMOST_CASES,
                         ids=[c[0] for c in LAMOST_CASES])
def test_damaged_lamost_files(samples, tmp_path, case, name, make, words):
    path = tmp_path / f"{case}-{name}"
    path.write_bytes(make(samples))
    for read in (lamost.read_lamost, lambda p: list(read_spectra(p))):
        with pytest.raises(ReaderError) as info:
            read(path)
        message = str(info.value)
        assert path.name in message and words in message, message


def _miles_with(real: Path, edit: Callable) -> bytes:
    return _edited(next((real / "miles" / "spectra").glob("*.fits")), edit)


def _nan_data(hdul):
    hdul[0].data[:] = np.nan


def _short_error(hdul):
    return fits.HDUList([hdul[0], fits.ImageHDU(np.ones(100), name="ERR")])


def _no_cdelt(hdul):
    del hdul[0].header["CDELT1"]


def _csv(text: str) -> Callable:
    return lambda r: text.encode()


GENERIC_CASES = [
    ("empty-fits", "e.fits", lambda r: b"", "empty file"),
    ("empty-gz", "e.fits.gz", lambda r: gzip.compress(b""), "empty file"),
    ("empty-csv", "e.csv", lambda r: b"", "empty file"),
    ("blank-csv", "e.txt", lambda r: b"\n \n# only a comment\n", "no data rows"),
    ("nan-flux-miles", "n.fits", lambda r: _miles_with(r, _nan_data), "no finite flux"),
    ("truncated-miles", "t.fits", lambda r: _miles_with(r, lambda h: None)[:20000],
     "truncated"),
    ("short-error-ext", "s.fits", lambda r: _miles_with(r, _short_error),
     "wrong array lengths"),
    ("no-cdelt", "c.fits", lambda r: _miles_with(r, _no_cdelt), "missing wavelength info"),
    ("csv-missing-flux", "m.csv", _csv("wavelength,ivar\n4000,1\n4001,1\n4002,1\n"),
     "missing column(s) ['flux']"),
    ("csv-missing-wave", "m.csv", _csv("flux,err\n1,1\n2,1\n3,1\n"),
     "missing column(s) ['wavelength']"),
    ("csv-ragged", "r.csv", _csv("wave,flux\n4000,1\n4001\n4002,3\n"), "cannot parse"),
    ("csv-text-cell", "r.csv", _csv("wave,flux\n4000,1\n4001,abc\n"), "cannot parse"),
    ("csv-nan-flux", "n.csv", _csv("wave,flux\n4000,nan\n4001,nan\n4002,nan\n"),
     "no finite flux"),
    ("csv-header-only", "h.csv", _csv("wavelength,flux\n"), "no data rows"),
    ("csv-unsorted", "u.csv", _csv("wave,flux,err\n4000,1,1\n3990,1,1\n4010,1,1\n"),
     "strictly increasing"),
    ("csv-header-count", "c.csv", _csv("wave,flux,err\n4000,1\n4001,2\n"),
     "names 3 columns"),
    ("txt-four-columns", "f.txt", _csv("1 2 3 4\n5 6 7 8\n"), "no header"),
    ("binary-as-csv", "b.csv", lambda r: b"\x00\x01\x02" * 100, "binary content"),
]


@pytest.mark.parametrize("case, name, make, words", GENERIC_CASES,
                         ids=[c[0] for c in GENERIC_CASES])
def test_damaged_generic_files(samples, tmp_path, case, name, make, words):
    path = tmp_path / f"{case}-{name}"
    path.write_bytes(make(samples))
    with pytest.raises((ReaderError, SpectrumError)) as info:
        generic.read_generic(path)
    message = str(info.value)
    assert path.name in message and words in message, message
    with pytest.raises(SpecsearchError) as info:  # the registry also names the file
        list(read_spectra(path))
    assert path.name in str(info.value)


# --------------------------------------------------------------------------- soak findings
# Each of these escaped the readers as a raw exception (OverflowError, VerifyError,
# UnicodeDecodeError...) caught only by the registry's last line.

XP_HEAD = b"source_id,bp_coefficients,bp_coefficient_errors,rp_coefficients," \
          b"rp_coefficient_errors\n"
XP_ARRAYS = b",".join([b'"(' + b",".join([b"1.0"] * 55) + b')"'] * 4)


@pytest.mark.parametrize("source_id", [b"9223372036854775808", b"x", b"1.5"])
def test_xp_source_id_that_is_not_int64_is_a_reader_error(tmp_path, source_id):
    path = tmp_path / "xp.csv"
    path.write_bytes(XP_HEAD + b"1," + XP_ARRAYS + b"\n" + source_id + b"," + XP_ARRAYS + b"\n")
    with pytest.raises(ReaderError, match="source_id must hold 64-bit integers") as info:
        list(read_spectra(path))
    assert "cannot read as" not in str(info.value) and path.name in str(info.value)


def test_csv_header_that_is_not_utf8_is_a_reader_error(tmp_path):
    path = tmp_path / "xp.csv"
    path.write_bytes(XP_HEAD.replace(b"source_id", b"sour\x8dce_id") + b"1," + XP_ARRAYS + b"\n")
    from specsearch.io.tables import iter_table_batches, read_table

    for read in (read_table, lambda p: list(iter_table_batches(p))):
        with pytest.raises(ReaderError, match="not UTF-8") as info:
            read(path)
        assert path.name in str(info.value)


def test_unparsable_header_card_reads_as_absent(samples, tmp_path):
    raw = _fits_bytes(samples, DR1)
    path = tmp_path / "damaged-card.fits"
    path.write_bytes(_replace_card(raw, b"SPID", b"SPID    = 1\x002.x / damaged"))
    spectrum = lamost.read_lamost(path)
    assert spectrum.meta["spid"] is None and np.isfinite(spectrum.flux).any()


def test_text_flux_beyond_float_range_is_a_reader_error(tmp_path):
    path = tmp_path / "huge.csv"
    rows = "\n".join(f"{4000 + i},{1e300 * (1 + (i % 5))}" for i in range(200))
    path.write_text(f"wavelength,flux\n{rows}\n")
    with pytest.raises(ReaderError, match="out of range") as info:
        list(read_spectra(path))
    assert "cannot read as" not in str(info.value)


def test_text_line_count_is_bounded(tmp_path):
    from specsearch.io.limits import InputLimits, InputTooLargeError, use_limits

    path = tmp_path / "many.csv"
    path.write_text("wavelength,flux\n" + "5000.0,1.0\n" * 5000)
    with use_limits(InputLimits(max_text_lines=1000)):
        with pytest.raises(InputTooLargeError, match="max_text_lines"):
            generic.read_generic(path)


def test_text_with_a_gigantic_line_is_refused_before_parsing(tmp_path):
    import gzip as gz

    path = tmp_path / "one-line.csv.gz"
    path.write_bytes(gz.compress(b"wavelength,flux\n" + b"1" * (8 * 2 ** 20) + b",2\n", 1))
    with pytest.raises(ReaderError, match="a line of 8,388,610 bytes"):
        generic.read_generic(path)


def test_read_head_of_a_small_file_allocates_no_cap_sized_buffer(tmp_path):
    import tracemalloc

    from specsearch.fsutil import read_head

    path = tmp_path / "small.txt"
    path.write_bytes(b"x" * 1000)
    tracemalloc.start()
    try:
        assert read_head(path, 256 * 2 ** 20) == b"x" * 1000
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 ** 20
