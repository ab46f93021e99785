"""Real labelled and unlabelled spectra for training, calibration and evaluation, split by star.

The real sets of a ``--real-data`` folder (the layout of ``../shared/data/real``, see its
README) are read by the survey readers and put on the canonical grids exactly as ``ingest``
does (:func:`specsearch.io.ingest.spectrum_row`). Every spectrum carries a *star key*
(LAMOST designation, MILES star name, Gaia source_id) and the split is a pure function of
that key, so all visits of a star fall in one split, in training and in every report:

* ``train``: fine-tuning (heads on the labels, self-supervised views on all spectra);
* ``cal``: the real-data uncertainty calibration (the model-versus-reality floor);
* ``test``: never seen by training or calibration; what the reports score.

Stars with repeat LAMOST visits (DR10 ``repeat_star``, the DR8 stars with real Gaia XP) are
always ``test``: they are the identity benchmark.

Labels: LAMOST DR10 and DR1 carry the LAMOST pipeline's (LASP) teff/logg/feh, themselves
uncertain by ~50-150 K / 0.1-0.2 dex / 0.05-0.15 dex; MILES the Cenarro et al. (2007)
compilation. ``LABEL_NOISE`` holds the per-set label uncertainties that the fine-tuning's
likelihood adds in quadrature.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from specsearch.errors import SpecsearchError
from specsearch.preprocess import prepare_model_input

SPLIT_FRACTIONS = {"train": 0.65, "cal": 0.15, "test": 0.20}
SPLIT_CODES = {"train": 0, "cal": 1, "test": 2}

CACHE_VERSION = 4
"""How the real spectra are read into a cache (:func:`load_all`): 4 masks single- and
two-pixel spikes (cosmic rays, hot pixels; :mod:`specsearch.preprocess.spikes`) on each
spectrum's own pixels; 3 measures those radial
velocities with per-window peak uncertainties (windows agree within 3 sigma, their
inverse-variance mean; a few spectra read a few km/s differently); 2 puts spectra without
a header redshift, or with one they contradict, in the rest frame by a measured radial
velocity (:func:`specsearch.preprocess.to_canonical_grid`); 1 (unversioned caches)
removed the header redshift only."""
CACHE_VERSION_KEY = "_cache_version"

log = logging.getLogger(__name__)
LABEL_NOISE: dict[str, dict[str, float]] = {
    # typical label errors of the source catalogue (K, dex)
    "lamost_dr10": {"teff": 80.0, "logg": 0.12, "feh": 0.08},
    "lamost_dr1": {"teff": 110.0, "logg": 0.18, "feh": 0.12},
    "miles": {"teff": 70.0, "logg": 0.15, "feh": 0.10},
}
MISSING_SENTINELS = (9999.0, -9999.0, 999.0, -999.0)


@dataclass
class RealSet:
    """One real set on one canonical grid (numpy arrays, one row a spectrum).

    Attributes:
        name: ``lamost_dr10``, ``lamost_dr1``, ``lamost_dr8``, ``miles``, ``xp_patch``...
        modality: the canonical grid (``lamost`` or ``xp``).
        flux, ivar: (n, npix) float32 on that grid.
        star: (n,) star keys (str); split: (n,) split code (:data:`SPLIT_CODES`).
        labels: label name -> (n,) float64, NaN where unknown.
        snr: (n,) S/N (LAMOST g band where known).
        meta: per-row extra columns (filename, subclass, source_id, ...).
    """

    name: str
    modality: str
    flux: np.ndarray
    ivar: np.ndarray
    star: np.ndarray
    split: np.ndarray
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    snr: np.ndarray | None = None
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.flux.shape[0])

    def select(self, mask: np.ndarray) -> "RealSet":
        return RealSet(self.name, self.modality, self.flux[mask], self.ivar[mask],
                       self.star[mask], self.split[mask],
                       {k: v[mask] for k, v in self.labels.items()},
                       None if self.snr is None else self.snr[mask],
                       {k: v[mask] for k, v in self.meta.items()}, self.skipped)

    def in_split(self, *splits: str) -> np.ndarray:
        return np.isin(self.split, [SPLIT_CODES[s] for s in splits])

    def label_matrix(self, names: list[str] | tuple[str, ...]) -> np.ndarray:
        """(n, L) float32 labels in the order ``names`` (NaN where unknown)."""
        cols = [self.labels.get(n, np.full(len(self), np.nan)) for n in names]
        return np.stack(cols, axis=1).astype(np.float32) if cols else \
            np.zeros((len(self), 0), np.float32)


def star_split(keys: np.ndarray, fractions: dict[str, float] = SPLIT_FRACTIONS) -> np.ndarray:
    """(n,) split code per star key from a SHA-1 hash of the key (stable across runs)."""
    edges = np.cumsum([fractions[s] for s in ("train", "cal", "test")])
    out = np.empty(len(keys), np.uint8)
    for i, k in enumerate(keys):
        u = int.from_bytes(hashlib.sha1(str(k).encode()).digest()[:8], "big") / 2.0 ** 64
        out[i] = int(np.searchsorted(edges, u, side="right"))
    return np.minimum(out, 2)


def to_float(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return float("nan") if (x in MISSING_SENTINELS or not np.isfinite(x)) else x


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def read_to_grid(paths: list[Path], modality: str = "lamost"
                 ) -> tuple[list[Any], np.ndarray, np.ndarray, list[str]]:
    """Read spectrum files and put them on a canonical grid; (spectra, flux, ivar, skipped)."""
    from specsearch.io.ingest import spectrum_row
    from specsearch.io.registry import read_spectra
    from specsearch.preprocess import grid_for

    specs, flux, ivar, skipped = [], [], [], []
    for p in paths:
        try:
            for spec in read_spectra(p):
                row = spectrum_row(spec, modality)
                specs.append(spec)
                flux.append(np.asarray(row["flux"], np.float32))
                ivar.append(np.asarray(row["ivar"], np.float32))
        except SpecsearchError as exc:
            skipped.append(f"{p.name}: {exc}")
    npix = grid_for(modality).npix
    if not flux:
        return specs, np.zeros((0, npix), np.float32), np.zeros((0, npix), np.float32), skipped
    return specs, np.stack(flux), np.stack(ivar), skipped


def _lamost_labelled(name: str, spectra_dir: Path, labels_csv: Path, star_col: str,
                     snr_col: str, *, forced_test: str | None = None) -> RealSet | None:
    if not spectra_dir.is_dir():
        return None
    rows = {r["filename"]: r for r in read_csv_rows(labels_csv)} if labels_csv.is_file() \
        else {}
    specs, flux, ivar, skipped = read_to_grid(sorted(spectra_dir.glob("*.fits*")))
    fn = np.array([s.meta.get("filename") or Path(s.path).name for s in specs])
    star = np.array([(rows.get(f, {}).get(star_col) or s.meta.get("designation") or f)
                     .replace("LAMOST ", "").strip() for f, s in zip(fn, specs)])
    labels = {n: np.array([to_float(rows.get(f, {}).get(n)) for f in fn])
              for n in ("teff", "logg", "feh")}
    snr = np.array([to_float(rows.get(f, {}).get(snr_col)) if f in rows else
                    to_float(s.meta.get("snr_g")) for f, s in zip(fn, specs)])
    split = star_split(star)
    meta = {"filename": fn,
            "subclass": np.array([str(rows.get(f, {}).get("subclass") or
                                      s.meta.get("subclass") or "") for f, s in zip(fn, specs)])}
    if forced_test:
        rep = np.array([rows.get(f, {}).get(forced_test) == "1" for f in fn])
        split[rep] = SPLIT_CODES["test"]
        meta["repeat_star"] = rep
    return RealSet(name, "lamost", flux, ivar, star, split, labels, snr, meta, skipped)


def load_miles(real: Path) -> RealSet | None:
    spectra_dir, labels_csv = real / "miles" / "spectra", real / "miles" / "labels.csv"
    if not spectra_dir.is_dir() or not labels_csv.is_file():
        return None
    rows = {r["miles_id"]: r for r in read_csv_rows(labels_csv)}
    specs, flux, ivar, skipped = read_to_grid(sorted(spectra_dir.glob("*.fits")))
    ids = np.array([s.spectrum_id for s in specs])
    star = np.array([rows.get(i, {}).get("name") or i for i in ids])
    labels = {n: np.array([to_float(rows.get(i, {}).get(n)) for i in ids])
              for n in ("teff", "logg", "feh")}
    snr = np.array([to_float(s.snr) for s in specs])
    return RealSet("miles", "lamost", flux, ivar, star, star_split(star), labels, snr,
                   {"filename": ids}, skipped)


def load_dr8_pairs(real: Path) -> RealSet | None:
    """The DR8 LAMOST visits of stars with real Gaia XP (evaluation only: split test)."""
    pairs_csv = real / "pairs_lamost_xp.csv"
    if not pairs_csv.is_file():
        return None
    rows = read_csv_rows(pairs_csv)
    specs, flux, ivar, skipped = read_to_grid([real / r["lamost_file"] for r in rows])
    if len(specs) != len(rows):
        return None
    sid = np.array([int(r["gaia_dr3_source_id"]) for r in rows])
    snr = np.array([to_float(r.get("lamost_snrg")) for r in rows])
    return RealSet("lamost_dr8", "lamost", flux, ivar, sid.astype(str),
                   np.full(len(rows), SPLIT_CODES["test"], np.uint8), {}, snr,
                   {"source_id": sid, "filename": np.array([Path(r["lamost_file"]).name
                                                            for r in rows])}, skipped)


def load_xp_patch(real: Path) -> RealSet | None:
    """The 2000 real Gaia XP sources of one sky patch (unlabelled), split by source_id; the
    sources with a LAMOST partner in :func:`load_dr8_pairs` are test."""
    from specsearch.io.gaia_xp import calibrate, read_xp_continuous

    path = real / "gaia_xp" / "xp_continuous_combined_chunk0.fits"
    if not path.is_file():
        return None
    sampled = calibrate(read_xp_continuous(path))
    flux, ivar = sampled.catalog_flux()
    sid = np.asarray(sampled.source_id, dtype=np.int64)
    split = star_split(sid.astype(str))
    pairs_csv = real / "pairs_lamost_xp.csv"
    if pairs_csv.is_file():
        partners = {int(r["gaia_dr3_source_id"]) for r in read_csv_rows(pairs_csv)}
        split[np.isin(sid, list(partners))] = SPLIT_CODES["test"]
    return RealSet("xp_patch", "xp", flux.astype(np.float32), ivar.astype(np.float32),
                   sid.astype(str), split, {}, None, {"source_id": sid})


def load_lamost_sets(real: Path) -> dict[str, RealSet]:
    """Every real LAMOST-grid set present under ``real`` (missing folders are left out)."""
    real = Path(real)
    lam = real / "lamost"
    sets = {
        "lamost_dr10": _lamost_labelled("lamost_dr10", lam / "dr10_afg" / "spectra",
                                        lam / "dr10_afg" / "labels.csv", "desig", "snrg",
                                        forced_test="repeat_star"),
        "lamost_dr1": _lamost_labelled("lamost_dr1", lam / "dr1" / "spectra",
                                       lam / "dr1" / "labels.csv", "designation", "snrg"),
        "lamost_dr8": load_dr8_pairs(real),
        "miles": load_miles(real),
    }
    return {k: v for k, v in sets.items() if v is not None and len(v)}


def save_sets(path: str | Path, sets: dict[str, RealSet]) -> None:
    """Write real sets to one ``.npz`` (plain arrays, no pickles), atomically."""
    from specsearch.fsutil import write_bytes_atomic
    import io

    arrays: dict[str, np.ndarray] = {CACHE_VERSION_KEY: np.array(CACHE_VERSION)}
    for name, s in sets.items():
        p = f"{name}/"
        arrays[p + "modality"] = np.array(s.modality)
        for k in ("flux", "ivar", "star", "split"):
            arrays[p + k] = getattr(s, k)
        if s.snr is not None:
            arrays[p + "snr"] = s.snr
        for k, v in s.labels.items():
            arrays[p + "label/" + k] = v
        for k, v in s.meta.items():
            arrays[p + "meta/" + k] = v
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(Path(path), buf.getvalue())


def load_sets(path: str | Path) -> dict[str, RealSet]:
    """Read what :func:`save_sets` wrote (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    names = sorted({k.split("/")[0] for k in data if k != CACHE_VERSION_KEY})
    out = {}
    for n in names:
        p = f"{n}/"
        out[n] = RealSet(n, str(data[p + "modality"]), data[p + "flux"], data[p + "ivar"],
                         data[p + "star"], data[p + "split"],
                         {k[len(p) + 6:]: v for k, v in data.items() if k.startswith(p + "label/")},
                         data.get(p + "snr"),
                         {k[len(p) + 5:]: v for k, v in data.items() if k.startswith(p + "meta/")})
    return out


def cache_version(path: str | Path) -> int:
    """The :data:`CACHE_VERSION` a cache was written with (1: a cache without one)."""
    with np.load(path, allow_pickle=False) as z:
        return int(z[CACHE_VERSION_KEY]) if CACHE_VERSION_KEY in z.files else 1


def load_all(real: str | Path, cache: str | Path | None = None) -> dict[str, RealSet]:
    """Every real set (LAMOST-grid sets and the XP patch), read once into ``cache`` if given
    and reused from there afterwards. The cache records the arrays and the version of the
    reading (:data:`CACHE_VERSION`; an older one is read again); delete it when the
    real-data folder changes."""
    if cache is not None and Path(cache).is_file():
        version = cache_version(cache)
        if version == CACHE_VERSION:
            return load_sets(cache)
        log.info("%s was read by an older specsearch (version %d, now %d): reading the "
                 "real sets again", cache, version, CACHE_VERSION)
    sets = load_lamost_sets(Path(real))
    xp = load_xp_patch(Path(real))
    if xp is not None:
        sets["xp_patch"] = xp
    if cache is not None:
        save_sets(cache, sets)
    return sets


def star_ids(keys: np.ndarray) -> np.ndarray:
    """int64 ids for string star keys (masks same-star negatives in a batch)."""
    return np.array([int.from_bytes(hashlib.sha1(f"real:{k}".encode()).digest()[:8], "big",
                                    signed=True) for k in keys], np.int64)


@dataclass
class PreparedReal:
    """Real spectra of one modality, prepared once for the network."""

    x: np.ndarray
    w: np.ndarray
    labels: np.ndarray          # (n, L) physical units, NaN unknown
    label_noise: np.ndarray     # (n, L) physical units
    star_id: np.ndarray
    set_index: np.ndarray       # (n,) which input set a row came from
    group: np.ndarray           # (n,) calibration group (see :func:`calibration_groups`)

    def sampling_p(self, weights: tuple[float, ...] | None) -> np.ndarray | None:
        """Per-row sampling probabilities giving each set its weight (None: uniform)."""
        if weights is None:
            return None
        w = np.asarray(weights, np.float64)[self.set_index]
        counts = np.bincount(self.set_index, minlength=len(weights))[self.set_index]
        p = w / np.maximum(counts, 1)
        return p / p.sum()


def calibration_groups(s: RealSet, sel: np.ndarray, set_index: int) -> np.ndarray:
    """Groups the real-data uncertainty calibration balances: per set; LAMOST sets also
    split at S/N 30 and at Teff 7000 K (LASP is less reliable for hot stars)."""
    g = np.full(int(sel.sum()), 10 * set_index, np.int64)
    if s.modality == "lamost" and s.name.startswith("lamost") and s.snr is not None:
        g += (np.asarray(s.snr)[sel] < 30).astype(np.int64)
        teff = s.labels.get("teff")
        if teff is not None:
            g += 2 * (np.asarray(teff)[sel] >= 7000)
    return g


HOT_TEFF = 7000.0
"""Catalogue Teff (K) from which a LAMOST pipeline label counts as a hot star's (LASP is
less reliable for A stars; see ``prepare_real``'s ``hot_noise``)."""


def prepare_real(sets: list[RealSet], label_names: list[str], split: str, *,
                 hot_noise: dict[str, float] | None = None) -> PreparedReal:
    """The ``split`` rows of ``sets`` prepared for the network, with each label's own
    uncertainty (``LABEL_NOISE``). ``hot_noise`` (label -> uncertainty) raises that
    uncertainty to at least the given value for LAMOST pipeline labels of stars with a
    catalogue Teff >= ``HOT_TEFF``, so that in the likelihood the synthetic truth and
    MILES' compilation outweigh LASP where LASP is least reliable."""
    xs, ws, ys, ns, ids, idx, grp = [], [], [], [], [], [], []
    for k, s in enumerate(sets):
        sel = s.in_split(split)
        mi = prepare_model_input(s.flux[sel], s.ivar[sel], s.modality)
        good = mi.good
        xs.append(mi.flux[good])
        ws.append(mi.weight[good])
        ys.append(s.select(sel).label_matrix(label_names)[good])
        noise = LABEL_NOISE.get(s.name, {})
        n_rows = np.tile(np.array([noise.get(n, 0.0) for n in label_names], np.float32),
                         (int(good.sum()), 1))
        teff = s.labels.get("teff")
        if hot_noise and s.name.startswith("lamost") and teff is not None:
            hot = np.asarray(teff, np.float64)[sel][good] >= HOT_TEFF
            for j, n in enumerate(label_names):
                if n in hot_noise:
                    n_rows[hot, j] = np.maximum(n_rows[hot, j], hot_noise[n])
        ns.append(n_rows)
        ids.append(star_ids(s.star[sel][good]))
        idx.append(np.full(int(good.sum()), k, np.int64))
        grp.append(calibration_groups(s, sel, k)[good])
    return PreparedReal(np.concatenate(xs), np.concatenate(ws), np.concatenate(ys),
                        np.concatenate(ns), np.concatenate(ids), np.concatenate(idx),
                        np.concatenate(grp))
