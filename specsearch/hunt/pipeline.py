"""End-to-end runs behind ``specsearch hunt`` and ``specsearch hunt-calibrate``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specsearch.errors import ConfigError
from specsearch.hunt.calibration import HuntCalibration
from specsearch.hunt.hunt import HuntResult, hunt
from specsearch.hunt.rank import HuntConfig, check_pool_filters, fit_hunt_calibration
from specsearch.query.similar import embed_spectrum_files, example_vectors
from specsearch.rows import load_source, row_masks, write_table

log = logging.getLogger(__name__)

CALIBRATION_FILE = "feh_calibration.json"
"""Name of a calibration stored next to a model (``<model dir>/feh_calibration.json``)."""


def find_calibration(model_hash: str, calibration: str | Path | None = None,
                     model_dir: str | Path | None = None) -> HuntCalibration:
    """The calibration to use: ``calibration`` if given; else the one stored next to the
    model (``model_dir`` or the shipped default) when it was made for ``model_hash``; else
    none (the heads' uncertainties at face value, with a warning).

    Raises:
        ConfigError: an explicit calibration made for another model.
    """
    if calibration is not None:
        cal = HuntCalibration.load(calibration)
        if cal.model_hash and model_hash and cal.model_hash != model_hash:
            raise ConfigError(f"{calibration}: calibrated for model {cal.model_hash!r}, but "
                              f"the index holds embeddings of model {model_hash!r}; refit "
                              f"it with `specsearch hunt-calibrate`")
        return cal
    candidates = []
    if model_dir is not None:
        candidates.append(Path(model_dir) / CALIBRATION_FILE)
    else:
        try:
            from specsearch.model.api import default_model_path
            candidates.append(default_model_path() / CALIBRATION_FILE)
        except ImportError:  # pragma: no cover - torch missing
            pass
    for path in candidates:
        if path.is_file():
            cal = HuntCalibration.load(path)
            if cal.model_hash == model_hash:
                return cal
    log.warning("no [Fe/H] calibration for model %s: using the heads' uncertainties as "
                "they are (fit one with `specsearch hunt-calibrate`)", model_hash or "?")
    return HuntCalibration(modalities={})


def seed_vectors(loaded, *, seed_spectra: Sequence[str | Path] = (),
                 seed_source_ids: Sequence[int] = (), model_dir: str | Path | None = None,
                 seed_air: bool | None = None) -> np.ndarray | None:
    """(m, D) unit vectors of the seeds: stored vectors of ``seed_source_ids`` (any modality
    that has them) and encoded ``seed_spectra`` files (needs the model; ``seed_air``: their
    wavelengths are in air / vacuum, generic files only, None: the files decide)."""
    parts = []
    for s in seed_source_ids:
        found = [t for t in loaded.tables.values() if np.any(t.source_id == int(s))]
        if not found:
            raise ConfigError(f"seed source_id {s} is in none of {sorted(loaded.tables)}")
        parts.append(example_vectors(found[0], [int(s)]))
    if seed_spectra:
        from specsearch.model import load_model

        model = load_model(model_dir)
        if model.model_hash != loaded.provenance.get("model_hash", model.model_hash):
            raise ConfigError(f"model {model.model_hash} differs from the index's model "
                              f"{loaded.provenance.get('model_hash')}: pass --model")
        modality = "lamost" if "lamost" in loaded.tables else next(iter(loaded.tables))
        parts.append(embed_spectrum_files(seed_spectra, modality, model, air=seed_air))
    return np.concatenate(parts) if parts else None


@dataclass
class HuntRun:
    out: Path
    result: HuntResult


def run_hunt(source: str | Path, *, out: str | Path, feh_max: float = -2.0,
             mode: str = "any", top: int | None = None, min_prob: float = 0.5,
             filters: Sequence[str] | None = None, calibration: str | Path | None = None,
             seed_spectra: Sequence[str | Path] = (), seed_source_ids: Sequence[int] = (),
             seed_weight: float = 0.3, model_dir: str | Path | None = None,
             embeddings: str | Path | None = None, fmt: str | None = None,
             verify: bool = True, adapt_prior: bool = False,
             seed_air: bool | None = None) -> HuntRun:
    """Rank the stars of an index (or embeddings dataset) and write the chosen list."""
    modalities = None if mode in ("any", "both") else [mode]
    loaded = load_source(source, modalities, embeddings=embeddings, verify=verify)
    cal = find_calibration(loaded.provenance.get("model_hash", ""), calibration, model_dir)
    seeds = seed_vectors(loaded, seed_spectra=seed_spectra, seed_source_ids=seed_source_ids,
                         model_dir=model_dir, seed_air=seed_air)
    if adapt_prior:
        check_pool_filters(filters, cal.label)
    config = HuntConfig(feh_max=feh_max, mode=mode, top=top, min_prob=min_prob,
                        seed_weight=seed_weight, adapt_prior=adapt_prior)
    result = hunt(loaded.tables, cal, config=config, seeds=seeds,
                  row_masks=row_masks(loaded.tables, filters))
    c = result.chosen
    meta = {"feh_max": feh_max, "mode": mode, "calibrated": result.calibrated,
            "n_stars": result.n_stars, "out_of_domain_left_out": result.n_out_of_domain,
            "expected_total": round(result.expected_total, 2),
            "list_size": c.n, "expected_purity": round(c.expected_purity, 4)
            if c.n else "nan", "expected_completeness": round(c.expected_completeness, 4),
            "expected_members": round(c.expected_true, 2),
            "expected_members_sd": round(c.expected_true_sd, 2),
            "model_hash": loaded.provenance.get("model_hash", ""),
            "filters": "; ".join(filters or []) or "none", "seeds": 0 if seeds is None
            else len(seeds), "prior_fraction": round(result.prior_fraction, 6),
            "prior": "refitted to this pool" if adapt_prior else "the calibration's"}
    path = write_table(result.table, out, fmt=fmt, meta=meta)
    return HuntRun(out=path, result=result)


def run_calibrate(source: str | Path, *, out: str | Path, label: str = "feh",
                  filters: Sequence[str] | None = None,
                  embeddings: str | Path | None = None, verify: bool = True,
                  real_data: str | Path | None = None, model: str | Path | None = None
                  ) -> HuntCalibration:
    """Fit a calibration on the labelled rows of an index or embeddings dataset (a held-out
    validation set: never the stars you will hunt in) and save it as JSON.

    With ``real_data`` (a real-data folder, see :mod:`specsearch.model.training.real_sets`), the
    LAMOST noise model is then refitted on the real labelled stars of its ``cal`` split
    (embedded with ``model``, default: the shipped model), keeping the shape fitted on the
    synthetic rows (:func:`~specsearch.hunt.calibration_fit.refit_noise`).
    """
    loaded = load_source(source, None, embeddings=embeddings, verify=verify)
    tables = {m: t for m, t in loaded.tables.items() if t.has(label)}
    if not tables:
        raise ConfigError(f"{source}: no modality has a true {label!r} column to calibrate on")
    cal = fit_hunt_calibration(tables, label=label, source=str(source),
                               row_masks=row_masks(tables, filters))
    if real_data is not None and "lamost" in cal.modalities:
        cal = refit_on_real(cal, real_data, model=model, label=label)
    cal.save(out)
    return cal


def refit_on_real(cal: HuntCalibration, real_data: str | Path, *,
                  model: str | Path | None = None, label: str = "feh") -> HuntCalibration:
    """Refit the LAMOST noise model of ``cal`` on the real ``cal``-split labelled stars."""
    import dataclasses

    from specsearch.hunt.calibration_fit import refit_noise
    from specsearch.model import load_model
    from specsearch.model.training.real_sets import load_all

    m = load_model(model)
    if cal.model_hash and cal.model_hash != m.model_hash:
        raise ConfigError(f"the calibration rows are embeddings of model {cal.model_hash!r}, "
                          f"but --model is {m.model_hash!r}: pass the model that made them")
    sets = [s for s in load_all(Path(real_data)).values()
            if s.modality == "lamost" and label in s.labels]
    sel = [s.select(s.in_split("cal")) for s in sets]
    flux = np.concatenate([s.flux for s in sel])
    ivar = np.concatenate([s.ivar for s in sel])
    true = np.concatenate([s.labels[label] for s in sel])
    b = m.embed_numpy("lamost", flux, ivar)
    j = m.label_names.index(label)
    refit = refit_noise(cal.modalities["lamost"], b.predictions[:, j], b.uncertainties[:, j],
                        true)
    return dataclasses.replace(cal, modalities={**cal.modalities, "lamost": refit},
                               source=f"{cal.source} + real cal split of {real_data}")
