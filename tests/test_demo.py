"""The demo at a tiny size: every artefact is produced, figures are real images, the
report's links resolve, and a rerun reuses what was built."""

from __future__ import annotations

import re
import shutil

import pytest

from specsearch.demo import DemoConfig, run_demo


def _mini_real(real_data, tmp_path):
    """A small copy of the real-sample folder layout (links, not copies of the data)."""
    root = tmp_path / "real"
    dr1 = root / "lamost" / "dr1" / "spectra"
    dr1.mkdir(parents=True)
    for p in sorted((real_data / "lamost" / "dr1" / "spectra").glob("*.fits"))[:4]:
        (dr1 / p.name).symlink_to(p)
    (root / "lamost" / "dr1" / "labels.csv").symlink_to(
        real_data / "lamost" / "dr1" / "labels.csv")
    (root / "lamost" / "dr8_xp_matched").symlink_to(real_data / "lamost" / "dr8_xp_matched")
    (root / "pairs_lamost_xp.csv").symlink_to(real_data / "pairs_lamost_xp.csv")
    miles = root / "miles" / "spectra"
    miles.mkdir(parents=True)
    for p in sorted((real_data / "miles" / "spectra").glob("*.fits"))[:6]:
        (miles / p.name).symlink_to(p)
    (root / "miles" / "labels.csv").symlink_to(real_data / "miles" / "labels.csv")
    (root / "gaia_xp").mkdir()
    (root / "gaia_xp" / "xp_continuous_combined_chunk0.fits").symlink_to(
        real_data / "gaia_xp" / "xp_continuous_combined_chunk0.fits")
    return root


def test_tiny_demo_produces_every_artefact(real_data, tmp_path):
    pytest.importorskip("umap")
    out = tmp_path / "demo"
    cfg = DemoConfig(out=out, n=300, seed=3, shards=2, umap_points=400, progress=False,
                     real_data=_mini_real(real_data, tmp_path))
    result = run_demo(cfg)
    report = result.report.read_text()
    for section in ("Query by example", "Top anomaly candidates", "metal-poor candidates",
                    "UMAP", "specsearch serve"):
        assert section in report
    # the shipped model's domain check, over every embedded spectrum (synthetic or real)
    domain = re.search(r"Domain check .*?: lamost (\d+) of (\d+) .*?; xp (\d+) of (\d+)",
                       report)
    assert domain and int(domain.group(2)) >= 300 and int(domain.group(4)) >= 300
    assert int(domain.group(1)) <= 3 and int(domain.group(3)) <= 3
    links = re.findall(r"\]\((figures/[^)]+)\)", report)
    assert {"figures/query_matches.png", "figures/umap_lamost.png",
            "figures/umap_alignment.png"} <= set(links)
    for link in links:
        png = out / link
        assert png.is_file() and png.stat().st_size > 10_000, link
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for path in ("index/manifest.json", "lists/anomalies.parquet", "lists/metal_poor.parquet",
                 "embeddings/embeddings.json", "catalog/catalog.json"):
        assert (out / path).is_file(), path
    # the real LAMOST query finds its own catalog entry first
    first_row = re.search(r"Nearest LAMOST spectra.*?\n\n\|.*?\n\|.*?\n\| 0 \| ([0-9.]+) \|",
                          report, re.S)
    assert first_row and float(first_row.group(1)) > 0.999
    # a rerun reuses every stage
    again = run_demo(cfg)
    assert again.reused == ["synth", "real", "embed", "index", "lists", "report"]
    shutil.rmtree(out / "figures")
    third = run_demo(cfg)
    assert third.reused == ["synth", "real", "embed", "index", "lists"]
