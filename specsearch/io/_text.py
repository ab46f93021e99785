"""Parsing of text spectra (CSV / TXT / DAT, optionally gzipped) into named columns.

:mod:`specsearch.io.generic` turns the result into a :class:`~specsearch.spectrum.Spectrum`;
this module only reads the table and recognises its columns.

Layout understood:

* comment lines start with ``#``, ``%`` or ``!``; a comment ``key = value`` or ``key: value``
  with a key from :data:`COMMENT_KEYS` is kept (e.g. ``# spectrum_id = star-1``,
  ``# medium = air``, ``# wavelength_unit = nm``, ``# ra = 10.5``);
* an optional header line naming the columns (the first non-comment line, or the last
  comment line before the data when it names a wavelength and a flux column);
* data rows separated by commas, semicolons, pipes, or runs of spaces and tabs.

Column names are matched case-insensitively after splitting on ``_``, ``-``, ``.`` and
spaces; a unit or medium may decorate the name: ``wavelength_nm``, ``wave [A]``,
``lambda(um)``, ``wavelength_air``, ``wave_vac``. Without a header, 2 columns are
(wavelength, flux) and 3 columns (wavelength, flux, error).

Why not ``astropy.io.ascii`` guessing: it takes the *first* comment line as a commented
header (``# medium = air`` becomes three columns), refuses ``;`` separators, and re-parses
the whole file for every failed guess (12 s against 0.3 s for ``np.loadtxt`` on a 4 MB
table with one ragged row), which an upload must not be able to cause.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from specsearch.errors import ReaderError
from specsearch.fsutil import read_head
from specsearch.io.limits import current_limits, too_large

TEXT_SUFFIXES = (".csv", ".txt", ".dat", ".tsv", ".tab", ".ascii", ".spec")
COMMENT_PREFIXES = ("#", "%", "!")
MAX_LINE_BYTES = 2 ** 20
"""A text spectrum's rows are a few numbers; a longer line is damage (or a bomb)."""
MAX_TEXT_BYTES = 64 * 2 ** 20
"""Text spectra larger than this are refused (a spectrum is at most a few MB; parsing
holds the text about three times over)."""

ROLE_NAMES: dict[str, frozenset[str]] = {
    "wavelength": frozenset({"wavelength", "wave", "lambda", "lam", "wl", "wavelengths",
                             "awav", "vwav"}),
    "loglam": frozenset({"loglam", "log lam", "log lambda", "loglambda", "log wave",
                         "logwave", "log wavelength", "log10 lambda", "log10 wave"}),
    "flux": frozenset({"flux", "flam", "f lambda", "flux lambda", "f", "fl", "flux density"}),
    "ivar": frozenset({"ivar", "inverse variance", "invvar", "inv var", "flux ivar"}),
    "error": frozenset({"error", "err", "sigma", "flux err", "flux error", "fluxerr",
                        "e flux", "eflux", "uncertainty", "unc", "flux unc", "flux sigma",
                        "noise", "std", "stddev", "err flux", "error flux"}),
    "variance": frozenset({"var", "variance", "flux var", "flux variance"}),
    "mask": frozenset({"mask", "and mask", "andmask", "bad", "badpix", "qual", "quality"}),
}
UNIT_WORDS = {"a": "Angstrom", "aa": "Angstrom", "å": "Angstrom", "ang": "Angstrom",
              "angstrom": "Angstrom", "angstroms": "Angstrom", "nm": "nm",
              "nanometer": "nm", "nanometers": "nm", "nanometre": "nm", "nanometres": "nm",
              "um": "um", "µm": "um", "micron": "um", "microns": "um", "micrometer": "um"}
