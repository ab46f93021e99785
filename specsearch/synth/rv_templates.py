"""The radial-velocity templates of :mod:`specsearch.preprocess.rv`, made once, offline.

Noise-free synthetic LAMOST spectra of the synthetic survey's stellar model
(:func:`specsearch.synth.realism.model_lamost_normalised`: the physics the model was trained
on), continuum-normalised, in the rest frame, on the LAMOST grid: dwarfs from 3500 to
10,500 K and three giants, each at [Fe/H] = 0 and -1.5. They are stored (float16) in
``specsearch/data/preprocess/rv_templates.npz`` so that ingest does not depend on the
synthetic survey's code at run time, nor changes when the survey does; remake them with
``python -m specsearch.synth.rv_templates`` (tests/test_preprocess_rv.py checks that the
shipped file is what this module makes).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

TEMPLATE_FILE = (Path(__file__).resolve().parents[1] / "data" / "preprocess"
                 / "rv_templates.npz")

_DWARFS = ((3500.0, 4.8), (3900.0, 4.7), (4400.0, 4.6), (5000.0, 4.55), (5600.0, 4.45),
           (6200.0, 4.3), (6800.0, 4.2), (7600.0, 4.1), (8800.0, 4.0), (10500.0, 4.0))
_GIANTS = ((3900.0, 1.3), (4400.0, 2.0), (5000.0, 2.7))


def template_labels() -> np.ndarray:
    """(T, 3) teff, logg, feh of the templates."""
    rows = [(t, g, f) for f in (0.0, -1.5) for t, g in _DWARFS]
    rows += [(t, g, f) for f in (0.0, -1.5) for t, g in _GIANTS]
    return np.asarray(rows, np.float64)


def build() -> tuple[np.ndarray, np.ndarray]:
    """(labels (T, 3), flux (T, LAMOST_NPIX) float16) of the templates."""
    from specsearch.synth.realism import model_lamost_normalised

    lab = template_labels()
    flux = model_lamost_normalised(lab[:, 0], lab[:, 1], lab[:, 2])
    return lab, np.asarray(flux, np.float16)


def write(path: Path = TEMPLATE_FILE) -> Path:
    """Make the templates and write them to ``path`` atomically."""
    from specsearch.fsutil import write_bytes_atomic

    lab, flux = build()
    buf = io.BytesIO()
    np.savez_compressed(buf, labels=lab, flux=flux)
    write_bytes_atomic(Path(path), buf.getvalue())
    return Path(path)


if __name__ == "__main__":
    print(f"wrote {write()}")
