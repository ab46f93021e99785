"""The demo report: example queries, candidate lists, figures and ``report.md``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from specsearch.demo.figures import (
    SpectrumTrace,
    plot_alignment,
    plot_spectra_panels,
    plot_umap_labels,
    umap_embed,
)
from specsearch.fsutil import write_text_atomic
from specsearch.io.catalog import list_column_to_numpy, open_catalog
from specsearch.io.embeddings import open_embeddings
from specsearch.preprocess import grid_for, prepare_model_input

SHOW_COLUMNS = ("rank", "similarity", "source_id", "spectrum_id", "population", "origin",
                "teff_pred", "logg_pred", "feh_pred", "teff", "feh")


def fetch_spectra(catalog: Path, modality: str, spectrum_ids: list[str]
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(flux, ivar) on the canonical grid of the given spectra, streamed from the catalog."""
    wanted = pa.array(list(spectrum_ids), pa.string())
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for batch in open_catalog(catalog).iter_batches(modality, ["spectrum_id", "flux", "ivar"]):
        mask = pc.is_in(batch.column("spectrum_id"), value_set=wanted)
        if not pc.any(mask).as_py():
            continue
        sub = batch.filter(mask)
        flux = list_column_to_numpy(sub.column("flux"))
        ivar = list_column_to_numpy(sub.column("ivar"))
        for i, sid in enumerate(sub.column("spectrum_id").to_pylist()):
            found[sid] = (flux[i], ivar[i])
    return found


def _traces(catalog: Path, modality: str, ids: list[str], labels: list[str]
            ) -> list[SpectrumTrace]:
    spectra = fetch_spectra(catalog, modality, ids)
    grid = grid_for(modality)
    out = []
    for sid, label in zip(ids, labels):
        if sid not in spectra:
            continue
        flux, ivar = spectra[sid]
        prepared = prepare_model_input(flux[None], ivar[None], modality)
        npix = grid.npix                # the pixels, not the SED columns after them
        out.append(SpectrumTrace(grid.wavelength, prepared.flux[0, :npix], label,
                                 prepared.weight[0, :npix] > 0))
    return out


