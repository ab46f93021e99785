"""The synthetic paired survey: LAMOST-like + Gaia XP spectra of the same stars, with labels.

One rest-frame model spectrum per star (MILES-fitted emulator + physics, see
:mod:`specsearch.synth.model`) gives both a LAMOST-like spectrum (:mod:`.lamost`) and a
Gaia XP spectrum through the DR3 instrument model (:mod:`.xp`). Labels follow a Galactic
mix with controllable rare populations (:mod:`.labels`, :mod:`.mix`).

    from specsearch.synth import generate_survey
    generate_survey("catalogs/synth", n=100_000, seed=1, metal_poor_boost=10)

or ``specsearch synth --n 100000 --seed 1 --out catalogs/synth``. Nothing is loaded at import.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "generate_survey": "specsearch.synth.writer", "SurveyReport": "specsearch.synth.writer",
    "generate_columns": "specsearch.synth.survey", "generate_batch": "specsearch.synth.survey",
    "iter_survey": "specsearch.synth.survey", "SynthConfig": "specsearch.synth.survey",
    "POPULATIONS": "specsearch.synth.labels", "DEFAULT_FRACTIONS": "specsearch.synth.labels",
    "LABEL_RANGES": "specsearch.synth.labels", "ARTEFACT_KINDS": "specsearch.synth.labels",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy: importing the package loads nothing heavy (and `python -m
    # specsearch.synth.fit_miles` does not import the module twice).
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'specsearch.synth' has no attribute {name!r}")
