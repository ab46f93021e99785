"""Stream a catalog through the quality features and turn them into artefact flags.

Two steps, because two flags are *relative*: the arm-join step and the colour (flux
calibration tilt) of a star depend on its temperature, so they are judged against stars of
the same predicted Teff (robust z within Teff bins), and the colour preferably against the
same star's Gaia XP spectrum, whose calibration is independent of LAMOST's.

    features = catalog_features(catalog, "lamost")          # streamed, one row a spectrum
    flags = screen(features, teff_pred=..., xp_colour=...)  # flags + reasons
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from specsearch.anomaly.artefacts import (FLAGS, ArtefactConfig, largest_step,
                                          quality_features)
from specsearch.anomaly.robust import local_residual, robust_location_scale, robust_z
from specsearch.io.catalog import open_catalog
from specsearch.io.parquet import list_column_to_numpy


@dataclass
class FeatureTable:
    """Quality features of one modality's spectra (row-aligned arrays).

    Attributes:
        modality: ``lamost`` or ``xp``.
        spectrum_id, source_id: identify the rows.
        features: name -> (n,) float64.
        seconds: time spent reading and computing.
    """

    modality: str
    spectrum_id: np.ndarray
    source_id: np.ndarray
    features: dict[str, np.ndarray]
    seconds: float = 0.0

    def __len__(self) -> int:
        return int(self.source_id.shape[0])


def features_of_arrays(flux: np.ndarray, ivar: np.ndarray, modality: str, *,
                       spectrum_id: Sequence[str] | None = None,
                       source_id: Sequence[int] | None = None,
                       config: ArtefactConfig | None = None,
                       batch_size: int = 2048) -> FeatureTable:
    """Quality features of in-memory (n, npix) spectra, in batches."""
    config = config or ArtefactConfig()
    t0 = time.perf_counter()
    n = flux.shape[0]
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, batch_size):
        got = quality_features(flux[start:start + batch_size], ivar[start:start + batch_size],
                               modality, spike_sigma=config.spike_sigma)
        for k, v in got.items():
            parts.setdefault(k, []).append(v)
    sid = np.arange(n, dtype=np.int64) if source_id is None else np.asarray(source_id,
                                                                             np.int64)
    spid = (np.asarray([f"{modality}-{i}" for i in range(n)], dtype=object)
            if spectrum_id is None else np.asarray(spectrum_id, dtype=object))
    return FeatureTable(modality=modality, spectrum_id=spid, source_id=sid,
                        features={k: np.concatenate(v) for k, v in parts.items()},
                        seconds=time.perf_counter() - t0)


def catalog_features(catalog: str | Path, modality: str, *,
                     config: ArtefactConfig | None = None, batch_size: int = 2048,
                     spectrum_ids: set[str] | None = None,
                     threads: int | None = None) -> FeatureTable:
    """Stream one modality of a catalog through :func:`quality_features`.

    Args:
        spectrum_ids: only these spectra (e.g. the rows of an index); None: all.
        threads: batches computed concurrently (numpy releases the GIL in its kernels;
            None: all cores). Reading stays sequential, results keep catalog order.
    """
    config = config or ArtefactConfig()
    t0 = time.perf_counter()
    cat = open_catalog(catalog)

    def load(batch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        spid = np.asarray(batch.column("spectrum_id").to_pylist(), dtype=object)
        rows = (np.arange(len(spid)) if spectrum_ids is None
                else np.flatnonzero([s in spectrum_ids for s in spid]))
        if rows.size == 0:
            return None
        return (spid[rows], batch.column("source_id").to_numpy()[rows],
                list_column_to_numpy(batch.column("flux"))[rows],
                list_column_to_numpy(batch.column("ivar"))[rows])

    def work(item):
        spid, sid, flux, ivar = item
        return spid, sid, quality_features(flux, ivar, modality,
                                           spike_sigma=config.spike_sigma)

    ids, sids = [], []
    parts: dict[str, list[np.ndarray]] = {}
    n_threads = max(1, threads or os.cpu_count() or 1)
    batches = cat.iter_batches(modality, ["spectrum_id", "source_id", "flux", "ivar"],
                               batch_size=batch_size)
    with ThreadPoolExecutor(n_threads) as pool:
        pending: deque = deque()
        for batch in batches:
            item = load(batch)
            if item is not None:
                pending.append(pool.submit(work, item))
            while len(pending) > n_threads:   # bounded memory: ~threads+1 batches in flight
                _collect(pending.popleft().result(), ids, sids, parts)
        while pending:
            _collect(pending.popleft().result(), ids, sids, parts)
    return FeatureTable(
        modality=modality,
        spectrum_id=np.concatenate(ids) if ids else np.zeros(0, object),
        source_id=np.concatenate(sids) if sids else np.zeros(0, np.int64),
        features={k: np.concatenate(v) for k, v in parts.items()},
        seconds=time.perf_counter() - t0)


def _collect(result, ids: list, sids: list, parts: dict) -> None:
    spid, sid, got = result
    ids.append(spid)
    sids.append(sid)
    for k, v in got.items():
        parts.setdefault(k, []).append(v)


@dataclass
class ArtefactFlags:
    """Artefact flags of one modality (row-aligned with its :class:`FeatureTable`).

    Attributes:
        table: the features.
        flags: flag name -> (n,) bool (see :data:`specsearch.anomaly.artefacts.FLAGS`).
        z_arm_step, tilt: the relative measures behind ``arm_join`` and ``flux_tilt``
            (robust z of the step; log10 colour residual and its robust z).
    """

    table: FeatureTable
    flags: dict[str, np.ndarray]
    derived: dict[str, np.ndarray]

    @property
    def any(self) -> np.ndarray:
        return np.any(np.vstack(list(self.flags.values())), axis=0) if self.flags else \
            np.zeros(len(self.table), bool)

    def reasons(self) -> np.ndarray:
        """(n,) ``;``-joined names of the raised flags ('' for a clean spectrum)."""
        names = list(self.flags)
        stack = np.vstack([self.flags[k] for k in names]) if names else np.zeros((0, 0), bool)
        return np.asarray([";".join(n for n, f in zip(names, col) if f) for col in stack.T],
                          dtype=object)

    def to_arrow(self) -> pa.Table:
        t = self.table
        cols = {"spectrum_id": pa.array(t.spectrum_id.astype(str)),
                "source_id": pa.array(t.source_id, pa.int64())}
        for k, v in {**t.features, **self.derived}.items():
            if np.ndim(v) != 1:
                continue          # profiles (arm_profile) stay in the FeatureTable
            cols[k] = pa.array(v.astype(np.float32), pa.float32(), mask=~np.isfinite(v))
        for k, v in self.flags.items():
            cols[f"flag_{k}"] = pa.array(v, pa.bool_())
        cols["artefact_flag"] = pa.array(self.any, pa.bool_())
        cols["artefact_reasons"] = pa.array(self.reasons().astype(str), pa.string())
        return pa.table(cols)


def screen(table: FeatureTable, *, config: ArtefactConfig | None = None,
           teff_pred: np.ndarray | None = None, xp_colour: np.ndarray | None = None,
           neighbours: np.ndarray | None = None) -> ArtefactFlags:
    """Flags from quality features.

    The arm-join step and the colour are judged against a *reference* for the star:

    * ``neighbours`` given (the star's nearest neighbours in the embedding, which is made
      from continuum-normalised spectra and so blind to steps and tilts): the median over
      its neighbours: stars of the same kind, whose natural features (an M dwarf's TiO
      band head at 5847 A sits in the arm-join window) the star shares;
    * else stars in the same bin of predicted Teff (``teff_pred``), else all stars.

    The colour is judged against the star's own Gaia XP colour first, where it has one.

    Args:
        table: :func:`catalog_features` output.
        teff_pred: (n,) predicted Teff of each row (the heads').
        xp_colour: (n,) the same star's colour measured on its Gaia XP spectrum
            (:func:`specsearch.anomaly.artefacts.colour_index`), NaN where it has none.
        neighbours: (n, k) rows of ``table`` nearest to each row in the embedding (-1 =
            none), e.g. from :class:`specsearch.anomaly.neighbours.KnnResult`.
    """
    config = config or ArtefactConfig()
    f = table.features
    n = len(table)
    flags: dict[str, np.ndarray] = {
        "masked": f["masked_fraction"] > config.max_masked_fraction,
        "low_snr": f["snr"] < config.min_snr,
        "negative_flux": (f["negative_fraction"] > config.max_negative_fraction)
        & (f["snr"] > 5.0),
    }
    derived: dict[str, np.ndarray] = {}
    if "n_spikes" in f:
        flags["spikes"] = f["n_spikes"] >= config.max_spikes
        flags["sky_residual"] = (f["sky_sigma"] > config.sky_sigma) & (f["sky_rel"]
                                                                      > config.sky_rel)
        flags["dead_segment"] = f["dead_px"] >= config.dead_px
        by = None if teff_pred is None else np.log10(np.clip(teff_pred, 1000.0, None))
        if neighbours is not None and "arm_profile" in f:
            step = largest_step(local_residual(f["arm_profile"], neighbours))
            z_step = robust_z(step)
        else:
            step = _minus_binned_median(f["arm_step"], by, np.isfinite(f["arm_step"]))
            z_step = robust_z(f["arm_step"], by=by, n_bins=20, min_per_bin=50)
        derived["arm_step_excess"], derived["z_arm_step"] = step, z_step
        flags["arm_join"] = (np.abs(z_step) > config.arm_step_z) & (np.abs(step)
                                                                   > config.arm_step_min)
        tilt, z_tilt = _tilt(f["colour"], by, xp_colour, neighbours)
        derived["tilt"], derived["z_tilt"] = tilt, z_tilt
        flags["flux_tilt"] = (np.abs(z_tilt) > config.tilt_z) & (np.abs(tilt)
                                                                > config.tilt_min)
    for k in flags:
        flags[k] = np.asarray(flags[k], bool) & np.ones(n, bool)
    ordered = {k: flags[k] for k in FLAGS if k in flags}
    return ArtefactFlags(table=table, flags=ordered, derived=derived)


def _tilt(colour: np.ndarray, by: np.ndarray | None, xp_colour: np.ndarray | None,
          neighbours: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(log10 colour residual, its robust z): against XP where available, else against
    the star's embedding neighbours, else stars of similar predicted Teff."""
    tilt = np.full(colour.shape, np.nan)
    z = np.full(colour.shape, np.nan)
    has_xp = (np.isfinite(xp_colour) & np.isfinite(colour)) if xp_colour is not None else \
        np.zeros(colour.shape, bool)
    if has_xp.sum() >= 20:
        # LAMOST's response differs from XP's by a smooth constant factor: remove its median.
        diff = colour - np.where(has_xp, xp_colour, np.nan)
        med, scale = robust_location_scale(diff[has_xp])
        tilt[has_xp] = diff[has_xp] - med
        z[has_xp] = tilt[has_xp] / scale
    rest = ~has_xp & np.isfinite(colour)
    if rest.any() and neighbours is not None:
        resid = local_residual(colour, neighbours)
        _, scale = robust_location_scale(resid[rest])
        tilt[rest] = resid[rest]
        z[rest] = resid[rest] / scale
    elif rest.any():
        zr = robust_z(np.where(rest, colour, np.nan), by=None if by is None else
                      np.where(rest, by, np.nan), n_bins=20, min_per_bin=50)
        # The residual in dex (colour minus its Teff bin's median) for the dex threshold.
        tilt[rest] = _minus_binned_median(colour, by, rest)[rest]
        z[rest] = zr[rest]
    return tilt, z


def _minus_binned_median(x: np.ndarray, by: np.ndarray | None, rows: np.ndarray,
                         n_bins: int = 20, min_per_bin: int = 50) -> np.ndarray:
    out = np.full(x.shape, np.nan)
    if by is None or rows.sum() < 2 * min_per_bin:
        out[rows] = x[rows] - np.median(x[rows])
        return out
    ok = rows & np.isfinite(by)
    bins = int(min(n_bins, ok.sum() // min_per_bin))
    if bins < 2:
        out[rows] = x[rows] - np.median(x[rows])
        return out
    edges = np.quantile(by[ok], np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, by, side="right") - 1, 0, bins - 1)
    out[rows] = x[rows] - np.median(x[rows])
    for i in range(bins):
        sel = ok & (which == i)
        if sel.any():
            out[sel] = x[sel] - np.median(x[sel])
    return out
