"""Knobs and report of the embedding builder (shared by the local and the Ray engine)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from specsearch.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = ("float32", "float16")


@dataclass
class EmbedConfig:
    """Knobs of the embedding builder.

    Attributes:
        modalities: which modalities of the catalog to embed (None: all present).
        batch_size: spectra per forward pass (None: ~4 million pixels, 1024 LAMOST or
            12,032 XP spectra; 8x the pixels on a GPU). Memory is bounded by ~batch_size x
            npix x 4 B x a few buffers; past a few MB per array larger batches stop helping
            on a CPU (they fall out of the caches).
        dtype: storage type of the embedding column, ``float32`` or ``float16`` (half the
            size; cosine similarities change by < 1e-3).
        with_residual: also store the reconstruction / translation residuals (outlier
            scores need them; costs a decoder pass).
        precision: the network's precision on the model's device: ``auto`` (bf16 autocast
            on a GPU, fp32 on a CPU), ``bf16``, ``fp16`` or ``fp32``.
        check_telluric: look for telluric absorption a reduction left in each LAMOST-grid
            row (:func:`specsearch.model.telluric.check_telluric`: one more encoder and
            decoder pass, ~0.2 ms a row on a CPU), embed the rows where it is found with
            the telluric bands masked, and store ``telluric_depth`` / ``telluric_masked``.
            For catalogs from reductions that may not correct it (LAMOST's do).
        overwrite: replace an existing dataset made by another model.
        prefetch: batches read ahead by the reader thread.
        progress: show a tqdm bar with spectra/s and ETA.
        crash_at: test hook: raise RuntimeError after this many output files are written.
    """

    modalities: Sequence[str] | None = None
    batch_size: int | None = None
    dtype: str = "float32"
    with_residual: bool = False
    precision: str = "auto"
    check_telluric: bool = False
    overwrite: bool = False
    prefetch: int = 2
    progress: bool = True
    crash_at: int | None = None

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a dtype or precision the builder does not know."""
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be float32 or float16, got {self.dtype!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got "
                              f"{self.precision!r}")


@dataclass
class EmbedReport:
    """What a build did."""

    rows_in: int = 0
    rows_written: int = 0
    rows_skipped: Counter = field(default_factory=Counter)
    files_written: int = 0
    files_reused: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0
    rows_telluric_masked: int = 0
    """Rows embedded with their telluric bands masked (``check_telluric``)."""

    @property
    def spectra_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_spectra_per_s(self) -> float:
        """Throughput without the engine's start-up (a Ray instance starting)."""
        busy = self.seconds - self.startup_seconds
        return self.rows_in / busy if busy > 0 else 0.0

    def summary(self) -> str:
        skipped = sum(self.rows_skipped.values())
        reasons = ", ".join(f"{n} {r}" for r, n in self.rows_skipped.most_common())
        return (f"embedded {self.rows_written} of {self.rows_in} spectra "
                f"({skipped} skipped{': ' + reasons if reasons else ''}); "
                f"{self.files_written} files written, {self.files_reused} reused; "
                f"{self.seconds:.1f} s, {self.spectra_per_s:,.0f} spectra/s"
                + (f" ({self.startup_seconds:.1f} s of start-up)"
                   if self.startup_seconds else "")
                + (f"; telluric absorption found and its bands masked in "
                   f"{self.rows_telluric_masked} spectra" if self.rows_telluric_masked
                   else ""))


def auto_batch_size(modality: str, batch_size: int | None = None, *,
                    gpu: bool = False) -> int:
    """``batch_size`` if given (validated), else
    :func:`specsearch.preprocess.default_batch_size`."""
    if batch_size is not None:
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        return int(batch_size)
    from specsearch.preprocess import default_batch_size

    return default_batch_size(modality, gpu=gpu)
