"""Resolution matching at ingest (preprocess.lsf): what it buys the model, and what it costs.

In one run:

* **accuracy** (synthetic): ``--n`` synthetic FGK stars' model spectra (2.5 A FWHM on the
  model grid, the sharpest the generator makes) go onto the LAMOST grid three ways: the
  synthetic survey's own R = 1800 operator (the reference: what the model learned), a plain
  flux-conserving rebin, and ingest's resolution matching (forced on: at 2.5 A the input is
  just at the 0.7x threshold). For each, the shipped model's predictions and embedding
  against the reference's: median / RMS shift of Teff, log g, [Fe/H], median cosine.
* **real MILES** (``--real-data``): the held-out MILES stars (test split by star) native and
  broadened to R = 1800, scored against their labels: the measurement behind leaving MILES
  alone.
* **speed**: ``to_canonical_grid`` per spectrum against ``resample`` (no matching) on the
  same input, for a LAMOST-grid spectrum (decision only), a MILES file (decision only), the
  model-grid spectrum and a 200,000-pixel R = 40,000 echelle-like spectrum (broadened); with
  ``--real-data`` also per file including the read (what ingest pays). Best of
  ``--repeats`` windows.

Usage:
  python benchmarks/bench_lsf.py [--n 400] [--real-data ../shared/data/real] [--threads 1]
Writes benchmarks/results/lsf.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
LABELS = ("teff", "logg", "feh")


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model directory (default: the shipped default model)")
    p.add_argument("--n", type=int, default=400, help="synthetic stars drawn (FGK kept)")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--real-data", type=Path, help="../shared/data/real, for the MILES rows")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS / "lsf.json")
    return p.parse_args()


def _spectrum(wave, flux, ivar=None, **meta):
    from specsearch.spectrum import Spectrum

    ivar = np.ones(wave.size) if ivar is None else ivar
    return Spectrum(wavelength=wave, flux=np.asarray(flux, float), ivar=ivar,
                    mask=np.zeros(wave.size, bool), meta=meta)


def _shifts(batch, ref) -> dict:
    d = batch.predictions[:, :3] - ref.predictions[:, :3]
    a, b = batch.embedding, ref.embedding
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    out = {f"{n}_median_shift": float(np.median(d[:, i])) for i, n in enumerate(LABELS)}
    out.update({f"{n}_rms_shift": float(np.sqrt(np.mean(d[:, i] ** 2)))
                for i, n in enumerate(LABELS)})
    out["cosine_median"] = float(np.median(cos))
    return out


def accuracy(model, n: int, seed: int) -> dict:
    import specsearch.preprocess.lsf as lsf
    from specsearch.preprocess import resample, to_canonical_grid
    from specsearch.synth.grid import MODEL_FWHM_A, model_wavelength
    from specsearch.synth.lamost import lamost_operator
    from specsearch.synth.mix import sample_labels
    from specsearch.synth.model import model_spectra

    labels = sample_labels(np.random.default_rng(seed), n, {})
    keep = ((labels.population == "normal") & (labels.teff > 4000) & (labels.teff < 7000))
    flux = model_spectra(labels)[keep]
    wave = model_wavelength()
    ref_flux = np.asarray((lamost_operator() @ flux.T).T, np.float32)

    def ivar_for(f):  # S/N 100 per pixel, as a constant ivar
        return (1e4 / np.median(f, axis=-1, keepdims=True) ** 2 * np.ones_like(f)
                ).astype(np.float32)

    ref = model.embed_numpy("lamost", ref_flux, ivar_for(ref_flux))
    plain = np.stack([resample(_spectrum(wave, f), "lamost")[0] for f in flux])
    saved = lsf.SHARPER_FACTOR
    lsf.SHARPER_FACTOR = 1.01  # force matching at 2.5 A (0.70x the LAMOST FWHM here)
    try:
        matched = np.stack([to_canonical_grid(_spectrum(wave, f, fwhm_A=MODEL_FWHM_A),
                                              "lamost")[0] for f in flux])
    finally:
        lsf.SHARPER_FACTOR = saved
    rows = {"stars": int(keep.sum())}
    for name, f in (("plain rebin", plain), ("resolution matched", matched)):
        rows[name] = _shifts(model.embed_numpy("lamost", f, ivar_for(f)), ref)
    return rows


def real_miles(model, real: Path) -> dict:
    from specsearch.io.ingest import spectrum_row
    from specsearch.io.registry import read_spectra
    from specsearch.model.training.real_sets import (SPLIT_CODES, read_csv_rows, star_split,
                                                     to_float)
    from specsearch.preprocess import LAMOST_RESOLUTION

    rows = {r["miles_id"]: r for r in read_csv_rows(real / "miles" / "labels.csv")}
    native, broad, ids = [], [], []
    for path in sorted((real / "miles" / "spectra").glob("*.fits")):
        for spec in read_spectra(path):
            ids.append(spec.spectrum_id)
            native.append(spectrum_row(spec, "lamost"))
            broad.append(spectrum_row(_miles_at_lamost(spec), "lamost"))
    star = np.array([rows.get(i, {}).get("name") or i for i in ids])
    test = star_split(star) == SPLIT_CODES["test"]
    truth = np.array([[to_float(rows.get(i, {}).get(n)) for n in LABELS] for i in ids])
    out = {"test_stars": int(test.sum()), "target_resolution": LAMOST_RESOLUTION}
    for name, rws in (("native", native), ("broadened to R=1800", broad)):
        flux = np.stack([r["flux"] for r in rws])[test]
        ivar = np.stack([r["ivar"] for r in rws])[test]
        pred = model.embed_numpy("lamost", flux, ivar).predictions[:, :3]
        res = pred - truth[test]
        stats = {}
        for i, n in enumerate(LABELS):
            r = res[:, i][np.isfinite(res[:, i])]
            stats[f"{n}_bias"] = float(np.median(r))
            stats[f"{n}_sigma"] = float(1.4826 * np.median(np.abs(r - np.median(r))))
        out[name] = stats
    return out


def _miles_at_lamost(spec):
    """A MILES spectrum on the LAMOST grid broadened to R = 1800 with ingest's kernel (which
    itself leaves MILES alone: 2.5 A is 0.81x LAMOST's width)."""
    from specsearch.preprocess import LAMOST_GRID, broadened_flux, resample, resolution_match

    _, ivar = resample(spec, LAMOST_GRID)
    match = resolution_match(spec.validated(), LAMOST_GRID)   # source fwhm_A, 2.5 A
    flux = np.where(ivar > 0, broadened_flux(spec.validated(), LAMOST_GRID, match), 0.0)
    return dataclasses.replace(_spectrum(LAMOST_GRID.wavelength, flux, ivar.astype(float)),
                               spectrum_id=spec.spectrum_id)