MEDIUM_WORDS = {"air": "air", "vac": "vacuum", "vacuum": "vacuum"}
COMMENT_KEYS = {"spectrum_id": "spectrum_id", "id": "spectrum_id", "obsid": "spectrum_id",
                "source_id": "source_id", "gaia_source_id": "source_id", "object": "object",
                "name": "object", "ra": "ra", "dec": "dec", "snr": "snr", "z": "z",
                "redshift": "z", "medium": "medium", "wavelength_medium": "medium",
                "wavelength_unit": "wavelength_unit", "wave_unit": "wavelength_unit",
                "flux_unit": "flux_unit", "bunit": "flux_unit", "fwhm": "fwhm_A",
                "fwhm_a": "fwhm_A", "lsf_fwhm": "fwhm_A", "resolving_power": "resolving_power",
                "spec_res": "resolving_power"}
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*([eEdD][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|nan|inf|"
                     r"infinity)$", re.IGNORECASE)
_COMMENT_KV = re.compile(r"^\s*([A-Za-z_][\w ]*?)\s*[:=]\s*(.+?)\s*$")


@dataclass
class TextColumns:
    """A parsed text spectrum before it becomes a Spectrum.

    Attributes:
        columns: role (wavelength, loglam, flux, ivar, error, variance, mask) -> float array.
        names: role -> the column name as written (or "(column N)" without a header).
        wavelength_unit: unit named on the wavelength column or in a comment, else None.
        medium: "air"/"vacuum" named on the wavelength column or in a comment, else None.
        medium_from: where ``medium`` was read.
        comment_meta: recognised ``key = value`` comments (see :data:`COMMENT_KEYS`).
        header_less: True when the columns were assigned by position.
    """

    columns: dict[str, np.ndarray]
    names: dict[str, str]
    wavelength_unit: str | None = None
    medium: str | None = None
    medium_from: str = ""
    comment_meta: dict[str, Any] = field(default_factory=dict)
    header_less: bool = False


def has_text_suffix(path: str | Path) -> bool:
    name = str(path).lower().removesuffix(".gz")
    return name.endswith(TEXT_SUFFIXES)


def read_text_lines(path: str | Path, max_bytes: int | None = MAX_TEXT_BYTES) -> list[str]:
    """The file's lines (gunzipped if needed); ReaderError if unreadable, binary or empty."""
    path = Path(path)
    cap = current_limits().max_decompressed_bytes
    max_bytes = cap if max_bytes is None else min(max_bytes, cap)
    try:
        raw = read_head(path, max_bytes + 1)   # bounded: a gzip bomb stops here
    except (OSError, EOFError, zlib.error) as exc:
        raise ReaderError(path, f"cannot read the text file: {exc}") from exc
    if len(raw) > max_bytes:
        raise too_large(path, "text size", f"more than {max_bytes:,} bytes", max_bytes,
                        "max_decompressed_bytes")
    lines = raw.count(b"\n") + 1
    if lines > (max_lines := current_limits().max_text_lines):
        raise too_large(path, "text lines", f"{lines:,}", max_lines, "max_text_lines")
    if (longest := longest_line(raw)) > MAX_LINE_BYTES:
        raise ReaderError(path, f"a line of {longest:,} bytes (at most {MAX_LINE_BYTES:,}): "
                                f"not a text spectrum of wavelength/flux rows; damaged file?")
    if not raw.strip():
        raise ReaderError(path, "empty file: no header and no data rows")
    if b"\x00" in raw[:65536]:
        raise ReaderError(path, "binary content in a text spectrum (NUL bytes); expected "
                                "wavelength/flux columns as text")
    return raw.decode("utf-8", errors="replace").splitlines()


def longest_line(raw: bytes, chunk: int = 1 << 23) -> int:
    """Bytes in the longest line of ``raw`` (newlines found by numpy, chunk by chunk: no
    copy of the text is made)."""
    data = np.frombuffer(raw, dtype=np.uint8)
    longest, last = 0, -1   # last: index of the last newline seen
    for lo in range(0, data.size, chunk):
        newlines = np.flatnonzero(data[lo:lo + chunk] == 10) + lo
        if newlines.size:
            longest = max(longest, int(np.diff(newlines, prepend=last).max()) - 1)
            last = int(newlines[-1])
    return max(longest, data.size - last - 1)


def _tokens(line: str, delimiter: str | None) -> list[str]:
    parts = line.split(delimiter) if delimiter else line.split()
    return [p.strip().strip("\"'").strip() for p in parts]


def _delimiter(line: str) -> str | None:
    """Comma, semicolon or pipe when present; otherwise any run of spaces and tabs."""
    for delim in (",", ";", "|"):
        if delim in line:
            return delim
    return None


def classify_name(name: str) -> tuple[str | None, str | None, str | None]:
    """(role, unit, medium) of a column name, e.g. 'Wavelength [nm]' -> (wavelength, nm, None)."""
    words = [w for w in re.split(r"[\s_\-.\[\]()/{}<>:]+", name.strip().lower()) if w]
    unit = next((UNIT_WORDS[w] for w in words if w in UNIT_WORDS), None)
    medium = next((MEDIUM_WORDS[w] for w in words if w in MEDIUM_WORDS), None)
    core = " ".join(w for w in words if w not in UNIT_WORDS and w not in MEDIUM_WORDS)
    role = next((r for r, names in ROLE_NAMES.items() if core in names), None)
    if role is None and unit is not None and not core:  # a column called just "nm"/"A"
        role = "wavelength"
    return role, unit, medium


def _is_number(token: str) -> bool:
    return bool(_NUMBER.match(token))


def _comment_meta(comments: list[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for text in comments:
        match = _COMMENT_KV.match(text)
        if match and match.group(1).strip().lower().replace(" ", "_") in COMMENT_KEYS:
            key = COMMENT_KEYS[match.group(1).strip().lower().replace(" ", "_")]
            meta.setdefault(key, match.group(2).strip().strip("\"'"))
    return meta


def _locate(lines: list[str]) -> tuple[list[str], list[str] | None, int, int | None]:
    """(comment texts, header tokens or None, header line number, index of first data row)."""
    comments: list[str] = []
    header: list[str] | None = None
    header_line = 0
    for number, line in enumerate(lines):
        text = line.strip()
        if not text:
            continue
        if text.startswith(COMMENT_PREFIXES):
            comments.append(text.lstrip("#%! \t"))
            continue
        tokens = _tokens(text, _delimiter(text))
        if header is None and not all(_is_number(t) for t in tokens if t):
            header, header_line = tokens, number + 1
            continue
        return comments, header, header_line, number
    return comments, header, header_line, None


def _comment_header(comments: list[str]) -> list[str] | None:
    """The last comment line when it names the columns ("# wavelength flux error")."""
    if not comments:
        return None
    candidate = _tokens(comments[-1], _delimiter(comments[-1]))
    roles = {classify_name(t)[0] for t in candidate}
    return candidate if "flux" in roles and roles & {"wavelength", "loglam"} else None


def looks_like_text_spectrum(path: str | Path, max_lines: int = 300,
                             max_bytes: int = 1 << 16) -> bool:
    """Cheap check for ``identify``: the first lines (within ``max_bytes``: a one-line
    gigabyte is never read) hold a header naming a wavelength and a flux column, or 2-3
    numeric columns. Never raises."""
    try:
        head = read_head(path, max_bytes)
    except (OSError, EOFError, zlib.error):
        return False
    lines = head.decode("utf-8", errors="replace").splitlines()[:max_lines]
    if any("\x00" in line for line in lines):
        return False
    comments, header, _, first = _locate(lines)
    header = header or _comment_header(comments)
    if header is not None:
        roles = {classify_name(t)[0] for t in header}
        return "flux" in roles or bool(roles & {"wavelength", "loglam"})
    if first is None:
        return False
    tokens = _tokens(lines[first].strip(), _delimiter(lines[first]))
    return len(tokens) in (2, 3)


def parse_text(path: str | Path, max_bytes: int | None = MAX_TEXT_BYTES) -> TextColumns:
    """Read a text spectrum's columns. ReaderError names the file and the problem."""
    path = Path(path)
    lines = read_text_lines(path, max_bytes)
    comments, header, header_line, first_data = _locate(lines)
    if first_data is None:
        raise ReaderError(path, "no data rows: the file holds only a header and/or comments")
    delimiter = _delimiter(lines[first_data])
    if header is None:  # "# wavelength flux error" just above the data
        header = _comment_header(comments)
    body = [ln for ln in lines[first_data:] if ln.strip() and not ln.strip().startswith(
        COMMENT_PREFIXES)]
    try:
        table = np.loadtxt(body, delimiter=delimiter, ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise ReaderError(path, f"cannot parse the data rows (first data row is line "
                                f"{first_data + 1}): {exc}") from exc
    out = TextColumns(columns={}, names={}, comment_meta=_comment_meta(comments))
    if header is None:
        out.header_less = True
        if table.shape[1] not in (2, 3):
            raise ReaderError(path, f"{table.shape[1]} columns and no header line: expected 2 "
                                    f"(wavelength, flux) or 3 (wavelength, flux, error); add "
                                    f"a header line naming the columns")
        for i, role in enumerate(("wavelength", "flux", "error")[:table.shape[1]]):
            out.columns[role], out.names[role] = table[:, i], f"(column {i + 1})"
    else:
        if len(header) != table.shape[1]:
            raise ReaderError(path, f"the header (line {header_line}) names {len(header)} "
                                    f"columns {header} but data rows have {table.shape[1]}")
        for i, name in enumerate(header):
            role, unit, medium = classify_name(name)
            if role is None or role in out.columns:
                continue
            out.columns[role], out.names[role] = table[:, i], name
            if role == "wavelength":
                out.wavelength_unit = unit
                if medium:
                    out.medium, out.medium_from = medium, f"column name {name!r}"
    missing = [r for r in ("flux",) if r not in out.columns]
    if "wavelength" not in out.columns and "loglam" not in out.columns:
        missing.insert(0, "wavelength")
    if missing:
        raise ReaderError(path, f"missing column(s) {missing}: found columns {header}; "
                                f"expected e.g. wavelength/wave/lambda/loglam, flux, and "
                                f"optionally ivar or error/err/sigma")
    if out.medium is None and out.comment_meta.get("medium"):
        word = str(out.comment_meta["medium"]).strip().lower()
        if word in MEDIUM_WORDS:
            out.medium, out.medium_from = MEDIUM_WORDS[word], "comment 'medium'"
    if out.wavelength_unit is None and out.comment_meta.get("wavelength_unit"):
        out.wavelength_unit = UNIT_WORDS.get(
            str(out.comment_meta["wavelength_unit"]).strip().lower())
    return out
