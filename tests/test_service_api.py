"""The HTTP API contract, over real HTTP (uvicorn on 127.0.0.1) against a real small index."""

from __future__ import annotations

import hashlib
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.deps import get_state
from service.worker import Worker
from service.settings import Settings

MAX_UPLOAD = 1_000_000
API_KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def index(service_index) -> tuple[Path, Path | None, Path]:
    return service_index


@pytest.fixture(scope="module")
def settings(index) -> Settings:
    return Settings(index_dir=index[0], model_dir=index[1], max_upload_bytes=MAX_UPLOAD,
                    max_k=200, max_page=100, worker_threads=4)


@pytest.fixture(scope="module")
def app(settings):
    return create_app(settings)


@pytest.fixture(scope="module")
def server(app, live_server):
    with live_server(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def state(app, server):
    return app.state.service


@pytest.fixture(scope="module")
def lamost_file(lamost_sample_files) -> Path:
    return lamost_sample_files[0]


def upload(client, path: Path, url: str = "/v1/search/upload", **params) -> httpx.Response:
    return client.post(url, params=params, files={"file": (path.name, path.read_bytes())})


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns,
                                       hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- health, info


def test_health_and_info(client, state):
    assert client.get("/v1/health/live").json()["status"] == "ok"
    ready = client.get("/v1/health/ready")
    # Ready or not, nothing else: no model hash, key count or sizes without a key.
    assert ready.status_code == 200 and ready.json() == {"status": "ok", "detail": ""}
    info = client.get("/v1/info").json()
    assert "root" not in info["index"] and str(state.settings.index_dir) not in str(info)
    assert info["model"]["hash"] == info["index"]["model_hash"] == state.model.model_hash
    assert {m: v["count"] for m, v in info["index"]["modalities"].items()} == \
        {"lamost": 300, "xp": 300}
    assert info["index"]["modalities"]["lamost"]["shards"] == 2
    assert info["limits"]["max_k"] == 200
    assert info["threads"]["faiss_threads_per_search"] == 1


def test_docs_and_schema(client, state):
    assert client.get("/docs").status_code == 200
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    for route in ("/v1/search/upload", "/v1/search/spectrum", "/v1/search/embedding",
                  "/v1/search/source/{source_id}", "/v1/predict/upload",
                  "/v1/candidates/anomalies", "/v1/candidates/metal-poor",
                  "/v1/objects/{source_id}", "/v1/info", "/v1/health/ready"):
        assert route in paths
    # A server without keys documents no auth; embeddings have the served dimension.
    assert "securitySchemes" not in doc["components"]
    assert "401" not in paths["/v1/info"]["get"]["responses"]
    emb = doc["components"]["schemas"]["EmbeddingSearch"]["properties"]["embedding"]
    assert emb["minItems"] == emb["maxItems"] == state.model.embedding_dim
    errors = paths["/v1/search/upload"]["post"]["responses"]
    assert {"400", "404", "413", "415", "422", "503", "504"} <= set(errors)


def test_pages_share_one_template(client):
    pages = {path: client.get(path) for path in ("/", "/anomalies", "/metal-poor")}
    for path, r in pages.items():
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert r.text.count("<nav>") == 1 and 'id="api-key"' in r.text
        assert f'<a href="{path}" class="active">' in r.text
    assert 'value="artefacts"' in pages["/anomalies"].text   # the API's list kind
    assert 'id="list-table"' in pages["/metal-poor"].text


# ----------------------------------------------------------------------------- search


def test_search_upload_real_lamost(client, state, lamost_file):
    r = upload(client, lamost_file, k=7)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"]["modality"] == "lamost" and body["query"]["filename"] == \
        lamost_file.name
    assert set(body["query"]["predictions"]) == set(state.model.label_names)
    nbs = body["neighbours"]
    assert len(nbs) == 7 and [n["rank"] for n in nbs] == list(range(1, 8))
    sims = [n["similarity"] for n in nbs]
    assert sims == sorted(sims, reverse=True) and all(-1.0 <= s <= 1.0 + 1e-6 for s in sims)
    assert all(n["modality"] == "lamost" for n in nbs)
    assert set(nbs[0]["predictions"]) == set(state.model.label_names)
    _assert_in_domain(body["query"]["domain"], state)


def _assert_in_domain(domain, state):
    """A real LAMOST star is one the model knows: a small reconstruction miss, no flag."""
    assert 0 <= domain["recon_relative"] < 0.1
    check = state.model.domain_check
    if check is None:
        assert domain["threshold"] is None and domain["out_of_domain"] is None
    else:
        assert domain["threshold"] == pytest.approx(check.thresholds["lamost"])
        assert domain["out_of_domain"] is False
        rule = check.coverage.get("lamost")
        if rule is not None:
            assert domain["window_coverage"] > rule["min_fraction"]
            assert domain["min_coverage"] == rule["min_fraction"]
            assert domain["coverage_window_a"] == rule["window_A"]


def test_cross_modal_with_plot_curves(client, lamost_file):
    r = upload(client, lamost_file, k=4, target="cross", include_spectra="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cross_modal"] and body["target_modality"] == "xp"
    assert all(n["modality"] == "xp" for n in body["neighbours"])
    curves = body["spectra"]
    assert curves[0]["modality"] == "lamost" and curves[0]["kind"] == "observed"
    assert curves[1]["modality"] == "xp" and curves[1]["role"] == "query"
    assert sum(c["role"] == "neighbour" for c in curves) == 4
    assert all(len(c["wavelength"]) == len(c["flux"]) > 100 for c in curves)


def test_source_id_search_matches_library(client, state):
    sid = int(state.engine.index["lamost"].shards[0].column("source_id")[3])
    r = client.get(f"/v1/search/source/{sid}", params={"k": 6, "modality": "lamost"})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = state.engine.search_source(sid, modality="lamost", k=6)
    assert [n["source_id"] for n in body["neighbours"]] == [int(s) for s in
                                                           expected.source_id]
    assert sid not in [n["source_id"] for n in body["neighbours"]]  # itself excluded
    np.testing.assert_allclose([n["similarity"] for n in body["neighbours"]],
                               expected.similarity, rtol=1e-6)
    # Its XP partner sits at the same position: a tiny cone around it finds exactly that.
    ra, dec = body["neighbours"][0]["ra"], body["neighbours"][0]["dec"]
    me = client.get(f"/v1/objects/{sid}").json()["observations"][0]
    cross = client.get(f"/v1/search/source/{sid}", params={
        "k": 5, "target": "cross", "filter": f"cone={me['ra']},{me['dec']},0.0001"}).json()
    assert cross["target_modality"] == "xp"
    assert [n["source_id"] for n in cross["neighbours"]] == [sid]
    assert (ra, dec) != (me["ra"], me["dec"])


def test_embedding_search_finds_itself(client, state):
    sid = int(state.engine.index["xp"].shards[1].column("source_id")[0])
    _, vec = state.engine.vector_of(sid, "xp")
    r = client.post("/v1/search/embedding", json={"embedding": vec.tolist(), "modality": "xp",
                                                  "k": 3})
    top = r.json()["neighbours"][0]
    assert top["source_id"] == sid and top["similarity"] == pytest.approx(1.0, abs=1e-4)


def test_arrays_equal_csv_upload(client, state):
    """The same spectrum as JSON arrays and as an uploaded CSV finds the same neighbours."""
    from specsearch.preprocess import grid_for

    wave = grid_for("lamost").wavelength
    rng = np.random.default_rng(1)
    flux = 1.0 + 0.1 * np.sin(wave / 50.0) + 0.01 * rng.standard_normal(wave.size)
    ivar = np.full(wave.size, 1e4)
    arrays = client.post("/v1/search/spectrum", json={
        "wavelength": wave.tolist(), "flux": flux.tolist(), "ivar": ivar.tolist(), "k": 5})
    assert arrays.status_code == 200, arrays.text
    csv = "wavelength,flux,ivar\n" + "\n".join(f"{w:.17g},{f:.17g},{i:.17g}" for w, f, i in
                                              zip(wave, flux, ivar))
    up = client.post("/v1/search/upload", params={"k": 5},
                     files={"file": ("spectrum.csv", csv.encode())})
    assert up.status_code == 200, up.text
    assert [n["source_id"] for n in arrays.json()["neighbours"]] == \
        [n["source_id"] for n in up.json()["neighbours"]]
    assert arrays.json()["query"]["modality"] == "lamost"
    # Which medium the wavelengths were read in, and what decided it (through a parse worker).
    assert up.json()["query"]["medium"] == arrays.json()["query"]["medium"] == "vacuum"
    assert up.json()["query"]["medium_from"].startswith("default for text tables")


def test_filters_and_pagination(client, state):
    sid = int(state.engine.index["lamost"].shards[0].column("source_id")[5])
    url = f"/v1/search/source/{sid}"
    full = client.get(url, params={"k": 20}).json()["neighbours"]
    page = client.get(url, params={"k": 20, "offset": 5, "limit": 5}).json()["neighbours"]
    assert [n["source_id"] for n in page] == [n["source_id"] for n in full[5:10]]
    assert [n["rank"] for n in page] == list(range(6, 11))
    r = client.get(url, params={"k": 20, "filter": ["snr>=10", "cone=0,0,180"]})
    assert r.status_code == 200 and r.json()["neighbours"]
    assert all(n["snr"] >= 10 for n in r.json()["neighbours"])
    # A cone of 30 deg around the first neighbour keeps only stars within 30 deg.
    ra, dec = full[0]["ra"], full[0]["dec"]
    cone = client.get(url, params={"k": 20, "filter": f"cone={ra},{dec},30"}).json()
    for n in cone["neighbours"]:
        cosd = (math.sin(math.radians(dec)) * math.sin(math.radians(n["dec"]))
                + math.cos(math.radians(dec)) * math.cos(math.radians(n["dec"]))
                * math.cos(math.radians(n["ra"] - ra)))
        assert math.degrees(math.acos(min(1.0, cosd))) <= 30 + 1e-6


@pytest.mark.parametrize("relpath, modality, row", [
    ("gaia_xp/archive_format/18Sco-XP-spectra.csv", "xp", 0),
    ("gaia_xp/archive_format/XP_CONTINUOUS_RAW.csv", "xp", 1),
    ("gaia_xp/xp_continuous_combined_weiler2023_examples.vot", "xp", 3),
    ("lamost/format_samples/spec-55859-F5902_sp01-013_dr8.fits.gz", "lamost", 0),
    ("lamost/format_samples/spec-55859-F5902_sp01-001_dr7.fits.gz", "lamost", 0),
])
def test_real_formats_over_http(client, samples, relpath, modality, row):
    path = samples / relpath
    r = client.post("/v1/search/upload", params={"k": 3, "row": row, "target": "cross"},
                    files={"file": (path.name, path.read_bytes())})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"]["modality"] == modality and body["query"]["row"] == row
    assert body["target_modality"] != modality and len(body["neighbours"]) == 3
    if modality == "xp":
        assert body["query"]["source_id"] > 10 ** 15  # the Gaia DR3 source_id


# ----------------------------------------------------------------------------- predict, lists


def test_predict_upload(client, state, lamost_file):
    r = upload(client, lamost_file, url="/v1/predict/upload")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body["predictions"]) == set(state.model.label_names)
    assert body["translated"]["modality"] == "xp" and len(body["translated"]["flux"]) == 343
    assert 0 < body["good_fraction"] <= 1
    _assert_in_domain(body["domain"], state)


