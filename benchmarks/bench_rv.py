"""Spectra in the observed frame (preprocess.rv): what a radial velocity does to the model's
readings, how well ingest measures and removes it, and what that costs.

In one run, on real spectra (``--real-data``, read through ``--real-cache``; the LAMOST
sets are in the rest frame there: header redshift removed, measured velocity where the
spectrum contradicted it):

* **readings**: the held-out LAMOST DR10 FGK stars at S/N_g > 30 (test split by star),
  each moved to radial velocity v (its spectrum written at wavelength x (1 + v/c), as a
  file without a redshift arrives) and put on the grid by
  ``to_canonical_grid(rv="header")`` (observed frame: what ingest did before) and
  ``rv="auto"`` (measured and removed); the shipped model's Teff / log g / [Fe/H] bias and
  robust sigma against LASP, and the share of stars read below [Fe/H] = -1.5 (the hunt's
  territory; LASP puts none of them there);
* **measurement**: every real LAMOST DR10 and MILES spectrum (all Teff, all S/N) moved to
  v in ``--velocities``, and the DR10 stars at S/N_g > 50 with noise added down to S/N 20,
  10, 5 and 3 (all, and cooler / hotter than 7,000 K apart): the share measured and
  removed, the error's median and 16-84% range, the share off by more than 50 km/s; at
  v = 0 the share *wrongly* moved (|error| > 30 km/s);
* **speed**: ``to_canonical_grid`` per spectrum with ``rv="auto"`` against ``"header"``
  (the same rebin without the measurement), for spectra at 150 km/s without a header
  redshift (measured, checked in the windows, rebinned again) and with the right one (one
  whole-range correlation finds nothing to remove: LAMOST files), and ``measure_rv`` per
  spectrum in batches of 256; and per LAMOST DR10 file, read included (what ingest pays).
  Best of ``--repeats``.

Usage:
  python benchmarks/bench_rv.py --real-data ../shared/data/real \
      [--real-cache runs/real_sets.npz] [--threads 1]
Writes benchmarks/results/rv.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_scoring import LABELS, held_out_fgk, mad, real_parser  # noqa: E402

from specsearch.fsutil import write_json_atomic  # noqa: E402


def _parse() -> argparse.Namespace:
    p = real_parser(__doc__, "rv.json", threads=1, seed=7)
    p.add_argument("--velocities", default="0,50,100,200,300,-250",
                   help="radial velocities (km/s) the spectra are moved to")
    return p.parse_args()


HOT_K = 7000.0
"""Stars at least this hot (LASP Teff) are scored apart in the noise rows."""


def _moved(flux: np.ndarray, ivar: np.ndarray, v: float):
    """A grid spectrum written as a file at radial velocity v (no redshift in its meta)."""
    from specsearch.preprocess import C_KMS, LAMOST_GRID
    from specsearch.spectrum import Spectrum

    wave = LAMOST_GRID.wavelength * (1.0 + v / C_KMS)
    return Spectrum(wavelength=wave, flux=np.asarray(flux, float),
                    ivar=np.asarray(ivar, float), mask=~(np.asarray(ivar) > 0))


def _on_grid(flux, ivar, v: float, mode: str):
    from specsearch.preprocess import C_KMS, to_canonical_grid

    out_f, out_i, removed = [], [], []
    for f, i in zip(flux, ivar):
        got = to_canonical_grid(_moved(f, i, v), "lamost", rv=mode)
        out_f.append(got.flux)
        out_i.append(got.ivar)
        removed.append(np.nan if got.z_removed is None else got.z_removed * C_KMS)
    return np.stack(out_f), np.stack(out_i), np.array(removed)


def readings(model, sets, velocities) -> dict:
    s = sets["lamost_dr10"]
    sel, truth = held_out_fgk(s)
    flux, ivar = s.flux[sel], s.ivar[sel]
    names = list(model.label_names)
    cols = [names.index(n) for n in LABELS]
    out = {"stars": int(sel.size), "rows": []}
    for v in velocities:
        for mode in ("header", "auto"):
            f, i, _ = _on_grid(flux, ivar, v, mode)
            pred = model.embed_numpy("lamost", f, i).predictions[:, cols].astype(np.float64)
            d = pred - truth
            row = {"v_kms": v, "mode": mode,
                   "below_-1.5": float(np.mean(pred[:, 2] < -1.5))}
            for k, n in enumerate(LABELS):
                row[f"{n}_bias"] = float(np.median(d[:, k]))
                row[f"{n}_sigma"] = mad(d[:, k])
            out["rows"].append(row)
    return out


def _errors(removed: np.ndarray, truth: float) -> dict:
    """What was removed (NaN: nothing) from spectra at radial velocity ``truth``."""
    moved = np.isfinite(removed)
    res = {"n": int(removed.size), "measured": float(moved.mean())}
    if truth == 0:
        res["wrongly_moved"] = float(np.mean(moved & (np.abs(removed) > 30)))
    e = removed[moved] - truth
    if e.size:
        res.update(median=float(np.median(e)), p16=float(np.percentile(e, 16)),
                   p84=float(np.percentile(e, 84)), off_50=float(np.mean(np.abs(e) > 50)))
    return res


def measurement(sets, velocities, seed: int) -> list[dict]:
    rows = []
    for name in ("lamost_dr10", "miles"):
        s = sets[name]
        for v in velocities:
            _, _, removed = _on_grid(s.flux, s.ivar, v, "auto")
            rows.append({"set": name, "snr": "as observed", "v_kms": v,
                         **_errors(removed, v)})
    s = sets["lamost_dr10"]
    hi = np.where(s.snr > 50)[0]
    hot = s.label_matrix(["teff"])[hi, 0] >= HOT_K      # broad lines: the hard case
    rng = np.random.default_rng(seed)
    for target in (20, 10, 5, 3):
        f, iv = s.flux[hi].astype(np.float64), s.ivar[hi].astype(np.float64)
        level = np.array([np.median(r[w > 0]) for r, w in zip(f, iv)]) / target
        noisy = f + rng.normal(0.0, 1.0, f.shape) * level[:, None]
        nivar = np.where(iv > 0, 1.0 / level[:, None] ** 2, 0.0)
        for v in (0.0, 100.0, 250.0):
            _, _, removed = _on_grid(noisy, nivar, v, "auto")
            for part, sel in (("", np.ones_like(hot)), (f" <{HOT_K:.0f}K", ~hot),
                              (f" >={HOT_K:.0f}K", hot)):
                rows.append({"set": f"lamost_dr10 S/N>50{part}", "snr": f"noise to {target}",
                             "v_kms": v, **_errors(removed[sel], v)})
    return rows


def file_speed(real: Path, repeats: int, n: int = 100) -> dict:
    """Per file, read included (what ingest pays): LAMOST DR10 files (header redshift)."""
    from specsearch.io.ingest import spectrum_row
    from specsearch.io.registry import read_spectra

    paths = sorted((real / "lamost" / "dr10_afg" / "spectra").glob("*.fits*"))[:n]
    times = {}
    for mode in ("header", "auto"):
        best = np.inf
        for _ in range(repeats):
            t = time.perf_counter()
            for p in paths:
                for spec in read_spectra(p):
                    spectrum_row(spec, "lamost", rv=mode)
            best = min(best, (time.perf_counter() - t) / len(paths))
        times[mode] = best
    return {"files": len(paths), "header_ms": 1e3 * times["header"],
            "auto_ms": 1e3 * times["auto"], "ratio": times["auto"] / times["header"]}


def speed(sets, repeats: int) -> dict:
    from specsearch.preprocess import C_KMS, measure_rv, to_canonical_grid

    s = sets["lamost_dr10"]
    bare = [_moved(f, i, 150.0) for f, i in zip(s.flux[:200], s.ivar[:200])]
    # as LAMOST files come: the same spectra with their redshift in the header
    told = [dataclasses.replace(spec, meta={"z": 150.0 / C_KMS}) for spec in bare]
    times = {}
    for key, spectra, mode in (("header", bare, "header"), ("auto", bare, "auto"),
                               ("auto_told", told, "auto")):
        best = np.inf
        for _ in range(repeats):
            t = time.perf_counter()
            for spec in spectra:
                to_canonical_grid(spec, "lamost", rv=mode)
            best = min(best, (time.perf_counter() - t) / len(spectra))
        times[key] = best
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        measure_rv(s.flux[:256], s.ivar[:256])
        best = min(best, (time.perf_counter() - t) / 256)
    return {"header_ms": 1e3 * times["header"], "auto_ms": 1e3 * times["auto"],
            "ratio": times["auto"] / times["header"],
            "auto_header_given_ms": 1e3 * times["auto_told"],
            "ratio_header_given": times["auto_told"] / times["header"],
            "measure_rv_batch_ms": 1e3 * best}


def main() -> int:
    args = _parse()
    import torch

    torch.set_num_threads(args.threads)
    from specsearch.model import load_model
    from specsearch.model.training.real_sets import load_all

    velocities = [float(v) for v in args.velocities.split(",")]
    model = load_model(args.model)
    sets = load_all(args.real_data, args.real_cache)
    load_before = os.getloadavg()
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{os.uname().nodename} ({os.cpu_count()} CPUs)",
              "command": " ".join(sys.argv), "threads": args.threads,
              "model_hash": model.model_hash[:12]}
    result["readings"] = readings(model, sets, velocities)
    result["measurement"] = measurement(sets, velocities, args.seed)
    result["speed"] = speed(sets, args.repeats)
    result["file_speed"] = file_speed(args.real_data, args.repeats)
    result["load_before_after"] = [load_before, os.getloadavg()]

    r = result["readings"]
    print(f"model {result['model_hash']}; {r['stars']} held-out DR10 FGK stars (S/N_g > 30) "
          f"moved to v: bias / sigma against LASP")
    print(f"{'v km/s':>7s} {'frame':7s} {'Teff':>13s} {'logg':>15s} {'[Fe/H]':>15s} "
          f"{'<-1.5':>6s}")
    for row in r["rows"]:
        frame = "removed" if row["mode"] == "auto" else "kept"
        print(f"{row['v_kms']:7.0f} {frame:7s} "
              f"{row['teff_bias']:+6.0f}/{row['teff_sigma']:4.0f} K "
              f"{row['logg_bias']:+7.3f}/{row['logg_sigma']:.3f} "
              f"{row['feh_bias']:+7.3f}/{row['feh_sigma']:.3f} {row['below_-1.5']:6.3f}")
    print(f"\n{'set':27s} {'S/N':13s} {'v':>6s} {'measured':>8s} {'median':>7s} "
          f"{'16-84%':>15s} {'>50':>6s} {'wrong':>6s}")  # wrong: moved > 30 km/s at rest
    for row in result["measurement"]:
        rng = (f"{row['p16']:+6.1f} {row['p84']:+6.1f}" if "p16" in row else "")
        print(f"{row['set']:27s} {row['snr']:13s} {row['v_kms']:6.0f} {row['measured']:8.3f} "
              f"{row.get('median', np.nan):+7.1f} {rng:>15s} {row.get('off_50', np.nan):6.3f} "
              f"{row.get('wrongly_moved', np.nan):6.3f}")
    sp = result["speed"]
    print(f"\nto_canonical_grid per spectrum: rv=header {sp['header_ms']:.2f} ms; rv=auto, "
          f"no header redshift {sp['auto_ms']:.2f} ms (x{sp['ratio']:.2f}), with the right "
          f"one {sp['auto_header_given_ms']:.2f} ms (x{sp['ratio_header_given']:.2f}); "
          f"measure_rv in batches of 256: {sp['measure_rv_batch_ms']:.2f} ms per spectrum")
    fs = result["file_speed"]
    print(f"ingest per LAMOST DR10 file (read + row, {fs['files']} files): rv=header "
          f"{fs['header_ms']:.2f} ms, rv=auto {fs['auto_ms']:.2f} ms (x{fs['ratio']:.2f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