def speed(repeats: int, real: Path | None) -> list[dict]:
    from specsearch.preprocess import LAMOST_GRID, resample, to_canonical_grid
    from specsearch.synth.grid import model_wavelength

    rng = np.random.default_rng(0)
    echelle = np.linspace(3700.0, 9100.0, 200_000)
    model_wave = model_wavelength()
    inputs = [("LAMOST grid, no stated resolution (kept)",
               _spectrum(LAMOST_GRID.wavelength, 1 + 0.05 * rng.standard_normal(3909))),
              ("model grid 2.5 A, 10,060 px (kept: 0.70x)",
               _spectrum(model_wave, 1 + 0.05 * rng.standard_normal(model_wave.size),
                         fwhm_A=2.5)),
              ("echelle R=40,000, 200,000 px (broadened)",
               _spectrum(echelle, 1 + 0.05 * rng.standard_normal(echelle.size),
                         resolving_power=40000.0))]
    files = []
    if real is not None:
        from specsearch.io.registry import read_spectra
        miles = next(read_spectra(sorted((real / "miles" / "spectra").glob("*.fits"))[0]))
        inputs.insert(1, ("MILES file, 2.5 A, 4,300 px (kept: 0.81x)", miles))
        files = [("read + grid: MILES file", sorted((real / "miles" / "spectra").glob(
                     "*.fits"))[0]),
                 ("read + grid: LAMOST DR10 file", sorted((real / "lamost" / "dr10_afg" /
                                                          "spectra").glob("*.fits*"))[0])]
    cases = [(name, (lambda s=spec: resample(s, "lamost")),
              (lambda s=spec: to_canonical_grid(s, "lamost"))) for name, spec in inputs]
    cases += [(name, (lambda p=path: resample(next(read_spectra(p)), "lamost")),
               (lambda p=path: to_canonical_grid(next(read_spectra(p)), "lamost")))
              for name, path in files]
    rows = []
    for name, plain_fn, matched_fn in cases:
        times = {}
        for label, fn in (("resample", plain_fn), ("to_canonical_grid", matched_fn)):
            best = np.inf
            for _ in range(repeats):
                reps, start = 0, time.perf_counter()
                while time.perf_counter() - start < 0.5:
                    fn()
                    reps += 1
                best = min(best, (time.perf_counter() - start) / reps)
            times[label] = best
        rows.append({"input": name, "resample_ms": 1e3 * times["resample"],
                     "matched_ms": 1e3 * times["to_canonical_grid"],
                     "ratio": times["to_canonical_grid"] / times["resample"]})
    return rows


