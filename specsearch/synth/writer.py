"""Writing the synthetic survey to a paired catalog, shard by shard (optionally in parallel).

Each shard ``k`` becomes ``CATALOG/lamost/shardKKKKK-00000.parquet`` and
``CATALOG/xp/shardKKKKK-00000.parquet`` (written atomically by
:class:`specsearch.io.catalog.CatalogWriter`); ``CATALOG/synth.json`` records the
configuration and, per finished shard, its row count. Re-running the same command resumes:
shards already recorded with both files present are skipped (a different configuration in
an existing ``synth.json`` is an error rather than a silent mix).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specsearch.errors import CatalogError
from specsearch.io.catalog import CatalogWriter
from specsearch.fsutil import write_json_atomic
from specsearch.synth.survey import SynthConfig, iter_shard

MANIFEST = "synth.json"


@dataclass
class SurveyReport:
    """What :func:`generate_survey` did."""

    root: str
    n: int
    seed: int
    shards_written: list[int] = field(default_factory=list)
    shards_skipped: list[int] = field(default_factory=list)
    rows_written: int = 0
    seconds: float = 0.0

    @property
    def stars_per_second(self) -> float:
        return self.rows_written / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (f"synthetic survey: {self.n} stars (seed {self.seed}) in {self.root}; "
                f"{len(self.shards_written)} shard(s) written, {len(self.shards_skipped)} "
                f"already present; {self.seconds:.1f} s ({self.stars_per_second:.0f} stars/s)")


def _shard_prefix(shard: int) -> str:
    return f"shard{shard:05d}"


def write_shard(root: str | Path, config: SynthConfig, shard: int, progress_queue=None) -> int:
    """Generate shard ``shard`` and write its LAMOST and XP files; returns its star count
    (rows are more when ``config.repeat_fraction`` adds second visits)."""
    root = Path(root)
    rows = config.shard_rows(shard)
    per_file = rows * 2 if config.repeat_fraction else rows      # second visits: same file
    prefix = _shard_prefix(shard)
    for modality in ("lamost", "xp"):            # a half-written earlier attempt
        for stale in (root / modality).glob(f"{prefix}-*.parquet"):
            stale.unlink()
    with CatalogWriter(root, "lamost", rows_per_file=per_file, file_prefix=prefix) as wl, \
            CatalogWriter(root, "xp", rows_per_file=per_file, file_prefix=prefix) as wx:
        for lamost_cols, xp_cols in iter_shard(config, shard):
            wl.write(lamost_cols)
            wx.write(xp_cols)
            if progress_queue is not None:
                progress_queue.put(len(np.unique(xp_cols["source_id"])))
    return rows


def _worker(args):
    root, config_dict, shard, queue = args
    return shard, write_shard(root, SynthConfig(**config_dict), shard, queue)


def _load_manifest(root: Path, config: SynthConfig) -> dict:
    path = root / MANIFEST
    if not path.is_file():
        return {"config": config.describe(), "shards": {}}
    manifest = json.loads(path.read_text())
    if manifest.get("config") != json.loads(json.dumps(config.describe())):
        raise CatalogError(
            f"{path}: this folder holds a synthetic survey made with another configuration "
            f"({manifest.get('config')}); use a new --out folder or delete it")
    return manifest


def generate_survey(out: str | Path, n: int, seed: int = 0, *, metal_poor_boost: float = 1.0,
                    fractions: dict[str, float] | None = None,
                    artefact_fraction: float | None = None, shard_size: int = 50_000,
                    workers: int = 1, progress: bool = True,
                    rv_error_kms: float = 5.0, realism: bool = True,
                    individuality: bool = True, repeat_fraction: float = 0.0
                    ) -> SurveyReport:
    """Generate a paired synthetic LAMOST + Gaia XP catalog in ``out``.

    Args:
        out: catalog directory (created; resumable, see the module docstring).
        n: number of stars; seed: master seed.
        metal_poor_boost, fractions, artefact_fraction, rv_error_kms, realism,
            individuality, repeat_fraction: see :class:`SynthConfig`.
        shard_size: stars per shard file.
        workers: processes generating shards in parallel (each ~1 GB peak memory).
        progress: show a tqdm progress bar (stars).
    Returns:
        a :class:`SurveyReport`.
    """
    kwargs = {} if artefact_fraction is None else {"artefact_fraction": artefact_fraction}
    config = SynthConfig(n=n, seed=seed, metal_poor_boost=metal_poor_boost, fractions=fractions,
                         shard_size=shard_size, rv_error_kms=rv_error_kms, realism=realism,
                         individuality=individuality, repeat_fraction=repeat_fraction,
                         **kwargs)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    manifest = _load_manifest(root, config)
    report = SurveyReport(root=str(root), n=n, seed=seed)
    todo = []
    for shard in range(config.n_shards):
        done = manifest["shards"].get(str(shard)) == config.shard_rows(shard) and all(
            any((root / m).glob(f"{_shard_prefix(shard)}-*.parquet")) for m in ("lamost", "xp"))
        (report.shards_skipped if done else todo).append(shard)
    write_json_atomic(root / MANIFEST, manifest)
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(config.shard_rows(s) for s in todo), unit="star", disable=not progress,
               desc="synth")

    def finished(shard: int, rows: int) -> None:
        manifest["shards"][str(shard)] = rows
        write_json_atomic(root / MANIFEST, manifest)
        report.shards_written.append(shard)
        report.rows_written += rows

    try:
        if workers <= 1 or len(todo) <= 1:
            for shard in todo:
                rows = write_shard(root, config, shard, _BarQueue(bar))
                finished(shard, rows)
        else:
            _run_parallel(root, config, todo, workers, bar, finished)
    finally:
        bar.close()
    report.seconds = time.perf_counter() - t0
    return report


class _BarQueue:
    """Progress sink with a queue's ``put`` for the in-process path."""

    def __init__(self, bar) -> None:
        self.bar = bar

    def put(self, k: int) -> None:
        self.bar.update(k)


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _single_threaded_children():
    """One BLAS thread per worker (the workers are the parallelism): spawned children read
    these variables at start-up; the parent's values are restored afterwards."""
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_parallel(root: Path, config: SynthConfig, todo: list[int], workers: int, bar,
                  finished) -> None:
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")     # no forked BLAS/thread state
    cfg = {k: v for k, v in config.describe().items() if k != "fractions"}
    cfg["fractions"] = config.fractions
    with _single_threaded_children(), ctx.Manager() as manager:
        q = manager.Queue()
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            pending = {pool.submit(_worker, (str(root), cfg, s, q)) for s in todo}
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                while True:
                    try:
                        bar.update(q.get_nowait())
                    except queue_mod.Empty:
                        break
                for fut in done:
                    shard, rows = fut.result()
                    finished(shard, rows)


__all__ = ["generate_survey", "write_shard", "SurveyReport"]