def test_a_spectrum_at_a_radial_velocity_is_read_in_the_rest_frame(client, samples,
                                                                     lamost_file):
    """A library star sent at +230 km/s (no redshift given) comes back measured and read
    as at rest; a LAMOST file's own redshift is reported as the header's."""
    from specsearch.io.generic import read_generic

    star = read_generic(samples / "miles" / "spectra" / "MILES_res2.50_star_m0838V.fits")
    good = star.ivar > 0

    def predict(wave):
        r = client.post("/v1/predict/spectrum", json={
            "wavelength": wave[good].tolist(), "flux": star.flux[good].tolist(),
            "ivar": star.ivar[good].tolist(), "translate": False})
        assert r.status_code == 200, r.text
        return r.json()

    rest, moved = predict(star.wavelength), predict(star.wavelength * (1 + 230 / 299792.458))
    assert rest["radial_velocity"] is None
    assert moved["radial_velocity"]["source"] == "measured"
    assert moved["radial_velocity"]["removed_kms"] == pytest.approx(230, abs=15)
    for name, tol in (("teff", 60.0), ("logg", 0.1), ("feh", 0.06)):
        assert moved["predictions"][name]["value"] == pytest.approx(
            rest["predictions"][name]["value"], abs=tol), name
    r = upload(client, lamost_file, k=3)
    assert r.status_code == 200, r.text
    assert r.json()["query"]["radial_velocity"]["source"] in ("header", "header+measured")


