"""Fuzzing the HTTP API with mutated bytes of real LAMOST FITS files: nothing a client sends
may produce a 5xx. (Requests generated from the OpenAPI schema: test_service_contract.py.)"""

from __future__ import annotations

import random

import httpx
import pytest

from service.app import create_app
from service.settings import Settings

@pytest.fixture(scope="module")
def server(service_index, live_server):
    index, model, _ = service_index
    app = create_app(Settings(index_dir=index, model_dir=model, max_upload_bytes=1_000_000,
                              max_k=200))
    with live_server(app) as srv:
        yield srv


def _mutations(data: bytes, rng: random.Random) -> list[tuple[str, bytes]]:
    """Damaged variants of one FITS file: truncations, bit flips, broken header cards."""
    out = [("truncated-header", data[:1000]), ("truncated-data", data[:2880 * 3 + 17]),
           ("one-block", data[:2880]), ("doubled", data + data), ("zeros", bytes(len(data)))]
    header_end = data.find(b"END" + b" " * 77)
    for card, bad in ((b"NAXIS1", b"NAXIS1  =              9999999"),
                      (b"NAXIS2", b"NAXIS2  =                   -3"),
                      (b"BITPIX", b"BITPIX  =                   17"),
                      (b"NAXIS ", b"NAXIS   =                    9"),
                      (b"COEFF0", b"COEFF0  = 'not a number'      ")):
        at = data.find(card)
        if 0 <= at < header_end:
            out.append((f"card-{card.decode().strip()}",
                        data[:at] + bad.ljust(80) + data[at + 80:]))
    for i in range(12):  # random byte flips in the header and in the data
        buf = bytearray(data)
        lo, hi = (0, max(header_end, 80)) if i % 2 else (max(header_end, 0), len(data))
        for _ in range(rng.randint(1, 40)):
            buf[rng.randrange(lo, hi)] = rng.randrange(256)
        out.append((f"flips-{i}", bytes(buf)))
    nan_data = bytearray(data)  # the whole data unit as float32 NaN (big-endian)
    start = (header_end // 2880 + 1) * 2880
    nan_data[start:] = b"\x7f\xc0\x00\x00" * ((len(data) - start) // 4)
    out.append(("all-nan", bytes(nan_data)))
    return out


def test_mutated_real_fits_never_5xx(server, lamost_sample_files):
    files = lamost_sample_files
    rng = random.Random(20261125)
    codes: dict[str, int] = {}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for path in files[:2]:
            for name, blob in _mutations(path.read_bytes(), rng):
                for url in ("/v1/search/upload", "/v1/predict/upload"):
                    r = client.post(url, files={"file": (f"{name}.fits", blob)})
                    codes[f"{path.name}:{name}:{url}"] = r.status_code
                    assert r.status_code < 500, (name, url, r.text[:500])
                    if r.status_code >= 400:
                        assert f"{name}.fits" in r.json()["detail"] or \
                            r.status_code in (400, 413)
    assert sum(c >= 400 for c in codes.values()) >= len(codes) // 2  # most are refused
