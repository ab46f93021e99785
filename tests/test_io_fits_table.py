"""Spectra in FITS tables: SDSS/BOSS spec files, ESO Phase 3 1-D spectra, generic tables.

The files are written here in the documented layouts (SDSS ``spec`` data model: primary
header, ``COADD`` table of per-pixel rows, one-row ``SPALL`` table; ESO SDP: one row of
array cells with ``TUCD`` and ``SPEC_RES``): no such file is redistributable in ../shared.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from specsearch.errors import ReaderError, UnknownFormatError
from specsearch.io import generic
from specsearch.io.ingest import spectrum_row
from specsearch.io.registry import detect_format, read_spectra
from specsearch.preprocess import air_to_vacuum, resolution_match


def _sdss_file(path, *, z=1e-4):
    loglam = np.arange(3.5798, 4.0160, 1e-4)
    n = loglam.size
    flux = 50.0 + 5.0 * np.sin(loglam * 3000.0)
    ivar = np.full(n, 4.0)
    ivar[100:110] = 0.0
    and_mask = np.zeros(n, np.int32)
    and_mask[200:205] = 1 << 23  # BRIGHTSKY
    header = fits.Header()
    header.update(TELESCOP="SDSS 2.5-M", PLATEID=266, MJD=51630, FIBERID=3, PLUG_RA=146.7,
                  PLUG_DEC=-1.04, BUNIT="1E-17 erg/cm^2/s/Ang")
    coadd = fits.BinTableHDU.from_columns(
        [fits.Column("flux", "E", array=flux), fits.Column("loglam", "E", array=loglam),
         fits.Column("ivar", "E", array=ivar), fits.Column("and_mask", "J", array=and_mask),
         fits.Column("or_mask", "J", array=and_mask),
         fits.Column("wdisp", "E", array=np.full(n, 1.05)),
         fits.Column("sky", "E", array=np.zeros(n)), fits.Column("model", "E", array=flux)],
        name="COADD")
    spall = fits.BinTableHDU.from_columns(
        [fits.Column("Z", "E", array=[z]), fits.Column("CLASS", "6A", array=["STAR"]),
         fits.Column("SUBCLASS", "21A", array=["G2"])], name="SPALL")
    fits.HDUList([fits.PrimaryHDU(header=header), coadd, spall]).writeto(path)
    return loglam, flux


def _eso_file(path, *, rows=1, tucd="em.wl;obs.atmos", unit="nm", power=40000.0):
    wave = np.linspace(480.0, 520.0, 20000)
    flux = 1.0 - 0.4 * np.exp(-0.5 * ((wave - 500.0) / 0.005) ** 2)
    qual = np.zeros(wave.size, np.int32)
    qual[:50] = 1
    header = fits.Header()
    header.update(ORIGIN="ESO", OBJECT="HD 1234", RA=10.0, DEC=-20.0)
    if power:
        header["SPEC_RES"] = power
    n = wave.size
    table = fits.BinTableHDU.from_columns(
        [fits.Column("WAVE", f"{n}D", unit=unit, array=np.repeat(wave[None], rows, 0)),
         fits.Column("FLUX", f"{n}E", array=np.repeat(flux[None], rows, 0)),
         fits.Column("ERR", f"{n}E", array=np.full((rows, n), 0.01)),
         fits.Column("QUAL", f"{n}J", array=np.repeat(qual[None], rows, 0))], name="SPECTRUM")
    if tucd:
        table.header["TUCD1"] = tucd
    fits.HDUList([fits.PrimaryHDU(header=header), table]).writeto(path)
    return wave, flux


def test_sdss_spec_file(tmp_path):
    path = tmp_path / "spec-0266-51630-0003.fits"
    loglam, flux = _sdss_file(path)
    assert detect_format(path).name == "generic"
    (spec,) = read_spectra(path)
    assert spec.spectrum_id == "spec-0266-51630-0003"
    assert (spec.ra, spec.dec) == (146.7, -1.04)
    assert spec.flux_unit.startswith("1E-17")
    np.testing.assert_allclose(spec.wavelength, 10.0 ** loglam.astype(np.float32).astype(float), rtol=1e-12)
    assert spec.meta["wavelength_medium"] == "vacuum"  # no air-to-vacuum shift
    assert "SDSS" in spec.meta["medium_from"]
    assert spec.mask.sum() == 15 and np.all(spec.ivar[spec.mask] == 0)  # ivar 0 + and_mask
    assert spec.meta["class"] == "STAR" and spec.meta["subclass"] == "G2"
    # wdisp 1.05 loglam pixels: sigma = 1.05e-4 dex -> R = 1 / (2.3548 * 2.418e-4) = 1756
    assert spec.meta["resolving_power"] == pytest.approx(1756.5, rel=1e-3)
    assert not resolution_match(spec, "lamost").broaden
    row = spectrum_row(spec, "lamost")
    assert row["rv"] == pytest.approx(1e-4 * 299792.458, rel=1e-5)  # SPALL z removed
    assert (row["ivar"] > 0).sum() > 3700


def test_eso_phase3_spectrum_in_air_and_nm_is_matched_to_lamost(tmp_path):
    path = tmp_path / "ADP.2020-01-01T00_00_00.000.fits"
    wave, _ = _eso_file(path)
    (spec,) = read_spectra(path)
    np.testing.assert_allclose(spec.wavelength, air_to_vacuum(wave * 10.0), rtol=1e-12)
    assert spec.meta["medium_from"].startswith("TUCD1")
    assert spec.meta["resolving_power"] == 40000.0 and spec.meta["object"] == "HD 1234"
    assert spec.mask.sum() == 50  # QUAL != 0
    assert spec.meta["ivar_from"] == "error column"
    np.testing.assert_allclose(spec.ivar[~spec.mask], 1e4, rtol=1e-5)
    assert resolution_match(spec, "lamost").broaden
    row = spectrum_row(spec, "lamost")
    good = row["ivar"] > 0
    assert 0.9 < row["flux"][good].min() < 0.99  # a 0.4-deep R=40k line, ~30x shallower


def test_per_pixel_table_defaults_and_vacuum_ucd(tmp_path):
    wave = np.arange(4000.0, 6000.0, 1.0)
    table = fits.BinTableHDU.from_columns(
        [fits.Column("WAVELENGTH", "D", unit="Angstrom", array=wave),
         fits.Column("FLUX", "E", array=np.ones(wave.size)),
         fits.Column("ERROR", "E", array=np.full(wave.size, 0.1))])
    path = tmp_path / "plain.fits"
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
    spec = generic.read_generic(path)
    assert spec.meta["wavelength_medium"] == "air"
    assert spec.meta["medium_from"].startswith("default for FITS tables")
    assert spec.meta["wavelength_unit"] == "Angstrom"
    assert generic.read_generic(path, air=False).wavelength[0] == 4000.0
    path2 = tmp_path / "eso_vacuum.fits"
    _eso_file(path2, tucd="em.wl", power=None)
    spec2 = generic.read_generic(path2)
    assert spec2.meta["wavelength_medium"] == "vacuum" and "resolving_power" not in spec2.meta


def test_bad_tables_say_what_is_wrong(tmp_path):
    catalogue = fits.BinTableHDU.from_columns([fits.Column("RA", "D", array=[1.0, 2.0]),
                                               fits.Column("DEC", "D", array=[3.0, 4.0])])
    path = tmp_path / "catalogue.fits"
    fits.HDUList([fits.PrimaryHDU(), catalogue]).writeto(path)
    assert not generic.identify(path)
    with pytest.raises(UnknownFormatError, match="catalogue.fits"):
        next(read_spectra(path))
    with pytest.raises(ReaderError, match=r"no spectrum in the file.*RA"):
        generic.read_generic(path)

    several = tmp_path / "three.fits"
    _eso_file(several, rows=3)
    with pytest.raises(ReaderError, match="holds 3 spectra"):
        generic.read_generic(several)

    odd_unit = tmp_path / "odd_unit.fits"
    _eso_file(odd_unit, unit="furlong")
    with pytest.raises(ReaderError, match=r"odd_unit.fits.*'WAVE'.*furlong"):
        generic.read_generic(odd_unit)

    wave = np.arange(4000.0, 4100.0)
    ragged = fits.BinTableHDU.from_columns(
        [fits.Column("WAVE", "100D", array=wave[None]),
         fits.Column("FLUX", "90E", array=np.ones((1, 90)))])
    path = tmp_path / "ragged.fits"
    fits.HDUList([fits.PrimaryHDU(), ragged]).writeto(path)
    with pytest.raises(ReaderError, match=r"wrong array lengths.*'WAVE': 100.*'FLUX': 90"):
        generic.read_generic(path)

    text = fits.BinTableHDU.from_columns(
        [fits.Column("WAVE", "8A", array=["blue", "red"]),
         fits.Column("FLUX", "E", array=[1.0, 1.0])])
    path = tmp_path / "text.fits"
    fits.HDUList([fits.PrimaryHDU(), text]).writeto(path)
    with pytest.raises(ReaderError, match="'WAVE'.*not numeric"):
        generic.read_generic(path)


def test_text_spectra_state_their_resolution(tmp_path):
    path = tmp_path / "star.txt"
    wave = np.arange(5000.0, 5010.0, 0.01)
    lines = ["# fwhm = 0.12", "# wavelength flux"] + [f"{w:.2f} 1.0" for w in wave]
    path.write_text("\n".join(lines) + "\n")
    spec = generic.read_generic(path)
    assert spec.meta["fwhm_A"] == 0.12
    match = resolution_match(spec, "lamost")
    assert match.broaden and match.source == "fwhm_A"
