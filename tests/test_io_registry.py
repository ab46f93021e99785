"""Format registry: detection order, modality checks, unknown formats, in-memory uploads."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from specsearch.errors import ConfigError, ReaderError, UnknownFormatError
from specsearch.io import registry
from specsearch.io.registry import (detect_format, list_formats, read_spectra,
                                    read_spectra_bytes, safe_upload_name)

HAS_XP_READER = importlib.util.find_spec("specsearch.io.gaia_xp") is not None


def test_list_formats_in_detection_order():
    assert list_formats() == ["lamost", "gaia_xp", "generic"]
    with pytest.raises(ConfigError, match="expected one of"):
        registry.format_info("sdss")


def test_detects_each_real_layout(data_root):
    lamost_dir = data_root / "lamost"
    for path in (*(lamost_dir / "format_samples").glob("*.fits.gz"),
                 next((lamost_dir / "dr1" / "spectra").glob("*.fits")),
                 *sorted((lamost_dir / "dr8_xp_matched").glob("*.fits.gz"))[:1]):
        assert detect_format(path).name == "lamost", path.name
        (spec,) = read_spectra(path, modality="lamost")
        assert spec.modality == "lamost"
    miles = next((data_root / "miles" / "spectra").glob("*.fits"))
    assert detect_format(miles).name == "generic"
    (spec,) = read_spectra(miles, modality="lamost")
    assert spec.modality == "lamost" and spec.meta["format"] == "generic-fits"
    (spec,) = read_spectra(miles)
    assert spec.modality is None


def test_xp_files_go_to_the_xp_reader_or_say_why(samples):
    path = samples / "gaia_xp" / "archive_format" / "XP_CONTINUOUS_RAW.csv"
    if HAS_XP_READER:
        assert detect_format(path).name == "gaia_xp"
    else:
        with pytest.raises(ReaderError, match="gaia_xp reader could not be imported"):
            detect_format(path)


def test_modality_mismatch_and_bad_options(samples):
    path = samples / "lamost" / "format_samples" / "spec-55859-F5902_sp01-001_dr7.fits.gz"
    with pytest.raises(ReaderError, match="holds lamost spectra, not xp") as info:
        next(read_spectra(path, modality="xp"))
    assert path.name in str(info.value)
    with pytest.raises(ConfigError, match="--medium .* generic spectra only") as info:
        next(read_spectra(path, air=True))
    assert path.name in str(info.value)
    with pytest.raises(ConfigError, match="unknown modality"):
        next(read_spectra(path, modality="sdss"))
    # a forced format that does not fit still fails with a ReaderError naming the file
    with pytest.raises(ReaderError, match=path.name):
        next(read_spectra(path, format="generic"))


def test_unknown_format_lists_what_was_tried(samples, tmp_path):
    with pytest.raises(UnknownFormatError) as info:
        next(read_spectra(samples / "miles" / "labels.csv"))
    message = str(info.value)
    assert "labels.csv" in message and all(n in message for n in list_formats())
    with pytest.raises(ReaderError, match="no such file"):
        next(read_spectra(tmp_path / "missing.fits"))
    odd = tmp_path / "blob.bin"
    odd.write_bytes(np.arange(1000, dtype=np.int32).tobytes())
    with pytest.raises(UnknownFormatError, match="blob.bin"):
        next(read_spectra(odd))


def test_read_spectra_bytes_upload(samples):
    src = next((samples / "miles" / "spectra").glob("*.fits"))
    data = src.read_bytes()
    (spec,) = read_spectra_bytes(data, "../../etc/" + src.name, modality="lamost")
    assert spec.path == src.name and spec.meta["filename"] == src.name
    assert spec.spectrum_id == spec.meta["miles_id"] and spec.modality == "lamost"
    (direct,) = read_spectra(src)
    np.testing.assert_array_equal(spec.flux, direct.flux)
    csv = b"wavelength,flux,error\n" + b"".join(
        f"{4000 + i},{1 + 0.01 * i},0.1\n".encode() for i in range(100))
    (spec,) = read_spectra_bytes(csv, "C:\\Users\\me\\my star.csv")
    assert spec.path == "my_star.csv" and spec.spectrum_id == "my_star"
    with pytest.raises(ReaderError, match=r"^my_spec\.fits: truncated"):
        read_spectra_bytes(data[:5000], "my spec.fits")
    with pytest.raises(ReaderError, match="empty upload"):
        read_spectra_bytes(b"", "x.fits")
    with pytest.raises(ReaderError, match="exceeds the limit"):
        read_spectra_bytes(data, "x.fits", max_bytes=1000)


@pytest.mark.parametrize("name, expected", [
    ("spec.fits.gz", "spec.fits.gz"), ("../../etc/passwd", "passwd"),
    ("..\\a\\b.csv", "b.csv"), ("", "upload"), (".hidden.fits", "hidden.fits"),
    ("sp ec;rm -rf.txt", "sp_ec_rm_-rf.txt"),
])
def test_safe_upload_name(name, expected):
    assert safe_upload_name(name) == expected


def test_damaged_header_card_is_a_reader_error(samples, tmp_path):
    from specsearch.errors import ReaderError
    from specsearch.io.registry import read_spectra

    src = sorted((samples / "lamost" / "dr1" / "spectra").glob("*.fits"))[0]
    data = bytearray(src.read_bytes())
    # Overwrite the value of the 8th header card with bytes no FITS parser accepts.
    card = 7 * 80
    data[card + 10:card + 30] = b"'unterminated \x00\x01\x02"
    bad = tmp_path / "damaged-card.fits"
    bad.write_bytes(bytes(data))
    try:
        spectra = list(read_spectra(bad, modality="lamost"))
    except ReaderError as exc:
        assert "damaged-card.fits" in str(exc)
    else:  # astropy may tolerate the card; then the spectrum must still be sane
        assert spectra and spectra[0].flux.size > 1000