def _markdown_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    cols = [c for c in columns if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if isinstance(v, float):
                cells.append("" if not np.isfinite(v) else
                             f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}")
            else:
                cells.append("" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _query_section(out: Path, engine, model, real: Path | None, figures: Path
                   ) -> list[str]:
    """A real LAMOST spectrum -> LAMOST neighbours and cross-modal XP matches."""
    from specsearch.io.registry import read_spectra

    md = ["## Query by example: a real LAMOST spectrum", ""]
    query_file = None
    if real is not None:
        matched = sorted((real / "lamost" / "dr8_xp_matched").glob("*.fits*"))
        query_file = matched[2] if len(matched) > 2 else (matched[0] if matched else None)
    if query_file is None:
        md.append("No real LAMOST file available (set SPECSEARCH_REAL_DATA); skipped.")
        return md
    spectrum = next(read_spectra(query_file, modality="lamost"))
    same = engine.search_spectrum(spectrum, target_modality="lamost", k=9)
    cross = engine.search_spectrum(spectrum, target_modality="xp", k=8)
    preds = same.query.get("predictions") or {}
    md += [f"Query: `{query_file.name}` (obsid {spectrum.spectrum_id}, LAMOST subclass "
           f"{spectrum.meta.get('subclass')}, S/N_g {spectrum.snr}).", "",
           "Predicted parameters of the query: " + ", ".join(
               f"{k} = {v[0]:.3g} ± {v[1]:.2g}" for k, v in preds.items()) + ".", "",
           "Nearest LAMOST spectra (the first is the query's own catalog entry"
           + ("; ranked by the mean of the embedding and identity-vector cosines, so the "
              "star's other visits come before its look-alikes" if
              same.query.get("ranked_by") == "embedding+identity" else "") + "):", "",
           _markdown_table(same.to_dicts(), SHOW_COLUMNS), "",
           "Cross-modal: nearest Gaia XP spectra to the same LAMOST query" + (
               " (the embedding's top 50 ranked by cosine plus the weighted log probability "
               "that their predicted parameters agree with the query's)"
               if cross.query.get("ranked_by") == "embedding+parameters" else "") + ":", "",
           _markdown_table(cross.to_dicts(), SHOW_COLUMNS), ""]
    rows = same.to_dicts()
    ids = [r["spectrum_id"] for r in rows[:5]]
    labels = [f"#{r['rank']} sim {r['similarity']:.3f} {r.get('population') or 'real'}"
              for r in rows[:5]]
    xrows = cross.to_dicts()
    catalog = out / "catalog"
    fig = plot_spectra_panels([
        ("LAMOST: query (top) and nearest neighbours", _traces(catalog, "lamost", ids, labels)),
        ("Gaia XP: cross-modal matches of the LAMOST query",
         _traces(catalog, "xp", [r["spectrum_id"] for r in xrows[:5]],
                 [f"#{r['rank']} sim {r['similarity']:.3f}" for r in xrows[:5]])),
    ], figures / "query_matches.png", offset=0.5)
    md += [f"![query and matches](figures/{fig.name})", ""]
    return md


def _list_section(path: Path, title: str, columns: tuple[str, ...], n: int = 10) -> list[str]:
    if not path.is_file():
        return [f"## {title}", "", "Not built.", ""]
    table = pq.read_table(path)
    meta = {k.decode().removeprefix("specsearch."): v.decode()
            for k, v in (table.schema.metadata or {}).items() if not k.startswith(b"ARROW")}
    info = {k: v for k, v in meta.items() if k in (
        "expected_purity", "expected_completeness", "expected_members",
        "expected_members_sd", "list_size", "expected_total", "feh_max", "list", "screened",
        "calibrated", "out_of_domain_left_out")}
    md = [f"## {title}", "", f"{table.num_rows} rows in `{path.name}`"
          + (f"; {', '.join(f'{k} = {v}' for k, v in info.items())}" if info else "") + ".", ""]
    md += [_markdown_table(table.slice(0, n).to_pylist(), columns), ""]
    return md


def _umap_section(out: Path, cfg, figures: Path) -> list[str]:
    emb = open_embeddings(out / "embeddings")
    rng = np.random.default_rng(cfg.seed)
    md = ["## Maps of the embedding (UMAP)", ""]
    cols = ["source_id", "embedding", "teff", "feh", "population", "origin"]
    table = pq.ParquetDataset([str(p) for p in emb.files("lamost")]).read(
        columns=[c for c in cols if c in emb.schema("lamost").names])
    n = table.num_rows
    pick = np.sort(rng.permutation(n)[:cfg.umap_points])
    origin = (table.column("origin").to_numpy(zero_copy_only=False)
              if "origin" in table.column_names else np.full(n, None))
    real_rows = np.flatnonzero(np.array([o is not None for o in origin]))
    pick = np.union1d(pick, real_rows)          # every real star is drawn
    sub = table.take(pa.array(pick))
    vec = list_column_to_numpy(sub.column("embedding"))
    xy = umap_embed(vec, seed=cfg.seed)
    pop = np.array(sub.column("population").to_pylist() if "population" in sub.column_names
                   else [None] * len(pick), dtype=object)
    groups = {str(p): pop == p for p in sorted({p for p in pop if p not in (None, "normal")})}
    groups["real stars"] = np.isin(pick, real_rows)
    teff = np.asarray(sub.column("teff").to_numpy(zero_copy_only=False), float)
    feh = np.asarray(sub.column("feh").to_numpy(zero_copy_only=False), float)
    fig = plot_umap_labels(xy, teff, feh, groups, figures / "umap_lamost.png",
                           title="LAMOST embeddings")
    md += [f"{len(pick)} LAMOST-side embeddings (true labels; rare populations and the "
           f"{int(groups['real stars'].sum())} real stars marked):", "",
           f"![UMAP coloured by Teff and [Fe/H]](figures/{fig.name})", ""]
    md += _alignment(emb, rng, figures, cfg)
    return md


def _alignment(emb, rng, figures: Path, cfg) -> list[str]:
    ids_l, vec_l = emb.read_vectors("lamost")
    ids_x, vec_x = emb.read_vectors("xp")
    common, il, ix = np.intersect1d(ids_l, ids_x, return_indices=True)
    if common.size < 10:
        return ["Too few stars with both spectra for the alignment map.", ""]
    take = rng.permutation(common.size)[:min(3000, common.size)]
    a, b = vec_l[il[take]], vec_x[ix[take]]
    sims = a @ b.T
    top1_lx = float(np.mean(sims.argmax(axis=1) == np.arange(len(take))))
    top1_xl = float(np.mean(sims.argmax(axis=0) == np.arange(len(take))))
    xy = umap_embed(np.concatenate([a, b]), seed=cfg.seed)
    modality = np.array(["lamost"] * len(take) + ["xp"] * len(take))
    pairs = np.stack([np.arange(len(take)), len(take) + np.arange(len(take))], axis=1)
    stats = (f"{len(take)} stars; partner is the top-1 match: LAMOST->XP {top1_lx:.1%}, "
             f"XP->LAMOST {top1_xl:.1%}")
    fig = plot_alignment(xy, modality, pairs, figures / "umap_alignment.png", stats=stats)
    return ["Are the two instruments aligned? A joint UMAP of the LAMOST and XP embeddings "
            f"of the same stars ({stats}):", "",
            f"![LAMOST vs XP alignment](figures/{fig.name})", ""]


def _anomaly_figure(out: Path, figures: Path) -> list[str]:
    path = out / "lists" / "anomalies.parquet"
    if not path.is_file():
        return []
    table = pq.read_table(path).slice(0, 6).to_pylist()
    traces = {}
    for modality in ("lamost", "xp"):
        rows = [r for r in table if r.get("modality") == modality]
        if rows:
            traces[modality] = _traces(out / "catalog", modality,
                                       [r["spectrum_id"] for r in rows],
                                       [f"{r.get('population') or ''} "
                                        f"score {r.get('anomaly_score', float('nan')):.1f}"
                                        for r in rows])
    panels = [(f"Top anomaly candidates ({m})", t) for m, t in traces.items() if t]
    if not panels:
        return []
    fig = plot_spectra_panels(panels, figures / "anomalies.png", offset=1.0)
    return [f"![top anomaly candidates](figures/{fig.name})", ""]


def _domain_lines(embeddings: Path, model) -> list[str]:
    """How many embedded spectra the model's domain check flags (``out_of_domain``)."""
    import pyarrow.dataset as ds

    check = model.domain_check
    if check is None:
        return []
    parts = []
    for m, thr in check.thresholds.items():
        folder = embeddings / m
        if not folder.is_dir():
            continue
        d = ds.dataset(folder, format="parquet")
        if "out_of_domain" not in d.schema.names:
            continue
        col = d.to_table(columns=["out_of_domain"]).column("out_of_domain")
        flagged = int(pc.sum(col.fill_null(False)).as_py() or 0)
        parts.append(f"{m} {flagged} of {len(col)} (threshold {thr:.3g})")
    if not parts:
        return []
    return ["Domain check (spectra the model's reconstruction misses by more than its "
            "threshold, LAMOST-grid spectra without most of 3850-5000 A, or broader than "
            "the model reads: their parameters are unreliable): " + "; ".join(parts) + ".",
            ""]


def write_report(out: Path, cfg, *, real: Path | None) -> Path:
    """Run the example queries and write ``report.md`` with its figures."""
    from specsearch.model import load_model
    from specsearch.query.engine import SearchEngine

    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    model = load_model(cfg.model)
    engine = SearchEngine.open(out / "index", encoder=model)
    info = engine.info()
    counts = {m: open_embeddings(out / "embeddings").count(m)
              for m in open_embeddings(out / "embeddings").modalities}
    real_counts = {}
    if (out / "real_counts.json").is_file():
        real_counts = json.loads((out / "real_counts.json").read_text())
    md = ["# specsearch demo report", "",
          f"Synthetic paired survey: {cfg.n} stars (seed {cfg.seed}); real sample spectra: "
          + (", ".join(f"{k} {v}" for k, v in real_counts.items()) or "none") + ".",
          "Embeddings: " + ", ".join(f"{m} {c}" for m, c in counts.items())
          + f"; model `{model.model_hash[:12]}` ({model.config.name}, "
            f"{model.embedding_dim}-d).",
          "Index: " + "; ".join(
              f"{m}: {d.get('count')} vectors in {d.get('shards')} shards, "
              f"{(d.get('backend') or {}).get('kind', '?')}"
              for m, d in (info.get("modalities") or {}).items()) + ".", ""]
    md += _domain_lines(out / "embeddings", model)
    md += _query_section(out, engine, model, real, figures)
    md += _list_section(out / "lists" / "anomalies.parquet", "Top anomaly candidates",
                        ("rank", "source_id", "modality", "anomaly_score", "anomaly_driver",
                         "population", "origin", "teff_pred", "feh_pred", "artefact_reasons"))
    md += _anomaly_figure(out, figures)
    md += _list_section(out / "lists" / "metal_poor.parquet",
                        "Top metal-poor candidates ([Fe/H] < -2)",
                        ("rank", "source_id", "modalities", "p_metal_poor", "feh_post_mean",
                         "feh_post_sd", "expected_purity", "expected_completeness"))
    md += _umap_section(out, cfg, figures)
    md += ["## Serve it", "",
           "Start the HTTP API and the web page on what the demo just built:", "",
           "```bash", f"specsearch serve {out / 'index'}", "```", "",
           "then open http://127.0.0.1:8000/ (API docs at /docs).", ""]
    return write_text_atomic(out / "report.md", "\n".join(md))
