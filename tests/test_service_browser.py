"""The web page in a real headless browser (Debian's chromium driven by Playwright).

The test starts ``specsearch serve`` itself (a separate process, uvicorn on 127.0.0.1 and a
free port), uploads a real LAMOST file, and checks that neighbours, the plot and the list
pages appear. The screenshot is saved in the test's tmp_path; set
SPECSEARCH_SCREENSHOT_DIR to also keep a copy (e.g. benchmarks/results).

Chromium: ``apt-get install -y chromium`` (never ``playwright install``: no downloads).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="chromium not installed (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def served(tmp_path_factory, service_index, free_port):
    index, model, _ = service_index
    port = free_port()
    cmd = [sys.executable, "-m", "specsearch", "serve", str(index), "--port", str(port),
           "--log-level", "warning"]
    if model is not None:
        cmd += ["--model", str(model)]
    log = tmp_path_factory.getbasetemp() / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v1/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"specsearch serve did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_upload_real_lamost_file_in_browser(served, tmp_path, lamost_sample_files):
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright (dev extra) is not installed")
    files = lamost_sample_files
    shot = tmp_path / "ui.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            sent: list[str] = []
            page.on("request", lambda req: sent.append(req.url))
            page.goto(f"{served}/")
            page.set_input_files("#file", str(files[0]))
            page.fill("#k", "8")
            page.fill("#resolving-power", "2000")  # LAMOST states none; 2000 > 0.7 x 1800
            page.check("#cross")
            page.click("#go")
            page.wait_for_selector("#neighbours tbody tr", timeout=30_000)
            rows = page.locator("#neighbours tbody tr")
            assert rows.count() == 8
            assert "xp" in rows.first.inner_text()
            assert any("/v1/search/upload?" in u and "resolving_power=2000" in u for u in sent)
            summary = page.inner_text("#query-summary")
            assert files[0].name in summary and "cross-modal" in summary
            # The canvas has been drawn on: count non-white pixels.
            inked = page.evaluate("""() => {
                const c = document.querySelector('#plot');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0;
                for (let i = 0; i < d.length; i += 4) if (d[i] < 200 || d[i+1] < 200) n++;
                return n; }""")
            assert inked > 5000
            assert page.locator("#legend span").count() >= 3
            assert page.inner_text("#error") == ""
            page.screenshot(path=str(shot), full_page=True)

            # A neighbour's link searches again by its source_id (exact 64-bit id).
            first_id = rows.first.locator("a").inner_text()
            rows.first.locator("a").click()
            page.wait_for_function(
                "id => document.querySelector('#query-summary').innerText.includes(id)",
                arg=first_id, timeout=30_000)

            # A bad file shows the server's message, not a crash.
            page.click("button[data-tab=upload]")
            bad = tmp_path / "broken.fits"
            bad.write_bytes(files[0].read_bytes()[:4000])
            page.set_input_files("#file", str(bad))
            page.click("#go")
            page.wait_for_function("() => document.querySelector('#error').innerText.length")
            assert "broken.fits" in page.inner_text("#error")

            page.goto(f"{served}/anomalies")
            page.wait_for_selector("#list-table tbody tr", timeout=60_000)
            assert page.locator("#list-table tbody tr").count() == 50
            assert re.match(r"rows 1-50 of \d{2,3}", page.inner_text("#list-status"))
            page.goto(f"{served}/metal-poor")
            page.wait_for_function(
                "() => document.querySelector('#list-status').innerText.length",
                timeout=60_000)
            page.check("#adapt-prior")               # the pool's own prior
            page.click("#list-form button[type=submit]")
            page.wait_for_function(
                "() => document.querySelector('#list-status').innerText"
                ".includes('prior refitted to this pool')", timeout=60_000)
            assert errors == []
        finally:
            browser.close()
    assert shot.stat().st_size > 20_000
    keep = os.environ.get("SPECSEARCH_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "ui.png")
