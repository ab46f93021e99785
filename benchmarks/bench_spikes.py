"""Cosmic rays and hot pixels (preprocess.spikes): what they do to the model's readings, what
masking them on the spectrum's own pixels gives back, what it masks in real spectra that
have none added, and what it costs.

In one run, on real LAMOST DR10 files (``--real-data``):

* **readings**: the held-out DR10 FGK stars at S/N_g > 30 (test split by star, as
  ``specsearch evaluate --real-data`` scores them), read from their files as they are and
  with spikes added on their native pixels (single pixels raised by a multiple of the
  spectrum's median flux, drawn uniformly within 0.5-1.5x of it; or two-pixel hits, the
  second pixel 0.3-1x the first), each put on the grid by ``to_canonical_grid`` with
  ``spikes=False`` (what ingest did before) and ``spikes=True`` (the default): the shipped
  model's Teff / log g / [Fe/H] bias and robust sigma against LASP, and the z-widths
  (robust sigma of (pred - LASP) / err);
* **real spectra as they are**: how many spectra and pixels the mask takes in every real
  LAMOST file (DR1, DR8, DR10) and MILES star (reading a reduction's left-over artefacts,
  not lines: the pixels are listed by wavelength range);
* **speed**: ``to_canonical_grid`` per DR10 file with and without the mask, and
  ``mask_spikes`` alone. Best of ``--repeats``.

Usage:
  python benchmarks/bench_spikes.py --real-data ../shared/data/real \
      [--real-cache runs/real_sets.npz] [--threads 2]
Writes benchmarks/results/spikes.json.
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

from real_scoring import held_out_fgk, real_parser, scores  # noqa: E402

from specsearch.fsutil import write_json_atomic  # noqa: E402
CASES = (("as observed", 0.0, 0.0, 1), ("0.2% of pixels +0.5x", 0.002, 0.5, 1),
         ("0.2% of pixels +1x", 0.002, 1.0, 1), ("0.2% of pixels +5x", 0.002, 5.0, 1),
         ("1% of pixels +5x", 0.01, 5.0, 1), ("0.2% two-pixel hits +5x", 0.002, 5.0, 2))
"""(name, share of good pixels hit, height in median fluxes, pixels a hit spans)."""
WAVE_BINS = (3500, 4000, 5000, 5500, 6000, 6500, 7000, 7600, 8000, 8500, 9300)


def _parse() -> argparse.Namespace:
    return real_parser(__doc__, "spikes.json", threads=2, seed=0).parse_args()


def _held_out(sets: dict, real: Path) -> tuple[list, np.ndarray]:
    """The held-out DR10 FGK S/N > 30 spectra, read from their files, and their labels."""
    from specsearch.io.registry import read_spectra

    s = sets["lamost_dr10"]
    sel, truth = held_out_fgk(s)
    files = {p.name: p for p in (real / "lamost" / "dr10_afg").rglob("*.fits*")}
    specs = [next(read_spectra(files[str(f)])) for f in s.meta["filename"][sel]]
    return specs, truth


def _hit(specs: list, share: float, height: float, width: int, rng) -> tuple[list, int]:
    out, n = [], 0
    for sp in specs:
        flux = np.array(sp.flux, np.float64)
        good = np.asarray(sp.ivar) > 0
        at = np.flatnonzero((rng.random(flux.size) < share) & good)
        amp = height * np.median(flux[good]) * rng.uniform(0.5, 1.5, at.size)
        flux[at] += amp
        if width == 2:
            flux[np.minimum(at + 1, flux.size - 1)] += amp * rng.uniform(0.3, 1.0, at.size)
        n += at.size * width
        out.append(dataclasses.replace(sp, flux=flux))
    return out, n


def readings(model, specs: list, truth: np.ndarray, seed: int) -> list[dict]:
    from specsearch.preprocess import to_canonical_grid

    rows = []
    rng = np.random.default_rng(seed)
    for name, share, height, width in CASES:
        hit, n_added = _hit(specs, share, height, width, rng) if share else (specs, 0)
        for masked in (False, True):
            grids = [to_canonical_grid(sp, "lamost", spikes=masked) for sp in hit]
            rows.append({"case": name, "masked": masked, "pixels_added": n_added,
                         "pixels_masked": int(sum(g.spikes_masked for g in grids)),
                         **scores(model, np.stack([g.flux for g in grids]),
                                  np.stack([g.ivar for g in grids]), truth)})
    return rows


def as_they_are(real: Path) -> list[dict]:
    from specsearch.io.registry import read_spectra
    from specsearch.preprocess.spikes import mask_spikes

    folders = {"lamost_dr1": real / "lamost" / "dr1",
               "lamost_dr8": real / "lamost" / "dr8_xp_matched",
               "lamost_dr10": real / "lamost" / "dr10_afg", "miles": real / "miles" / "spectra"}
    rows = []
    for name, folder in folders.items():
        n = n_hit = 0
        waves: list[np.ndarray] = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".fits" in p.name):
            for sp in read_spectra(path):
                v = sp.validated()
                hit = mask_spikes(v.flux, v.ivar)[1]
                n += 1
                n_hit += bool(hit.any())
                waves.append(v.wavelength[hit])
        w = np.concatenate(waves) if waves else np.zeros(0)
        rows.append({"set": name, "spectra": n, "with_spikes": n_hit, "pixels": int(w.size),
                     "by_wavelength": dict(zip([f"{a}-{b}" for a, b in
                                                zip(WAVE_BINS[:-1], WAVE_BINS[1:])],
                                               np.histogram(w, WAVE_BINS)[0].tolist()))})
    return rows


def speed(specs: list, repeats: int) -> dict:
    from specsearch.preprocess import to_canonical_grid
    from specsearch.preprocess.spikes import mask_spikes

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times) / len(specs)

    valid = [sp.validated() for sp in specs]
    off = best(lambda: [to_canonical_grid(sp, "lamost", spikes=False) for sp in specs])
    on = best(lambda: [to_canonical_grid(sp, "lamost") for sp in specs])
    alone = best(lambda: [mask_spikes(v.flux, v.ivar) for v in valid])
    return {"spectra": len(specs), "grid_ms": 1e3 * off, "grid_masked_ms": 1e3 * on,
            "ratio": on / off, "mask_spikes_ms": 1e3 * alone}


def main() -> int:
    args = _parse()
    import torch

    torch.set_num_threads(args.threads)
    from specsearch.model import load_model
    from specsearch.model.training.real_sets import load_all

    model = load_model(args.model)
    sets = load_all(args.real_data, args.real_cache)
    specs, truth = _held_out(sets, args.real_data)
    load_before = os.getloadavg()
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{os.uname().nodename} ({os.cpu_count()} CPUs)",
              "command": " ".join(sys.argv), "threads": args.threads,
              "model_hash": model.model_hash[:12], "stars": len(specs)}
    result["readings"] = readings(model, specs, truth, args.seed)
    result["as_they_are"] = as_they_are(args.real_data)
    result["speed"] = speed(specs, args.repeats)
    result["load_before_after"] = [load_before, os.getloadavg()]

    print(f"model {result['model_hash']}; {len(specs)} held-out DR10 FGK stars (S/N_g > 30), "
          f"read from their files: bias / sigma against LASP, z-widths")
    print(f"{'spikes added':26s} {'mask':4s} {'added':>6s} {'masked':>6s} {'Teff K':>10s} "
          f"{'logg':>13s} {'[Fe/H]':>13s}  z Teff/logg/[Fe/H]")
    for r in result["readings"]:
        print(f"{r['case']:26s} {'on' if r['masked'] else 'off':4s} {r['pixels_added']:6d} "
              f"{r['pixels_masked']:6d} {r['teff_bias']:+4.0f}/{r['teff_sigma']:4.0f} "
              f"{r['logg_bias']:+.3f}/{r['logg_sigma']:.3f} "
              f"{r['feh_bias']:+.3f}/{r['feh_sigma']:.3f}  "
              f"{r['teff_z']:.2f}/{r['logg_z']:.2f}/{r['feh_z']:.2f}")
    print("\nreal spectra as they are: spectra with pixels masked, pixels by wavelength (A)")
    for r in result["as_they_are"]:
        bins = ", ".join(f"{k}: {v}" for k, v in r["by_wavelength"].items() if v)
        print(f"  {r['set']:12s} {r['with_spikes']:4d} of {r['spectra']:4d} spectra, "
              f"{r['pixels']:4d} pixels ({bins})")
    sp = result["speed"]
    print(f"\nto_canonical_grid per DR10 file ({sp['spectra']}): {sp['grid_ms']:.2f} ms "
          f"without the mask, {sp['grid_masked_ms']:.2f} ms with it (x{sp['ratio']:.3f}); "
          f"mask_spikes alone {sp['mask_spikes_ms']:.3f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
