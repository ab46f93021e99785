"""Gaia XP conversion benchmark (issues 2, 17): our vectorised calibrate vs gaiaxpy.calibrate.

In one run, on the same real inputs and the same threads:
  * ``diagonal``: the 2000 real sources of ``gaia_xp/xp_continuous_combined_chunk0.fits``
    (coefficient errors, no correlations), tiled to ``--n`` sources for us;
  * ``full covariance``: the 6 real archive rows with correlation matrices (the Weiler et
    al. VOTable and ``XP_CONTINUOUS_RAW.csv``), tiled to ``--n-full`` sources for us, with
    the correlation term in single precision (the default) and in double;
  * gaiaxpy.calibrate on ``--gaiaxpy-n`` of the same rows (a pandas DataFrame input, its
    fastest path; it loops over sources in Python), and the largest relative differences
    of flux and of flux error to each of our variants;
  * the ingest fast path end to end: a Parquet table of ``--n`` continuous rows ->
    :func:`iter_xp_catalog_columns` (read + calibrate + catalog units + S/N).

Throughput is the best of ``--repeats`` runs (the machine is shared; the load average is
recorded), and the CPU time of that run (all threads) per source is given too: it does not
depend on how much of the machine other jobs take. BLAS threads are pinned to ``--threads``
(default 2) before numpy is imported; the correlation products use ``os.cpu_count()``
threads (2 here).

Usage:
  python benchmarks/bench_xp.py
  python benchmarks/bench_xp.py --n 200000 --gaiaxpy-n 100
Writes benchmarks/results/xp.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000, help="sources for our diagonal run")
    p.add_argument("--n-full", type=int, default=20_000, help="sources, full covariance")
    p.add_argument("--gaiaxpy-n", type=int, default=60, help="sources given to gaiaxpy")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="BLAS threads (set before numpy)")
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2]
                   / "shared" / "data" / "real" / "gaia_xp")
    p.add_argument("--out", type=Path,
                   default=Path(__file__).resolve().parent / "results" / "xp.json")
    return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402  (after the thread settings)
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from specsearch.io import gaia_xp as gx  # noqa: E402


def tile(xp: gx.XPContinuous, n: int) -> gx.XPContinuous:
    """``xp`` repeated to ``n`` sources (every array field)."""
    reps = -(-n // len(xp))
    out = {}
    for f in dataclasses.fields(xp):
        v = getattr(xp, f.name)
        out[f.name] = np.tile(v, (reps,) + (1,) * (v.ndim - 1))[:n] \
            if isinstance(v, np.ndarray) else v
    return gx.XPContinuous(**out)


def concat(parts: list[gx.XPContinuous]) -> gx.XPContinuous:
    out = {}
    for f in dataclasses.fields(parts[0]):
        vals = [getattr(p, f.name) for p in parts]
        out[f.name] = np.concatenate(vals) if isinstance(vals[0], np.ndarray) else vals[0]
    return gx.XPContinuous(**out)


def best_time(fn, repeats: int) -> tuple[float, float]:
    """(best wall seconds, process CPU seconds of that run) over ``repeats`` runs."""
    fn()   # warm-up: design matrices, BLAS threads, page faults
    runs = []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - t0, time.process_time() - c0))
    return min(runs)


def gaiaxpy_frame(xp: gx.XPContinuous):
    """GaiaXPy's DataFrame input; identity correlations / unit sigma where the table has
    none (sigma cancels in GaiaXPy's error propagation)."""
    import pandas as pd

    rows = []
    for i in range(len(xp)):
        rec = {"source_id": int(xp.source_id[i])}
        for b in ("bp", "rp"):
            coef, err, corr, _ = xp.band(b)
            rec.update({f"{b}_n_parameters": 55, f"{b}_standard_deviation": 1.0,
                        f"{b}_coefficients": coef[i], f"{b}_coefficient_errors": err[i],
                        f"{b}_coefficient_correlations":
                            np.zeros(1485) if corr is None else corr[i]})
        rows.append(rec)
    return pd.DataFrame(rows)


@contextlib.contextmanager
def _quiet():
    """Silence GaiaXPy's progress bar (tqdm bound to the original stdout: redirect the fd)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null, contextlib.redirect_stderr(io.StringIO()):
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def run_gaiaxpy(xp: gx.XPContinuous) -> tuple[float, np.ndarray, np.ndarray]:
    """(seconds for gaiaxpy.calibrate on ``xp``, its flux, its flux error)."""
    import gaiaxpy

    frame = gaiaxpy_frame(xp)
    with _quiet():
        gaiaxpy.calibrate(frame.iloc[:2], save_file=False)   # warm-up: loads its XML model
        t0 = time.perf_counter()
        df, _ = gaiaxpy.calibrate(frame, save_file=False)
        seconds = time.perf_counter() - t0
    return seconds, np.stack(df["flux"].to_numpy()), np.stack(df["flux_error"].to_numpy())


def max_rel(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.nanmax(np.abs(ours[: len(theirs)] - theirs) / np.abs(theirs)))


def main() -> int:
    args = ARGS
    chunk = gx.read_xp_continuous(args.data / "xp_continuous_combined_chunk0.fits")
    full = concat([gx.read_xp_continuous(args.data / name) for name in (
        "xp_continuous_combined_weiler2023_examples.vot", "archive_format/XP_CONTINUOUS_RAW.csv")])
    rows = []
    load_at_start = os.getloadavg()

    def record(name: str, inp: str, n: int, seconds: float, cpu_s: float | None = None,
               **extra) -> dict:
        row = {"method": name, "input": inp, "sources": n, "seconds": round(seconds, 4),
               "sources_per_s": round(n / seconds, 1), **extra}
        if cpu_s is not None:
            row["cpu_us_per_source"] = round(1e6 * cpu_s / n, 2)
        rows.append(row)
        return row

    cases = (("diagonal", chunk, args.n, ("single",)),
             ("full covariance", full, args.n_full, ("single", "double")))
    for label, base, n, precisions in cases:
        sub = tile(base, min(args.gaiaxpy_n, n))
        seconds, flux, error = run_gaiaxpy(sub)
        theirs = record("gaiaxpy.calibrate", label, len(sub), seconds)
        big = tile(base, n)
        for precision in precisions:
            name = "ours (calibrate)" if len(precisions) == 1 else f"ours ({precision})"
            ours = record(name, label, n, *best_time(
                lambda: gx.calibrate(big, error_precision=precision), args.repeats))
            mine = gx.calibrate(sub, error_precision=precision)
            ours["speedup_vs_gaiaxpy"] = round(ours["sources_per_s"] / theirs["sources_per_s"],
                                               1)
            ours["max_rel_diff_flux"] = max_rel(mine.flux, flux)
            ours["max_rel_diff_error"] = max_rel(mine.flux_error, error)

    with tempfile.TemporaryDirectory() as tmp:
        big = tile(chunk, args.n)
        cols = {"source_id": big.source_id}
        for b in ("bp", "rp"):
            for key in ("coefficients", "coefficient_errors"):
                values = getattr(big, f"{b}_{key}").astype(np.float32)
                cols[f"{b}_{key}"] = pa.FixedSizeListArray.from_arrays(
                    pa.array(values.ravel()), values.shape[1])
        path = Path(tmp) / "xp.parquet"
        pq.write_table(pa.table(cols), path)
        record("ours (iter_xp_catalog_columns)", "diagonal, Parquet end to end", args.n,
               *best_time(lambda: sum(len(c["source_id"])
                                      for c in gx.iter_xp_catalog_columns(path)),
                          args.repeats))

    result = {
        "benchmark": "xp", "rows": rows, "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["python", *sys.argv]),
        "goal_sources_per_s": {"diagonal": 50_000, "full covariance": 30_000},
        "goal_rel_diff": {"flux": 1e-6, "error": 1e-5},
        "blas_threads": args.threads, "blas_pools": _blas_pools(),
        "cpu_count": os.cpu_count(), "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "machine": platform.processor() or platform.machine(),
        "python": sys.version.split()[0], "numpy": np.__version__,
        "gaiaxpy": _version("gaiaxpy"), "repeats": args.repeats,
    }
    _print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2))
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out}")
    return 0


def _blas_pools() -> list[dict]:
    """The BLAS libraries numpy uses and their thread counts (threadpoolctl, if present)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "threadpoolctl not installed; threads set via *_NUM_THREADS"}]
    return [{k: p.get(k) for k in ("internal_api", "num_threads", "version")}
            for p in threadpool_info() if p.get("user_api") == "blas"]


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _print_table(result: dict) -> None:
    print(f"XP conversion, BLAS threads = {result['blas_threads']} "
          f"(cpu_count {result['cpu_count']}, load avg {result['load_average_at_start'][0]:.1f}"
          f" at start, {result['load_average_at_end'][0]:.1f} at end)")
    head = f"{'method':32s} {'input':30s} {'sources':>8s} {'seconds':>9s} {'sources/s':>11s} " \
           f"{'CPU us/src':>10s} {'x gaiaxpy':>9s} {'rel flux':>9s} {'rel error':>9s}"
    print(head)
    print("-" * len(head))

    def rel(r: dict, key: str) -> str:
        return format(r[key], ".1e") if key in r else ""

    for r in result["rows"]:
        print(f"{r['method']:32s} {r['input']:30s} {r['sources']:8d} {r['seconds']:9.3f} "
              f"{r['sources_per_s']:11,.0f} {r.get('cpu_us_per_source', ''):>10} "
              f"{r.get('speedup_vs_gaiaxpy', ''):>9} {rel(r, 'max_rel_diff_flux'):>9} "
              f"{rel(r, 'max_rel_diff_error'):>9}")


if __name__ == "__main__":
    raise SystemExit(main())
