"""Stating a generic spectrum's wavelength medium (air or vacuum): the CLI's ``--medium``
and the HTTP ``medium`` reach the readers' ``air=``; survey files refuse it by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from astropy.io import fits

from specsearch.cli import main
from specsearch.errors import ConfigError
from specsearch.io.catalog import open_catalog
from specsearch.io.registry import air_from_medium, read_spectra
from specsearch.preprocess import grid_for

H_ALPHA_VACUUM = 6564.61
"""H-alpha in vacuum (Angstrom); 6562.80 in air."""
SHIFT_AT_H_ALPHA = 1.81
"""Air -> vacuum at H-alpha: (n - 1) * lambda with n - 1 = 2.76e-4 (Edlen / Ciddor)."""
LINE_PIXEL = 2864
"""The pixel of the test spectra that sits exactly on H_ALPHA_VACUUM."""


def spectrum_arrays() -> tuple[np.ndarray, np.ndarray]:
    """3700.61-9000.61 A in 1 A steps: a sloped continuum with one deep line at H-alpha
    (vacuum), noiseless; pixel LINE_PIXEL is the line's centre."""
    wave = H_ALPHA_VACUUM - LINE_PIXEL + np.arange(5301, dtype=np.float64)
    flux = (1.0 + 0.1 * (wave - 6000.0) / 3000.0) \
        * (1.0 - 0.6 * np.exp(-0.5 * ((wave - H_ALPHA_VACUUM) / 2.5) ** 2))
    return wave, flux


@pytest.fixture
def fits_no_medium(tmp_path) -> Path:
    """A 1-D FITS spectrum with a linear WCS and no card naming the medium (such a file is
    taken as air), written from vacuum wavelengths."""
    wave, flux = spectrum_arrays()
    header = fits.Header({"CRVAL1": wave[0], "CDELT1": 1.0, "CRPIX1": 1.0,
                          "CUNIT1": "Angstrom", "OBJECT": "vacuum star"})
    path = tmp_path / "vacuum_star.fits"
    fits.PrimaryHDU(flux.astype(np.float32), header=header).writeto(path)
    return path


@pytest.fixture
def text_no_header(tmp_path) -> Path:
    """Two columns, no header line, no comment (such a file is taken as vacuum)."""
    wave, flux = spectrum_arrays()
    path = tmp_path / "star.txt"
    path.write_text("\n".join(f"{w:.2f} {f:.6f}" for w, f in zip(wave, flux)) + "\n")
    return path


@pytest.fixture
def lamost_file(lamost_sample_files) -> Path:
    return lamost_sample_files[0]


def test_medium_names():
    assert (air_from_medium("air"), air_from_medium("vacuum"), air_from_medium(None)) == \
        (True, False, None)
    with pytest.raises(ConfigError, match="'vaccum'.*'air', 'vacuum'"):
        air_from_medium("vaccum")


def test_fits_without_medium_is_air_unless_told_vacuum(fits_no_medium):
    default = next(read_spectra(fits_no_medium))
    vacuum = next(read_spectra(fits_no_medium, air=False))
    assert vacuum.wavelength[LINE_PIXEL] == pytest.approx(H_ALPHA_VACUUM, abs=1e-3)
    shift = default.wavelength[LINE_PIXEL] - vacuum.wavelength[LINE_PIXEL]
    assert shift == pytest.approx(SHIFT_AT_H_ALPHA, abs=0.01)
    assert default.meta["wavelength_medium"] == "air"
    assert default.meta["medium_from"].startswith("default for FITS images")
    assert vacuum.meta["wavelength_medium"] == "vacuum"
    assert vacuum.meta["medium_from"].startswith("caller")


def test_text_without_medium_is_vacuum_unless_told_air(text_no_header):
    default = next(read_spectra(text_no_header))
    air = next(read_spectra(text_no_header, air=True))
    assert default.wavelength[LINE_PIXEL] == pytest.approx(H_ALPHA_VACUUM, abs=1e-3)
    assert air.wavelength[LINE_PIXEL] - default.wavelength[LINE_PIXEL] == \
        pytest.approx(SHIFT_AT_H_ALPHA, abs=0.01)
    assert default.meta["medium_from"].startswith("default for text")


