"""Ultracool dwarfs (late M and early L, Teff ~1,900-2,900 K) from real SDSS spectra.

The data-driven emulator behind the synthetic survey (:mod:`specsearch.synth.emulator`) is
fitted on MILES, which holds no dwarfs below ~2,900 K, so the survey's normal stars stop
there. Late-M and L dwarfs are nothing like a cooler M dwarf: TiO and VO saturate, the
alkali lines (Na I, K I) broaden over hundreds of Angstrom, FeH and CrH bands appear and
the flux blueward of 6,000 A all but vanishes. A model trained without them reads a real
M8-L1 dwarf's Gaia XP spectrum as a ~5,000 K star.

This population is made from real spectra instead: the PyHammer co-adds of SDSS/BOSS
spectra by spectral type (Kesseli et al. 2017; MIT licence; ``templates/sdss_pyhammer`` in
the real data), which cover 3,650-10,200 A, nearly the whole XP range, at LAMOST's
resolution. Per type M5-L3 the co-adds of every [Fe/H] bin are averaged (weighted by the
number of spectra in each), placed at the dwarf Teff of the type (Pecaut & Mamajek 2013,
E. Mamajek's 2022.04.16 table), scaled to the black body of that Teff over 7,500-10,000 A
(the survey scales each star to its G magnitude; only the shape matters) and put on the
model grid (:func:`specsearch.synth.grid.model_grid`); beyond the co-adds' ends the flux is
held at the mean of the nearest 100 A. A star of Teff T interpolates log flux linearly
between the two nearest types. The result is shipped in
``specsearch/data/synth/ultracool_templates.npz`` (refit with ``python -m
specsearch.synth.ultracool ../shared/data/real``).

What a star then gets from the survey is what every star gets: extinction with its own
R_V, radial velocity, the LAMOST and XP instrument models and noise. What it does not get:
individuality (abundances, rotation) and the realism corrections, which were fitted for the
emulator's stars (the co-adds are real spectra already). The SDSS co-adds of M8-L6 are then
no longer independent of training for the LAMOST side; the real Gaia XP dwarf templates
(M8V-L1V, mean Gaia DR3 spectra of SIMBAD-typed stars) still are.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from specsearch.errors import ConfigError

TEMPLATE_FILE = Path(__file__).resolve().parents[1] / "data" / "synth" / "ultracool_templates.npz"
TYPES: tuple[str, ...] = ("M5", "M6", "M7", "M8", "M9", "L0", "L1", "L2", "L3")
"""Spectral types used (M5 anchors the warm end, where the emulator's M dwarfs are)."""
TYPE_TEFF: dict[str, float] = {
    "M5": 3060.0, "M6": 2810.0, "M7": 2680.0, "M8": 2570.0, "M9": 2380.0,
    "L0": 2270.0, "L1": 2160.0, "L2": 2060.0, "L3": 1920.0,
}
"""Dwarf Teff (K) per type: Pecaut & Mamajek (2013), E. Mamajek's 2022.04.16 table."""
TEFF_RANGE = (1950.0, 2900.0)
"""Teff drawn for the population: below the emulator's coolest dwarfs, within the types."""
SCALE_WINDOW_A = (7500.0, 10000.0)
EDGE_A = 100.0
FLOOR = 1e-4
"""Flux floor relative to each template's peak (the blue end of an L dwarf is ~0 and noisy)."""


def build(real: Path) -> dict[str, np.ndarray]:
    """Per-type log-flux templates on the model grid from the PyHammer co-adds under
    ``real/templates/sdss_pyhammer`` (see the module doc)."""
    import h5py

    from specsearch.model.training.real_sets import read_csv_rows, to_float
    from specsearch.synth.grid import model_wavelength, planck_lambda

    folder = Path(real) / "templates" / "sdss_pyhammer"
    h5, meta = folder / "pyhammer_templates_228.h5", folder / "templates_meta.csv"
    if not (h5.is_file() and meta.is_file()):
        raise ConfigError(f"{folder}: pyhammer_templates_228.h5 and templates_meta.csv needed")
    with h5py.File(h5, "r") as f:
        wave = np.asarray(f["wavelength"], np.float64)
        flux = np.asarray(f["flux"], np.float64)
    rows = read_csv_rows(meta)
    if len(rows) != flux.shape[0]:
        raise ConfigError(f"{meta}: {len(rows)} rows for {flux.shape[0]} templates in {h5}")
    spt = np.array([r["spt"] for r in rows])
    dwarf = np.array([r.get("lum_class", "") in ("", "Dwarf") for r in rows])
    n_co = np.array([max(to_float(r.get("n_spectra_coadded")), 1.0) for r in rows])
    mwave = model_wavelength()
    lo_edge, hi_edge = wave[0], wave[-1]
    blue = (wave < lo_edge + EDGE_A)
    red = (wave > hi_edge - EDGE_A)
    out = np.empty((len(TYPES), mwave.size), np.float32)
    used = []
    for i, t in enumerate(TYPES):
        sel = np.flatnonzero((spt == t) & dwarf & np.isfinite(flux).all(axis=1))
        if sel.size == 0:
            raise ConfigError(f"{h5}: no dwarf template of type {t}")
        norm = flux[sel] / np.median(flux[sel], axis=1, keepdims=True)
        mean = (n_co[sel, None] * norm).sum(0) / n_co[sel].sum()
        mean = np.maximum(mean, FLOOR * mean.max())
        on_grid = np.interp(mwave, wave, mean)
        on_grid[mwave < lo_edge] = mean[blue].mean()
        on_grid[mwave > hi_edge] = mean[red].mean()
        win = (mwave >= SCALE_WINDOW_A[0]) & (mwave <= SCALE_WINDOW_A[1])
        bb = planck_lambda(mwave[win], np.array([TYPE_TEFF[t]]))[0]
        on_grid *= bb.mean() / on_grid[win].mean()
        out[i] = np.log(on_grid)
        used.append(",".join(rows[j]["name"] for j in sel))
    return {"types": np.array(TYPES), "teff": np.array([TYPE_TEFF[t] for t in TYPES]),
            "log_flux": out, "wavelength": mwave, "sources": np.array(used)}


def save(path: Path, templates: dict[str, np.ndarray]) -> None:
    import io

    from specsearch.fsutil import write_bytes_atomic

    buf = io.BytesIO()
    np.savez_compressed(buf, **templates)
    write_bytes_atomic(Path(path), buf.getvalue())


@functools.lru_cache(maxsize=1)
def load(path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(teff (k,) ascending, log flux (k, npix)) of the shipped templates."""
    from specsearch.synth.grid import model_wavelength

    p = Path(path) if path else TEMPLATE_FILE
    if not p.is_file():
        raise ConfigError(f"{p}: the ultracool templates are missing; rebuild them with "
                          f"`python -m specsearch.synth.ultracool ../shared/data/real`")
    with np.load(p, allow_pickle=False) as z:
        teff = z["teff"].astype(np.float64)
        log_flux = z["log_flux"].astype(np.float32)
        wave = z["wavelength"]
    if wave.shape != model_wavelength().shape or not np.allclose(wave, model_wavelength()):
        raise ConfigError(f"{p}: templates are not on the model grid; rebuild them")
    order = np.argsort(teff)
    return teff[order], log_flux[order]


def ultracool_spectra(teff: np.ndarray) -> np.ndarray:
    """(n, npix) surface flux of ultracool dwarfs of Teff ``teff`` (K): log-linear
    interpolation between the two nearest type templates (clamped at the ends)."""
    nodes, log_flux = load()
    t = np.clip(np.asarray(teff, np.float64), nodes[0], nodes[-1])
    j = np.clip(np.searchsorted(nodes, t) - 1, 0, len(nodes) - 2)
    w = ((t - nodes[j]) / (nodes[j + 1] - nodes[j])).astype(np.float32)[:, None]
    return np.exp((1.0 - w) * log_flux[j] + w * log_flux[j + 1])


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m specsearch.synth.ultracool",
                                description="Build the ultracool dwarf templates of the "
                                            "synthetic survey from the PyHammer SDSS co-adds")
    p.add_argument("real", type=Path, help="the real data directory (../shared/data/real)")
    p.add_argument("--out", type=Path, default=TEMPLATE_FILE)
    a = p.parse_args(argv)
    t = build(a.real)
    save(a.out, t)
    for ty, src in zip(t["types"], t["sources"]):
        print(f"{ty}: {src}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
