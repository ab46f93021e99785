"""Telluric absorption left in (specsearch.model.telluric): how often the model finds the O2
A band in spectra that carry it and in spectra that do not, what reading such spectra
with the bands masked gives back, and what the check costs.

In one run, on the real sets (``--real-data``, read through ``--real-cache``; rest frame):

* **false alarms**: every real LAMOST DR10, DR1 and DR8 spectrum and the SDSS PyHammer
  co-adds (B0-L6, with the red arm), all telluric-corrected by their pipelines, as they
  are; and the DR10 spectra at S/N_g > 50 with noise added down to S/N 20, 10 and 5;
* **detections**: the same spectra with the synthetic survey's telluric spectrum
  (``synth.lamost.telluric_transmission``: the O2 B and A bands by airmass, water by
  airmass x precipitable water) put back at radial velocities drawn within +-150 km/s,
  whole or with 30% of it left (a poor correction);
* **readings**: the held-out DR10 FGK stars at S/N_g > 30 with the atmosphere put back,
  read as they are, as the engine and the service now read them (checked, masked where
  found) and with the bands always masked (the request's ``telluric_uncorrected``):
  bias / robust sigma against LASP and z-widths;
* **speed**: ``check_telluric`` per spectrum in batches of 256 and one at a time (one
  more encoder and decoder pass of the masked spectrum), and the embedding builder's
  model step (``embed_chunk``, batches of 1,024) over every DR10 row with and without
  ``check_telluric``. Best of ``--repeats``.

The telluric spectrum is the synthetic survey's model, not an observed one: the real
absorption's shape differs in detail, its depth at R = 1800 is similar.

Usage:
  python benchmarks/bench_telluric.py --real-data ../shared/data/real \
      [--real-cache runs/real_sets.npz] [--threads 2]
Writes benchmarks/results/telluric.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_scoring import held_out_fgk, real_parser, scores  # noqa: E402

from specsearch.fsutil import write_json_atomic  # noqa: E402
ATMOSPHERES = ((1.0, 0.5, 1.0), (1.2, 1.0, 1.0), (1.5, 2.0, 1.0), (2.0, 3.0, 1.0),
               (1.2, 1.0, 0.3))
"""(airmass, precipitable water in cm, share of the absorption left in)."""


def _parse() -> argparse.Namespace:
    return real_parser(__doc__, "telluric.json", threads=2, seed=0).parse_args()


def _atmosphere(n: int, airmass: float, pwv: float, share: float, rng):
    """(transmission (n, npix), velocities (n,)): the bands at observed wavelengths of
    stars at radial velocities within +-150 km/s, on their rest-frame grid."""
    from specsearch.synth.lamost import telluric_transmission

    v = rng.uniform(-150.0, 150.0, n)
    t = telluric_transmission(v, np.full(n, airmass * share), np.full(n, pwv * share))
    return t.astype(np.float64), v


def _with(flux, ivar, t):
    return flux * t, ivar / np.maximum(t, 1e-3) ** 2


def _noisy(flux, ivar, snr: float, rng):
    sig = np.median(flux, 1, keepdims=True) / snr
    out = flux + rng.normal(size=flux.shape) * sig
    iv = np.where(ivar > 0, 1.0 / (1.0 / np.maximum(ivar, 1e-30) + sig ** 2), 0.0)
    return out, iv


def _row(name: str, check) -> dict:
    d = check.depth[np.isfinite(check.depth)]
    out = {"case": name, "n": int(check.depth.size), "with_a_band": int(d.size),
           "detected": float(check.detected.mean())}
    if d.size:
        out.update(depth_p01=float(np.percentile(d, 1)), depth_median=float(np.median(d)),
                   depth_p99=float(np.percentile(d, 99)), depth_max=float(d.max()))
    return out


def alarms_and_detections(model, sets, real: Path, seed: int) -> list[dict]:
    from specsearch.model.evaluation.evaluate_templates import read_pyhammer
    from specsearch.model.telluric import check_telluric

    rng = np.random.default_rng(seed)
    rows = []
    for name in ("lamost_dr10", "lamost_dr1", "lamost_dr8"):
        s = sets[name]
        rows.append(_row(f"{name}, as they are", check_telluric(model, s.flux, s.ivar)))
    tpl = read_pyhammer(real)
    if tpl is not None:
        rows.append(_row("SDSS PyHammer co-adds, as they are",
                         check_telluric(model, tpl["flux"], tpl["ivar"])))
    s = sets["lamost_dr10"]
    hi = s.snr > 50
    base = s.flux[hi].astype(np.float64), s.ivar[hi].astype(np.float64)
    for snr in (None, 20.0, 10.0, 5.0):
        f, iv = base if snr is None else _noisy(*base, snr, rng)
        tag = "as observed" if snr is None else f"S/N {snr:g}"
        rows.append(_row(f"DR10 S/N>50 ({f.shape[0]}), {tag}, corrected",
                         check_telluric(model, f, iv)))
        for airmass, pwv, share in ATMOSPHERES:
            t, v = _atmosphere(f.shape[0], airmass, pwv, share, rng)
            left = f"{share:.0%} of it" if share < 1 else "all of it"
            rows.append(_row(f"DR10 S/N>50, {tag}, airmass {airmass:g} water {pwv:g} cm, "
                             f"{left}", check_telluric(model, *_with(f, iv, t), v)))
    return rows


def readings(model, sets, seed: int) -> list[dict]:
    from specsearch.model.telluric import check_telluric, without_telluric

    s = sets["lamost_dr10"]
    sel, truth = held_out_fgk(s)
    flux, ivar = s.flux[sel].astype(np.float64), s.ivar[sel].astype(np.float64)
    rng = np.random.default_rng(seed)
    rows = []

    def score(case: str, how: str, f, iv, detected=None):
        row = {"case": case, "read": how, "stars": int(f.shape[0])}
        if detected is not None:
            row["detected"] = float(np.mean(detected))
        rows.append({**row, **scores(model, f, iv, truth)})

    found = check_telluric(model, flux, ivar)
    score("corrected (as observed)", "as it is", flux, ivar)
    score("corrected (as observed)", "checked",
          flux, np.where(found.detected[:, None], without_telluric(ivar, None), ivar),
          found.detected)
    score("corrected (as observed)", "bands always masked", flux, without_telluric(ivar, None))
    for airmass, pwv, share in ATMOSPHERES[1:4]:
        t, v = _atmosphere(flux.shape[0], airmass, pwv, share, rng)
        f, iv = _with(flux, ivar, t)
        case = f"airmass {airmass:g}, water {pwv:g} cm, left in"
        found = check_telluric(model, f, iv, v)
        score(case, "as it is", f, iv)
        score(case, "checked", f, np.where(found.detected[:, None], without_telluric(iv, v), iv),
              found.detected)
        score(case, "bands always masked", f, without_telluric(iv, v))
    return rows


def speed(model, sets, repeats: int) -> dict:
    from specsearch.model.telluric import check_telluric

    s = sets["lamost_dr10"]
    f, iv = s.flux[:256], s.ivar[:256]

    def best(fn, per: int) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times) / per

    batch = best(lambda: check_telluric(model, f, iv), f.shape[0])
    single = best(lambda: [check_telluric(model, f[i:i + 1], iv[i:i + 1]) for i in range(32)],
                  32)
    embed = best(lambda: [model.embed_numpy("lamost", f[i:i + 1], iv[i:i + 1],
                                            with_domain=True) for i in range(32)], 32)
    # the embedding builder's model step over every DR10 row, batches of 1,024
    from collections import Counter

    import pyarrow as pa

    from specsearch.embed.encode import embed_chunk
    from specsearch.embed.spectra import SpectraChunk

    chunks = [SpectraChunk(pa.record_batch({"spectrum_id": [str(i) for i in range(a, b)],
                                            "source_id": np.arange(a, b)}),
                           s.flux[a:b], s.ivar[a:b], Counter())
              for a, b in ((a, min(a + 1024, len(s))) for a in range(0, len(s), 1024))]

    def build(check: bool) -> None:
        for c in chunks:
            embed_chunk(model, "lamost", c, with_residual=False, meta_columns=[],
                        skipped=Counter(), check_telluric=check)

    plain = best(lambda: build(False), len(s))
    checked = best(lambda: build(True), len(s))
    return {"batch_ms": 1e3 * batch, "single_ms": 1e3 * single,
            "embed_single_ms": 1e3 * embed, "ratio_single": (embed + single) / embed,
            "builder_per_s": 1.0 / plain, "builder_checked_per_s": 1.0 / checked,
            "builder_ratio": checked / plain}


def main() -> int:
    args = _parse()
    import torch

    torch.set_num_threads(args.threads)
    from specsearch.model import load_model
    from specsearch.model.training.real_sets import load_all

    model = load_model(args.model)
    sets = load_all(args.real_data, args.real_cache)
    load_before = os.getloadavg()
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{os.uname().nodename} ({os.cpu_count()} CPUs)",
              "command": " ".join(sys.argv), "threads": args.threads,
              "model_hash": model.model_hash[:12]}
    result["checks"] = alarms_and_detections(model, sets, args.real_data, args.seed)
    result["readings"] = readings(model, sets, args.seed)
    result["speed"] = speed(model, sets, args.repeats)
    result["load_before_after"] = [load_before, os.getloadavg()]

    print(f"model {result['model_hash']}: the O2 A band found (depth: continuum units below "
          f"the model's redrawing)")
    print(f"{'spectra':72s} {'A band':>6s} {'found':>6s} {'depth p1 / median / p99 / max':>31s}")
    for r in result["checks"]:
        dep = (f"{r['depth_p01']:+.3f} {r['depth_median']:+.3f} {r['depth_p99']:+.3f} "
               f"{r['depth_max']:+.3f}" if "depth_median" in r else "")
        print(f"{r['case'][:72]:72s} {r['with_a_band']:6d} {r['detected']:6.3f} {dep:>31s}")
    print("\nheld-out DR10 FGK stars (S/N_g > 30): bias / sigma against LASP, z-widths")
    for r in result["readings"]:
        det = f" (found {r['detected']:.2f})" if "detected" in r else ""
        print(f"  {r['case']:36s} {r['read'] + det:32s} Teff {r['teff_bias']:+4.0f}/"
              f"{r['teff_sigma']:4.0f}  logg {r['logg_bias']:+.3f}/{r['logg_sigma']:.3f}  "
              f"[Fe/H] {r['feh_bias']:+.3f}/{r['feh_sigma']:.3f}  z {r['teff_z']:.2f}/"
              f"{r['logg_z']:.2f}/{r['feh_z']:.2f}")
    sp = result["speed"]
    print(f"\ncheck_telluric: {sp['batch_ms']:.2f} ms a spectrum in batches of 256, "
          f"{sp['single_ms']:.2f} ms one at a time (a single spectrum's embedding with the "
          f"domain check: {sp['embed_single_ms']:.2f} ms; together x{sp['ratio_single']:.2f})")
    print(f"the embedding builder's model step over {len(sets['lamost_dr10'])} DR10 rows: "
          f"{sp['builder_per_s']:,.0f} spectra/s, {sp['builder_checked_per_s']:,.0f} with "
          f"check_telluric (x{sp['builder_ratio']:.2f} the time)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
