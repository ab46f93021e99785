"""LAMOST LRS reader on real files of every layout: the committed samples (tests/data) and,
where present, every file of the larger set (../shared/data/real/lamost)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from specsearch.io import lamost
from specsearch.preprocess import LAMOST_GRID, air_to_vacuum, continuum_normalise, resample

H_ALPHA_VAC = 6564.61  # Angstrom, vacuum (air: 6562.80)


def _all_files(real: Path) -> list[Path]:
    root = real / "lamost"
    return (sorted((root / "dr1" / "spectra").glob("*.fits"))
            + sorted((root / "format_samples").glob("*.fits.gz"))
            + sorted((root / "dr8_xp_matched").glob("*.fits.gz")))


def _pairs(real: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((real / "pairs_lamost_xp.csv").read_text().splitlines()))


def _raw_rows(path: Path) -> tuple[fits.Header, dict[str, np.ndarray]]:
    """The file's arrays as astropy gives them, without our reader."""
    with fits.open(path) as hdul:
        header = hdul[0].header.copy()
        if hdul[0].data is not None:
            return header, dict(zip(lamost.IMAGE_ROWS, np.array(hdul[0].data, np.float64)))
        table = hdul["COADD"].data
        return header, {k: np.array(table[k.upper()][0], np.float64)
                        for k in lamost.IMAGE_ROWS}


@pytest.fixture(scope="module")
def spectra(real_data):
    files = _all_files(real_data)
    return {f: lamost.read_lamost(f) for f in files}


@pytest.fixture(scope="module")
def each_set_spectra(data_root):
    """Every LAMOST file of the committed samples, then of the larger set."""
    return {f: lamost.read_lamost(f) for f in _all_files(data_root)}


def test_every_real_file_is_found_identified_and_read(real_data, spectra):
    files = list(spectra)
    assert len(files) == 102 + 2 + 9
    assert all(lamost.identify(f) for f in files)
    layouts = {s.meta["layout"] for s in spectra.values()}
    assert layouts == {lamost.LAYOUT_IMAGE, lamost.LAYOUT_IMAGE_NO_WAVELENGTH,
                       lamost.LAYOUT_COADD}
    # Not LAMOST: MILES and an XP table must not be claimed.
    assert not lamost.identify(next((real_data / "miles" / "spectra").glob("*.fits")))
    assert not lamost.identify(real_data / "gaia_xp" / "xp_continuous_combined_chunk0.fits")