def test_a_spectrum_broader_than_the_model_reads_is_said_so(client, samples, lamost_file):
    """A library star stated at R = 1000 (or sampled every 5 A) is read, with a note that
    it is broader than the model's R = 1800; at its own resolution, and a LAMOST file, no
    note."""
    from specsearch.io.generic import read_generic

    star = read_generic(samples / "miles" / "spectra" / "MILES_res2.50_star_m0838V.fits")
    good = star.ivar > 0
    body = {"wavelength": star.wavelength[good].tolist(), "flux": star.flux[good].tolist(),
            "ivar": star.ivar[good].tolist(), "translate": False}
    r = client.post("/v1/predict/spectrum", json={**body, "resolving_power": 1000.0})
    assert r.status_code == 200, r.text
    note = r.json()["broader_than_model"]
    assert note["input_fwhm_a"] > 1.25 * note["model_fwhm_a"] > 0
    assert r.json()["domain"]["out_of_domain"] is True          # as the catalog path flags it
    assert client.post("/v1/predict/spectrum", json=body).json()["broader_than_model"] is None
    coarse = np.arange(3700.0, 7400.0, 5.0)
    r = client.post("/v1/predict/spectrum", json={
        "wavelength": coarse.tolist(), "translate": False,
        "flux": np.interp(coarse, star.wavelength[good], star.flux[good]).tolist()})
    assert r.status_code == 200, r.text
    assert r.json()["broader_than_model"]["input_fwhm_a"] == pytest.approx(10.0, rel=0.01)
    r = upload(client, lamost_file, k=3)
    assert r.status_code == 200 and r.json()["query"]["broader_than_model"] is None


