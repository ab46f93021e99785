"""Ingest survey files into a catalog: read, put on the canonical grid, join labels, write.

One bad file among thousands is reported and skipped; every good spectrum is written.
Re-running into an existing catalog adds nothing twice: files already ingested (same path,
size and modification time) are skipped, and rows whose ``spectrum_id`` is already in the
catalog are dropped.

A wavelength medium the caller states (``air=``, the CLI's ``--medium``) applies to the
generic spectra among the files only: LAMOST and Gaia XP files state their own convention
and are read as usual, so one run can ingest a folder that mixes survey files and library
spectra.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from specsearch.errors import CatalogError, ReaderError, SpecsearchError, SpectrumError
from specsearch.fsutil import write_json_atomic
from specsearch.io.catalog import LABEL_COLUMNS, CatalogWriter, open_catalog
from specsearch.io.label_tables import LabelTable
from specsearch.preprocess import (C_KMS, RV_MODES, grid_for, state_telluric,
                                   to_canonical_grid)
from specsearch.io.ingest_report import IngestReport
from specsearch.preprocess.lsf import (BROADER_FACTOR, check_resolving_power,
                                        resolution_match, state_resolution)
from specsearch.spectrum import Spectrum

SPECTRUM_SUFFIXES = (".fits", ".fits.gz", ".fit", ".fit.gz", ".fts", ".fts.gz", ".csv",
                     ".csv.gz", ".tsv", ".ecsv", ".txt", ".txt.gz", ".dat", ".dat.gz", ".vot",
                     ".xml", ".parquet")
LEDGER = "ingest_ledger.json"
def stable_source_id(key: str) -> int:
    """A stable positive 63-bit id for a star with no survey id (e.g. ``miles:m0001V``)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files named, plus spectrum-like files found recursively in folders named (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*")
                          if f.is_file() and f.name.lower().endswith(SPECTRUM_SUFFIXES))
        elif p.exists():
            out.append(p)
        else:
            raise ReaderError(p, "no such file or directory")
    return out


def _read_ledger(root: Path) -> dict[str, Any]:
    path = root / LEDGER
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CatalogError(f"{path}: unreadable ingest ledger: {exc}; delete it to re-ingest "
                           f"(duplicates are still dropped by spectrum_id)") from exc