def line_centre(catalog: Path) -> float:
    """Flux-weighted centre (Angstrom) of the line depth within 15 A of H-alpha in the
    catalog's one LAMOST row (the row is on the canonical grid)."""
    flux = open_catalog(catalog).read_column("lamost", "flux").to_numpy(
        zero_copy_only=False)[0]
    wave = np.asarray(grid_for("lamost").wavelength, np.float64)
    near = np.abs(wave - H_ALPHA_VACUUM) < 15.0
    depth = np.median(flux[near & (np.abs(wave - H_ALPHA_VACUUM) > 10.0)]) - flux[near]
    return float(np.sum(wave[near] * depth) / np.sum(depth))


def test_ingest_medium_reaches_the_reader(fits_no_medium, tmp_path, capsys):
    runs = {}
    for medium in (None, "vacuum"):
        out = tmp_path / f"catalog-{medium}"
        argv = ["ingest", "--modality", "lamost", str(fits_no_medium), "--out", str(out),
                "--no-progress"] + (["--medium", medium] if medium else [])
        assert main(argv) == 0
        runs[medium] = line_centre(out)
        summary = capsys.readouterr().out
        if medium:
            assert f"medium {medium} (caller's override) applied to 1 generic" in summary
    assert runs["vacuum"] == pytest.approx(H_ALPHA_VACUUM, abs=0.2)
    # The FITS file says nothing: read as air, its line lands 1.8 A to the red.
    assert runs[None] - runs["vacuum"] == pytest.approx(SHIFT_AT_H_ALPHA, abs=0.1)


