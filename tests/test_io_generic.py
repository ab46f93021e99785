"""Generic reader: every real MILES file (1-D FITS, linear WCS, air) and synthetic FITS/CSV."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from specsearch.errors import ReaderError
from specsearch.io import generic
from specsearch.preprocess import air_to_vacuum, vacuum_to_air

H_ALPHA_VAC = 6564.61


@pytest.fixture(scope="module")
def miles(real_data):
    files = sorted((real_data / "miles" / "spectra").glob("*.fits"))
    return {f: generic.read_generic(f) for f in files}


def test_every_miles_file(real_data, miles):
    assert len(miles) == 660
    expected = air_to_vacuum(3540.5 + 0.9 * np.arange(4300))
    for path, spec in miles.items():
        assert generic.identify(path), path.name
        raw = fits.getdata(path).astype(np.float64)
        assert spec.npix == raw.size == 4300
        np.testing.assert_allclose(spec.wavelength, expected, rtol=1e-13)
        assert spec.meta["wavelength_medium"] == "air"
        assert spec.meta["medium_from"].startswith("TPLLIB=MILES")
        good = np.flatnonzero(~spec.mask)
        for i in (0, 1234, good[-1]):
            assert spec.flux[i] == raw[i]
        assert np.all(spec.ivar[spec.mask] == 0) and np.all(spec.ivar >= 0)
        # no error spectrum in MILES: a constant DER_SNR ivar, flagged
        assert spec.meta["ivar_from"] == "der_snr estimate"
        assert np.all(spec.ivar[~spec.mask] == 1.0 / spec.meta["noise_estimate"] ** 2)
        assert 5 < spec.snr < 2000
    first = next(iter(miles.values()))
    assert first.wavelength[0] == air_to_vacuum(3540.5)
    assert first.meta["fwhm_A"] == 2.5 and first.modality is None
    # the label table joins on the MILES id
    ids = {s.meta["miles_id"] for s in miles.values()}
    table = (real_data / "miles" / "labels.csv").read_text().splitlines()
    labels = {r["miles_id"] for r in csv.DictReader(table)}
    assert labels == ids and all(s.spectrum_id == s.meta["miles_id"] for s in miles.values())


def test_miles_h_alpha_lands_at_its_vacuum_wavelength(miles):
    centres = []
    for spec in miles.values():
        sel = (spec.wavelength > 6545) & (spec.wavelength < 6585)
        w, f = spec.wavelength[sel], spec.flux[sel]
        j = int(np.argmin(f))
        y0, y1, y2 = f[j - 1:j + 2]
        centres.append(w[j] + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2) * (w[j + 1] - w[j]))
    assert abs(np.median(centres) - H_ALPHA_VAC) < 0.3  # unconverted air: 6562.8


def test_air_override(samples):
    path = next((samples / "miles" / "spectra").glob("*.fits"))
    spec = generic.read_generic(path, air=False)
    assert spec.wavelength[0] == 3540.5 and spec.meta["medium_from"].startswith("caller")


def _write_fits(path: Path, flux, header: dict, extensions=()) -> Path:
    primary = fits.PrimaryHDU(np.asarray(flux))
    for key, value in header.items():
        primary.header[key] = value
    fits.HDUList([primary, *extensions]).writeto(path)
    return path


def _smooth(n: int, rng) -> np.ndarray:
    x = np.linspace(0, 1, n)
    return 1.0 + 0.3 * x + rng.normal(0, 0.01, n)


@pytest.mark.parametrize("header, expected_first, medium", [
    ({"CRVAL1": 400.0, "CDELT1": 0.1, "CUNIT1": "nm", "CTYPE1": "WAVE"}, 4000.0, "vacuum"),
    ({"CRVAL1": 4000.0, "CD1_1": 1.0, "CRPIX1": 11, "AIRORVAC": "vac"}, 3990.0, "vacuum"),
    ({"CRVAL1": 3.6, "CDELT1": 1e-4, "DC-FLAG": 1, "VACUUM": True}, 10 ** 3.6, "vacuum"),
    ({"CRVAL1": 5000.0, "CDELT1": 0.5, "CTYPE1": "AWAV"}, air_to_vacuum(5000.0), "air"),
    ({"CRVAL1": 5000.0, "CDELT1": 0.5}, air_to_vacuum(5000.0), "air"),  # IRAF default
    ({"CRVAL1": 450.0, "CDELT1": 0.05, "CTYPE1": "WAVE"}, 4500.0, "vacuum"),  # nm by value
])
def test_fits_wcs_variants(tmp_path, rng, header, expected_first, medium):
    flux = _smooth(500, rng)
    path = _write_fits(tmp_path / "s.fits", flux, header)
    assert generic.identify(path)
    spec = generic.read_generic(path)
    assert spec.wavelength[0] == pytest.approx(expected_first, rel=1e-12)
    assert spec.meta["wavelength_medium"] == medium and np.all(np.diff(spec.wavelength) > 0)
    np.testing.assert_array_equal(spec.flux, flux)


def test_fits_wave_log_and_error_extension_and_2d(tmp_path, rng):
    flux = _smooth(300, rng)
    err = np.full(300, 0.02)
    path = _write_fits(tmp_path / "log.fits", flux[None, :],
                       {"CRVAL1": 5000.0, "CDELT1": 2.0, "CTYPE1": "WAVE-LOG"},
                       [fits.ImageHDU(err, name="ERR")])
    spec = generic.read_generic(path)
    np.testing.assert_allclose(spec.wavelength, 5000.0 * np.exp(2.0 * np.arange(300) / 5000.0))
    np.testing.assert_allclose(spec.ivar, 1 / 0.02 ** 2)
    assert spec.meta["ivar_from"] == "error extension"


def test_noise_estimate_recovers_gaussian_sigma(rng):
    flux = 10 + np.sin(np.linspace(0, 3, 4000)) + rng.normal(0, 0.05, 4000)
    assert generic.estimate_noise(flux) == pytest.approx(0.05, rel=0.08)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_with_header_ivar_and_metadata(tmp_path):
    wave = np.linspace(4000, 5000, 50)
    rows = "\n".join(f"{w},{1 + w / 1e4},{4.0}" for w in wave)
    path = _write(tmp_path / "star.csv", "# spectrum_id = star-7\n# ra: 10.5\n# dec = -3\n"
                                         "# source_id = 42\n# z = 0.001\n"
                                         f"Wavelength,FLUX,IVar\n{rows}\n")
    assert generic.identify(path)
    spec = generic.read_generic(path)
    np.testing.assert_allclose(spec.wavelength, wave)  # text default: vacuum, Angstrom
    np.testing.assert_allclose(spec.flux, 1 + wave / 1e4)
    assert np.all(spec.ivar == 4.0) and spec.meta["ivar_from"] == "ivar column"
    assert (spec.spectrum_id, spec.source_id, spec.ra, spec.dec) == ("star-7", 42, 10.5, -3.0)
    assert spec.meta["z"] == 0.001 and spec.meta["wavelength_medium"] == "vacuum"


def test_whitespace_comment_header_nm_air_descending_gz(tmp_path):
    wave_nm = np.linspace(700, 400, 61)  # descending, nanometres (by value)
    body = "\n".join(f"{w:.3f}   {2.0:.3f}\t{0.1}" for w in wave_nm)
    path = tmp_path / "s.txt.gz"
    path.write_bytes(gzip.compress(f"# medium = air\n# lambda flux sigma\n{body}\n".encode()))
    assert generic.identify(path)
    spec = generic.read_generic(path)
    np.testing.assert_allclose(spec.wavelength, air_to_vacuum(wave_nm[::-1] * 10.0))
    np.testing.assert_allclose(spec.ivar, 100.0)
    assert spec.meta["wavelength_unit"] == "nm" and spec.meta["unit_from"] == "values"
    assert spec.meta["medium_from"] == "comment 'medium'"


@pytest.mark.parametrize("text, first", [
    ("wave_nm,flux\n400,1\n401,2\n402,3\n403,4\n404,5\n405,6\n", 4000.0),
    ("loglam flux\n3.6 1\n3.6001 2\n3.6002 3\n3.6003 4\n3.6004 5\n3.6005 6\n", 10 ** 3.6),
    ("wavelength_air [A];flux\n5000;1\n5001;2\n5002;3\n5003;4\n5004;5\n5005;6\n",
     air_to_vacuum(5000.0)),
    ("5000 1\n5001 2\n5002 3\n5003 4\n5004 5\n5005 6\n", 5000.0),  # headerless
])
def test_column_name_conventions(tmp_path, text, first):
    path = _write(tmp_path / "s.dat", text)
    assert generic.identify(path)
    spec = generic.read_generic(path)
    assert spec.wavelength[0] == pytest.approx(first, rel=1e-12)
    assert spec.meta["ivar_from"] == "der_snr estimate"


def test_vacuum_round_trip_through_air(tmp_path):
    vac = np.linspace(4000, 9000, 100)
    body = "\n".join(f"{w:.12f},1.0,1.0" for w in vacuum_to_air(vac))
    spec = generic.read_generic(_write(tmp_path / "a.csv", f"wave,flux,err\n{body}\n"),
                                air=True)
    np.testing.assert_allclose(spec.wavelength, vac, rtol=1e-8)


def test_not_generic(samples, tmp_path):
    assert not generic.identify(samples / "lamost" / "format_samples" /
                                "spec-55859-F5902_sp01-001_dr7.fits.gz")
    assert not generic.identify(_write(tmp_path / "t.csv", "name,teff\nx,5000\n"))
    with pytest.raises(ReaderError, match="DC-FLAG = 2"):
        generic.read_generic(_write_fits(tmp_path / "n.fits", np.ones(10),
                                         {"CRVAL1": 4000.0, "CDELT1": 1.0, "DC-FLAG": 2}))
