"""Soak test of hostile input (issue 15): >= 10,000 malformed files through the readers and
``specsearch ingest``.

Cases come from ``tests/hostile_random.py`` (built on the fly from ``(seed, index)``): every
named case of ``tests/hostile_inputs.py`` once (FITS header bombs, gzip bombs, row bombs,
broken text/VOTable/ECSV/Parquet/XP tables), then random FITS header-card and size bombs,
gzip and row bombs with damaged tails, garbage tables and seeded mutations of real LAMOST,
MILES and Gaia XP files and of valid Parquet/ECSV/text files.

* readers: ``read_spectra`` under the HTTP service's upload limits;
* ingest: :func:`specsearch.io.ingest.ingest` over groups of ``--ingest-batch`` files (the
  CLI's default limits, alternating ``lamost`` and ``xp``), timed file by file.

The upload routes are soaked by ``benchmarks/soak_uploads.py`` (same case files), not here.

Cases run in ``--workers`` child processes; a case that runs past ``--kill-after`` seconds
is killed and counted as a hang, a child that dies is counted as a crash, and the rest of
its cases go on in a new child. Per case: outcome, seconds, and the rise of the child's peak
RSS over its RSS before the case (``VmHWM`` reset through ``/proc/self/clear_refs``).
"Raw" counts non-library exceptions, including those only the registry's last-line
``except`` caught ("cannot read as ..."), and accepted spectra or catalog rows with
non-finite flux or ivar under a positive ivar. Prints a table and writes
``benchmarks/results/soak_inputs.json``.

    nice -n 19 python benchmarks/soak_inputs.py --readers 7500 --ingest 2600
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAW_REASON = re.compile(r"^(cannot read as \w+: )?[A-Za-z_.]*(Error|Exception|Interrupt)\b")
"""An ingest skip reason that is a Python exception, not a library message."""


@dataclass
class Stats:
    """Outcomes of one target's cases and the worst of them (seconds, RSS rise)."""

    target: str
    cases: int = 0
    raw_exceptions: int = 0
    nonfinite: int = 0
    hangs: int = 0
    crashes: int = 0
    over_10s: int = 0
    max_seconds: float = 0.0
    max_rss_rise_mb: float = 0.0
    seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    by_kind: dict[str, int] = field(default_factory=dict)
    kind_seconds: dict[str, float] = field(default_factory=dict)
    over_10s_cpu: int = 0
    slowest: list[tuple[float, int, str]] = field(default_factory=list)
    largest: list[tuple[float, int, str]] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    def record(self, i: int, name: str, outcome: str, seconds: float, rise_mb: float,
               bad: str | None = None, cpu: float = 0.0) -> None:
        self.cases += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        kind = re.sub(r"(-\d+MiB|-\d+)(-cut|-flip)?$", "", name)
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        self.kind_seconds[kind] = round(self.kind_seconds.get(kind, 0.0) + seconds, 2)
        self.over_10s_cpu += cpu > 10
        self.max_seconds = max(self.max_seconds, seconds)
        self.over_10s += seconds > 10
        self.max_rss_rise_mb = max(self.max_rss_rise_mb, rise_mb)
        self.slowest = sorted(self.slowest + [(round(seconds, 2), i, name)])[-5:]
        self.largest = sorted(self.largest + [(round(rise_mb, 1), i, name)])[-5:]
        if outcome == "RAW":
            self.raw_exceptions += 1
        if bad and len(self.examples) < 30:
            self.examples.append(f"#{i} {name}: {bad}"[:400])


# --------------------------------------------------------------------------- in a worker

def _rss_mb(field_name: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name):
                return int(line.split()[1]) / 1024
    return 0.0