def test_values_of_every_file_against_the_raw_fits(each_set_spectra):
    for path, spec in each_set_spectra.items():
        header, raw = _raw_rows(path)
        npix = raw["flux"].size
        assert spec.npix == npix, path.name  # NPIX read from the file, never assumed
        assert spec.modality == "lamost"
        w = spec.wavelength
        assert np.all(np.diff(w) > 0), path.name
        assert 3690 < w[0] < 3710 and 8800 < w[-1] < 9110, (path.name, w[0], w[-1])
        assert np.all(spec.ivar >= 0) and np.all(np.isfinite(spec.flux))
        # bad pixels: flux == 0 and ivar <= 0 are masked and carry no weight
        assert np.all(spec.mask[raw["flux"] == 0]) and np.all(spec.ivar[spec.mask] == 0)
        assert not spec.mask.all()
        # flux/ivar at known pixels equal the raw FITS values
        good = np.flatnonzero(~spec.mask)
        for i in (good[0], good[len(good) // 2], good[-1], npix // 3):
            assert spec.flux[i] == raw["flux"][i], (path.name, i)
            if not spec.mask[i]:
                assert spec.ivar[i] == raw["ivar"][i], (path.name, i)
        if spec.meta["layout"] != lamost.LAYOUT_IMAGE_NO_WAVELENGTH:
            np.testing.assert_array_equal(w, raw["wavelength"])
        # the header's log-linear solution agrees with whatever wavelengths we used
        # (to 3% of a pixel: the wavelength rows are float32)
        loglam = header["COEFF0"] + header["COEFF1"] * np.arange(npix)
        np.testing.assert_allclose(np.log10(w), loglam, rtol=0, atol=3e-6)


def test_dr1_wavelength_is_the_coeff_solution(spectra):
    dr1 = {p: s for p, s in spectra.items() if p.parent.name == "spectra"}
    assert len(dr1) == 102
    for path, spec in dr1.items():
        header = fits.getheader(path)
        assert spec.meta["layout"] == lamost.LAYOUT_IMAGE_NO_WAVELENGTH
        assert spec.meta["wavelength_from"] == "header COEFF0/COEFF1"
        expected = 10.0 ** (header["COEFF0"] + header["COEFF1"] * np.arange(spec.npix))
        np.testing.assert_allclose(spec.wavelength, expected, rtol=1e-13)
        assert spec.spectrum_id == path.name.removesuffix(".fits")  # DR1 has no OBSID
        assert spec.snr == header["SN_G"] and spec.meta["snr_r"] == header["SN_R"]


def test_dr7_image_and_dr8_coadd_samples(data_root, each_set_spectra):
    root = data_root / "lamost" / "format_samples"
    dr7 = each_set_spectra[root / "spec-55859-F5902_sp01-001_dr7.fits.gz"]
    dr8 = each_set_spectra[root / "spec-55859-F5902_sp01-013_dr8.fits.gz"]
    assert (dr7.meta["layout"], dr8.meta["layout"]) == (lamost.LAYOUT_IMAGE,
                                                        lamost.LAYOUT_COADD)
    # The two samples are fibres 1 and 13 of one plate and night (not the same star):
    # the same wavelength solution, different objects.
    for key in ("planid", "lmjd", "spid"):
        assert dr7.meta[key] == dr8.meta[key]
    assert dr7.meta["fiberid"] == 1 and dr8.meta["fiberid"] == 13
    assert dr7.meta["designation"] != dr8.meta["designation"]
    np.testing.assert_array_equal(dr7.wavelength, dr8.wavelength)
    # header metadata, as the brief lists it
    assert dr7.spectrum_id == "101001" and dr8.spectrum_id == "101013"
    assert dr7.source_id is None
    assert dr7.ra == pytest.approx(332.202274) and dr7.dec == pytest.approx(-2.056767)
    assert dr7.snr == pytest.approx(12.22)  # SNRG preferred
    assert dr7.meta["designation"] == "J220848.54-020324.3"
    assert (dr7.meta["class"], dr7.meta["subclass"]) == ("STAR", "G7")
    assert dr7.meta["z"] == pytest.approx(-0.0001387)
    assert dr7.meta["mag1"] == pytest.approx(18.78) and dr7.meta["data_v"] == "LAMOST DR7"
    assert dr8.meta["mag1"] is None and dr8.meta["mag_ps_g"] is not None  # DR9 header
    assert dr8.meta["snr_g"] == pytest.approx(5.56) and dr8.meta["subclass"] == "A2"


def test_matched_files_agree_with_pairs_table(real_data, spectra):
    rows = _pairs(real_data)
    assert len(rows) == 9
    for row in rows:
        spec = spectra[real_data / row["lamost_file"]]
        assert spec.spectrum_id == row["obsid"]
        assert spec.ra == pytest.approx(float(row["ra"]), abs=1e-6)
        assert spec.snr == pytest.approx(float(row["lamost_snrg"]))
        assert spec.meta["subclass"] == row["lamost_subclass"]


def test_repeat_visits_of_one_star_agree(real_data, spectra):
    """Same star, 2-5 visits with different NPIX: the normalised spectra agree pixel by pixel."""
    rows = _pairs(real_data)
    by_star: dict[str, list] = {}
    for row in rows:
        by_star.setdefault(row["gaia_dr3_source_id"], []).append(
            spectra[real_data / row["lamost_file"]])
    assert max(len(v) for v in by_star.values()) == 5
    wave = LAMOST_GRID.wavelength
    for visits in by_star.values():
        flux, ivar = map(np.array, zip(*[resample(s, "lamost", rest_frame_z=s.meta["z"])
                                          for s in visits]))
        norm, norm_ivar, _ = continuum_normalise(flux, ivar)
        common = (norm_ivar > 0).all(axis=0) & (wave > 4000) & (wave < 8800)
        deviation = np.abs(norm[:, common] - np.median(norm[:, common], axis=0))
        assert np.median(deviation) < 0.02
        halpha = np.abs(wave - H_ALPHA_VAC) < 1.5
        assert np.ptp(norm[:, halpha].min(axis=1)) < 0.08


def _line_centre(wave: np.ndarray, flux: np.ndarray) -> float:
    sel = (wave > 6545) & (wave < 6585)
    w, f = wave[sel], flux[sel]
    j = int(np.argmin(f))
    y0, y1, y2 = f[j - 1:j + 2]
    return w[j] + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2) * (w[j + 1] - w[j])


def test_wavelengths_are_vacuum_h_alpha(spectra):
    centres = [_line_centre(s.wavelength / (1 + s.meta["z"]), s.flux)
               for s in spectra.values() if (s.meta["subclass"] or "X")[0] in "AFG"]
    assert len(centres) > 50
    assert abs(np.nanmedian(centres) - H_ALPHA_VAC) < 0.8  # air would be 1.8 A bluer


def _modified_copy(src: Path, dst: Path, edit) -> Path:
    with fits.open(src) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    edit(hdul)
    hdul.writeto(dst)
    return dst


@pytest.mark.filterwarnings("ignore:Keyword name 'GAIA_SOURCE_ID'")
def test_masks_ormask_option_vacuum_flag_and_gaia_id(samples, tmp_path):
    src = samples / "lamost" / "format_samples" / "spec-55859-F5902_sp01-001_dr7.fits.gz"

    def edit(hdul):
        hdul[0].data[3, 100] = 4.0      # andmask
        hdul[0].data[4, 200:210] = 8.0  # ormask only
        hdul[0].header["VACUUM"] = False
        hdul[0].header["GAIA_SOURCE_ID"] = "120435178731136"

    path = _modified_copy(src, tmp_path / "edited.fits", edit)
    spec = lamost.read_lamost(path)
    assert spec.mask[100] and spec.ivar[100] == 0
    assert not spec.mask[200:210].any() and spec.meta["n_ormask"] == 10
    assert lamost.read_lamost(path, use_ormask=True).mask[200:210].all()
    raw = fits.getdata(src)[2].astype(np.float64)
    np.testing.assert_allclose(spec.wavelength, air_to_vacuum(raw), rtol=1e-12)
    assert spec.source_id == 120435178731136
