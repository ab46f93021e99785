"""Synthetic survey benchmark: MILES fidelity, XP realism, generation speed.

    python benchmarks/bench_synth.py [--miles ../shared/data/real/miles] [--speed-stars 4000]

1. Fidelity vs MILES (fit on 4/5 of the stars, reported on the held-out 1/5 and, separately,
   on the training stars): RMS of continuum-normalised flux differences over 3700-7400 A,
   median and 90th percentile, overall and in bins of Teff and [Fe/H]. Baselines in the same
   run: (a) the nearest *training* MILES star in scaled labels (a strong data-only
   baseline), (b) a line-free black body. Figure: benchmarks/results/synth_fidelity.png.
2. XP: synthetic solar analogues vs the real solar twin 18 Sco (shape coefficients
   c_i / c_0 and sampled spectra), and a synthetic default-mix survey vs the real 2000-source
   DR3 sky patch (per-coefficient percentiles, KS distance, fraction of real sources inside
   the synthetic 1-99% range).
3. Speed: stars/s of in-memory generation (batches of 500) and of writing a catalog, vs
   generating one star at a time (the baseline the vectorisation is measured against).

Prints tables and writes benchmarks/results/synth.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
REAL = ROOT.parent / "shared" / "data" / "real"
TEFF_BINS = [2000, 4000, 5000, 6000, 7500, 10000, 60000]
FEH_BINS = [-4.0, -2.0, -1.0, -0.5, 0.0, 1.0]


def fidelity(miles_dir: Path) -> dict:
    from specsearch.synth.emulator import holdout_ids
    from specsearch.synth.fidelity import (
        binned_table,
        miles_fidelity,
        normalise_on_lamost_grid,
    )
    from specsearch.synth.fit_miles import read_miles
    from specsearch.synth.grid import planck_lambda

    miles = read_miles(miles_dir)
    train_ids, held_ids = holdout_ids()
    held = miles_fidelity(miles, held_ids)
    train = miles_fidelity(miles, train_ids)
    # Baselines on the held-out stars.
    tr = np.isin(miles["ids"], train_ids)
    lab = np.stack([np.log10(miles["teff"]) / 0.05, miles["logg"] / 0.3,
                    miles["feh"] / 0.2], axis=1)
    ho = np.array([np.flatnonzero(miles["ids"] == i)[0] for i in held.ids])
    nn = np.flatnonzero(tr)[np.argmin(((lab[ho, None, :] - lab[None, tr, :]) ** 2).sum(-1),
                                      axis=1)]
    nn_norm, _ = normalise_on_lamost_grid(miles["wave_vac"], miles["flux"][nn])
    bb = planck_lambda(miles["wave_vac"][None, :], miles["teff"][ho][:, None])
    bb_norm, _ = normalise_on_lamost_grid(miles["wave_vac"], bb)
    m = held.mask

    def rms(a):
        return np.sqrt(np.mean((held.real_norm[:, m] - a[:, m]) ** 2, axis=1))

    base_nn, base_bb = rms(nn_norm), rms(bb_norm)
    out = {"held_out": _summary(held.rms), "train": _summary(train.rms),
           "baseline_nearest_training_star": _summary(base_nn),
           "baseline_black_body": _summary(base_bb),
           "ratio_median_vs_nearest_star": float(np.median(held.rms) / np.median(base_nn)),
           "held_out_by_teff": binned_table(held.rms, held.teff, TEFF_BINS),
           "held_out_by_feh": binned_table(held.rms, held.feh, FEH_BINS),
           "train_by_teff": binned_table(train.rms, train.teff, TEFF_BINS),
           "train_by_feh": binned_table(train.rms, train.feh, FEH_BINS),
           "n_held_out": int(held.rms.size), "n_train": int(train.rms.size)}
    _figure(held, RESULTS / "synth_fidelity.png")
    return out


def _summary(rms: np.ndarray) -> dict:
    return {"median": float(np.median(rms)), "p90": float(np.percentile(rms, 90)),
            "n": int(rms.size)}


def _figure(res, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [("Sun-like dwarf", lambda t, g, f: (t > 5500) & (t < 6100) & (g > 4.0)
                & (np.abs(f) < 0.3)),
               ("K giant", lambda t, g, f: (t > 4300) & (t < 4900) & (g < 3.0) & (f > -0.5)),
               ("metal-poor giant", lambda t, g, f: (f < -1.5) & (g < 3.5)),
               ("M dwarf", lambda t, g, f: (t < 4000) & (g > 4.3)),
               ("M giant", lambda t, g, f: (t < 3700) & (g < 2.0)),
               ("A star", lambda t, g, f: (t > 7500) & (t < 11000)),
               ("B star", lambda t, g, f: t > 11000)]
    picks = []
    for name, cond in targets:
        idx = np.flatnonzero(cond(res.teff, res.logg, res.feh))
        if idx.size:   # the most typical one of the class: median RMS
            picks.append((name, idx[np.argsort(res.rms[idx])[idx.size // 2]]))
    fig, axes = plt.subplots(len(picks), 1, figsize=(13, 2.3 * len(picks)), sharex=True)
    w = res.wavelength
    for ax, (name, i) in zip(np.atleast_1d(axes), picks):
        ax.plot(w[res.mask], res.real_norm[i, res.mask], lw=0.6, color="k", label="MILES")
        ax.plot(w[res.mask], res.synth_norm[i, res.mask], lw=0.6, color="C3", alpha=0.8,
                label="synthetic")
        ax.set_ylim(0, 1.4)
        ax.set_title(f"{name}: {res.ids[i]}  Teff={res.teff[i]:.0f} logg={res.logg[i]:.2f} "
                     f"[Fe/H]={res.feh[i]:.2f}  RMS={res.rms[i]:.3f} (held out)", fontsize=9)
    np.atleast_1d(axes)[0].legend(loc="lower right", fontsize=8)
    np.atleast_1d(axes)[-1].set_xlabel("vacuum wavelength (A), LAMOST grid, 2.5 A FWHM")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def xp_realism(xp_dir: Path, n_mix: int = 2000) -> dict:
    from specsearch.io.gaia_xp import read_xp_continuous
    from specsearch.synth.fidelity import ks_statistic, normalised_coefficients
    from specsearch.synth.model import stellar_spectra
    from specsearch.synth.survey import SynthConfig, iter_survey
    from specsearch.synth.xp import noiseless_coefficients

    k = 12
    out: dict = {}
    sco = read_xp_continuous(xp_dir / "archive_format" / "18Sco-XP-spectra.csv")
    rng = np.random.default_rng(0)
    n = 200      # solar analogues, labels scattered like "solar-like" stars
    teff, logg, feh = (rng.uniform(5650, 5900, n), rng.uniform(4.3, 4.55, n),
                       rng.uniform(-0.1, 0.15, n))
    bp, rp, _ = noiseless_coefficients(stellar_spectra(teff, logg, feh, np.zeros(n)),
                                       np.full(n, 5.3))
    syn = normalised_coefficients(bp, rp, k)
    real = normalised_coefficients(sco.bp_coefficients, sco.rp_coefficients, k)[0]
    lo, hi = np.percentile(syn, 0.5, axis=0), np.percentile(syn, 99.5, axis=0)
    patch = read_xp_continuous(xp_dir / "xp_continuous_combined_chunk0.fits")
    ok = patch.has("bp") & patch.has("rp") & (patch.bp_coefficients[:, 0] > 0) & \
        (patch.rp_coefficients[:, 0] > 0)
    real_mix = normalised_coefficients(patch.bp_coefficients[ok], patch.rp_coefficients[ok], k)
    q75, q25 = np.percentile(real_mix, [75, 25], axis=0)
    # Yardstick: the spread of real stars (robust sigma of the sky patch) per coefficient.
    d = (real - np.median(syn, axis=0)) / ((q75 - q25) / 1.349)
    from specsearch.io import xp_basis as xb

    f_real = xb.sample(sco.bp_coefficients, sco.rp_coefficients)[0][0]
    f_syn = xb.sample(bp, rp)[0]
    f_syn = f_syn / f_syn.mean(axis=1, keepdims=True)
    shape_rms = np.sqrt(np.mean((f_syn - f_real / f_real.mean()) ** 2, axis=1))
    out["18sco"] = {"n_synthetic": n, "labels": "Teff 5650-5900, logg 4.3-4.55, [Fe/H] "
                                                "-0.1..0.15, E(B-V)=0",
                    "coef_inside_synthetic_99pct": float(np.mean((real >= lo) & (real <= hi))),
                    "median_abs_diff_in_patch_sigma": float(np.median(np.abs(d))),
                    "diff_bp_1_to_6_in_patch_sigma": np.round(d[:6], 2).tolist(),
                    "diff_rp_1_to_6_in_patch_sigma": np.round(d[k:k + 6], 2).tolist(),
                    "sampled_shape_rms_median": float(np.median(shape_rms))}
    parts = [b[1] for b in iter_survey(SynthConfig(n=n_mix, seed=2026, shard_size=n_mix))]
    sbp = np.concatenate([p["bp_coefficients"] for p in parts]).astype(np.float64)
    srp = np.concatenate([p["rp_coefficients"] for p in parts]).astype(np.float64)
    good = (sbp[:, 0] > 0) & (srp[:, 0] > 0)
    syn_mix = normalised_coefficients(sbp[good], srp[good], k)
    rows = []
    for j in range(2 * k):
        name = f"{'bp' if j < k else 'rp'}_{j % k + 1}/c0"
        r, s = real_mix[:, j], syn_mix[:, j]
        slo, shi = np.percentile(s, [1, 99])
        rows.append({"coef": name, "real_p5_50_95": np.round(np.percentile(r, [5, 50, 95]),
                                                            3).tolist(),
                     "synth_p5_50_95": np.round(np.percentile(s, [5, 50, 95]), 3).tolist(),
                     "ks": round(ks_statistic(r, s), 3),
                     "real_inside_synth_1_99": round(float(np.mean((r >= slo) & (r <= shi))),
                                                     3)})
    out["sky_patch"] = {"n_real": int(ok.sum()), "n_synthetic": int(good.sum()),
                        "coefficients": rows,
                        "median_ks": float(np.median([r["ks"] for r in rows])),
                        "median_inside": float(np.median([r["real_inside_synth_1_99"]
                                                          for r in rows])),
                        "bp_c0_real_p5_50_95": np.percentile(
                            patch.bp_coefficients[ok, 0], [5, 50, 95]).round(1).tolist(),
                        "bp_c0_synth_p5_50_95": np.percentile(sbp[good, 0], [5, 50, 95]
                                                              ).round(1).tolist()}
    return out


def speed(n_stars: int) -> dict:
    """Wall-clock and CPU throughput. CPU seconds per star are what to trust on a shared
    machine; the 1M-star projection assumes 2 idle cores."""
    import resource

    from specsearch.synth import generate_survey
    from specsearch.synth.survey import SynthConfig, generate_batch

    config = SynthConfig(n=n_stars, seed=99, shard_size=n_stars)
    generate_batch(config, 0, 0)                      # warm-up: caches, operators
    t0, c0 = time.perf_counter(), time.process_time()
    for b in range(-(-n_stars // 500)):
        generate_batch(config, 0, b)
    t_mem, c_mem = time.perf_counter() - t0, time.process_time() - c0
    one = SynthConfig(n=20, seed=99, shard_size=1)
    t0 = time.perf_counter()
    for s in range(20):
        generate_batch(one, s, 0)
    t_one = (time.perf_counter() - t0) / 20
    with tempfile.TemporaryDirectory() as tmp:
        c0 = time.process_time()
        rep = generate_survey(Path(tmp) / "cat", n=n_stars, seed=5, shard_size=n_stars // 2,
                              workers=1, progress=False)
        c_write = time.process_time() - c0
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        rep2 = generate_survey(Path(tmp) / "cat2", n=2 * n_stars, seed=5,
                               shard_size=n_stars // 2, workers=2, progress=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        c_children = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        disk = sum(p.stat().st_size for p in (Path(tmp) / "cat").rglob("*.parquet"))
    load = os.getloadavg()[0]
    cpu_per_star = c_write / n_stars
    return {"stars": n_stars, "load_average_1min": load,
            "in_memory_stars_per_s": n_stars / t_mem,
            "in_memory_cpu_ms_per_star": 1e3 * c_mem / n_stars,
            "one_at_a_time_stars_per_s": 1.0 / t_one,
            "speedup_vs_one_at_a_time": n_stars / t_mem * t_one,
            "write_1_worker_stars_per_s": rep.stars_per_second,
            "write_cpu_ms_per_star": 1e3 * cpu_per_star,
            "write_2_workers_stars_per_s": rep2.stars_per_second,
            "write_2_workers_cpu_ms_per_star": 1e3 * c_children / (2 * n_stars),
            "disk_kb_per_star": disk / n_stars / 1e3,
            "projected_minutes_1M_2_idle_cores": 1e6 * cpu_per_star / 2 / 60.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--miles", type=Path, default=REAL / "miles")
    p.add_argument("--gaia-xp", type=Path, default=REAL / "gaia_xp")
    p.add_argument("--speed-stars", type=int, default=4000)
    args = p.parse_args(argv)
    result = {"fidelity": fidelity(args.miles), "xp": xp_realism(args.gaia_xp),
              "speed": speed(args.speed_stars)}
    f = result["fidelity"]
    print("\nMILES fidelity: RMS of continuum-normalised flux difference, 3700-7400 A")
    print(f"{'set':36s} {'n':>5s} {'median':>8s} {'p90':>8s}")
    for key in ("held_out", "train", "baseline_nearest_training_star", "baseline_black_body"):
        s = f[key]
        print(f"{key:36s} {s['n']:5d} {s['median']:8.4f} {s['p90']:8.4f}")
    for title, key, fmt in (("Teff", "held_out_by_teff", "{:.0f}-{:.0f} K"),
                            ("[Fe/H]", "held_out_by_feh", "{:+.1f}..{:+.1f}")):
        print(f"\nheld out by {title}")
        for row in f[key]:
            print(f"  {fmt.format(row['lo'], row['hi']):18s} n={row['n']:3d} "
                  f"median={row['median']:.4f} p90={row['p90']:.4f}")
    x = result["xp"]
    print(f"\n18 Sco vs {x['18sco']['n_synthetic']} synthetic solar analogues: "
          f"{x['18sco']['coef_inside_synthetic_99pct']:.0%} of 24 shape coefficients inside "
          f"the synthetic 0.5-99.5% range; median |18 Sco - synthetic| = "
          f"{x['18sco']['median_abs_diff_in_patch_sigma']:.2f} sky-patch sigma; "
          f"sampled-shape RMS {x['18sco']['sampled_shape_rms_median']:.3f}")
    sp_ = x["sky_patch"]
    print(f"sky patch ({sp_['n_real']} real vs {sp_['n_synthetic']} synthetic): median KS "
          f"{sp_['median_ks']:.3f}, median fraction of real inside synthetic 1-99% "
          f"{sp_['median_inside']:.3f}")
    for row in sp_["coefficients"]:
        print(f"  {row['coef']:8s} real {row['real_p5_50_95']} synth {row['synth_p5_50_95']} "
              f"KS {row['ks']:.3f} inside {row['real_inside_synth_1_99']:.3f}")
    s = result["speed"]
    print(f"\nspeed (load average {s['load_average_1min']:.1f} on this machine): "
          f"{s['in_memory_stars_per_s']:.0f} stars/s in memory (batches of 500, "
          f"{s['in_memory_cpu_ms_per_star']:.2f} ms CPU/star), "
          f"{s['one_at_a_time_stars_per_s']:.1f} stars/s one at a time "
          f"(x{s['speedup_vs_one_at_a_time']:.0f}); writing: "
          f"{s['write_1_worker_stars_per_s']:.0f} stars/s with 1 worker "
          f"({s['write_cpu_ms_per_star']:.2f} ms CPU/star), "
          f"{s['write_2_workers_stars_per_s']:.0f} stars/s with 2 workers "
          f"({s['write_2_workers_cpu_ms_per_star']:.2f} ms CPU/star incl. start-up); "
          f"{s['disk_kb_per_star']:.0f} kB/star on disk; 1M stars on 2 idle cores: "
          f"~{s['projected_minutes_1M_2_idle_cores']:.0f} min")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "synth.json").write_text(json.dumps(result, indent=2))
    print(f"\nwrote {RESULTS / 'synth.json'} and {RESULTS / 'synth_fidelity.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