def main() -> int:
    args = _parse()
    import torch

    torch.set_num_threads(args.threads)
    from specsearch.model import load_model

    model = load_model(args.model)
    load_before = os.getloadavg()
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
              "command": " ".join(sys.argv), "model_hash": model.model_hash[:12],
              "threads": args.threads}
    result["accuracy"] = accuracy(model, args.n, args.seed)
    if args.real_data is not None:
        result["real_miles"] = real_miles(model, args.real_data)
    result["speed"] = speed(args.repeats, args.real_data)
    result["load_before_after"] = [load_before, os.getloadavg()]

    acc = result["accuracy"]
    print(f"model {result['model_hash']}; {acc['stars']} synthetic FGK stars at 2.5 A, "
          f"shifts against the survey's own R = 1800 spectra")
    print(f"{'path':22s} {'Teff med/rms':>14s} {'logg med/rms':>16s} {'[Fe/H] med/rms':>16s} "
          f"{'cos':>7s}")
    for name in ("plain rebin", "resolution matched"):
        r = acc[name]
        print(f"{name:22s} {r['teff_median_shift']:+6.0f}/{r['teff_rms_shift']:5.0f} K "
              f"{r['logg_median_shift']:+7.3f}/{r['logg_rms_shift']:.3f} "
              f"{r['feh_median_shift']:+7.3f}/{r['feh_rms_shift']:.3f} "
              f"{r['cosine_median']:7.4f}")
    if "real_miles" in result:
        m = result["real_miles"]
        print(f"\nheld-out real MILES ({m['test_stars']} stars): bias / sigma")
        for name in ("native", "broadened to R=1800"):
            r = m[name]
            print(f"{name:22s} Teff {r['teff_bias']:+5.0f} / {r['teff_sigma']:4.0f} K  "
                  f"logg {r['logg_bias']:+.3f} / {r['logg_sigma']:.3f}  "
                  f"[Fe/H] {r['feh_bias']:+.3f} / {r['feh_sigma']:.3f}")
    print(f"\n{'input':45s} {'resample ms':>12s} {'matched ms':>11s} {'ratio':>6s}")
    for r in result["speed"]:
        print(f"{r['input']:45s} {r['resample_ms']:12.2f} {r['matched_ms']:11.2f} "
              f"{r['ratio']:6.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
