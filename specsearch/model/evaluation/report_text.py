"""The printed evaluation table (report.txt) from a report dict (report.json)."""

from __future__ import annotations

from typing import Any

from specsearch.model.evaluation.evaluate_templates import format_pyhammer

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
                lines.append(f"  {cname:<12} n={s['n']:<6} recall {_f(s['recall'], 3)}  "
                             f"precision {_f(s['precision'], 3)}")
    if report.get("real"):
        lines += [""] + format_real(report["real"])
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


def _format_domain(d: dict[str, Any]) -> list[str]:
    if not d:
        return []
    thr = d.get("thresholds")
    lines = ["  domain check (relative reconstruction error, held-out real spectra): "
             + ("no domain_check.json for this model" if thr is None else
                "thresholds " + ", ".join(f"{m} {_f(v)}" for m, v in thr.items()))]
    for name, r in d.items():
        if isinstance(r, dict) and "median" in r:
            flagged = f", flagged {r['flagged']}" if "flagged" in r else ""
            lines.append(f"    {name}: {r['n']} spectra, median {_f(r['median'])}, p99 "
                         f"{_f(r['p99'])}, max {_f(r['max'])}{flagged}")
    return lines


def format_real(real: dict[str, Any]) -> list[str]:
    """The real-data section (see :mod:`specsearch.model.evaluation.evaluate_real`)."""
    if "skipped" in real:
        return [f"real spectra: skipped ({real['skipped']})"]
    lines = ["real spectra (" + str(real.get("split", "")) + ")"]
    for name in ("lamost_dr10", "lamost_dr1", "miles"):
        r = real.get(name)
        if not isinstance(r, dict):
            continue
        if "skipped" in r:
            lines.append(f"  {name}: skipped ({r['skipped']})")
        elif "parameters" in r:
            lines += _param_table(f"  {name}: {r['n']} spectra of {r['n_stars']} held-out "
                                  f"stars ({r['split']} split)", r["parameters"])
    abl = real.get("window_ablation_dr10") or {}
    if "n" in abl:
        lines += ["", f"  window ablation, DR10 FGK S/N>30 test stars (n={abl['n']}): median "
                      f"shift of each prediction when the window is masked, and the bias and "
                      f"robust sigma after"]
        for k, row in abl.items():
            if isinstance(row, dict):
                lines.append(f"    {k:<18} " + "  ".join(f"{a} {_f(b, 3)}"
                                                        for a, b in row.items()))
    ident = real.get("identity") or {}
    if "pool" in ident:
        lines += ["", f"  same star, other visit, among all {ident['pool']} real LAMOST "
                      f"spectra (embedding vs raw pixels 4000-5600 A)"]
        for k in ("lamost_dr10", "lamost_dr8"):
            if k in ident:
                e, r = ident[k]["embedding"], ident[k]["raw_pixels"]
                lines.append(f"    {k:<12} n={e.get('n')}: top-1 {_f(e.get('top1'))} / "
                             f"{_f(r.get('top1'))}, top-5 {_f(e.get('top5'))} / "
                             f"{_f(r.get('top5'))}, median rank {_f(e.get('median_rank'), 1)} / "
                             f"{_f(r.get('median_rank'), 1)}")
                for extra in ("identity", "embedding+identity"):
                    if extra in ident[k]:
                        x = ident[k][extra]
                        lines.append(f"      {extra} vectors: top-1 {_f(x.get('top1'))}, top-5 "
                                     f"{_f(x.get('top5'))}, median rank "
                                     f"{_f(x.get('median_rank'), 1)}")
    cm = real.get("cross_modal") or {}
    if "xp_pool" in cm:
        lines.append(f"  real LAMOST -> own Gaia XP among {cm['xp_pool']}: ranks per visit "
                     f"{cm['partner_rank_per_visit']}, per star {cm['partner_rank_per_star']}")
    xp = real.get("xp") or {}
    if "18Sco" in xp:
        lines.append("  18 Sco (real XP): " + ", ".join(
            f"{k} {_f(v['pred'])} +- {_f(v['err'])} (lit. {v['literature']})"
            for k, v in xp["18Sco"].items()))
    if "spearman_type_vs_teff" in (xp.get("xp_templates") or {}):
        t = xp["xp_templates"]
        lines.append(f"  real XP dwarf templates B0-L1: Spearman(type, Teff) "
                     f"{_f(t['spearman_type_vs_teff'])}, A-K {_f(t['spearman_A_to_K'])}"
                     + (f", A-K odd subtypes (not in the XP realism fit) "
                        f"{_f(t['spearman_A_to_K_odd_subtypes'])}"
                        if "spearman_A_to_K_odd_subtypes" in t else ""))
        if "out_of_domain" in t:
            lines.append(f"    domain check flags {t['out_of_domain'] or 'none'}; Spearman "
                         f"over the rest {_f(t['spearman_in_domain'])}")
    lines.extend(format_pyhammer(real.get("pyhammer") or {}))
    lines.extend(_format_domain(real.get("domain") or {}))
    flagged = (real.get("pyhammer") or {}).get("out_of_domain")
    if flagged is not None:
        lines.append(f"    SDSS type templates flagged: {flagged or 'none'}")
    h = real.get("hunt") or {}
    if "completeness" in h:
        lines.append(f"  hunt [Fe/H]<-2 over {h['n_pool']} held-out real spectra "
                     f"({h['n_metal_poor']} labelled): list of {h['list_length']}: completeness "
                     f"{_f(h['completeness'])}, purity {_f(h['purity'])} (expected "
                     f"{_f(h['expected_purity'])}); shortest list with 80% completeness: "
                     f"{h['list_length_at_80pct']} stars, purity {_f(h['purity_at_80pct'])} "
                     f"(expected {_f(h['expected_purity_at_80pct'])}; {h['probability']})")
        for key, what in (("agreement_2n", "list of 2N"), ("agreement_at_80pct", "80% list"),
                          ("agreement_pool", "whole pool")):
            a = h.get(key)
            if a:
                lines.append(f"    {what}: {a['found']} labelled members, expected "
                             f"{a['expected']:.1f} +- {a['sd']:.1f} from the calibrated p "
                             f"(P(>= found) {a['p_at_least']:.3f}, P(<= found) "
                             f"{a['p_at_most']:.3f})")
        ad = h.get("adapted_prior") or {}
        if ad:
            lines.append(f"    prior refitted to the pool (no labels): fraction below -2 "
                         f"{ad['prior_fraction']:.4f} +- {ad['prior_fraction_se']:.4f} "
                         f"(calibration {ad['calibration_fraction']:.4f}; labelled "
                         f"{h['n_metal_poor'] / h['n_pool']:.4f}); expected purity "
                         f"{_f(ad['expected_purity'])} / {_f(ad['expected_purity_at_80pct'])}")
            for key, what in (("agreement_2n", "list of 2N"),
                              ("agreement_at_80pct", "80% list"),
                              ("agreement_pool", "whole pool")):
                a = ad.get(key)
                if a:
                    lines.append(f"      {what}: expected {a['expected']:.1f} +- "
                                 f"{a['sd']:.1f} (P(>= found) {a['p_at_least']:.3f}, "
                                 f"P(<= found) {a['p_at_most']:.3f})")
    if real.get("goals"):
        lines += ["", "  real-data goals"]
        for g in real["goals"]:
            lines.append(f"    [{'met' if g['met'] else 'GAP'}] {g['what']}: "
                         f"{_f(g['value'], 3)} (goal {g['goal']})")
    return lines