def test_ingest_of_a_mixed_folder_keeps_survey_files_as_they_are(fits_no_medium,
                                                                 lamost_file, tmp_path,
                                                                 capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / lamost_file.name).write_bytes(lamost_file.read_bytes())
    (folder / fits_no_medium.name).write_bytes(fits_no_medium.read_bytes())
    report = tmp_path / "report.json"
    assert main(["ingest", "--modality", "lamost", str(folder), "--out",
                 str(tmp_path / "cat"), "--medium", "vacuum", "--no-progress",
                 "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "2 ingested" in out and "0 skipped" in out
    assert "applied to 1 generic file(s)" in out
    assert open_catalog(tmp_path / "cat").read_column("lamost", "spectrum_id").length() == 2
    assert '"files_medium_applied": 1' in report.read_text()


def test_search_medium_on_a_survey_file_names_the_option_and_the_file(lamost_file, tmp_path,
                                                                      capsys):
    # The file is read before the index is opened: no index is needed to see the error.
    rc = main(["search", str(tmp_path / "no-index"), "--spectrum", str(lamost_file),
               "--medium", "vacuum"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--medium" in err and "generic spectra only" in err and lamost_file.name in err
    for option in (["--medium", "air"], ["--resolving-power", "5000"]):
        rc = main(["search", str(tmp_path / "no-index"), "--source-id", "1", *option])
        assert rc == 2 and f"{option[0]} describes a --spectrum file" in capsys.readouterr().err


def test_cli_refuses_an_unknown_medium(fits_no_medium, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["ingest", "--modality", "lamost", str(fits_no_medium), "--out",
              str(tmp_path / "c"), "--medium", "vac"])
    assert info.value.code == 2
    assert "invalid choice: 'vac'" in capsys.readouterr().err


# --------------------------------------------------------------------------- HTTP

@dataclass
class UploadState:
    """What the predict and upload routes use (settings, parser, worker, model); no index,
    so that the upload path is tested without building one."""

    settings: object
    metrics: object
    model: object
    worker: object
    parser: object
    api_keys: frozenset = field(default_factory=frozenset)

    def describe(self) -> str:
        return "upload-only test state"

    def close(self) -> None:
        self.parser.close()


@pytest.fixture(scope="module")
def client(tmp_path_factory, live_server):
    from service.app import create_app
    from service.parse_pool import ParsePool
    from service.settings import Settings
    from service.worker import Worker
    from service_support import model_dir
    from specsearch.model import load_model

    root = tmp_path_factory.mktemp("medium-service")
    model = load_model(model_dir(root))

    def upload_state(settings, metrics) -> UploadState:
        return UploadState(settings=settings, metrics=metrics, model=model,
                           worker=Worker(threads=2, timeout_s=30.0, metrics=metrics),
                           parser=ParsePool(workers=0, timeout_s=30.0,
                                            memory_bytes=2 ** 30))

    settings = Settings(index_dir=root, warm_index=False, search_batching=False,
                        parse_workers=0)
    with live_server(create_app(settings, state_factory=upload_state)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def post(client, path: Path, url: str = "/v1/predict/upload", **params) -> httpx.Response:
    return client.post(url, params={"translate": "false", **params},
                       files={"file": (path.name, path.read_bytes())})


def test_http_medium_reaches_the_reader_and_is_reported(client, fits_no_medium):
    default = post(client, fits_no_medium)
    vacuum = post(client, fits_no_medium, medium="vacuum")
    older = post(client, fits_no_medium, air="false")
    assert default.status_code == vacuum.status_code == older.status_code == 200, \
        (default.text, vacuum.text)
    assert default.json()["medium"] == "air"
    assert default.json()["medium_from"].startswith("default for FITS images")
    assert vacuum.json()["medium"] == "vacuum"
    assert vacuum.json()["medium_from"].startswith("caller")
    assert older.json()["input"] == vacuum.json()["input"]
    # The 1.8 A shift moves the line on the grid the model sees.
    flux = {name: np.array([np.nan if v is None else v for v in r.json()["input"]["flux"]])
            for name, r in (("air", default), ("vacuum", vacuum))}
    wave = np.asarray(default.json()["input"]["wavelength"])
    assert not np.allclose(flux["air"], flux["vacuum"], equal_nan=True)
    near = np.abs(wave - H_ALPHA_VACUUM) < 40
    assert wave[near][np.nanargmin(flux["vacuum"][near])] == pytest.approx(H_ALPHA_VACUUM,
                                                                         abs=5.0)


def test_http_bad_medium_is_a_422_naming_the_field(client, fits_no_medium):
    for url in ("/v1/predict/upload", "/v1/search/upload"):
        r = post(client, fits_no_medium, url=url, medium="vac")
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["error"] == "invalid_request"
        assert "medium" in body["message"] and "'air'" in body["message"] \
            and "'vacuum'" in body["message"]


def test_http_medium_and_air_must_agree(client, fits_no_medium):
    r = post(client, fits_no_medium, medium="vacuum", air="true")
    assert r.status_code == 400 and "contradicts air=true" in r.json()["detail"]
    assert post(client, fits_no_medium, medium="air", air="true").status_code == 200


def test_http_medium_on_a_lamost_file_is_a_400_naming_it(client, lamost_file):
    for url in ("/v1/predict/upload", "/v1/search/upload"):
        r = post(client, lamost_file, url=url, medium="vacuum")
        assert r.status_code == 400, r.text
        detail = r.json()["detail"]
        assert "medium" in detail and "generic spectra only" in detail
        assert lamost_file.name in detail and "/tmp" not in detail
    got = post(client, lamost_file).json()                  # LAMOST states its own
    assert got["medium"] == "vacuum" and got["medium_from"] == "the file (VACUUM card)"


def test_openapi_documents_medium(tmp_path):
    from service.app import create_app
    from service.settings import Settings

    doc = create_app(Settings(index_dir=tmp_path)).openapi()   # not started: no index
    for route in ("/v1/search/upload", "/v1/predict/upload"):
        params = {p["name"]: p for p in doc["paths"][route]["post"]["parameters"]}
        assert {"enum": ["air", "vacuum"], "type": "string"} in \
            params["medium"]["schema"]["anyOf"]
        assert params["air"].get("deprecated") is True
    for model in ("QueryInfo", "Prediction"):
        assert {"medium", "medium_from"} <= set(doc["components"]["schemas"][model]
                                                ["properties"])
