"""Shared fixtures: where the real survey samples live, seeded random generators."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """../shared/data/real (read-only real LAMOST, MILES and Gaia XP samples)."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real sample data not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261125)


@pytest.fixture(autouse=True)
def _no_tex_from_gaiaxpy():
    """GaiaXPy's plotter sets matplotlib's text.usetex = True when gaiaxpy is imported (the
    XP equality tests import it); our figures must not need a LaTeX install."""
    import sys

    if "matplotlib" in sys.modules:
        sys.modules["matplotlib"].rcParams["text.usetex"] = False
    yield