def test_telluric_uncorrected_masks_the_bands_on_both_routes(client, samples, lamost_file):
    from specsearch.io.generic import read_generic

    star = read_generic(samples / "miles" / "spectra" / "MILES_res2.50_star_m0838V.fits")
    good = star.ivar > 0
    body = {"wavelength": star.wavelength[good].tolist(), "flux": star.flux[good].tolist(),
            "ivar": star.ivar[good].tolist(), "translate": False}
    plain = client.post("/v1/predict/spectrum", json=body).json()
    masked = client.post("/v1/predict/spectrum", json={**body, "telluric_uncorrected": True})
    assert masked.status_code == 200, masked.text
    assert masked.json()["good_fraction"] < plain["good_fraction"]     # bands 6860-7340 A
    with lamost_file.open("rb") as fh:
        r = client.post("/v1/search/upload", params={"k": 3, "telluric_uncorrected": "true"},
                        files={"file": (lamost_file.name, fh)})
    assert r.status_code == 200, r.text
    assert r.json()["query"]["good_fraction"] < upload(client, lamost_file, k=3).json()[
        "query"]["good_fraction"]


def test_cosmic_rays_are_masked_and_counted_on_both_routes(client, samples, lamost_file):
    """Raised single pixels in an upload are masked before reading (the predictions move
    back to the clean spectrum's) and the response says how many."""
    import io

    from specsearch.io.generic import read_generic

    star = read_generic(samples / "miles" / "spectra" / "MILES_res2.50_star_m0838V.fits")
    good = np.flatnonzero(star.ivar > 0)
    flux = star.flux.copy()
    hits = good[np.linspace(300, good.size - 300, 10).astype(int)]
    flux[hits] += 5.0 * np.median(star.flux[good])
    body = {"wavelength": star.wavelength[good].tolist(), "ivar": star.ivar[good].tolist(),
            "translate": False}
    clean = client.post("/v1/predict/spectrum", json={**body, "flux": star.flux[good].tolist()})
    hit = client.post("/v1/predict/spectrum", json={**body, "flux": flux[good].tolist()})
    assert hit.status_code == 200, hit.text
    assert clean.json()["spikes_masked"] == 0 and hit.json()["spikes_masked"] == 10
    for name, tol in (("teff", 30.0), ("logg", 0.05), ("feh", 0.03)):
        assert hit.json()["predictions"][name]["value"] == pytest.approx(
            clean.json()["predictions"][name]["value"], abs=tol), name
    csv = "wavelength,flux,ivar\n" + "\n".join(
        f"{w:.3f},{f:.6g},{i:.6g}" for w, f, i in
        zip(star.wavelength[good], flux[good], star.ivar[good]))
    r = client.post("/v1/search/upload", params={"k": 3},
                    files={"file": ("star.csv", io.BytesIO(csv.encode()))})
    assert r.status_code == 200, r.text
    assert r.json()["query"]["spikes_masked"] == 10
    assert upload(client, lamost_file, k=3).json()["query"]["spikes_masked"] == 0


