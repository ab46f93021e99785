"""``specsearch evaluate``: retrieval, parameters, translation, real data and speed.

The held-out set is the catalog's test split (stars whose source_id hash puts them there,
never read by training) when the catalog is the one the model was trained on, else the
whole catalog (``split="auto"``). Everything goes through the public inference API
(:meth:`SpecModel.embed_numpy`, :meth:`SpecModel.translate`), i.e. what the embedding
builder and the query engine run.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch

from specsearch.errors import ConfigError
from specsearch.io.catalog import open_catalog
from specsearch.fsutil import write_bytes_atomic, write_json_atomic
from specsearch.model.api import SpecModel, load_model
from specsearch.model.training.data import (SPLITS, catalog_fingerprint, join_pairs,
                                            read_spectra_rows)
from specsearch.model.evaluation.metrics import label_stats, median_relative_error, retrieval
from specsearch.preprocess import prepare_model_input

GOALS: dict[str, dict[str, float]] = {
    "lamost": {"teff": 50.0, "logg": 0.1, "feh": 0.05, "alpha_fe": 0.03},
    "xp": {"teff": 70.0, "logg": 0.15, "feh": 0.1},
}
"""Robust-sigma goals at S/N > 50 (issue 4), per modality and label."""
RETRIEVAL_GOAL = 0.90
"""Top-1 cross-modal retrieval goal among 10k held-out pairs."""
META_COLUMNS = ("source_id", "snr", "population", "is_artefact")


class ModelInfo(TypedDict, total=False):
    """Which model was scored."""

    path: str
    hash: str
    arch: str
    embedding_dim: int
    labels: list[str]
    classes: list[str]


class CatalogInfo(TypedDict):
    """Which catalog and split were scored."""

    path: str
    fingerprint: str
    split: str
    pairs: int


class EvaluationReport(TypedDict, total=False):
    """What ``specsearch evaluate`` writes to report.json (and returns).

    ``model`` and ``timing`` are always there. A catalog run adds ``catalog``,
    ``n_good_pairs``, ``retrieval`` (pool size -> direction -> top-1/top-10/median rank),
    ``parameters`` (modality -> label -> subset -> bias/sigma/z-width), ``classifier``,
    ``translation``, ``residuals`` and the ``goals`` rows; ``real`` holds the real-data rows
    (:func:`specsearch.model.evaluation.evaluate_real.evaluate_real`), ``speed`` and
    ``figures`` what was asked for.
    """

    model: ModelInfo
    catalog: CatalogInfo
    n_good_pairs: int
    retrieval: dict[str, dict[str, Any]]
    parameters: dict[str, dict[str, Any]]
    classifier: dict[str, Any]
    translation: dict[str, Any]
    residuals: dict[str, dict[str, float]]
    goals: list[dict[str, Any]]
    real: dict[str, Any]
    speed: list[dict[str, Any]]
    timing: dict[str, float]
    figures: list[str]


@dataclass
class EvalConfig:
    """Options of an evaluation run.

    Attributes:
        split: ``auto``, ``test`` or ``all`` (see the module docstring).
        retrieval_sizes: pool sizes N for the top-1 / top-10 retrieval rows.
        max_pairs: cap on held-out pairs read (one visit per star).
        snr_bins: S/N bin edges for the parameter rows (each modality's own ``snr``).
        real_data: folder of the real samples (MILES, LAMOST DR1/DR8, Gaia XP), or None.
        speed: also measure encoder throughput, this model vs a ``specclip``-size one.
        figures: write PNG figures.
        device: torch device for inference.
    """

    split: str = "auto"
    retrieval_sizes: tuple[int, ...] = (1000, 10000)
    max_pairs: int = 12000
    snr_bins: tuple[float, ...] = (0.0, 10.0, 20.0, 50.0, float("inf"))
    real_data: str | None = None
    speed: bool = True
    figures: bool = True
    device: str = "cpu"
    seed: int = 0


def _select_pairs(model: SpecModel, cat, cfg: EvalConfig) -> tuple[Any, np.ndarray, str]:
    train_cfg = model.full_config.get("training", {}).get("train_config", {})
    pairs = join_pairs(cat, val_fraction=train_cfg.get("val_fraction", 0.05),
                       test_fraction=train_cfg.get("test_fraction", 0.05))
    split = cfg.split
    if split == "auto":
        same = model.full_config.get("training", {}).get("catalog_fingerprint")
        split = "test" if same == catalog_fingerprint(cat) else "all"
    if split not in ("test", "all"):
        raise ConfigError(f"split must be auto, test or all; got {cfg.split!r}")
    idx = np.arange(len(pairs)) if split == "all" else np.flatnonzero(
        pairs.split == SPLITS["test"])
    _, first = np.unique(pairs.source_id[idx], return_index=True)   # one visit per star
    idx = idx[np.sort(first)]
    if idx.size > cfg.max_pairs:
        idx = np.sort(np.random.default_rng(cfg.seed).permutation(idx)[:cfg.max_pairs])
    return pairs, idx, split


def _parameter_rows(model: SpecModel, m: str, batch, true: dict[str, np.ndarray],
                    snr: np.ndarray, keep: np.ndarray, cfg: EvalConfig) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for j, name in enumerate(model.label_names):
        if name not in true:
            continue
        pred, err, t = batch.predictions[:, j], batch.uncertainties[:, j], true[name]
        subsets = {"all": keep}
        edges = cfg.snr_bins
        for lo, hi in zip(edges[:-1], edges[1:]):
            label = f"snr {lo:g}-{hi:g}" if np.isfinite(hi) else f"snr >{lo:g}"
            subsets[label] = keep & (snr >= lo) & (snr < hi)
        if "feh" in true:
            subsets["feh < -2"] = keep & (true["feh"] < -2.0)
            subsets["feh < -2, snr >20"] = keep & (true["feh"] < -2.0) & (snr > 20)
        rows[name] = {k: dataclasses.asdict(label_stats(pred[s], err[s], t[s]))
                      for k, s in subsets.items()}
    return rows


@torch.inference_mode()
def _translation(model: SpecModel, data: dict[str, dict[str, np.ndarray]],
                 chunk: int = 2048) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for src in model.modalities:
        dst = [m for m in model.modalities if m != src]
        if not dst:
            continue
        dst = dst[0]
        errs = []
        n = data[src]["flux"].shape[0]
        for s in range(0, n, chunk):
            a = prepare_model_input(data[src]["flux"][s:s + chunk],
                                    data[src]["ivar"][s:s + chunk], src)
            b = prepare_model_input(data[dst]["flux"][s:s + chunk],
                                    data[dst]["ivar"][s:s + chunk], dst)
            emb = model.encode(src, torch.from_numpy(a.flux).to(model.device),
                               torch.from_numpy(a.weight).to(model.device))
            pred = model.translate(src, emb).float().cpu().numpy()
            npix = pred.shape[-1]           # the decoded pixels (no SED columns)
            e = median_relative_error(pred, b.flux[:, :npix], b.weight[:, :npix])
            e[~(a.good & b.good)] = np.nan
            errs.append(e)
        e = np.concatenate(errs)
        out[f"{src}_to_{dst}"] = {"median_relative_error": float(np.nanmedian(e)),
                                  "p90_relative_error": float(np.nanpercentile(e, 90)),
                                  "n": int(np.isfinite(e).sum())}
    return out


def _classifier(model: SpecModel, batch, population: np.ndarray) -> dict[str, Any]:
    if batch.class_prob is None or population is None:
        return {}
    names = list(model.class_names)
    pred = np.array(names, dtype=object)[np.nan_to_num(batch.class_prob, nan=0).argmax(1)]
    truth = np.array([p or "normal" for p in population], dtype=object)
    res = {}
    for c in names:
        t, p = truth == c, pred == c
        # undefined (None) without such stars / such predictions in the catalog
        res[c] = {"n": int(t.sum()),
                  "recall": float((t & p).sum() / t.sum()) if t.any() else None,
                  "precision": float((t & p).sum() / p.sum()) if p.any() else None}
    return res


def _retrieval_rows(batches: dict[str, Any], gi: np.ndarray, cfg: EvalConfig
                    ) -> dict[str, Any]:
    """Retrieval among N held-out pairs (random pools), both directions, and the baseline
    that matches the heads' label predictions instead of the embeddings (each label scaled
    by its typical combined uncertainty): what the labels alone can identify."""
    rng = np.random.default_rng(cfg.seed)
    rows: dict[str, Any] = {}
    for n in cfg.retrieval_sizes:
        if gi.size < n:
            rows[str(n)] = {"skipped": f"only {gi.size} held-out pairs"}
            continue
        pool = rng.permutation(gi)[:n]
        a, b = batches["lamost"].embedding[pool], batches["xp"].embedding[pool]
        rows[str(n)] = {"lamost_to_xp": dataclasses.asdict(retrieval(a, b)),
                        "xp_to_lamost": dataclasses.asdict(retrieval(b, a))}
        pl, px = batches["lamost"], batches["xp"]
        ok = np.isfinite(pl.predictions[pool]).all(0) & np.isfinite(px.predictions[pool]).all(0)
        if ok.any():
            scale = np.sqrt(np.nanmedian(pl.uncertainties[pool][:, ok], 0) ** 2
                            + np.nanmedian(px.uncertainties[pool][:, ok], 0) ** 2)
            la = np.nan_to_num(pl.predictions[pool][:, ok] / scale)
            lb = np.nan_to_num(px.predictions[pool][:, ok] / scale)
            rows[str(n)]["labels_lamost_to_xp (baseline)"] = \
                dataclasses.asdict(retrieval(la, lb, metric="euclidean"))
    return rows


def evaluate(model_path: str | Path | None, catalog: str | Path, out: str | Path,
             cfg: EvalConfig = EvalConfig(), *, progress: bool = True) -> EvaluationReport:
    """Evaluate a model on a paired catalog; write report.json, report.txt and figures/."""
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(model_path, device=cfg.device)
    cat = open_catalog(catalog)
    pairs, idx, split = _select_pairs(model, cat, cfg)
    if idx.size < 2:
        raise ConfigError(f"{catalog}: only {idx.size} held-out pairs in split {split!r}; "
                          f"evaluate on a larger catalog or with --split all")
    labels = [n for n in model.label_names]
    data = {m: read_spectra_rows(cat, m, pairs.lamost_row[idx] if m == "lamost"
                                 else pairs.xp_row[idx], extra=(*META_COLUMNS, *labels))
            for m in ("lamost", "xp")}
    report: EvaluationReport = {
        "model": {"path": str(model.path), "hash": model.model_hash, "arch": model.config.name,
                  "embedding_dim": model.embedding_dim, "labels": labels,
                  "classes": list(model.class_names)},
        "catalog": {"path": str(catalog), "fingerprint": catalog_fingerprint(cat),
                    "split": split, "pairs": int(idx.size)}}
    batches, timing = {}, {}
    for m in ("lamost", "xp"):
        other = "xp" if m == "lamost" else "lamost"
        t = time.time()
        batches[m] = model.embed_numpy(m, data[m]["flux"], data[m]["ivar"],
                                       partner=(data[other]["flux"], data[other]["ivar"]))
        timing[f"embed_{m}_with_residuals_per_s"] = idx.size / (time.time() - t)
    good = batches["lamost"].good & batches["xp"].good
    report["n_good_pairs"] = int(good.sum())
    report["retrieval"] = _retrieval_rows(batches, np.flatnonzero(good), cfg)
    artefact = data["lamost"].get("is_artefact")
    clean = good & ~(artefact.astype(bool) if artefact is not None else False)
    true = {n: data["lamost"][n].astype(np.float64) for n in labels if n in data["lamost"]}
    report["parameters"] = {m: _parameter_rows(model, m, batches[m], true,
                                               data[m]["snr"].astype(np.float64), clean, cfg)
                            for m in ("lamost", "xp")}
    report["classifier"] = {m: _classifier(model, batches[m], data["lamost"].get("population"))
                            for m in ("lamost", "xp")}
    report["translation"] = _translation(model, data)
    report["residuals"] = {m: {"recon_median": float(np.nanmedian(batches[m].recon_residual)),
                               "translation_median":
                                   float(np.nanmedian(batches[m].translation_residual))}
                           for m in ("lamost", "xp")}
    report["goals"] = goal_rows(report)
    if cfg.real_data:
        from specsearch.model.evaluation.evaluate_real import evaluate_real
        report["real"] = evaluate_real(model, Path(cfg.real_data), report,
                                       figures_dir=out / "figures" if cfg.figures else None)
    if cfg.speed:
        from specsearch.model.evaluation.speed import compare_speed, embed_speed
        speed = compare_speed(model.net, device=str(model.device))
        speed += [embed_speed(model, m, with_domain=d) for m in model.modalities
                  for d in (False, True)]
        # one spectrum a call (a service request), without and with the domain check
        speed += [embed_speed(model, m, n=200, batch_size=1, with_domain=d)
                  for m in model.modalities for d in (False, True)]
        report["speed"] = [dataclasses.asdict(r) for r in speed]
        model.net.to(model.device)
    report["timing"] = timing | {"seconds": time.time() - t0,
                                 "torch_threads": torch.get_num_threads()}
    if cfg.figures:
        from specsearch.model.evaluation.figures import evaluation_figures
        report["figures"] = evaluation_figures(out / "figures", model, data, batches, true,
                                               clean)
    write_json_atomic(out / "report.json", _jsonable(report))
    text = format_report(report)
    write_bytes_atomic(out / "report.txt", text.encode())
    if progress:
        print(text)
    return report


def evaluate_real_only(model_path: str | Path | None, real_data: str | Path,
                       out: str | Path, cfg: EvalConfig = EvalConfig(), *,
                       progress: bool = True, cache: str | Path | None = None
                       ) -> EvaluationReport:
    """Only the real-data rows (``specsearch evaluate --real-data`` without a catalog)."""
    from specsearch.model.evaluation.evaluate_real import evaluate_real
    from specsearch.model.evaluation.report_text import format_real

    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(model_path, device=cfg.device)
    real = evaluate_real(model, Path(real_data), figures_dir=out / "figures" if cfg.figures
                         else None, cache=None if cache is None else Path(cache))
    report: EvaluationReport = {"model": {"path": str(model.path), "hash": model.model_hash,
                                          "arch": model.config.name}, "real": real,
              "timing": {"seconds": time.time() - t0}}
    write_json_atomic(out / "report.json", _jsonable(report))
    text = "\n".join([f"model {model.config.name} {model.model_hash[:12]}", "",
                      *format_real(real), f"\n({report['timing']['seconds']:.0f} s)"]) + "\n"
    write_bytes_atomic(out / "report.txt", text.encode())
    if progress:
        print(text)
    return report


def goal_rows(report: EvaluationReport) -> list[dict[str, Any]]:
    rows = []
    r10k = report["retrieval"].get("10000", {})
    for d in ("lamost_to_xp", "xp_to_lamost"):
        if d in r10k and isinstance(r10k[d], dict):
            v = r10k[d]["top1"]
            rows.append({"what": f"retrieval top-1 among 10k, {d}", "value": v,
                         "goal": f">= {RETRIEVAL_GOAL}", "met": v >= RETRIEVAL_GOAL})
    for m, goals in GOALS.items():
        for label, goal in goals.items():
            stats = report["parameters"].get(m, {}).get(label, {}).get("snr >50")
            if stats and stats["n"]:
                rows.append({"what": f"{m} {label} robust sigma at S/N>50",
                             "value": stats["sigma"], "goal": f"<= {goal}",
                             "met": stats["sigma"] <= goal})
    return rows


def _jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN/inf become null (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def format_report(report: EvaluationReport) -> str:
    """The printed table of a report (also written to report.txt)."""
    from specsearch.model.evaluation.report_text import format_report as fmt
    return fmt(report)