def _file_key(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _existing_ids(root: Path, modality: str) -> set[str]:
    try:
        cat = open_catalog(root)
    except CatalogError:
        return set()
    if modality not in cat.modalities:
        return set()
    return set(cat.read_column(modality, "spectrum_id").to_pylist())


def spectrum_row(spec: Spectrum, modality: str, *, rest_frame: bool = True,
                 rv: str = "auto", spikes: bool = True) -> dict[str, Any]:
    """One catalog row from a spectrum: resampled onto the canonical grid, metadata kept.

    With ``rest_frame`` the header redshift (``meta['z']``, LAMOST's pipeline value) is
    removed when present and finite, and with ``rv="auto"`` a velocity the spectrum still
    shows is measured and removed (:func:`specsearch.preprocess.to_canonical_grid`); the
    row records the velocity removed in ``rv`` (km/s) and how it was found in
    ``rv_source``, and the input pixels masked as single-pixel spikes (cosmic rays) in
    ``spikes_masked`` (neither is a catalog column: ingest counts them). On a resolution-matched grid
    (LAMOST's) it records ``fwhm_ratio``: the spectrum's line-spread FWHM over the model's,
    None where unknown (a file that states no resolution and is sampled like LAMOST); above
    :data:`~specsearch.preprocess.lsf.BROADER_FACTOR` the embedding builder flags it.
    """
    flux, ivar, z, rv_source, n_spikes = to_canonical_grid(spec, modality, rest_frame=rest_frame,
                                                          rv=rv, spikes=spikes)
    # Values beyond float32 (1e300 fluxes, 1e-200 errors) overflow on the grid: masked, so
    # that no row carries inf/NaN flux with a positive ivar.
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(flux) | ~np.isfinite(ivar) | ~(ivar >= 0)
    if bad.any():
        flux = np.where(bad, 0.0, flux).astype(flux.dtype)
        ivar = np.where(bad, 0.0, ivar).astype(ivar.dtype)
        if not (ivar > 0).any():
            raise SpectrumError(f"{spec.path or spec.spectrum_id or 'spectrum'}: no usable "
                                f"pixel on the {modality} grid (values overflow float32)")
    spectrum_id = spec.spectrum_id or Path(spec.path or "spectrum").name
    source_id = spec.source_id
    if source_id is None:
        source_id = stable_source_id(f"{modality}:{spectrum_id}")
    snr = spec.snr
    if snr is None or not np.isfinite(snr):
        good = ivar > 0
        snr = float(np.median(flux[good] * np.sqrt(ivar[good]))) if good.any() else np.nan
    row = {"spectrum_id": str(spectrum_id), "source_id": int(source_id),
           "flux": flux, "ivar": ivar, "ra": spec.ra, "dec": spec.dec, "snr": snr,
           "rv": None if z is None else z * C_KMS, "rv_source": rv_source,
           "spikes_masked": n_spikes,
           "origin": Path(spec.path).name if spec.path else None}
    match = resolution_match(spec, modality)
    if match is not None:
        row["fwhm_ratio"] = (None if match.input_fwhm_A is None
                             else match.input_fwhm_A / match.target_fwhm_A)
    return row


def _rows_to_columns(rows: list[dict[str, Any]], modality: str) -> dict[str, Any]:
    cols: dict[str, Any] = {"modality": [modality] * len(rows)}
    keys = dict.fromkeys(k for r in rows for k in r)  # labelled rows add keys: keep them all
    for key in keys:
        values = [r.get(key) for r in rows]
        cols[key] = np.stack(values) if key in ("flux", "ivar") else values
    for key in ("snr", "rv", "fwhm_ratio", *LABEL_COLUMNS):
        if key in cols:
            cols[key] = np.array([np.nan if v is None else v for v in cols[key]], np.float32)
    for key in ("ra", "dec"):
        cols[key] = np.array([np.nan if v is None else v for v in cols[key]], np.float64)
    return cols


@dataclass
class _FileRows:
    """The catalog rows of one file, not yet handed to the writer."""

    key: str
    file_key: dict[str, Any]
    name: str
    rows: list[dict[str, Any]]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SpecsearchError):
        return str(getattr(exc, "reason", exc))
    return f"{type(exc).__name__}: {exc}"


