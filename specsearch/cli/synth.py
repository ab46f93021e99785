"""``specsearch synth``: generate the synthetic paired LAMOST + Gaia XP survey."""

from __future__ import annotations

import argparse

from specsearch.errors import ConfigError

EPILOG = """\
Example:
  specsearch synth --n 100000 --seed 1 --out catalogs/synth
  specsearch synth --n 200000 --seed 2 --out catalogs/train --metal-poor-boost 20 \\
      --fractions carbon=0.01,white_dwarf=0.01 --workers 2

Writes CATALOG/lamost/ and CATALOG/xp/ (one row per star each, joined on source_id) with the
true labels (teff, logg, feh, alpha_fe, ebv, rv, mag_g, population, is_artefact, ...).
Populations: normal vmp emp carbon white_dwarf wd_md emission hot_ob binary ultracool
(ultracool: 0 unless set). Re-running the same command resumes an interrupted run.
"""


def parse_fractions(text: str | None) -> dict[str, float] | None:
    """'vmp=0.01,carbon=0.005' -> {'vmp': 0.01, 'carbon': 0.005}."""
    if not text:
        return None
    out = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--fractions: expected NAME=FRACTION[,NAME=FRACTION...], got "
                              f"{item!r}") from None
    return out


def register(sub: argparse._SubParsersAction) -> None:
    from specsearch.cli import HelpFormatter
    from specsearch.synth.labels import DEFAULT_ARTEFACT_FRACTION

    p = sub.add_parser("synth", help="generate a synthetic paired LAMOST + Gaia XP survey",
                       description="Generate realistic LAMOST-like and Gaia XP spectra of the "
                                   "same synthetic stars (one model spectrum per star), with "
                                   "true labels and rare populations, as a paired catalog.",
                       formatter_class=HelpFormatter, epilog=EPILOG)
    p.add_argument("--n", type=int, required=True, help="number of stars")
    p.add_argument("--seed", type=int, default=0, help="master random seed")
    p.add_argument("--out", required=True, help="catalog directory to write")
    p.add_argument("--metal-poor-boost", type=float, default=1.0,
                   help="multiply the vmp/emp fractions (over-sample [Fe/H] < -2)")
    p.add_argument("--fractions", help="population fractions, e.g. carbon=0.01,wd_md=0.002; "
                   "ultracool (late-M / L dwarfs from real SDSS co-adds) is 0 unless set")
    p.add_argument("--artefact-fraction", type=float, default=DEFAULT_ARTEFACT_FRACTION,
                   help="fraction of LAMOST spectra with an instrument artefact")
    p.add_argument("--shard-size", type=int, default=50_000, help="stars per shard file")
    p.add_argument("--no-realism", action="store_true",
                   help="leave out the realism corrections fitted on real LAMOST/XP spectra")
    p.add_argument("--no-individuality", action="store_true",
                   help="stars are their five labels only (no individual abundances, "
                        "rotation or R_V)")
    p.add_argument("--repeat-fraction", type=float, default=0.0,
                   help="fraction of stars observed twice by each instrument (independent "
                        "visits with the same source_id; for the identity objective)")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from specsearch.synth import generate_survey

    report = generate_survey(args.out, n=args.n, seed=args.seed,
                             metal_poor_boost=args.metal_poor_boost,
                             fractions=parse_fractions(args.fractions),
                             artefact_fraction=args.artefact_fraction,
                             shard_size=args.shard_size, workers=args.workers,
                             realism=not args.no_realism,
                             individuality=not args.no_individuality,
                             repeat_fraction=args.repeat_fraction,
                             progress=not args.no_progress)
    print(report.summary())
    return 0