def _reset_peak() -> float:
    """Reset the peak RSS (VmHWM) to the current RSS; return it (MB)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _rss_mb("VmRSS")


def _worker_setup(args: dict) -> tuple:
    sys.path.insert(0, str(REPO / "tests"))
    import warnings

    warnings.simplefilter("ignore")
    import logging

    logging.disable(logging.WARNING)
    import hostile_random as hr

    import specsearch.io.gaia_xp  # noqa: F401 - imports are not what is measured
    import specsearch.io.generic  # noqa: F401
    import specsearch.io.lamost  # noqa: F401

    fixed = [(c["name"], c["filename"], Path(c["path"]).read_bytes())
             for c in json.loads(Path(args["fixed_index"]).read_text())]
    return hr.CaseMaker(args["seed"], bomb_bytes=args["bomb_bytes"],
                        bomb_rows=args["bomb_rows"], fixed=fixed)


def _bad_spectra(spectra) -> str | None:
    import numpy as np

    for s in spectra:
        ivar, flux = np.asarray(s.ivar), np.asarray(s.flux)
        if np.any((ivar > 0) & ~np.isfinite(flux)) or not np.all(np.isfinite(ivar)):
            return f"{s.spectrum_id}: non-finite flux or ivar accepted"
    return None


def reader_worker(conn, indices: list[int], args: dict) -> None:
    import numpy as np

    from specsearch.errors import SpecsearchError
    from specsearch.io.limits import InputLimits, use_limits
    from specsearch.io.registry import read_spectra

    maker = _worker_setup(args)
    limits = InputLimits(**args["limits"])
    tmp = Path(args["tmp"])
    for i in indices:
        name, filename, data = maker.case(i)
        path = tmp / f"{i:06d}-{filename}"
        path.write_bytes(data)
        del data
        conn.send(("start", i, name))
        before = _reset_peak()
        start, cpu = time.perf_counter(), time.process_time()
        bad = None
        try:
            with use_limits(limits), np.errstate(all="ignore"):
                bad = _bad_spectra(read_spectra(path))
            outcome = "nonfinite" if bad else "read"
        except SpecsearchError as exc:
            outcome = type(exc).__name__
            if str(exc).find("cannot read as ") >= 0 and not isinstance(exc.__cause__,
                                                                       SpecsearchError):
                outcome, bad = "RAW", f"caught by the registry's last line: {exc}"
        except Exception as exc:  # noqa: BLE001 - counting them is the point
            outcome, bad = "RAW", f"{type(exc).__name__}: {exc}"
        took, cpu = time.perf_counter() - start, time.process_time() - cpu
        conn.send(("done", i, name, outcome, took, _rss_mb("VmHWM") - before, bad, cpu))
        path.unlink()
    conn.send(("exit",))


def ingest_worker(conn, batches: list[list[int]], args: dict) -> None:
    from specsearch.io.ingest import ingest

    maker = _worker_setup(args)
    tmp = Path(args["tmp"])
    for b, group in enumerate(batches):
        folder = Path(tempfile.mkdtemp(prefix=f"ingest-{group[0]}-", dir=tmp))
        files, names = [], {}
        for i in group:
            name, filename, data = maker.case(i)
            files.append(folder / f"{i:06d}-{filename}")
            files[-1].write_bytes(data)
            names[files[-1].name] = (i, name)
        measured: list[tuple[float, float, float]] = []   # (s, RSS rise MB, CPU s) per file
        clock: list[float] = []                     # (start, RSS before, CPU) of this file

        def tick() -> bool:
            """Called by ingest before each file (and once after the last)."""
            if clock:
                measured.append((time.perf_counter() - clock[0], _rss_mb("VmHWM") - clock[1],
                                 time.process_time() - clock[2]))
            if len(measured) < len(files):
                conn.send(("start", *names[files[len(measured)].name]))
            clock[:] = [time.perf_counter(), _reset_peak(), time.process_time()]
            return False

        modality = ("lamost", "xp")[group[0] // len(group) % 2]
        report = ingest(files, folder / "catalog", modality=modality, progress=False,
                        should_stop=tick)
        tick()
        reasons = dict(report.skipped_files)
        for path, (took, rise, cpu) in zip(files, measured):
            i, name = names[path.name]
            reason = reasons.get(path.name)
            outcome, bad = ("ingested", None) if reason is None else ("skipped", None)
            if reason is not None and RAW_REASON.match(reason):
                outcome, bad = "RAW", reason
            conn.send(("done", i, name, outcome, took, rise, bad, cpu))
        bad_rows = _catalog_nonfinite(folder / "catalog", modality)
        conn.send(("batch", group[0], bad_rows))
        shutil.rmtree(folder)
    conn.send(("exit",))


def _catalog_nonfinite(root: Path, modality: str) -> int:
    import numpy as np

    from specsearch.errors import CatalogError
    from specsearch.io.catalog import list_column_to_numpy, open_catalog

    try:
        cat = open_catalog(root)
    except CatalogError:
        return 0
    bad = 0
    if modality in cat.modalities:
        for batch in cat.iter_batches(modality, columns=["flux", "ivar"]):
            flux = list_column_to_numpy(batch.column("flux"))
            ivar = list_column_to_numpy(batch.column("ivar"))
            bad += int(np.sum(((ivar > 0) & ~np.isfinite(flux)) | ~np.isfinite(ivar)))
    return bad


# --------------------------------------------------------------------------- the parent

@dataclass
class _Child:
    """A worker process, the units it still has to do, and the case it is on."""

    proc: mp.process.BaseProcess
    conn: object
    todo: list
    current: tuple[int, str, float] | None = None


def _spawn(target: str, todo: list, args: dict) -> _Child:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    fn = reader_worker if target == "readers" else ingest_worker
    proc = ctx.Process(target=fn, args=(child, todo, args), daemon=True)
    proc.start()
    child.close()
    return _Child(proc, parent, list(todo))


def _drop(todo: list, i: int, target: str) -> list:
    """``todo`` without case ``i`` and what came before it (readers), or with case ``i``
    taken out of its batch (ingest: the batch's other files run again)."""
    if target == "readers":
        return todo[todo.index(i) + 1:] if i in todo else todo
    return [[j for j in batch if j != i] for batch in todo if [j for j in batch if j != i]]


def _handle(msg: tuple, c: _Child, st: Stats, target: str) -> None:
    if msg[0] == "start":
        c.current = (msg[1], msg[2], time.perf_counter())
    elif msg[0] == "done":
        _, i, name, outcome, took, rise, bad, cpu = msg
        st.record(i, name, outcome, took, rise, bad, cpu)
        c.current = None
        if target == "readers":
            c.todo.remove(i)
    elif msg[0] == "batch":
        st.nonfinite += msg[2]
        c.todo = [b for b in c.todo if b[0] != msg[1]]


def _fail(c: _Child, st: Stats, target: str, args: dict, why: str) -> _Child | None:
    """Record the case a dead or killed child was on; a new child does the rest."""
    if c.proc.is_alive():
        c.proc.kill()
    c.proc.join()
    if c.current is None:
        raise RuntimeError(f"a {target} worker died between cases (exit code "
                           f"{c.proc.exitcode}): a fault of this script, not of a reader")
    i, name, start = c.current
    st.record(i, name, why, time.perf_counter() - start, 0.0,
              f"{why} (exit code {c.proc.exitcode})")
    st.hangs += why == "HANG"
    st.crashes += why == "CRASH"
    todo = _drop(c.todo, i, target)
    return _spawn(target, todo, args) if todo else None


def run_target(target: str, units: list, args: dict, workers: int, kill_after: float) -> Stats:
    """Run ``units`` (case indices, or batches of them for ingest) in ``workers`` children."""
    st = Stats(target)
    start = time.perf_counter()
    children = [_spawn(target, units[w::workers], args) for w in range(workers)
                if units[w::workers]]
    while children:
        ready = wait([c.conn for c in children], timeout=1.0)
        for c in list(children):
            replacement, finished = c, False
            try:
                while c.conn in ready and c.conn.poll():
                    msg = c.conn.recv()
                    if msg[0] == "exit":
                        finished = True
                        break
                    _handle(msg, c, st, target)
            except (EOFError, OSError):
                replacement = _fail(c, st, target, args, "CRASH")
            if not finished and replacement is c and c.current is not None and \
                    time.perf_counter() - c.current[2] > kill_after:
                replacement = _fail(c, st, target, args, "HANG")
            if finished or replacement is not c:
                children.remove(c)
                if finished:
                    c.proc.join()
                elif replacement is not None:
                    children.append(replacement)
    st.seconds = time.perf_counter() - start
    return st


def _write_fixed(folder: Path, bomb_bytes: int, bomb_rows: int) -> Path:
    """The named cases, built once and written for the children to load."""
    import hostile_inputs as hi

    folder.mkdir(parents=True)
    index = []
    for k, (name, filename, data) in enumerate(hi.fixed_cases(bomb_bytes, bomb_rows)):
        (folder / str(k)).write_bytes(data)
        index.append({"name": name, "filename": filename, "path": str(folder / str(k))})
    (folder / "index.json").write_text(json.dumps(index))
    return folder / "index.json"


def upload_limits() -> dict:
    """The reader limits of one upload under the service's default settings."""
    from service.settings import Settings
    from service.uploads import upload_limits as limits_of

    return asdict(limits_of(Settings(index_dir=Path("."))))


def print_table(results: list[Stats], total: int, seconds: float) -> None:
    print(f"\n{total:,} malformed inputs in {seconds:.0f} s\n")
    print("| target | cases | raw exceptions | non-finite accepted | crashes | hangs (killed) | "
          "> 10 s wall / CPU | max s/case | max peak-RSS rise in a case (MB) | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in results:
        print(f"| {s.target} | {s.cases:,} | {s.raw_exceptions} | {s.nonfinite} | {s.crashes} "
              f"| {s.hangs} | {s.over_10s} / {s.over_10s_cpu} | {s.max_seconds:.2f} | "
              f"{s.max_rss_rise_mb:.0f} | {s.seconds:.0f} |")
    for s in results:
        print(f"\n{s.target} outcomes: {dict(sorted(s.outcomes.items()))}")
        print(f"{s.target} kinds: {dict(sorted(s.by_kind.items()))}")
        top = sorted(s.kind_seconds.items(), key=lambda kv: -kv[1])[:8]
        print(f"{s.target} seconds by kind (top): {dict(top)}")
        print(f"{s.target} slowest: {s.slowest}")
        print(f"{s.target} largest RSS rise: {s.largest}")
        for ex in s.examples:
            print(f"  {ex}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=7500, help="cases through the readers")
    parser.add_argument("--ingest", type=int, default=2600, help="cases through ingest")
    parser.add_argument("--ingest-batch", type=int, default=40, help="files per ingest run")
    parser.add_argument("--workers", type=int, default=2, help="child processes")
    parser.add_argument("--bomb-mb", type=int, default=128,
                        help="decompressed size of the readers' gzip bombs (upload cap: 64)")
    parser.add_argument("--ingest-bomb-mb", type=int, default=320,
                        help="decompressed size of ingest's gzip bombs (ingest cap: 256)")
    parser.add_argument("--bomb-rows", type=int, default=200_000)
    parser.add_argument("--ingest-bomb-rows", type=int, default=4_000,
                        help="rows of ingest's row bombs (ingest reads every row)")
    parser.add_argument("--kill-after", type=float, default=60.0,
                        help="seconds after which a case is killed and counted as a hang")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" /
                                             "soak_inputs.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="soak-") as tmpdir:
        tmp = Path(tmpdir)
        plan = [("readers", args.readers, args.bomb_mb, args.bomb_rows),
                ("ingest", args.ingest, args.ingest_bomb_mb, args.ingest_bomb_rows)]
        for target, n, bomb_mb, bomb_rows in plan:
            if n <= 0:
                continue
            print(f"{target}: {n:,} cases ...", flush=True)
            work = tmp / target
            fixed = _write_fixed(work / "fixed", bomb_mb * 2 ** 20, bomb_rows)
            child_args = {"seed": args.seed, "bomb_bytes": bomb_mb * 2 ** 20,
                          "bomb_rows": bomb_rows, "fixed_index": str(fixed),
                          "tmp": str(work), "limits": upload_limits()}
            units: list = list(range(n))
            if target == "ingest":
                units = [units[b:b + args.ingest_batch] for b in range(0, n, args.ingest_batch)]
            results.append(run_target(target, units, child_args, args.workers,
                                      args.kill_after))
            print(f"  done in {results[-1].seconds:.0f} s: {results[-1].outcomes}", flush=True)
    total = sum(s.cases for s in results)
    print_table(results, total, time.perf_counter() - t0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "total_cases": total,
                               "seconds": time.perf_counter() - t0,
                               "results": [asdict(s) for s in results]}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
