"""The printed evaluation table (report.txt) from a report dict (report.json)."""

from __future__ import annotations

from typing import Any

UNITS = {"teff": "K", "logg": "dex", "feh": "dex", "alpha_fe": "dex", "ebv": "mag"}


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.{digits}f}"
    return str(v)


def _param_table(title: str, params: dict[str, Any]) -> list[str]:
    lines = [title, f"  {'label':<9} {'subset':<20} {'n':>6} {'bias':>9} {'sigma':>9} "
                    f"{'rms':>9} {'z-width':>8}"]
    for label, subsets in params.items():
        for name, s in subsets.items():
            if not s or not s.get("n"):
                continue
            lines.append(f"  {label:<9} {name:<20} {s['n']:>6} {_f(s['bias'], 3):>9} "
                         f"{_f(s['sigma'], 3):>9} {_f(s['rms'], 3):>9} "
                         f"{_f(s['z_width'], 2):>8}")
    return lines


def format_report(report: dict[str, Any]) -> str:
    m = report["model"]
    c = report["catalog"]
    lines = [f"model {m['arch']} {m['hash'][:12]} (D={m['embedding_dim']}) on {c['path']} "
             f"[{c['split']} split, {c['pairs']} pairs, {report.get('n_good_pairs')} usable]",
             "", "cross-modal retrieval (partner in top-k among N held-out pairs)",
             f"  {'N':>6} {'direction':<14} {'top-1':>7} {'top-10':>7} {'median rank':>12}"]
    for n, rows in report["retrieval"].items():
        if "skipped" in rows:
            lines.append(f"  {n:>6} skipped: {rows['skipped']}")
            continue
        for d, r in rows.items():
            lines.append(f"  {n:>6} {d:<14} {r['top1']:>7.3f} {r['top10']:>7.3f} "
                         f"{r['median_rank']:>12.1f}")
    for mod, params in report["parameters"].items():
        lines += [""] + _param_table(f"parameters from {mod} (pred - true; sigma = 1.4826 MAD; "
                                     f"S/N of the {mod} spectrum)", params)
    if report.get("translation"):
        lines += ["", "translation (median over spectra of the median |pred-obs|/|obs|)"]
        for d, t in report["translation"].items():
            lines.append(f"  {d:<16} median {t['median_relative_error']:.4f}  "
                         f"p90 {t['p90_relative_error']:.4f}  (n={t['n']})")
    if report.get("residuals"):
        lines += ["", "residuals (reduced chi, ~1 = as expected from noise + model floor)"]
        for mod, r in report["residuals"].items():
            lines.append(f"  {mod:<8} reconstruction {_f(r['recon_median'], 2)}  "
                         f"translation {_f(r['translation_median'], 2)}")
    for mod, classes in (report.get("classifier") or {}).items():
        if classes:
            lines += ["", f"rare-population classifier from {mod} (argmax)"]
            for cname, s in classes.items():
                lines.append(f"  {cname:<12} n={s['n']:<6} recall {s['recall']:.3f}  "
                             f"precision {s['precision']:.3f}")
    real = report.get("real")
    if real:
        lines += ["", "real spectra"]
        for name, r in real.items():
            if not isinstance(r, dict):
                continue
            if "skipped" in r:
                lines.append(f"  {name}: skipped ({r['skipped']})")
                continue
            if "parameters" in r:
                lines += _param_table(f"  {name} ({r.get('n', '?')} spectra; "
                                      f"{r.get('note', '')})", r["parameters"])
            for k, v in r.items():
                if k not in ("parameters", "n", "note"):
                    lines.append(f"    {k}: {v}")
    if report.get("goals"):
        lines += ["", "goals"]
        for g in report["goals"]:
            lines.append(f"  [{'met' if g['met'] else 'GAP'}] {g['what']}: {_f(g['value'], 3)} "
                         f"(goal {g['goal']})")
    if report.get("speed"):
        lines += ["", "speed (spectra/s, same run; "
                      f"{report['speed'][0]['threads']} torch threads, "
                      f"{report['speed'][0]['device']})"]
        for s in report["speed"]:
            lines.append(f"  {s['arch']:<9} {s['modality']:<7} {s['what']:<34} "
                         f"batch {s['batch_size']:>5}  {s['spectra_per_s']:>10,.0f}")
    lines.append(f"\n({report['timing']['seconds']:.0f} s)")
    return "\n".join(lines) + "\n"
