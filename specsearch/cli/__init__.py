"""The ``specsearch`` command: a thin layer that parses arguments and calls the library.

Each command group lives in its own module under ``specsearch.cli`` and exposes
``register(subparsers)``, which adds its parser(s) with ``set_defaults(run=...)``. Library
errors (:class:`specsearch.errors.SpecsearchError`) become a one-line message and exit code 2.
Every command's ``--help`` ends with an example (tests check this).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from specsearch import __version__
from specsearch.errors import SpecsearchError

COMMAND_MODULES: tuple[str, ...] = (
    "specsearch.cli.demo",
    "specsearch.cli.ingest",
    "specsearch.cli.embed",
    "specsearch.cli.synth",
    "specsearch.cli.train",
    "specsearch.cli.finetune",
    "specsearch.cli.evaluate",
    "specsearch.cli.index",
    "specsearch.cli.search",
    "specsearch.cli.anomalies",
    "specsearch.cli.serve",
)
"""Modules that register sub-commands, in the order they appear in ``--help``."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter,
                    argparse.ArgumentDefaultsHelpFormatter):
    """Keep example blocks as written and show defaults."""


MEDIUM_HELP = ("wavelength medium of {what}, whatever the file states; default: the file "
               "decides (FITS CTYPE1 AWAV/WAVE, AIRORVAC or VACUUM cards, a text column name "
               "or '# medium = ...' comment), and a file that says nothing is air for FITS, "
               "vacuum for text. Spectra are converted to vacuum either way")


def add_medium_option(parser: argparse.ArgumentParser, what: str, extra: str = "") -> None:
    """``--medium {air,vacuum}`` (``args.medium``; :func:`medium_air` turns it into the
    readers' ``air=``). ``what`` names the files it applies to in the help text."""
    # specsearch.io.registry.MEDIA, spelled out: importing the readers would slow --help
    parser.add_argument("--medium", choices=("air", "vacuum"), default=None,
                        help=MEDIUM_HELP.format(what=what) + extra)


def medium_air(args: argparse.Namespace) -> bool | None:
    """The readers' ``air=`` for ``--medium`` (None: not given, the file decides)."""
    from specsearch.io.registry import air_from_medium

    return air_from_medium(getattr(args, "medium", None))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specsearch",
        description="Vector similarity search for stellar spectra (LAMOST + Gaia XP).",
        formatter_class=HelpFormatter,
        epilog="Example:\n  specsearch demo            # the whole engine on the embedded default\n"
               "  specsearch COMMAND --help   # every command has an example",
    )
    parser.add_argument("--version", action="version", version=f"specsearch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # FAISS logs every CPU-feature probe it makes at INFO: noise for a user.
        logging.getLogger("faiss").setLevel(logging.WARNING)
    if not getattr(args, "run", None):
        parser.print_help()
        return 1
    try:
        result = args.run(args)
    except SpecsearchError as exc:
        print(f"specsearch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"specsearch {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
