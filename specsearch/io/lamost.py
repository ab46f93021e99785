"""LAMOST low-resolution (LRS) spectra: ``spec-*.fits`` and ``spec-*.fits.gz``, every layout.

The layout is read from the file's structure, never from the data-release number:

* **image** (DR2-DR7, and some DR8 files): the primary HDU is a float32 image (5, NPIX) with
  rows flux, ivar, wavelength, andmask, ormask.
* **image without wavelength** (DR1, pipeline v2.6): the same image, but row 3 is a
  normalised flux ("Subcontinuum"); the wavelength is 10**(COEFF0 + i * COEFF1) Angstrom
  (or, failing COEFF0/COEFF1, the equivalent CRVAL1/CD1_1/CRPIX1 with DC-FLAG = 1). A row is
  taken as wavelengths when it is finite, strictly increasing and within 1000-30000 A.
* **COADD table** (DR8 and later): primary HDU header only; a one-row binary table ``COADD``
  with vector columns FLUX, IVAR, WAVELENGTH, ANDMASK, ORMASK (NORMALIZATION is not read).

NPIX is read from each file. Wavelengths are vacuum Angstrom (header ``VACUUM = T``; a file
saying ``VACUUM = F`` is converted with :func:`specsearch.preprocess.air_to_vacuum`),
heliocentric and observed-frame (header ``Z`` is kept in ``meta['z']``; ingest removes it).

Bad pixels: ``andmask != 0``, ``flux == 0`` (LAMOST pads the red end with zero flux and a
non-zero ivar) and non-finite flux/ivar. The **ormask is not used by default**: it flags a
pixel when *any* single exposure had a problem (LAMOST's ormask is set on many otherwise
good pixels, e.g. near bright sky lines in one exposure), which would throw away usable
data; the co-add already down-weights bad exposures through ivar. Pass ``use_ormask=True``
for the strict mask; ``meta['n_ormask']`` counts the ormask pixels either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from specsearch.errors import ReaderError, SpectrumError
from specsearch.io._fits import (as_1d, hdu_data, header_float, header_gaia_source_id,
                                 header_get, header_int, header_str, open_fits,
                                 read_primary_header)
from specsearch.preprocess import air_to_vacuum, grid_for
from specsearch.spectrum import Spectrum

FORMAT_NAME = "lamost"
MODALITY = "lamost"

LAYOUT_IMAGE = "image"
LAYOUT_IMAGE_NO_WAVELENGTH = "image-dr1"
LAYOUT_COADD = "coadd-table"

IMAGE_ROWS = ("flux", "ivar", "wavelength", "andmask", "ormask")
PLAUSIBLE_WAVELENGTH_A = (1000.0, 30000.0)
MISSING_MAG = 90.0
"""LAMOST writes 99.00 for a magnitude it does not have; values >= this become None."""

SNR_KEYS = (("SNRG", "SN_G"), ("SNRR", "SN_R"), ("SNRI", "SN_I"), ("SNRZ", "SN_Z"),
            ("SNRU", "SN_U"))
"""Per-band S/N keys in order of preference for ``Spectrum.snr`` (DR1 writes SN_G...)."""


def identify(path: str | Path) -> bool:
    """True when ``path`` is a LAMOST LRS spectrum (any layout). Reads a few kB; never raises.

    A LAMOST file names LAMOST in TELESCOP/ORIGIN/AUTHOR/DATA_V and has a 2-D primary image
    (the (5, NPIX) layouts) or an empty primary HDU (the COADD-table layout). Files of that
    description with the wrong shape or no COADD table are still claimed, so that reading
    them says what is wrong instead of "unknown format".
    """
    header = read_primary_header(path)
    if header is None:
        return False
    stamp = " ".join(str(header_get(header, k, "")) for k in ("TELESCOP", "ORIGIN", "AUTHOR",
                                                               "DATA_V"))
    return "LAMOST" in stamp.upper() and header.get("NAXIS") in (0, 2)


def read(path: str | Path) -> Iterator[Spectrum]:
    """Registry protocol: the one spectrum of a LAMOST file."""
    yield read_lamost(path)


def read_lamost(path: str | Path, *, use_ormask: bool = False) -> Spectrum:
    """Read one LAMOST LRS file (``.fits`` or ``.fits.gz``, any layout) into a :class:`Spectrum`.

    Args:
        path: the file.
        use_ormask: also mask pixels flagged in the ormask (see the module docstring).
    Returns:
        A validated spectrum, modality ``lamost``: vacuum Angstrom wavelengths (observed
        frame), flux in LAMOST's relative flux units, ivar (0 on bad pixels), mask (True =
        bad); spectrum_id = str(OBSID) (file stem when absent, as in DR1), source_id = the
        Gaia DR3 id when the header carries one, else None; header values in ``meta``.
    Raises:
        ReaderError: unreadable, truncated, wrong layout or shape, missing wavelength
            information, or no usable flux. The message names the file.
    """
    path = Path(path)
    with open_fits(path) as hdul:
        header = hdul[0].header
        arrays, layout, wavelength_from = _read_arrays(hdul, path)
    flux, ivar, wave, andmask, ormask = (arrays[k] for k in IMAGE_ROWS)
    npix = flux.size
    if not np.isfinite(flux).any():
        raise ReaderError(path, f"no finite flux value in {npix} pixels ({layout} layout)")
    if not np.any(np.isfinite(flux) & (flux != 0)):
        raise ReaderError(path, f"flux is zero everywhere ({npix} pixels, {layout} layout)")
    vacuum_card = header_get(header, "VACUUM")
    if vacuum_card is False:  # LAMOST is vacuum; honour a file that says otherwise
        wave = air_to_vacuum(wave)
    mask = (andmask != 0) | ~np.isfinite(andmask) | (flux == 0) | ~np.isfinite(flux) \
        | ~np.isfinite(ivar) | (ivar <= 0)
    if use_ormask:
        mask |= (ormask != 0)
    meta = _header_meta(header)
    meta.update(layout=layout, wavelength_from=wavelength_from, filename=path.name,
                n_ormask=int(np.count_nonzero(ormask)), use_ormask=use_ormask,
                wavelength_medium="air" if vacuum_card is False else "vacuum",
                medium_from="the file (VACUUM card)" if vacuum_card is not None
                else "the LAMOST format (vacuum)")
    obsid = meta.get("obsid")
    source_id, gaia_key = header_gaia_source_id(header)
    if gaia_key:
        meta["source_id_key"] = gaia_key
    spectrum = Spectrum(
        wavelength=wave, flux=flux, ivar=np.where(np.isfinite(ivar), ivar, 0.0), mask=mask,
        spectrum_id=str(obsid) if obsid is not None else _stem(path),
        source_id=source_id, modality=MODALITY,
        ra=header_float(header, "RA"), dec=header_float(header, "DEC"),
        snr=_snr(header), flux_unit=grid_for(MODALITY).flux_unit, path=str(path), meta=meta)
    try:
        return spectrum.validated()
    except SpectrumError as exc:
        raise ReaderError(path, str(exc).removeprefix(f"{path}: ")) from exc


# --------------------------------------------------------------------------- layouts

def _read_arrays(hdul: fits.HDUList, path: Path) -> tuple[dict[str, np.ndarray], str, str]:
    """The five rows as float64 arrays, the layout name and where the wavelengths came from."""
    primary = hdul[0]
    if primary.header.get("NAXIS", 0) >= 1:
        return _read_image(primary, path)
    coadd = _find_coadd(hdul)
    if coadd is None:
        found = [f"{i}:{h.name or '-'}({type(h).__name__})" for i, h in enumerate(hdul)]
        mrs = any(h.name.upper().startswith("COADD_") for h in hdul)
        raise ReaderError(path, f"missing HDU: no (5, NPIX) primary image and no 'COADD' "
                                f"binary table with FLUX/IVAR/WAVELENGTH columns; HDUs found: "
                                f"{', '.join(found)}"
                                + ("; this looks like a LAMOST medium-resolution (MRS) file, "
                                   "which is not supported" if mrs else ""))
    return _read_coadd(coadd, primary.header, path)


def _read_image(hdu: Any, path: Path) -> tuple[dict[str, np.ndarray], str, str]:
    data = hdu_data(hdu, path, "primary image")
    shape = getattr(data, "shape", None)
    if data is None or len(shape) != 2 or shape[0] != len(IMAGE_ROWS) or shape[1] < 2:
        raise ReaderError(path, f"wrong shape: the primary image is {shape}, expected "
                                f"(5, NPIX) with rows {', '.join(IMAGE_ROWS)}")
    rows = np.asarray(data, dtype=np.float64)
    arrays = dict(zip(IMAGE_ROWS, rows))
    if _looks_like_wavelength(arrays["wavelength"]):
        return arrays, LAYOUT_IMAGE, "image row 3"
    # DR1: row 3 is a normalised flux; the dispersion is in the header.
    arrays["wavelength"], wavelength_from = _header_wavelength(hdu.header, shape[1], path)
    return arrays, LAYOUT_IMAGE_NO_WAVELENGTH, wavelength_from


def _find_coadd(hdul: fits.HDUList) -> Any | None:
    tables = [h for h in hdul[1:] if isinstance(h, fits.BinTableHDU)]
    for hdu in tables:
        if (hdu.name or "").strip().upper() == "COADD":
            return hdu
    for hdu in tables:  # an unnamed table with the COADD columns
        if {"FLUX", "IVAR"} <= {c.upper() for c in hdu.columns.names}:
            return hdu
    return None


def _read_coadd(hdu: Any, header: fits.Header,
                path: Path) -> tuple[dict[str, np.ndarray], str, str]:
    table = hdu_data(hdu, path, "COADD table")
    names = {c.upper(): c for c in hdu.columns.names}
    missing = [c for c in ("FLUX", "IVAR") if c not in names]
    if missing:
        raise ReaderError(path, f"COADD table lacks column(s) {missing}; columns found: "
                                f"{list(hdu.columns.names)}")
    nrows = 0 if table is None else len(table)
    if nrows != 1:
        raise ReaderError(path, f"COADD table has {nrows} rows, expected exactly 1")
    arrays = {k: as_1d(table[names[k.upper()]][0]) for k in IMAGE_ROWS if k.upper() in names}
    npix = arrays["flux"].size
    if "wavelength" in arrays:
        wavelength_from = "COADD WAVELENGTH column"
        if not _looks_like_wavelength(arrays["wavelength"]):
            raise ReaderError(path, "COADD WAVELENGTH column is not a finite, increasing "
                                    "wavelength array in Angstrom")
    else:
        arrays["wavelength"], wavelength_from = _header_wavelength(header, npix, path)
    for key in ("andmask", "ormask"):  # absent masks mean "nothing flagged"
        arrays.setdefault(key, np.zeros(npix))
    lengths = {k.upper(): a.shape for k, a in arrays.items()}
    if any(a.ndim != 1 or a.size != npix for a in arrays.values()):
        raise ReaderError(path, f"wrong array lengths in the COADD table: {lengths}; every "
                                f"vector column must hold NPIX values")
    return arrays, LAYOUT_COADD, wavelength_from


def _looks_like_wavelength(row: np.ndarray) -> bool:
    lo, hi = PLAUSIBLE_WAVELENGTH_A
    return bool(row.ndim == 1 and row.size >= 2 and np.all(np.isfinite(row))
                and np.all(np.diff(row) > 0) and row[0] > lo and row[-1] < hi)


def _header_wavelength(header: fits.Header, npix: int, path: Path) -> tuple[np.ndarray, str]:
    """Log-linear wavelengths from COEFF0/COEFF1 (or CRVAL1/CD1_1/CRPIX1 with DC-FLAG = 1)."""
    pixel = np.arange(npix, dtype=np.float64)
    c0, c1 = header_float(header, "COEFF0"), header_float(header, "COEFF1")
    if c0 is not None and c1 is not None:
        loglam, source = c0 + c1 * pixel, "header COEFF0/COEFF1"
    else:
        crval = header_float(header, "CRVAL1")
        step = header_float(header, "CD1_1", "CDELT1")
        crpix = header_float(header, "CRPIX1") or 1.0
        if crval is None or step is None or header_int(header, "DC-FLAG") != 1:
            raise ReaderError(path, "missing wavelength info: the image has no wavelength row "
                                    "and the header has neither COEFF0/COEFF1 nor "
                                    "CRVAL1/CD1_1 with DC-FLAG = 1 (log-linear)")
        loglam, source = crval + step * (pixel + 1.0 - crpix), "header CRVAL1/CD1_1"
    wave = 10.0 ** loglam
    if not _looks_like_wavelength(wave):
        raise ReaderError(path, f"wavelengths from the {source} run {wave[0]:.6g}-"
                                f"{wave[-1]:.6g} A: not an increasing optical range")
    return wave, source


# --------------------------------------------------------------------------- header values

def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".fits", ".fit", ".fts"):
        name = name.removesuffix(suffix)
    return name


def _snr(header: fits.Header) -> float | None:
    for keys in SNR_KEYS:
        value = header_float(header, *keys)
        if value is not None and value > 0:
            return value
    return None


def _magnitude(header: fits.Header, key: str) -> float | None:
    value = header_float(header, key)
    return None if value is None or value >= MISSING_MAG or value <= -MISSING_MAG else value


def _header_meta(header: fits.Header) -> dict[str, Any]:
    """JSON-able header values, lower-case keys; absent values are None.

    ``designation`` drops the "LAMOST " prefix so it matches the LAMOST catalogues
    ("J063750.21+271351.1"). Magnitudes of 99 (LAMOST's "none") become None.
    """
    desig = header_str(header, "DESIG")
    meta: dict[str, Any] = {
        "obsid": header_int(header, "OBSID"),
        "designation": desig.removeprefix("LAMOST ").strip() if desig else None,
        "class": header_str(header, "CLASS"),
        "subclass": header_str(header, "SUBCLASS"),
        "z": header_float(header, "Z"),
        "z_err": header_float(header, "Z_ERR"),
        "mjd": header_int(header, "MJD"),
        "lmjd": header_int(header, "LMJD"),
        "planid": header_str(header, "PLANID"),
        "spid": header_int(header, "SPID"),
        "fiberid": header_int(header, "FIBERID"),
        "data_v": header_str(header, "DATA_V"),
        "verspipe": header_str(header, "VERSPIPE"),
        "date_obs": header_str(header, "DATE-OBS"),
        "helio_rv": header_float(header, "HELIO_RV"),
        "magtype": header_str(header, "MAGTYPE"),
    }
    for band in "ugriz":
        meta[f"snr_{band}"] = header_float(header, f"SNR{band.upper()}", f"SN_{band.upper()}")
    for i in range(1, 8):
        meta[f"mag{i}"] = _magnitude(header, f"MAG{i}")
    for band in "grizy":  # DR9+ headers carry Pan-STARRS magnitudes instead of MAG1..7
        key = f"MAG_PS_{band.upper()}"
        if key in header:
            meta[f"mag_ps_{band}"] = _magnitude(header, key)
    return meta