def ingest(paths: Sequence[str | Path], out: str | Path, *, modality: str,
           labels: str | Path | None = None, on: str | None = None,
           rename: dict[str, str] | None = None, rest_frame: bool = True, rv: str = "auto",
           rows_per_file: int = 50_000, batch_rows: int = 2000, progress: bool = True,
           should_stop: Callable[[], bool] | None = None,
           resolving_power: float | None = None, air: bool | None = None,
           telluric_uncorrected: bool = False) -> IngestReport:
    """Turn survey files (LAMOST FITS, Gaia XP tables, generic spectra) into a catalog.

    A file counts as done (in the ledger, skipped by a rerun) only once all its rows are
    in Parquet parts on disk: the ledger is rewritten after each part. Any error in one
    file (damaged, unreadable, a reader bug) makes it a skip with its reason and the run
    goes on. ``should_stop()`` is asked between files (the CLI's Ctrl-C handler); a
    ``KeyboardInterrupt`` inside a file abandons that file. Either way the rows of the
    finished files are written and ``report.interrupted`` is set; a rerun ingests the rest,
    so the catalog ends with exactly the rows of an uninterrupted run.

    Args:
        paths: files and/or folders (searched recursively for spectrum-like files).
        out: the catalog directory (created, or added to).
        modality: ``lamost`` or ``xp``: the canonical grid the spectra are put on.
        labels, on: an optional label table (any format :func:`read_table` reads) and the
            join spec (see :meth:`LabelTable.read`); matched columns teff, logg, feh,
            alpha_fe, source_id, ra, dec, snr fill the catalog row; ``rename`` maps other
            label-table names onto those (``{"gaia_dr3_source_id": "source_id"}``).
        rest_frame: remove the header redshift when the file gives one (LAMOST ``Z``).
        rv: ``auto`` also measures the velocity a LAMOST-grid spectrum still shows and
            removes it (no header redshift, or a wrong one); ``header`` the header's only
            (:data:`specsearch.preprocess.RV_MODES`).
        should_stop: polled between files; True ends the run cleanly.
        resolving_power: R = lambda / FWHM of spectra whose file states no resolution
            (a stated one wins): spectra much sharper than LAMOST are broadened to it
            (:mod:`specsearch.preprocess.lsf`).
        telluric_uncorrected: the spectra were not corrected for telluric absorption: the
            telluric bands are masked (:func:`specsearch.preprocess.state_telluric`).
        air: the wavelengths of the generic files are in air (True) or vacuum (False),
            whatever they state; None lets each file decide (:mod:`specsearch.io.generic`).
            Survey files (LAMOST, Gaia XP) are read as usual: they state their own
            convention (the module docstring); ``report.files_medium_applied`` counts the
            files it applied to.
    Returns:
        An :class:`IngestReport`; bad files and bad spectra are listed there, not raised.
    """
    grid_for(modality)  # validates the modality name
    if rv not in RV_MODES:
        raise ValueError(f"rv must be one of {RV_MODES}, got {rv!r}")
    if resolving_power is not None:
        check_resolving_power(resolving_power)
    start = time.perf_counter()
    root = Path(out)
    files = expand_paths(paths)
    label_table = LabelTable.read(labels, on or "source_id", rename) if labels else None
    report = IngestReport(files_seen=len(files),
                          medium=None if air is None else "air" if air else "vacuum")
    ledger = _Ledger(root, modality)
    seen_ids = _existing_ids(root, modality)
    writer = CatalogWriter(root, modality, rows_per_file=rows_per_file,
                           file_prefix=f"ingest-{int(time.time())}")
    rows = _RowBatches(writer, modality, ledger, report)
    try:
        for path in _progress(files, progress):
            if should_stop is not None and should_stop():
                report.interrupted = True
                break
            try:
                key, file_key = str(path.resolve()), _file_key(path)
            except OSError as exc:
                report.skipped_files.append((path.name, f"cannot stat: {exc.strerror}"))
                continue
            if ledger.done.get(key) == file_key:
                report.files_already_ingested += 1
                continue
            try:
                file_rows = _read_file_rows(path, modality, rest_frame, label_table, seen_ids,
                                            report, resolving_power, air, rv,
                                            telluric_uncorrected)
            except Exception as exc:  # noqa: BLE001 - one bad file never stops the run
                report.skipped_files.append((path.name, _reason(exc)))
                continue
            seen_ids.update(r["spectrum_id"] for r in file_rows)
            report.files_ingested += 1
            rows.add(_FileRows(key, file_key, path.name, file_rows), batch_rows)
    except KeyboardInterrupt:
        report.interrupted = True   # the file being read is abandoned; the rest is kept
    finally:
        rows.hand_over()
        writer.close()
        rows.commit()
    report.rows_written = writer.rows_written
    report.seconds = time.perf_counter() - start
    return report