def test_telluric_absorption_left_in_is_found_and_masked(client, samples, lamost_file):
    """A LAMOST spectrum with the atmosphere's bands put back (as a reduction without a
    telluric correction leaves them) is found by the model and read with the bands masked;
    the corrected file is read as it is (DR1's files have no data in the A band: no
    depth)."""
    from specsearch.io.registry import read_spectra
    from specsearch.preprocess import LAMOST_GRID
    from specsearch.synth.lamost import telluric_transmission

    path = samples / "lamost" / "format_samples" / "spec-55859-F5902_sp01-001_dr7.fits.gz"
    spec = next(read_spectra(path)).validated()
    good = spec.ivar > 0
    t = np.interp(spec.wavelength, LAMOST_GRID.wavelength,
                  telluric_transmission(np.zeros(1), np.full(1, 1.5), np.full(1, 2.0))[0])
    body = {"wavelength": spec.wavelength[good].tolist(), "translate": False}
    clean = client.post("/v1/predict/spectrum", json={
        **body, "flux": spec.flux[good].tolist(), "ivar": spec.ivar[good].tolist()})
    left = client.post("/v1/predict/spectrum", json={
        **body, "flux": (spec.flux * t)[good].tolist(),
        "ivar": (spec.ivar / np.maximum(t, 1e-3) ** 2)[good].tolist()})
    assert clean.status_code == left.status_code == 200, left.text
    c, u = clean.json()["telluric"], left.json()["telluric"]
    assert not c["masked"] and c["source"] is None and c["a_band_depth"] < 0.15
    assert u["masked"] and u["source"] == "detected" and u["a_band_depth"] > 0.3
    assert left.json()["good_fraction"] < clean.json()["good_fraction"]
    stated = client.post("/v1/predict/spectrum", json={
        **body, "flux": spec.flux[good].tolist(), "ivar": spec.ivar[good].tolist(),
        "telluric_uncorrected": True}).json()["telluric"]
    assert stated == {"masked": True, "source": "request", "a_band_depth": None,
                      "a_band_sigma": None}
    r = upload(client, lamost_file, k=3).json()["query"]["telluric"]
    assert r["masked"] is False and r["a_band_depth"] is None


