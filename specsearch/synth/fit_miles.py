"""Fit the data-driven part of the synthetic spectra on the MILES stellar library.

Regenerate the shipped coefficients with::

    python -m specsearch.synth.fit_miles ../shared/data/real/miles \\
        --out specsearch/data/synth/miles_emulator.npz

What is fitted (see :mod:`specsearch.synth.emulator` for how it is used):

* each MILES spectrum (air -> vacuum) is split into a smooth pseudo-continuum and a
  continuum-normalised line spectrum N. The continuum is :func:`specsearch.preprocess.continuum`
  sampled at ``NODE_STEP_A`` nodes; its log ratio to a black body at the star's Teff, s(node),
  is the SED part (normalised at 5500 A);
* N is modelled per Teff bin as a Cannon-style quadratic in (log Teff, log g, [Fe/H])
  (ridge-regularised least squares, one solve per bin for all pixels); below 4100 K the
  quadratic models -ln N (``TAU_BELOW``);
* s is modelled the same way with one extra nuisance per star, its E(B-V): MILES spectra are
  not dereddened, so the fit alternates (5 rounds) between the quadratic and a per-star
  non-negative E(B-V) along the G23 extinction curve; the 10th percentile star of each bin
  is taken as unreddened (the zero point of E(B-V) is otherwise degenerate).

Every 5th star (sorted by ``miles_id``) is held out for the fidelity benchmark; their ids are
stored in the file. Only plain arrays are saved (``np.load(..., allow_pickle=False)``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from specsearch.errors import ReaderError
from specsearch.fsutil import atomic_path
from specsearch.preprocess import air_to_vacuum, continuum
from specsearch.synth.grid import planck_lambda

NODE_STEP_A = 40.0
NODE_RANGE_A = (3570.0, 7390.0)          # vacuum; nodes inside the MILES coverage
NORM_WINDOW_A = (5450.0, 5550.0)
TEFF_EDGES = (3600.0, 4100.0, 4600.0, 5200.0, 6000.0, 7000.0, 9000.0, 15000.0)
"""Core Teff bin edges (K); each bin is trained on its core widened by ``MARGIN``."""
TAU_BELOW = 4100.0
"""Bins cooler than this model the optical depth -ln N instead of N: TiO bands make N of
M stars vary by factors of several, which is linear in tau but not in N (held-out RMS of
M stars 0.34 -> 0.04)."""
TAU_FLOOR_N = 0.02
MARGIN = 0.12
RIDGE = 0.02
HOLDOUT_EVERY = 5
CONTINUUM_HALF_WIDTH = 90                # MILES pixels (0.9 A): ~80 A, like the LAMOST default


def read_miles(folder: str | Path) -> dict:
    """Read MILES spectra + labels: wave_vac (npix,), flux (n, npix), labels, ids."""
    import csv

    from astropy.io import fits

    folder = Path(folder)
    label_path = folder / "labels.csv"
    if not label_path.is_file():
        raise ReaderError(label_path, "MILES label table not found (expected labels.csv with "
                                      "miles_id, teff, logg, feh)")
    rows = list(csv.DictReader(open(label_path)))
    ids, teff, logg, feh, flux = [], [], [], [], []
    wave = None
    for r in sorted(rows, key=lambda r: r["miles_id"]):
        try:
            t, g, f = float(r["teff"]), float(r["logg"]), float(r["feh"])
        except ValueError:
            continue
        if not (np.isfinite([t, g, f]).all() and abs(f) < 10 and t > 0):
            continue
        path = folder / "spectra" / f"MILES_res2.50_star_{r['miles_id']}.fits"
        if not path.is_file():
            continue
        with fits.open(path) as hdul:
            data = np.asarray(hdul[0].data, dtype=np.float64)
            h = hdul[0].header
            w = h["CRVAL1"] + h["CDELT1"] * (np.arange(data.size) + 1 - h.get("CRPIX1", 1))
        if wave is None:
            wave = w
        if data.size != wave.size or not np.all(np.isfinite(data)) or np.median(data) <= 0:
            continue
        ids.append(r["miles_id"])
        teff.append(t)
        logg.append(g)
        feh.append(f)
        flux.append(data)
    if not ids:
        raise ReaderError(folder, "no usable MILES spectrum with labels")
    return {"ids": np.array(ids), "teff": np.array(teff), "logg": np.array(logg),
            "feh": np.array(feh), "flux": np.array(flux), "wave_air": wave,
            "wave_vac": air_to_vacuum(wave)}


def design_matrix(x: np.ndarray) -> np.ndarray:
    """(n, 10) Cannon quadratic terms of scaled labels x (n, 3)."""
    a, b, c = x[:, 0], x[:, 1], x[:, 2]
    one = np.ones_like(a)
    return np.stack([one, a, b, c, a * a, b * b, c * c, a * b, a * c, b * c], axis=1)


def split(miles: dict) -> dict:
    """Pseudo-continuum nodes s (n, nodes) and normalised flux N (n, npix) per star."""
    wave = miles["wave_vac"]
    flux = miles["flux"] / np.median(miles["flux"], axis=1, keepdims=True)
    cont = continuum(flux, np.ones_like(flux), half_width=CONTINUUM_HALF_WIDTH)
    nodes = np.arange(NODE_RANGE_A[0], NODE_RANGE_A[1] + 1e-6, NODE_STEP_A)
    bb_nodes = planck_lambda(nodes[None, :], miles["teff"][:, None])
    cont_nodes = np.stack([np.interp(nodes, wave, c) for c in cont])
    s = np.log(cont_nodes / bb_nodes)
    in_norm = (nodes >= NORM_WINDOW_A[0] - NODE_STEP_A) & (nodes <= NORM_WINDOW_A[1]
                                                           + NODE_STEP_A)
    s -= s[:, in_norm].mean(axis=1, keepdims=True)
    smooth = planck_lambda(wave[None, :], miles["teff"][:, None]) * np.exp(
        np.stack([np.interp(wave, nodes, si) for si in s]))
    # The star's flux scale is arbitrary (relative MILES fluxes): it goes into N's
    # normalisation, not into s, so that S = pi B_lambda exp(s) is a surface flux that is
    # exactly pi B_lambda(Teff) at 5500 A (composites then add correctly with radii).
    scale = np.median(flux / smooth, axis=1, keepdims=True)
    return {"nodes": nodes, "s": s, "N": flux / (smooth * scale)}


def extinction_curve_ln(wave_A: np.ndarray) -> np.ndarray:
    """d ln F / d E(B-V) for R_V = 3.1 (G23): -0.921 * R_V * A(lambda)/A(V)."""
    import astropy.units as u
    from dust_extinction.parameter_averages import G23

    return -0.4 * np.log(10.0) * 3.1 * G23(Rv=3.1)(np.asarray(wave_A) * u.AA)


def fit_bin(x: np.ndarray, y: np.ndarray, ridge: float = RIDGE,
            n_terms: int = 10) -> np.ndarray:
    """Ridge least squares y ~ design(x)[:, :n_terms] @ coef; returns (10, npix) (zero-padded)."""
    a = design_matrix(x)[:, :n_terms]
    reg = ridge * len(x) * np.eye(n_terms)
    reg[0, 0] = 0.0
    coef = np.linalg.solve(a.T @ a + reg, a.T @ y)
    out = np.zeros((10, y.shape[1]))
    out[:n_terms] = coef
    return out


def fit(miles: dict, *, holdout_every: int = HOLDOUT_EVERY) -> dict:
    """Fit all bins on the training stars; returns the arrays saved in the data file."""
    parts = split(miles)
    n = len(miles["ids"])
    holdout = (np.arange(n) % holdout_every) == holdout_every - 1 if holdout_every else \
        np.zeros(n, bool)
    train = ~holdout
    lab = np.stack([np.log10(miles["teff"]), miles["logg"], miles["feh"]], axis=1)
    k_nodes = extinction_curve_ln(parts["nodes"])
    edges = np.concatenate([[2000.0], TEFF_EDGES, [60000.0]])
    out: dict[str, list] = {k: [] for k in ("coef_n", "coef_s", "offset", "scale", "lo", "hi",
                                            "n_train", "tau")}
    ebv = np.zeros(n)
    for b in range(len(edges) - 1):
        t_lo, t_hi = edges[b] * (1 - MARGIN), edges[b + 1] * (1 + MARGIN)
        sel = train & (miles["teff"] >= t_lo) & (miles["teff"] <= t_hi)
        if sel.sum() < 8:
            raise ReaderError(None, f"Teff bin {edges[b]:.0f}-{edges[b + 1]:.0f} K has only "
                                    f"{sel.sum()} training stars; widen TEFF_EDGES")
        offset, scale = lab[sel].mean(axis=0), lab[sel].std(axis=0) + 1e-3
        x = (lab[sel] - offset) / scale
        n_terms = 10 if sel.sum() >= 40 else 5       # few hot stars: linear + (log T)^2
        tau = edges[b + 1] <= TAU_BELOW
        target = -np.log(np.clip(parts["N"][sel], TAU_FLOOR_N, None)) if tau else parts["N"][sel]
        coef_n = fit_bin(x, target, n_terms=n_terms)
        out["tau"].append(tau)
        s = parts["s"][sel]
        e = np.zeros(sel.sum())
        for _ in range(5):
            coef_s = fit_bin(x, s - e[:, None] * k_nodes, n_terms=n_terms)
            resid = s - design_matrix(x) @ coef_s
            e = np.clip(e + resid @ k_nodes / (k_nodes @ k_nodes), 0.0, 2.0)
        e0 = np.percentile(e, 10)
        coef_s = fit_bin(x, s - (e - e0)[:, None] * k_nodes, n_terms=n_terms)
        ebv[sel] = np.maximum(ebv[sel], e - e0)
        out["coef_n"].append(coef_n.astype(np.float32))
        out["coef_s"].append(coef_s.astype(np.float32))
        out["offset"].append(offset)
        out["scale"].append(scale)
        out["lo"].append(np.percentile(lab[sel], 1, axis=0))
        out["hi"].append(np.percentile(lab[sel], 99, axis=0))
        out["n_train"].append(int(sel.sum()))
    meta = {"source": "MILES v9.1 (Sanchez-Blazquez et al. 2006; Falcon-Barroso et al. 2011), "
                      "labels Cenarro et al. 2007", "n_stars": int(n),
            "n_train": int(train.sum()), "holdout_every": holdout_every,
            "teff_edges": list(TEFF_EDGES), "tau_below": TAU_BELOW, "margin": MARGIN, "ridge": RIDGE,
            "node_step_A": NODE_STEP_A, "continuum_half_width_px": CONTINUUM_HALF_WIDTH,
            "n_train_per_bin": out["n_train"], "fwhm_A": 2.5}
    return {
        "wave_vac": miles["wave_vac"].astype(np.float64),
        "node_wave_vac": parts["nodes"].astype(np.float64),
        "teff_edges": np.array(TEFF_EDGES),
        "coef_n": np.stack(out["coef_n"]), "bin_is_tau": np.array(out["tau"]),
        "coef_s": np.stack(out["coef_s"]),
        "label_offset": np.stack(out["offset"]), "label_scale": np.stack(out["scale"]),
        "label_lo": np.stack(out["lo"]), "label_hi": np.stack(out["hi"]),
        "holdout_ids": miles["ids"][holdout].astype("U16"),
        "train_ids": miles["ids"][train].astype("U16"),
        "train_labels": lab[train].astype(np.float64),
        "miles_ebv_estimate": ebv.astype(np.float32),
        "miles_ids": miles["ids"].astype("U16"),
        "meta_json": np.array(json.dumps(meta)),
    }


def save(arrays: dict, path: str | Path) -> Path:
    """Write the arrays as a compressed .npz atomically."""
    path = Path(path)
    with atomic_path(path, suffix=".npz") as tmp:   # savez appends .npz to other names
        np.savez_compressed(tmp, **arrays)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fit the synthetic-spectrum emulator on MILES.")
    p.add_argument("miles", help="MILES folder (labels.csv + spectra/)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "synth"
                                        / "miles_emulator.npz"))
    p.add_argument("--holdout-every", type=int, default=HOLDOUT_EVERY,
                   help="hold out every k-th star (0: fit on all)")
    args = p.parse_args(argv)
    arrays = fit(read_miles(args.miles), holdout_every=args.holdout_every)
    path = save(arrays, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB); "
          f"{json.loads(str(arrays['meta_json']))}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