class _Ledger:
    """The ingest ledger of one modality: files whose rows are all in the catalog."""

    def __init__(self, root: Path, modality: str) -> None:
        self.path = root / LEDGER
        self.modality = modality
        self.data = _read_ledger(root)
        self.done: dict[str, Any] = self.data.get(modality, {})

    def record(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        """Mark files done and rewrite the ledger atomically."""
        for key, file_key in entries:
            self.done[key] = file_key
        self.data[self.modality] = self.done
        write_json_atomic(self.path, self.data)


@dataclass
class _RowBatches:
    """Files' rows on their way to the catalog: batched for the writer, and recorded in
    the ledger only once the writer says they are on disk."""

    writer: CatalogWriter
    modality: str
    ledger: _Ledger
    report: IngestReport
    batch: list[_FileRows] = field(default_factory=list)
    pending: list[tuple[str, dict[str, Any], int]] = field(default_factory=list)
    """(key, file key, offset of the file's last row among the rows handed over)"""
    handed: int = 0

    def add(self, file_rows: _FileRows, batch_rows: int) -> None:
        self.batch.append(file_rows)
        if sum(len(f.rows) for f in self.batch) >= batch_rows:
            self.hand_over()
            self.commit()

    def hand_over(self) -> None:
        """Give the batch's rows to the writer; a file whose rows it refuses is a skip."""
        todo, self.batch = self.batch, []
        try:
            rows = [r for f in todo for r in f.rows]
            if rows:
                self.writer.write(_rows_to_columns(rows, self.modality))
            accepted = todo
        except (SpecsearchError, ValueError, TypeError):
            accepted = [f for f in todo if self._write_alone(f)]   # find the file at fault
        for f in accepted:
            self.handed += len(f.rows)
            self.pending.append((f.key, f.file_key, self.handed))

    def _write_alone(self, f: _FileRows) -> bool:
        try:
            if f.rows:
                self.writer.write(_rows_to_columns(f.rows, self.modality))
            return True
        except (SpecsearchError, ValueError, TypeError) as exc:
            self.report.skipped_files.append((f.name, f"rows not writable: {_reason(exc)}"))
            self.report.files_ingested -= 1
            return False

    def commit(self) -> None:
        """Record in the ledger the files whose rows are all on disk."""
        durable = self.writer.rows_written
        ready = [(key, file_key) for key, file_key, end in self.pending if end <= durable]
        if ready:
            self.pending = [p for p in self.pending if p[2] > durable]
            self.ledger.record(ready)


def _read_file_rows(path: Path, modality: str, rest_frame: bool,
                    label_table: LabelTable | None, seen_ids: set[str],
                    report: IngestReport, resolving_power: float | None = None,
                    air: bool | None = None, rv: str = "auto",
                    telluric_uncorrected: bool = False) -> list[dict[str, Any]]:
    """The new catalog rows of one file (bad spectra and duplicates counted in ``report``).
    ``air`` is used when the file is a generic spectrum, ignored for survey files."""
    from specsearch.io.registry import detect_format, read_spectra

    fmt = None
    if air is not None:
        info = detect_format(path)   # read_spectra would detect it anyway: pass it on
        fmt, air = info.name, air if info.modality is None else None
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    duplicates = labelled = measured = corrected = broader = spiked = spike_px = 0
    ids: set[str] = set()
    for spec in read_spectra(path, modality=modality, format=fmt, air=air):
        name = spec.spectrum_id or path.name
        state_resolution(spec, resolving_power, "ingest --resolving-power")
        state_telluric(spec, telluric_uncorrected, "ingest --telluric-uncorrected")
        try:
            row = spectrum_row(spec, modality, rest_frame=rest_frame, rv=rv)
        except SpecsearchError as exc:
            skipped.append((name, str(exc)))
            continue
        if row["spectrum_id"] in seen_ids or row["spectrum_id"] in ids:
            duplicates += 1
            continue
        source = row.pop("rv_source")
        n_spikes = row.pop("spikes_masked")
        spiked += n_spikes > 0
        spike_px += n_spikes
        measured += source == "measured"
        corrected += source == "header+measured"
        ratio = row.get("fwhm_ratio")
        broader += ratio is not None and ratio > BROADER_FACTOR
        if label_table is not None and (lab := label_table.lookup(spec)) is not None:
            row.update({k: v for k, v in lab.items() if v is not None})
            labelled += 1
        ids.add(row["spectrum_id"])
        rows.append(row)
    # Counted only once the whole file is read: an abandoned file leaves no trace.
    report.skipped_rows += skipped
    report.rows_duplicate += duplicates
    report.rows_labelled += labelled
    report.rows_rv_measured += measured
    report.rows_rv_corrected += corrected
    report.rows_broader += broader
    report.rows_spikes_masked += spiked
    report.pixels_spikes_masked += spike_px
    if air is not None:
        report.files_medium_applied += 1
    return rows


def _progress(items: list[Path], enabled: bool) -> Iterator[Path]:
    if not enabled:
        return iter(items)
    from tqdm import tqdm

    return iter(tqdm(items, unit="file", desc="ingest"))