def test_anomaly_list(client):
    r = client.get("/v1/candidates/anomalies", params={"modality": "lamost", "limit": 20})
    assert r.status_code == 200, r.text
    body = r.json()
    scores = [row["anomaly_score"] for row in body["rows"]]
    assert len(scores) == 20 and scores == sorted(scores, reverse=True)
    assert [row["rank"] for row in body["rows"]] == list(range(1, 21))
    page2 = client.get("/v1/candidates/anomalies",
                       params={"modality": "lamost", "offset": 10, "limit": 10}).json()
    assert [r["source_id"] for r in page2["rows"]] == \
        [r["source_id"] for r in body["rows"][10:20]]
    flt = client.get("/v1/candidates/anomalies",
                     params={"modality": "lamost", "filter": "snr>=15"}).json()
    assert flt["total"] < body["total"] and all(r["snr"] >= 15 for r in flt["rows"])
    artefacts = client.get("/v1/candidates/anomalies",
                           params={"modality": "lamost", "kind": "artefacts"}).json()
    assert artefacts["info"]["artefact_screening"] is True
    assert artefacts["total"] + body["total"] <= 300


def test_metal_poor_list(client):
    r = client.get("/v1/candidates/metal-poor",
                   params={"feh_max": 0.0, "min_prob": 0.0, "limit": 50})
    assert r.status_code == 200, r.text
    body = r.json()
    p = [row["p_metal_poor"] for row in body["rows"]]
    assert p == sorted(p, reverse=True) and body["total"] == 300
    assert body["info"]["n_stars"] == 300
    assert body["info"]["prior"] == "the calibration's"
    r = client.get("/v1/candidates/metal-poor",
                   params={"feh_max": 0.0, "min_prob": 0.0, "limit": 50,
                           "adapt_prior": "true"})
    assert r.status_code == 200, r.text
    info = r.json()["info"]
    assert info["prior"] == "refitted to this pool" and 0.0 <= info["prior_fraction"] <= 1.0
    r = client.get("/v1/candidates/metal-poor",
                   params={"adapt_prior": "true", "filter": "feh_pred<-1"})
    assert r.status_code == 400 and "feh_pred" in r.text


def test_object_record(client, state):
    sid = int(state.engine.index["lamost"].shards[1].column("source_id")[2])
    r = client.get(f"/v1/objects/{sid}")
    assert r.status_code == 200
    assert {o["modality"] for o in r.json()["observations"]} == {"lamost", "xp"}


# ----------------------------------------------------------------------------- bad input -> 4xx


@pytest.mark.parametrize("request_kwargs, status, words", [
    ({"method": "GET", "url": "/v1/objects/12345"}, 404, "not in this index"),
    ({"method": "GET", "url": "/v1/search/source/12345"}, 404, "12345"),
    ({"method": "GET", "url": "/v1/search/source/abc"}, 422, "source_id"),
    ({"method": "GET", "url": "/v1/candidates/anomalies?modality=optical"}, 422, "modality"),
    ({"method": "POST", "url": "/v1/search/spectrum",
      "json": {"wavelength": [4000.0, 4001.0, 4002.0], "flux": [1.0, 2.0]}}, 422,
     "wavelength has 3 values but flux has 2"),
    ({"method": "POST", "url": "/v1/search/spectrum",
      "content": b'{"wavelength": [4000, 4001, 4002, 4003, 4004, 4005], "flux": '
                 b'[NaN, NaN, NaN, NaN, NaN, NaN]}',
      "headers": {"content-type": "application/json"}}, 422, "fewer than 5"),
    ({"method": "POST", "url": "/v1/search/spectrum",
      "json": {"wavelength": [5000.0, 4000.0, 3000.0], "flux": [1.0, 1.0, 1.0],
               "ivar": [1.0, 1.0, 1.0]}}, 422, "strictly increasing"),
    ({"method": "POST", "url": "/v1/search/spectrum",
      "json": {"wavelength": [20000.0, 20001.0, 20002.0], "flux": [1.0, 1.0, 1.0],
               "ivar": [1.0, 1.0, 1.0], "modality": "lamost"}}, 422, "no usable pixel"),
    ({"method": "POST", "url": "/v1/search/embedding",
      "json": {"embedding": [0.1, 0.2], "modality": "xp"}}, 400, "dimension"),
    ({"method": "GET", "url": "/v1/candidates/anomalies?filter=snr~3"}, 400,
     "not understood"),
    ({"method": "GET", "url": "/v1/candidates/anomalies?filter=nosuchcolumn>3"}, 400,
     "nosuchcolumn"),
    ({"method": "GET", "url": "/v1/objects/1?x=1", "headers": {"X-API-Key": "x"}}, 404,
     "not in"),
])
def test_bad_requests_are_4xx_naming_the_problem(client, request_kwargs, status, words):
    r = client.request(**request_kwargs)
    assert r.status_code == status, r.text
    text = r.text
    assert words in text
    assert r.json()["error"]


