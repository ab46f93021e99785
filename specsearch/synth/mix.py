"""Drawing the labels of a batch: the Galactic mix of normal stars and each rare population.

See :mod:`specsearch.synth.labels` for the populations, fractions and ranges.
"""

from __future__ import annotations

import numpy as np

from specsearch.synth.labels import (
    COMPONENTS,
    LABEL_RANGES,
    NORMAL_FEH_FLOOR,
    POPULATIONS,
    StellarLabels,
    alpha_for,
    ms_logg,
    ms_radius,
    population_counts,
    rgb_teff,
    truncated_normal,
)

# Evolutionary states of normal stars and their weights (a LAMOST-like magnitude-limited
# sample: mostly FGK dwarfs and red giants).
STATES = ("dwarf", "mdwarf", "hot_ms", "subgiant", "rgb", "clump", "agb")
STATE_WEIGHTS = {
    "thin": (0.45, 0.07, 0.05, 0.10, 0.22, 0.09, 0.02),
    "thick": (0.48, 0.05, 0.00, 0.12, 0.24, 0.09, 0.02),
    "halo": (0.42, 0.03, 0.00, 0.12, 0.30, 0.11, 0.02),   # 'clump' = HB for the halo
}


def _components(rng: np.random.Generator, n: int) -> np.ndarray:
    names = list(COMPONENTS)
    w = np.array([COMPONENTS[c]["weight"] for c in names])
    return np.array(names, dtype=object)[rng.choice(len(names), size=n, p=w / w.sum())]


def _states(rng: np.random.Generator, component: np.ndarray) -> np.ndarray:
    out = np.empty(component.shape, dtype=object)
    for comp, weights in STATE_WEIGHTS.items():
        sel = component == comp
        w = np.array(weights)
        out[sel] = np.array(STATES, dtype=object)[rng.choice(len(STATES), size=sel.sum(),
                                                              p=w / w.sum())]
    return out


