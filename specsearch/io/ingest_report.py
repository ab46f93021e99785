"""What an ingest run did (:func:`specsearch.io.ingest.ingest`): files and rows written,
skipped with their reasons, velocities removed, spectra broader than the model reads,
cosmic rays masked;
its exit code and the summary the CLI prints."""

from __future__ import annotations

from dataclasses import dataclass, field

from specsearch.preprocess.lsf import BROADER_FACTOR


@dataclass
class IngestReport:
    """What an ingest run did. ``skipped_files`` and ``skipped_rows`` hold (name, reason)."""

    files_seen: int = 0
    files_ingested: int = 0
    files_already_ingested: int = 0
    rows_written: int = 0
    rows_duplicate: int = 0
    rows_labelled: int = 0
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    skipped_rows: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    medium: str | None = None
    """The caller's wavelength medium (``air``/``vacuum``), None when the files decided."""
    files_medium_applied: int = 0
    """Generic files read in ``medium`` (survey files keep the convention they state)."""
    rows_rv_measured: int = 0
    """Rows whose radial velocity was measured and removed (no header redshift)."""
    rows_rv_corrected: int = 0
    """Rows whose spectrum contradicted its header redshift: the measured rest remainder
    was removed too (``rv`` holds the sum)."""
    rows_broader: int = 0
    """Rows broader than the grid's instrument (:attr:`ResolutionMatch.broader
    <specsearch.preprocess.lsf.ResolutionMatch>`): the model reads their [Fe/H] too low."""
    rows_spikes_masked: int = 0
    """Rows with single-pixel spikes (cosmic rays, hot pixels) masked before the grid
    (:mod:`specsearch.preprocess.spikes`); ``pixels_spikes_masked`` of their pixels."""
    pixels_spikes_masked: int = 0

    @property
    def exit_code(self) -> int:
        """0 all files done, 3 done with skipped files or spectra, 1 failed (interrupted,
        or files were given and every one was skipped)."""
        if self.interrupted or (self.files_seen and not self.files_ingested
                                and not self.files_already_ingested):
            return 1
        return 3 if self.skipped_files or self.skipped_rows else 0

    def summary(self) -> str:
        lines = [f"files: {self.files_seen} seen, {self.files_ingested} ingested, "
                 f"{self.files_already_ingested} already in the catalog, "
                 f"{len(self.skipped_files)} skipped",
                 f"rows: {self.rows_written} written ({self.rows_labelled} with labels), "
                 f"{self.rows_duplicate} duplicates dropped, "
                 f"{len(self.skipped_rows)} bad spectra skipped",
                 f"time: {self.seconds:.1f} s"]
        if self.rows_rv_measured or self.rows_rv_corrected:
            lines.append(f"radial velocity measured and removed: {self.rows_rv_measured} "
                         f"spectra without a header redshift, {self.rows_rv_corrected} whose "
                         f"spectrum contradicted it")
        if self.rows_broader:
            lines.append(f"warning: {self.rows_broader} spectra are broader than LAMOST's "
                         f"R = 1800 (FWHM above {BROADER_FACTOR:g}x, stated or by their "
                         f"sampling): nothing sharpens them, and the model reads their "
                         f"[Fe/H] too low (about -0.1 dex at R = 1200, -0.2 at R = 1000)")
        if self.rows_spikes_masked:
            lines.append(f"single-pixel spikes (cosmic rays, hot pixels) masked: "
                         f"{self.pixels_spikes_masked} pixels in {self.rows_spikes_masked} "
                         f"spectra")
        if self.medium is not None:
            lines.append(f"medium {self.medium} (caller's override) applied to "
                         f"{self.files_medium_applied} generic file(s); LAMOST and Gaia XP "
                         f"files keep their own")
        if self.interrupted:
            lines.insert(0, "interrupted: the files listed as ingested are in the catalog; "
                            "run the same command again to ingest the rest")
        for name, reason in self.skipped_files[:20]:
            lines.append(f"  skipped file {name}: {reason}")
        for name, reason in self.skipped_rows[:20]:
            lines.append(f"  skipped spectrum {name}: {reason}")
        more = len(self.skipped_files) + len(self.skipped_rows) - 40
        if more > 0:
            lines.append(f"  ... and {more} more (see the report JSON)")
        return "\n".join(lines)