def test_bad_uploads(client, lamost_file):
    corrupt = lamost_file.read_bytes()[:5000]
    r = client.post("/v1/search/upload", files={"file": ("broken.fits", corrupt)})
    assert r.status_code == 422 and "broken.fits" in r.json()["detail"]
    r = client.post("/v1/search/upload", files={"file": ("x.bin", b"\x00\x01garbage" * 20)})
    assert r.status_code in (415, 422) and "x.bin" in r.json()["detail"]
    r = client.post("/v1/search/upload", files={"file": ("empty.fits", b"")})
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    big = b"SIMPLE  =                    T" + b" " * (MAX_UPLOAD + 10)
    r = client.post("/v1/search/upload", files={"file": ("big.fits", big)})
    assert r.status_code == 413 and str(MAX_UPLOAD) in r.json()["detail"]
    r = upload(client, lamost_file, row=3)
    assert r.status_code == 400 and "holds 1 spectra" in r.json()["detail"]
    r = upload(client, lamost_file, k=5000)
    assert r.status_code == 400 and "maximum" in r.json()["detail"]
    r = upload(client, lamost_file, modality="xp")
    assert r.status_code == 422 and "lamost" in r.json()["detail"]


def test_read_only_and_no_path_traversal(client, index, lamost_file):
    before = snapshot(index[0])
    data = lamost_file.read_bytes()
    for name in ("../../manifest.json", "/etc/passwd", "..\\..\\x.fits", "a/../../b.fits.gz",
                 str(index[0] / "manifest.json")):
        r = client.post("/v1/search/upload", files={"file": (name, data)})
        assert r.status_code == 200, (name, r.text)
        assert "/" not in r.json()["query"]["filename"]
    r = client.post("/v1/search/upload", files={"file": ("/etc/passwd", b"root:x:0:0")})
    assert r.status_code in (415, 422) and "root:x" not in r.text
    assert snapshot(index[0]) == before


def test_metrics_count_requests(client, lamost_file):
    upload(client, lamost_file, k=3)
    text = client.get("/metrics").text
    assert 'route="/v1/search/upload",status="200"' in text
    assert "specsearch_http_request_duration_seconds_bucket" in text
    assert 'specsearch_index_vectors{modality="xp"} 300.0' in text
    assert 'specsearch_stage_duration_seconds_count{stage="search_upload"}' in text
    client.get("/v1/objects/777")
    assert 'route="/v1/objects/{source_id}",status="404"' in client.get("/metrics").text


def test_concurrent_requests_agree(client, state):
    ids = [int(s) for s in state.engine.index["lamost"].shards[0].column("source_id")[:16]]
    sequential = [client.get(f"/v1/search/source/{s}", params={"k": 5}).json()["neighbours"]
                  for s in ids]
    with ThreadPoolExecutor(16) as pool:
        parallel = list(pool.map(lambda s: client.get(f"/v1/search/source/{s}",
                                                      params={"k": 5}), ids * 2))
    assert all(r.status_code == 200 for r in parallel)
    for i, r in enumerate(parallel):
        assert r.json()["neighbours"] == sequential[i % len(ids)]