def _teff_logg_for_states(rng: np.random.Generator, state: np.ndarray, feh: np.ndarray,
                          component: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Teff and log g on isochrone-like tracks; metal-poor HB stars may become BHB."""
    n = state.shape[0]
    teff = np.full(n, np.nan)
    logg = np.full(n, np.nan)
    state = np.where(state == "bhb", "clump", state)     # re-drawn: may become BHB again
    old = component != "thin"
    # FGK dwarfs: old populations stop at their turn-off.
    sel = state == "dwarf"
    t_hi = np.where(old[sel], 6300.0 - 120.0 * feh[sel], 7200.0)
    teff[sel] = truncated_normal(rng, 5750.0, 700.0, 3950.0, t_hi, sel.sum())
    logg[sel] = ms_logg(teff[sel], feh[sel]) - np.abs(rng.normal(0, 0.12, sel.sum()))
    sel = state == "mdwarf"
    teff[sel] = np.clip(3950.0 - 1000.0 * rng.beta(1.6, 2.2, sel.sum()), 2900.0, 3950.0)
    logg[sel] = ms_logg(teff[sel], feh[sel]) + rng.normal(0, 0.06, sel.sum())
    sel = state == "hot_ms"
    teff[sel] = np.exp(rng.uniform(np.log(7000.0), np.log(14000.0), sel.sum()))
    logg[sel] = ms_logg(teff[sel], feh[sel]) - np.abs(rng.normal(0, 0.15, sel.sum()))
    sel = state == "subgiant"
    teff[sel] = rng.uniform(4950.0, 6300.0, sel.sum()) - 100.0 * feh[sel]
    logg[sel] = rng.uniform(3.5, 4.05, sel.sum())
    sel = state == "rgb"
    logg[sel] = 3.8 - 3.3 * rng.random(sel.sum()) ** 1.4
    teff[sel] = rgb_teff(logg[sel], feh[sel]) + rng.normal(0, 70, sel.sum())
    sel = state == "agb"
    logg[sel] = rng.uniform(-0.2, 1.0, sel.sum())
    teff[sel] = np.maximum(rgb_teff(logg[sel], feh[sel]) - 150.0, 3300.0) \
        + rng.normal(0, 80, sel.sum())
    sel = state == "clump"
    logg[sel] = rng.normal(2.45, 0.10, sel.sum())
    teff[sel] = 4720.0 - 260.0 * feh[sel] + rng.normal(0, 70, sel.sum())
    # Metal-poor horizontal branches are partly blue (BHB, 7500-11000 K).
    bhb = sel & (feh < -1.2) & (rng.random(n) < 0.5)
    teff[bhb] = rng.uniform(7500.0, 11000.0, bhb.sum())
    logg[bhb] = 3.0 + 0.5 * (teff[bhb] - 7500.0) / 3500.0 + rng.normal(0, 0.1, bhb.sum())
    state[bhb] = "bhb"
    if np.isnan(teff).any():
        raise ValueError(f"unknown evolutionary state(s) {sorted(set(state[np.isnan(teff)]))}")
    return teff, logg, state


def _common(rng: np.random.Generator, n: int, component: np.ndarray) -> dict[str, np.ndarray]:
    """E(B-V), RV, G magnitude per star from its Galactic component."""
    ebv_scale = np.array([COMPONENTS.get(c, COMPONENTS["thin"])["ebv"] for c in component])
    rv_mu = np.array([COMPONENTS.get(c, COMPONENTS["thin"])["rv_mu"] for c in component])
    rv_sig = np.array([COMPONENTS.get(c, COMPONENTS["thin"])["rv_sigma"] for c in component])
    ebv = np.clip(rng.exponential(ebv_scale), *LABEL_RANGES["ebv"])
    rv = np.clip(rng.normal(rv_mu, rv_sig), -600.0, 600.0)
    # Magnitude-limited counts rise towards the faint limit: p(G) ~ 10^(0.3 G), 9.5-17.6
    # (the faint end of both LAMOST targets and published Gaia DR3 XP spectra).
    lo, hi, k = 9.5, 17.6, 0.3 * np.log(10.0)
    u = rng.random(n)
    mag = np.log(np.exp(k * lo) + u * (np.exp(k * hi) - np.exp(k * lo))) / k
    return {"ebv": ebv, "rv": rv, "mag_g": mag}


def _empty_extra(n: int) -> dict[str, np.ndarray]:
    return {k: np.full(n, np.nan) for k in ("teff2", "logg2", "radius_ratio2", "c_fe",
                                           "halpha_ew", "wd_type")}


def _normal(rng: np.random.Generator, n: int, feh_range=(NORMAL_FEH_FLOOR, 0.6),
            component: np.ndarray | None = None) -> dict[str, np.ndarray]:
    comp = _components(rng, n) if component is None else component
    mu = np.array([COMPONENTS[c]["feh_mu"] for c in comp])
    sig = np.array([COMPONENTS[c]["feh_sigma"] for c in comp])
    feh = truncated_normal(rng, mu, sig, feh_range[0], feh_range[1], n)
    state = _states(rng, comp)
    teff, logg, state = _teff_logg_for_states(rng, state, feh, comp)
    return {"teff": teff, "logg": logg, "feh": feh, "alpha_fe": alpha_for(rng, feh, comp),
            "component": comp, "state": state}


def _metal_poor(rng: np.random.Generator, n: int, lo: float, hi: float) -> dict:
    comp = np.full(n, "halo", dtype=object)
    out = _normal(rng, n, feh_range=(lo, hi), component=comp)
    if lo < -3.0:   # below the halo MDF: an exponential tail dN/d[Fe/H] ~ 10^(1.0 [Fe/H])
        k = np.log(10.0)
        u = rng.random(n)
        out["feh"] = np.log(np.exp(k * lo) + u * (np.exp(k * hi) - np.exp(k * lo))) / k
        out["teff"], out["logg"], out["state"] = _teff_logg_for_states(
            rng, out["state"], out["feh"], comp)
    out["alpha_fe"] = np.clip(rng.normal(0.35, 0.08, n), *LABEL_RANGES["alpha_fe"])
    return out


def _carbon(rng: np.random.Generator, n: int) -> dict:
    comp = np.where(rng.random(n) < 0.6, "halo", "thick").astype(object)
    feh = np.where(comp == "halo", rng.uniform(-3.3, -1.5, n), rng.uniform(-1.5, -0.2, n))
    giant = rng.random(n) < 0.7
    logg = np.where(giant, rng.uniform(0.5, 3.2, n), rng.uniform(3.6, 4.5, n))
    teff = np.where(giant, rgb_teff(logg, feh) - 150.0, rng.uniform(5000.0, 6300.0, n))
    extra = {"c_fe": rng.uniform(1.0, 2.5, n)}
    return {"teff": teff, "logg": logg, "feh": feh,
            "alpha_fe": np.clip(rng.normal(0.3, 0.1, n), -0.2, 0.7), "component": comp,
            "state": np.where(giant, "rgb", "dwarf").astype(object), "extra": extra}


def _white_dwarf(rng: np.random.Generator, n: int) -> dict:
    teff = np.exp(rng.uniform(np.log(6000.0), np.log(40000.0), n))
    kind = rng.choice(3, size=n, p=[0.78, 0.12, 0.10]).astype(float)   # DA, DB, DC
    kind = np.where(teff < 11000, np.where(kind == 1, 2, kind), kind)   # no cool DBs
    kind = np.where((teff > 12000) & (kind == 2), 0, kind)               # no hot DCs
    return {"teff": teff, "logg": np.clip(rng.normal(8.0, 0.25, n), 7.0, 9.3),
            "feh": np.full(n, np.nan), "alpha_fe": np.full(n, np.nan),
            "component": np.full(n, "thin", dtype=object),
            "state": np.full(n, "wd", dtype=object), "extra": {"wd_type": kind}}


def _wd_md(rng: np.random.Generator, n: int) -> dict:
    wd = _white_dwarf(rng, n)
    wd["extra"]["wd_type"] = np.zeros(n)             # the pairs in surveys are mostly DA+dM
    wd["teff"] = np.exp(rng.uniform(np.log(8000.0), np.log(30000.0), n))
    teff2 = rng.uniform(2900.0, 3900.0, n)
    extra = {**wd["extra"], "teff2": teff2, "logg2": ms_logg(teff2, np.zeros(n)),
             "radius_ratio2": ms_radius(teff2) / 0.013}
    # The composite has no single set of stellar labels: the WD's are kept in teff/logg
    # only as extra columns; teff/logg of the row stay NaN.
    extra["teff_wd"] = wd["teff"]
    extra["logg_wd"] = wd["logg"]
    return {"teff": np.full(n, np.nan), "logg": np.full(n, np.nan),
            "feh": np.full(n, np.nan), "alpha_fe": np.full(n, np.nan),
            "component": wd["component"], "state": np.full(n, "wd_md", dtype=object),
            "extra": extra}


def _emission(rng: np.random.Generator, n: int) -> dict:
    kind = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])     # dMe, Be, T Tauri-like
    base = _normal(rng, n)
    teff = np.where(kind == 0, rng.uniform(3000.0, 3900.0, n),
                    np.where(kind == 1, np.exp(rng.uniform(np.log(10000.0), np.log(25000.0),
                                                           n)), rng.uniform(3600.0, 5200.0, n)))
    logg = np.where(kind == 0, ms_logg(teff, base["feh"]),
                    np.where(kind == 1, rng.uniform(3.5, 4.2, n), rng.uniform(3.5, 4.3, n)))
    ew = np.where(kind == 0, -rng.uniform(1.0, 12.0, n),
                  np.where(kind == 1, -rng.uniform(5.0, 40.0, n), -rng.uniform(10.0, 100.0, n)))
    feh = np.clip(base["feh"], -1.0, 0.5)
    state = np.array(["mdwarf", "hot_ms", "ttauri"], dtype=object)[kind]
    return {"teff": teff, "logg": logg, "feh": feh,
            "alpha_fe": alpha_for(rng, feh, np.full(n, "thin", dtype=object)),
            "component": np.full(n, "thin", dtype=object), "state": state,
            "extra": {"halpha_ew": ew}}


def _hot_ob(rng: np.random.Generator, n: int) -> dict:
    sub = rng.random(n) < 0.5                            # sdB/sdO vs O/B main sequence
    teff = np.where(sub, rng.uniform(22000.0, 45000.0, n),
                    np.exp(rng.uniform(np.log(15000.0), np.log(40000.0), n)))
    logg = np.where(sub, rng.uniform(5.0, 6.2, n), rng.uniform(3.5, 4.3, n))
    feh = np.where(sub, rng.normal(-0.5, 0.4, n), rng.normal(-0.05, 0.15, n))
    feh = np.clip(feh, -2.0, 0.5)
    return {"teff": teff, "logg": logg, "feh": feh, "alpha_fe": np.clip(
        rng.normal(0.0, 0.05, n), -0.2, 0.7),
            "component": np.full(n, "thin", dtype=object),
            "state": np.where(sub, "sd", "hot_ms").astype(object)}


def _binary(rng: np.random.Generator, n: int) -> dict:
    prim = _normal(rng, n)
    dwarf = np.isin(prim["state"], ("dwarf", "subgiant"))
    # Primaries are main-sequence / subgiant stars: re-draw the others as FGK dwarfs.
    teff = np.where(dwarf, prim["teff"], truncated_normal(rng, 5800.0, 600.0, 4500.0, 7000.0,
                                                          n))
    logg = np.where(dwarf, prim["logg"], ms_logg(teff, prim["feh"]))
    q = rng.uniform(0.35, 1.0, n)                        # mass ratio
    teff2 = np.maximum(teff * q ** 0.55, 2900.0)
    logg2 = ms_logg(teff2, prim["feh"])
    extra = {"teff2": teff2, "logg2": logg2,
             "radius_ratio2": ms_radius(teff2) / ms_radius(teff)}
    return {**prim, "teff": teff, "logg": logg,
            "state": np.full(n, "dwarf", dtype=object), "extra": extra}


def _ultracool(rng: np.random.Generator, n: int) -> dict:
    from specsearch.synth.ultracool import TEFF_RANGE

    teff = rng.uniform(*TEFF_RANGE, n)
    # Field late-M / L dwarfs: log g ~5.1-5.4, rising as Teff falls; metallicity not
    # labelled (the co-adds average every [Fe/H] bin of SSPP, unreliable this cool).
    logg = np.interp(teff, [1900.0, 2900.0], [5.35, 5.15]) + rng.normal(0.0, 0.05, n)
    return {"teff": teff, "logg": logg, "feh": np.full(n, np.nan),
            "alpha_fe": np.full(n, np.nan), "component": np.full(n, "thin", dtype=object),
            "state": np.full(n, "ucd", dtype=object)}


_SAMPLERS = {
    "normal": lambda rng, n: _normal(rng, n),
    "vmp": lambda rng, n: _metal_poor(rng, n, -3.0, NORMAL_FEH_FLOOR),
    "emp": lambda rng, n: _metal_poor(rng, n, -4.3, -3.0),
    "carbon": _carbon, "white_dwarf": _white_dwarf, "wd_md": _wd_md, "emission": _emission,
    "hot_ob": _hot_ob, "binary": _binary, "ultracool": _ultracool,
}


def sample_labels(rng: np.random.Generator, n: int,
                  fractions: dict[str, float]) -> StellarLabels:
    """Draw ``n`` stars: population counts per :func:`population_counts`, labels per
    population, then shuffled so populations are spread through the batch."""
    counts = population_counts(rng, n, fractions)
    parts = []
    for pop in POPULATIONS:
        k = counts[pop]
        if k == 0:
            continue
        d = _SAMPLERS[pop](rng, k)
        extra = _empty_extra(k)
        extra.update(d.pop("extra", {}))
        d["population"] = np.full(k, pop, dtype=object)
        d.update(_common(rng, k, d["component"]))
        if pop in ("white_dwarf", "wd_md"):
            d["mag_g"] = rng.uniform(15.5, 18.3, k)     # intrinsically faint: near the limit
        elif pop == "ultracool":
            d["mag_g"] = rng.uniform(13.5, 17.6, k)
        parts.append((d, extra))
    order = rng.permutation(n)
    keys = ("teff", "logg", "feh", "alpha_fe", "ebv", "rv", "mag_g", "population",
            "component", "state")
    cols = {k: np.concatenate([p[0][k] for p in parts])[order] for k in keys}
    extra_keys = sorted(set().union(*(p[1] for p in parts)))
    extra = {k: np.concatenate([p[1].get(k, np.full(len(p[0]["teff"]), np.nan))
                                for p in parts]).astype(float)[order] for k in extra_keys}
    for k in ("teff", "logg", "feh", "alpha_fe"):
        lo, hi = LABEL_RANGES[k]
        cols[k] = np.where(np.isnan(cols[k]), np.nan, np.clip(cols[k], lo, hi)).astype(float)
    return StellarLabels(**cols, extra=extra)
