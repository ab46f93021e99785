"""Hostile input through the readers, ingest and the upload routes (issue 15), bounded slice.

The full >= 10,000-case run is ``benchmarks/soak_inputs.py``. Here: every fixed hostile
case (header bombs, gzip bombs, row bombs, broken text/VOTable/Parquet/XP tables), seeded
mutations of real files, and a slice of the soak's random generator
(``tests/hostile_random.py``). Nothing may raise a non-library exception, answer 5xx,
leak a server path, or let non-finite flux through with a positive ivar.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import hostile_inputs as hi
import hostile_random as hr
from specsearch.errors import ReaderError, SpecsearchError
from specsearch.io.limits import (InputLimits, InputTooLargeError, read_bytes_capped,
                                  use_limits)
from specsearch.io.registry import read_spectra

READER_CASES = 260
LIMITS = InputLimits(max_decompressed_bytes=16 * 2 ** 20, max_table_rows=10_000)


@pytest.fixture(scope="module")
def corpus() -> list[hi.Case]:
    return list(hi.cases(random.Random(15), READER_CASES, bomb_bytes=48 * 2 ** 20,
                         bomb_rows=12_000))


def test_readers_raise_only_library_errors(corpus, tmp_path):
    slowest = 0.0
    with use_limits(LIMITS), np.errstate(all="ignore"):
        for i, (name, filename, data) in enumerate(corpus):
            path = tmp_path / f"{i:04d}-{filename}"
            path.write_bytes(data)
            start = time.perf_counter()
            try:
                spectra = list(read_spectra(path))
            except SpecsearchError as exc:
                assert path.name in str(exc) or "upload" in str(exc), (name, str(exc))
                assert not _caught_by_last_line(exc), (name, str(exc))
                spectra = []
            except Exception as exc:  # noqa: BLE001 - the assertion is the point
                pytest.fail(f"case {name} ({filename}) raised {type(exc).__name__}: {exc}")
            slowest = max(slowest, time.perf_counter() - start)
            for s in spectra:
                ivar, flux = np.asarray(s.ivar), np.asarray(s.flux)
                assert not np.any((ivar > 0) & ~np.isfinite(flux)), name
                assert np.all(np.isfinite(ivar) & (ivar >= 0)), name
            path.unlink()
    assert slowest < 10.0


def _caught_by_last_line(exc: SpecsearchError) -> bool:
    """A raw exception that only the registry's last ``except`` turned into a ReaderError."""
    return "cannot read as " in str(exc) and not isinstance(exc.__cause__, SpecsearchError)


RANDOM_CASES = 100


def test_random_hostile_cases_raise_only_library_errors(tmp_path):
    """Seeded random header/size bombs, garbage tables and mutations (the soak's generator)."""
    maker = hr.CaseMaker(15, bomb_bytes=24 * 2 ** 20, bomb_rows=12_000, fixed=[])
    with use_limits(LIMITS), np.errstate(all="ignore"):
        for i in range(RANDOM_CASES):
            name, filename, data = maker.case(i)
            path = tmp_path / f"{i:04d}-{filename}"
            path.write_bytes(data)
            try:
                for s in read_spectra(path):
                    assert not np.any((s.ivar > 0) & ~np.isfinite(s.flux)), name
            except SpecsearchError as exc:
                assert path.name in str(exc) and not _caught_by_last_line(exc), (name, exc)
            except Exception as exc:  # noqa: BLE001 - the assertion is the point
                pytest.fail(f"case {i} {name} ({filename}) raised {type(exc).__name__}: {exc}")
            path.unlink()


@pytest.mark.parametrize("case", hi.fits_bombs(), ids=lambda c: c[0])
def test_fits_header_bombs_refused_before_allocating(case, tmp_path):
    import specsearch.io.gaia_xp  # noqa: F401 - imports are not what is timed
    import specsearch.io.generic  # noqa: F401
    import specsearch.io.lamost  # noqa: F401

    name, filename, data = case
    path = tmp_path / filename
    path.write_bytes(data)
    tracemalloc.start()
    try:
        start = time.perf_counter()
        if name == "long-header-valid":   # > 1,440 cards, under the limit: reads
            (spectrum,) = read_spectra(path)
            assert spectrum.flux.size == 500
        else:
            with pytest.raises(ReaderError):
                list(read_spectra(path))
        took = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert took < 5.0 and peak < 64 * 2 ** 20, (name, took, peak)