def test_timeout_via_swapped_dependency(app, client, state, lamost_file):
    """A worker with a tiny deadline (swapped in as a dependency) turns into a 504."""
    slow = Worker(threads=1, timeout_s=1e-4, metrics=state.metrics)
    swapped = type(state)(**{**state.__dict__, "worker": slow})
    app.dependency_overrides[get_state] = lambda: swapped
    try:
        r = upload(client, lamost_file)
        assert r.status_code == 504 and "timeout" in r.json()["detail"]
    finally:
        app.dependency_overrides.clear()
    assert upload(client, lamost_file).status_code == 200


def test_api_keys_and_cors(index, tmp_path, live_server):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# service keys\n{API_KEY}\n")
    settings = Settings(index_dir=index[0], model_dir=index[1], api_keys_file=keys,
                        cors_origins=("https://survey.example",))
    with live_server(create_app(settings)) as srv, httpx.Client(base_url=srv.url) as c:
        assert c.get("/v1/health/ready").status_code == 200
        r = c.get("/v1/info")
        assert r.status_code == 401 and "API key" in r.json()["detail"]
        assert c.get("/v1/info", headers={"X-API-Key": "wrong-key-123"}).status_code == 401
        assert c.get("/v1/info", headers={"X-API-Key": API_KEY}).status_code == 200
        assert c.get("/v1/info", headers={"Authorization": f"Bearer {API_KEY}"}
                     ).status_code == 200
        assert c.get("/v1/info", headers={"Authorization": f"Basic {API_KEY}"}
                     ).status_code == 401
        assert c.get("/metrics").status_code == 401                   # metrics need the key
        assert c.get("/metrics", headers={"X-API-Key": API_KEY}).status_code == 200
        doc = c.get("/openapi.json").json()                           # the schemes documented
        assert set(doc["components"]["securitySchemes"]) == {"ApiKey", "Bearer"}
        assert "401" in doc["paths"]["/v1/info"]["get"]["responses"]
        assert doc["paths"]["/v1/info"]["get"]["security"]
        assert "security" not in doc["paths"]["/v1/health/ready"]["get"]
        pre = c.options("/v1/info", headers={"Origin": "https://survey.example",
                                             "Access-Control-Request-Method": "GET"})
        assert pre.headers["access-control-allow-origin"] == "https://survey.example"
        other = c.options("/v1/info", headers={"Origin": "https://evil.example",
                                               "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in other.headers


def test_resolving_power_broadens_a_sharp_spectrum_on_both_routes(client):
    """A spectrum that states no resolution and is too coarsely sampled to be taken as
    Nyquist-sampled is broadened to LAMOST's R = 1800 once the request says its R."""
    wave = np.arange(3800.0, 9000.0, 0.8)
    centres = np.arange(4000.0, 8900.0, 150.0)
    sigma = centres / 5000.0 / 2.3548                              # R = 5000 lines
    flux = 1.0 - 0.5 * np.exp(-0.5 * ((wave[:, None] - centres) / sigma) ** 2).sum(1)
    body = {"wavelength": wave.tolist(), "flux": flux.tolist(), "translate": False}
    plain = client.post("/v1/predict/spectrum", json=body)
    told = client.post("/v1/predict/spectrum", json={**body, "resolving_power": 5000})
    assert plain.status_code == told.status_code == 200, (plain.text, told.text)

    def teff(r):
        return r.json()["predictions"]["teff"]["value"]

    # (the display curve is binned, which keeps equivalent widths: the model's reading
    # shows the broadening)
    assert abs(teff(told) - teff(plain)) > 1.0
    csv = "wavelength,flux\n" + "\n".join(f"{w:.2f},{f:.8f}" for w, f in zip(wave, flux))
    up = client.post("/v1/predict/upload", params={"resolving_power": 5000, "translate": False},
                     files={"file": ("sharp.csv", csv.encode())})
    assert up.status_code == 200, up.text
    assert teff(up) == pytest.approx(teff(told), abs=0.5)
    for bad in (0, -5):
        r = client.post("/v1/predict/spectrum", json={**body, "resolving_power": bad})
        assert r.status_code == 422 and "resolving_power" in r.text
        r = client.post("/v1/search/upload", params={"resolving_power": bad},
                        files={"file": ("sharp.csv", csv.encode())})
        assert r.status_code == 422 and "resolving_power" in r.text
