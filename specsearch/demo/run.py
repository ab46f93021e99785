"""``specsearch demo``: the whole engine end to end on the embedded default.

Stages (each reused on a rerun when its inputs are unchanged, unless ``fresh``):

1. ``synth``   a synthetic paired LAMOST + XP survey with its rare populations;
2. ``real``    the real sample spectra (LAMOST DR1/DR8, MILES, Gaia XP) ingested beside it;
3. ``embed``   both modalities encoded with the shipped default model;
4. ``index``   sharded indexes of both modalities;
5. ``lists``   anomaly candidates and metal-poor candidates;
6. ``report``  example queries, figures (UMAP maps) and ``report.md``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from specsearch.errors import ConfigError
from specsearch.fsutil import write_json_atomic

log = logging.getLogger(__name__)

STAGES = ("synth", "real", "embed", "index", "lists", "report")


def default_real_data() -> Path | None:
    """The real sample spectra: $SPECSEARCH_REAL_DATA, else ../shared/data/real beside the
    source checkout, if present."""
    env = os.environ.get("SPECSEARCH_REAL_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "data" / "real"
        if (parent / "pyproject.toml").is_file() and candidate.is_dir():
            return candidate
    return None


@dataclass
class DemoConfig:
    """What the demo builds.

    Attributes:
        out: output folder (catalog, embeddings, index, lists, report).
        n: synthetic stars (each with a LAMOST-like and an XP spectrum).
        seed: seed of the synthetic survey.
        shards: index shards per modality.
        real_data: folder of real sample spectra (None: :func:`default_real_data`; the
            demo runs without it, with a note in the report).
        umap_points: points drawn in the UMAP maps (a random subset beyond that).
        fresh: rebuild every stage.
        workers: processes for the synthetic survey.
        model: a model directory (None: the shipped default model).
    """

    out: Path = Path("demo-output")
    n: int = 50_000
    seed: int = 2026
    shards: int = 2
    real_data: Path | None = None
    umap_points: int = 12_000
    fresh: bool = False
    workers: int = 1
    model: Path | None = None
    progress: bool = True


@dataclass
class DemoResult:
    out: Path
    report: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)


class _Stages:
    """Run stages once: a stage is skipped when its marker records the same inputs."""

    def __init__(self, root: Path, fresh: bool) -> None:
        self.folder = root / ".stages"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fresh = fresh
        self.result_seconds: dict[str, float] = {}
        self.reused: list[str] = []
        self._invalidated = False

    def run(self, name: str, inputs: dict[str, Any], fn: Callable[[], Any],
            outputs: list[Path]) -> None:
        marker = self.folder / f"{name}.json"
        key = json.dumps(inputs, sort_keys=True, default=str)
        if (not self.fresh and not self._invalidated and marker.is_file()
                and json.loads(marker.read_text()).get("inputs") == key
                and all(p.exists() for p in outputs)):
            self.reused.append(name)
            print(f"[demo] {name}: reusing what is already built")
            return
        # Everything downstream of a rebuilt stage is rebuilt too.
        self._invalidated = True
        for p in outputs:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        print(f"[demo] {name} ...", flush=True)
        start = time.perf_counter()
        fn()
        self.result_seconds[name] = time.perf_counter() - start
        write_json_atomic(marker, {"inputs": key, "seconds": self.result_seconds[name]})
        print(f"[demo] {name}: done in {self.result_seconds[name]:.1f} s", flush=True)


def ingest_real(real: Path, catalog: Path, *, progress: bool) -> dict[str, int]:
    """Ingest the real samples: LAMOST DR1 (with labels), DR7/DR8 samples, the DR8 stars
    with Gaia XP partners (their Gaia source_id from the pairs table), MILES (with labels)
    and the Gaia XP sky patch."""
    from specsearch.io.ingest import ingest

    counts: dict[str, int] = {}
    jobs = [
        ("lamost_dr1", [real / "lamost" / "dr1" / "spectra"], "lamost",
         dict(labels=real / "lamost" / "dr1" / "labels.csv", on="filename")),
        ("lamost_dr8_xp_matched", [real / "lamost" / "dr8_xp_matched"], "lamost",
         dict(labels=real / "pairs_lamost_xp.csv", on="obsid",
              rename={"gaia_dr3_source_id": "source_id"})),
        ("lamost_format_samples", [real / "lamost" / "format_samples"], "lamost", {}),
        ("miles", [real / "miles" / "spectra"], "lamost",
         dict(labels=real / "miles" / "labels.csv", on="miles_id")),
        ("gaia_xp", [real / "gaia_xp" / "xp_continuous_combined_chunk0.fits",
                     real / "gaia_xp" / "xp_continuous_combined_weiler2023_examples.vot"],
         "xp", {}),
    ]
    for name, paths, modality, kw in jobs:
        paths = [p for p in paths if p.exists()]
        labels = kw.get("labels")
        if labels is not None and not Path(labels).exists():
            kw = {}
        if not paths:
            continue
        rep = ingest(paths, catalog, modality=modality, progress=progress, **kw)
        counts[name] = rep.rows_written + rep.rows_duplicate
        if rep.skipped_files or rep.skipped_rows:
            log.warning("%s: %s", name, rep.summary())
    return counts


def run_demo(config: DemoConfig | None = None) -> DemoResult:
    """Run (or resume) the demo; returns where the report is."""
    from specsearch.demo.report import write_report

    cfg = config or DemoConfig()
    if cfg.n < 200:
        raise ConfigError(f"the demo needs at least 200 synthetic stars, got n={cfg.n}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    real = cfg.real_data or default_real_data()
    stages = _Stages(out, cfg.fresh)
    # Real spectra are ingested into the synthetic catalog (their parts have their own file
    # prefix and an ``origin`` column), so one embeddings dataset and one index hold both.
    catalog = out / "catalog"
    emb, index = out / "embeddings", out / "index"
    lists = out / "lists"

    def synth() -> None:
        from specsearch.synth import generate_survey

        generate_survey(catalog, n=cfg.n, seed=cfg.seed, shard_size=max(cfg.n // 4, 1000),
                        workers=cfg.workers, progress=cfg.progress)

    stages.run("synth", {"n": cfg.n, "seed": cfg.seed}, synth, [catalog])

    real_counts: dict[str, int] = {}

    def real_stage() -> None:
        real_counts.update(ingest_real(real, catalog, progress=cfg.progress))
        write_json_atomic(out / "real_counts.json", real_counts)

    if real is not None and real.is_dir():
        # No outputs to delete on a rerun: ingest skips files already in the catalog.
        stages.run("real", {"real": str(real)}, real_stage, [out / "real_counts.json"])
    else:
        print("[demo] real sample spectra not found: set SPECSEARCH_REAL_DATA to include them")

    def embed() -> None:
        from specsearch.embed import EmbedConfig, build_embeddings
        from specsearch.model import load_model

        rep = build_embeddings(catalog, load_model(cfg.model), emb, EmbedConfig(
            with_residual=True, progress=cfg.progress))
        print(f"[demo]   {rep.summary()}")

    from specsearch.model import load_model

    model_hash = load_model(cfg.model).model_hash
    stages.run("embed", {"model": model_hash, "real": str(real)}, embed, [emb])

    def build() -> None:
        from specsearch.index.build import BuildOptions, build_index

        build_index(emb, index, BuildOptions(shards=cfg.shards, kind="auto"))

    stages.run("index", {"shards": cfg.shards}, build, [index])

    def make_lists() -> None:
        from specsearch.anomaly.pipeline import run_anomalies
        from specsearch.hunt.pipeline import run_hunt

        lists.mkdir(parents=True, exist_ok=True)
        run_anomalies(index, out=lists / "anomalies.parquet", top=200, embeddings=emb,
                      catalog=catalog, artefacts_out=lists / "artefacts.parquet")
        # The 100 most probable metal-poor stars, each with its expected purity.
        run_hunt(index, out=lists / "metal_poor.parquet", feh_max=-2.0, embeddings=emb,
                 model_dir=cfg.model, top=100, min_prob=0.0)

    stages.run("lists", {}, make_lists, [lists])

    report = out / "report.md"
    stages.run("report", {"umap_points": cfg.umap_points},
               lambda: write_report(out, cfg, real=real), [report, out / "figures"])
    return DemoResult(out=out, report=report, stage_seconds=stages.result_seconds,
                      reused=stages.reused)


def demo_config_dict(cfg: DemoConfig) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
