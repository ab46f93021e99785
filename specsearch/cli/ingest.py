"""``specsearch ingest``: survey files -> catalog."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from specsearch.errors import ConfigError
from specsearch.fsutil import write_json_atomic

EPILOG = """\
Example:
  specsearch ingest --modality lamost ../shared/data/real/lamost/dr1/spectra \\
      --labels ../shared/data/real/lamost/dr1/labels.csv --on filename --out catalogs/lamost_dr1
  specsearch ingest --modality lamost ../shared/data/real/lamost/dr8_xp_matched \\
      --labels ../shared/data/real/pairs_lamost_xp.csv --on obsid \\
      --rename gaia_dr3_source_id=source_id --out catalogs/lamost_dr8
  specsearch ingest --modality xp gaia_xp_chunk.fits --out catalogs/xp
  specsearch ingest --modality lamost library/*.txt --resolving-power 10000 \\
      --out catalogs/library        # sharp spectra are broadened to LAMOST's R = 1800
  specsearch ingest --modality lamost observed/ --medium vacuum --out catalogs/mine
                                    # generic spectra in vacuum that do not say so
  specsearch ingest --modality lamost slit/ --telluric-uncorrected --out catalogs/slit
                                    # no telluric correction: the bands are masked

--medium applies to the generic spectra (FITS, text) only: LAMOST and Gaia XP files state
their own wavelength convention and are read as usual, so a folder that mixes survey files
and library spectra is ingested in one run; the summary says how many files it applied to.

Bad files are reported and skipped; re-running into the same catalog adds nothing twice.
Ctrl-C stops after the file being read (press it again to abandon that file); every file
reported as ingested is in the catalog, and the same command continues where it stopped.

Exit codes: 0 every file ingested (or already in the catalog); 3 finished, but some files
or spectra were skipped (reasons in the summary and --report); 1 failed: interrupted, or
every file was skipped; 2 bad options or an unreadable label table / ledger.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from specsearch.cli import HelpFormatter, add_medium_option

    p = sub.add_parser("ingest", help="read survey files into a Parquet catalog",
                       description="Read LAMOST FITS, Gaia XP tables or generic spectra, put "
                                   "them on the modality's canonical grid and write a catalog.",
                       formatter_class=HelpFormatter, epilog=EPILOG)
    p.add_argument("paths", nargs="+", help="files or folders (searched recursively)")
    p.add_argument("--modality", required=True, choices=["lamost", "xp"],
                   help="canonical grid to put the spectra on")
    p.add_argument("--out", required=True, help="catalog directory (created or added to)")
    p.add_argument("--labels", help="label table (CSV, ECSV, FITS, VOTable, Parquet)")
    p.add_argument("--on", help="label join: COLUMN or COLUMN=FIELD (FIELD: filename, "
                                "spectrum_id, source_id or a header key)")
    p.add_argument("--rename", action="append", default=[], metavar="COLUMN=CATALOG_COLUMN",
                   help="use a label-table column as a catalog column, e.g. "
                        "gaia_dr3_source_id=source_id (repeatable)")
    p.add_argument("--observed-frame", action="store_true",
                   help="keep the observed frame (default: remove the header redshift)")
    p.add_argument("--rv", choices=("auto", "header"), default="auto",
                   help="auto: remove the header redshift, then measure the radial velocity "
                        "a LAMOST-grid spectrum still shows (cross-correlation with "
                        "templates) and remove it when there is one (a file without a "
                        "redshift, or with a wrong one); header: the header's only")
    p.add_argument("--resolving-power", type=float, metavar="R",
                   help="R = lambda / FWHM of spectra whose files state no resolution; "
                        "spectra much sharper than LAMOST (R = 1800) are broadened to it "
                        "before they are put on the grid (a resolution the file states "
                        "wins)")
    p.add_argument("--telluric-uncorrected", action="store_true",
                   help="the spectra were not corrected for telluric absorption (many "
                        "spectrographs' reductions): the telluric bands (6860-6960, "
                        "7160-7340, 7590-7700, 8100-8380 A and beyond 8900 A, observed "
                        "frame) are masked rather than read as the star")
    add_medium_option(p, "the generic files (FITS, text)",
                      "; LAMOST and Gaia XP files are read as usual (they state their own)")
    p.add_argument("--rows-per-file", type=int, default=50_000)
    p.add_argument("--max-file-mb", type=int, default=256,
                   help="largest content (MB, after gzip decompression) of a file read "
                        "whole (FITS, VOTable, ECSV, text); bigger files are skipped. CSV "
                        "and Parquet tables are streamed and not bounded by this")
    p.add_argument("--report", help="also write the full report (every skip) as JSON here")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from specsearch.cli import medium_air
    from specsearch.io.ingest import ingest
    from specsearch.io.limits import DEFAULT_LIMITS, use_limits

    rename = {}
    for item in args.rename:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise ConfigError(f"--rename expects COLUMN=CATALOG_COLUMN, got {item!r}")
        rename[src] = dst
    limits = dataclasses.replace(DEFAULT_LIMITS,
                                 max_decompressed_bytes=args.max_file_mb * 2 ** 20)
    with _stop_on_ctrl_c() as stop, use_limits(limits):
        report = ingest(args.paths, args.out, modality=args.modality, labels=args.labels,
                        on=args.on, rename=rename, rest_frame=not args.observed_frame,
                        rv=args.rv,
                        rows_per_file=args.rows_per_file, progress=not args.no_progress,
                        should_stop=stop.is_set, resolving_power=args.resolving_power,
                        air=medium_air(args), telluric_uncorrected=args.telluric_uncorrected)
    print(report.summary())
    if args.report:
        write_json_atomic(Path(args.report), {**asdict(report), "exit_code": report.exit_code})
    return report.exit_code


@contextlib.contextmanager
def _stop_on_ctrl_c() -> Iterator[threading.Event]:
    """The first Ctrl-C sets the event (stop between files); the second interrupts."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nspecsearch ingest: stopping after the current file (Ctrl-C again to stop "
              "now)", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