def test_gzip_bomb_stops_at_the_cap(tmp_path):
    path = tmp_path / "bomb.fits.gz"
    path.write_bytes(hi.gzip_stream(hi.primary(naxis=(2 ** 26,)), b"\0", 256 * 2 ** 20))
    assert path.stat().st_size < 2 ** 20
    tracemalloc.start()
    try:
        with pytest.raises(InputTooLargeError, match="max_decompressed_bytes"):
            read_bytes_capped(path, 8 * 2 ** 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2 ** 20
    with use_limits(InputLimits(max_decompressed_bytes=8 * 2 ** 20)):
        with pytest.raises(InputTooLargeError):
            list(read_spectra(path))


def test_row_bomb_refused_by_row_limit(tmp_path):
    for name, filename, data in hi.row_bombs(3_000):
        path = tmp_path / filename
        path.write_bytes(data)
        with use_limits(InputLimits(max_table_rows=1_000)):
            with pytest.raises(InputTooLargeError, match="table rows"):
                list(read_spectra(path))
        assert len(list(read_spectra(path))) == 3_000   # no limit: all rows read


# ----------------------------------------------------------------------------- ingest

def _lamost_folder(real_data: Path, root: Path, n: int = 6) -> Path:
    folder = root / "in"
    folder.mkdir()
    for p in sorted((real_data / "lamost" / "dr1" / "spectra").glob("*.fits"))[:n]:
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


def _ids(catalog: Path) -> list[str]:
    from specsearch.io.catalog import open_catalog

    return sorted(open_catalog(catalog).read_column("lamost", "spectrum_id").to_pylist())


def test_ingest_damaged_and_bomb_files_are_skips_with_exit_code_3(real_data, tmp_path):
    from specsearch.cli import main

    folder = _lamost_folder(real_data, tmp_path)
    for name, filename, data in hi.fits_bombs()[:11]:
        (folder / f"{name}-{filename}").write_bytes(data)
    (folder / "naxis-text.fits").write_bytes(hi.header([hi.card("SIMPLE", "T"),
                                                        hi.card("BITPIX", "8"),
                                                        hi.card("NAXIS", "'two'")]))
    report = tmp_path / "report.json"
    rc = main(["ingest", "--modality", "lamost", str(folder), "--out",
               str(tmp_path / "cat"), "--no-progress", "--report", str(report)])
    assert rc == 3
    body = json.loads(report.read_text())
    assert body["rows_written"] == 6 and len(body["skipped_files"]) == 12
    assert body["exit_code"] == 3 and not body["interrupted"]
    rc = main(["ingest", "--modality", "lamost", str(folder / "naxis-text.fits"), "--out",
               str(tmp_path / "cat2"), "--no-progress"])
    assert rc == 1   # every file skipped


def test_ingest_stopped_or_interrupted_then_rerun_equals_clean_run(real_data, tmp_path,
                                                                   monkeypatch):
    from specsearch.io import ingest as ingest_mod
    from specsearch.io import registry

    folder = _lamost_folder(real_data, tmp_path)
    clean = ingest_mod.ingest([folder], tmp_path / "clean", modality="lamost", progress=False)
    assert clean.exit_code == 0 and clean.rows_written == 6

    # Ctrl-C between files (the CLI's handler): stops after 2 files, all of them written.
    asked = iter(range(100))
    stopped = ingest_mod.ingest([folder], tmp_path / "a", modality="lamost", progress=False,
                                batch_rows=1, should_stop=lambda: next(asked) >= 2)
    assert stopped.interrupted and stopped.exit_code == 1 and stopped.rows_written == 2

    # Ctrl-C inside the 4th file, and a reader bug (TypeError) in the 2nd.
    calls = {"n": 0}
    real_read = registry.read_spectra

    def flaky(path, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise TypeError("reader bug")
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_read(path, **kwargs)

    monkeypatch.setattr(registry, "read_spectra", flaky)
    broken = ingest_mod.ingest([folder], tmp_path / "b", modality="lamost", progress=False)
    assert broken.interrupted and broken.rows_written == 2
    assert [r for _, r in broken.skipped_files] == ["TypeError: reader bug"]
    monkeypatch.setattr(registry, "read_spectra", real_read)
    ledger = json.loads((tmp_path / "b" / ingest_mod.LEDGER).read_text())["lamost"]
    assert len(ledger) == 2   # only the files whose rows are on disk

    for out in ("a", "b"):
        again = ingest_mod.ingest([folder], tmp_path / out, modality="lamost", progress=False)
        assert again.exit_code == 0
        assert _ids(tmp_path / out) == _ids(tmp_path / "clean")


# ----------------------------------------------------------------------------- uploads

@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings
    from service_support import small_index

    index, model, _ = small_index(tmp_path_factory.getbasetemp() / "service-index")
    settings = Settings(index_dir=index, model_dir=model, max_upload_bytes=4 * 2 ** 20,
                        max_decompressed_bytes=16 * 2 ** 20, max_upload_rows=1_000,
                        parse_workers=2, parse_timeout_s=20.0, api_keys=("fuzz-key-123",))
    with TestClient(create_app(settings), headers={"X-API-Key": "fuzz-key-123"}) as client:
        yield client


UPLOAD_CASES = 70


def test_uploads_answer_json_4xx_never_5xx_and_no_paths(service, corpus):
    rng = random.Random(7)
    picks = corpus[:40] + rng.sample(corpus[40:], UPLOAD_CASES - 40)
    statuses: dict[int, int] = {}
    for i, (name, filename, data) in enumerate(picks):
        url = "/v1/search/upload" if i % 2 else "/v1/predict/upload"
        r = service.post(url, files={"file": (filename, data)})
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (name, r.text[:300])
        body = r.json()
        if r.status_code >= 400:
            assert set(body) >= {"detail", "error"}, body
        assert "specsearch-upload-" not in r.text and tempfile.gettempdir() not in r.text, (name, r.text)
    assert statuses.get(413, 0) >= 3   # the gzip and row bombs


def test_upload_bombs_get_413(service):
    for name, filename, data in hi.gzip_bombs(64 * 2 ** 20)[:2] + hi.row_bombs(2_000):
        r = service.post("/v1/search/upload", files={"file": (filename, data)})
        assert r.status_code == 413 and r.json()["error"] == "too_large", (name, r.text)
        assert filename in r.json()["detail"]


def test_body_over_limit_is_json_413_whatever_its_size(service):
    for size in (5 * 2 ** 20, 40 * 2 ** 20):
        r = service.post("/v1/search/upload", files={"file": ("big.fits", b"\0" * size)})
        assert r.status_code == 413 and r.headers["content-type"] == "application/json"
        assert r.json()["error"] == "too_large"


def test_no_leaks_health_metrics_and_contract(service):
    assert service.get("/v1/health/ready", headers={"X-API-Key": ""}).json() == \
        {"status": "ok", "detail": ""}
    assert service.get("/metrics", headers={"X-API-Key": ""}).status_code == 401
    assert service.get("/metrics").status_code == 200
    info = service.get("/v1/info").text
    assert "/tmp" not in info and '"root"' not in info
    spec = service.get("/openapi.json").json()
    upload = spec["paths"]["/v1/search/upload"]["post"]["responses"]
    for status in ("400", "404", "413", "415", "422", "504"):
        ref = upload[status]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorBody")
    detail = spec["components"]["schemas"]["ErrorBody"]["properties"]["detail"]
    assert {"type": "string"} in detail["anyOf"]


def test_parse_timeout_kills_the_worker_and_frees_it(real_data, tmp_path_factory):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings
    from service_support import small_index

    index, model, _ = small_index(tmp_path_factory.getbasetemp() / "service-index")
    settings = Settings(index_dir=index, model_dir=model, parse_workers=1,
                        parse_timeout_s=0.001)
    lamost = sorted((real_data / "lamost" / "dr1" / "spectra").glob("*.fits"))[0]
    with TestClient(create_app(settings)) as client:
        pool = client.app.state.service.parser
        r = client.post("/v1/search/upload", files={"file": (lamost.name,
                                                            lamost.read_bytes())})
        assert r.status_code == 504 and r.json()["error"] == "timeout", r.text
        assert not pool._all   # the child was killed, nothing left running
