"""Shared fixtures of the test suite.

Real data comes in two sizes:

* ``samples``: small real files committed under ``tests/data`` (see its README); always
  present, so reader and service tests run on a bare clone.
* ``real_data``: the larger development set, ``../shared/data/real`` beside the checkout or
  ``$SPECSEARCH_REAL_DATA``. Every test that uses it carries the ``real_data`` marker and is
  skipped, with the reason, where it is absent (``pytest -m "not real_data"`` leaves them out;
  ``SPECSEARCH_REAL_DATA=/nonexistent`` shows what a bare clone runs).

``data_root`` runs a test once on each: on the samples always, on the larger set where present.

Service tests share one small index (``service_index``, built once per session) and run apps
with ``live_server``; the helpers behind them are in ``service_support.py``. Model tests run
on one torch thread (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
SAMPLES = Path(__file__).resolve().parent / "data"
REAL_DATA_ENV = "SPECSEARCH_REAL_DATA"


def real_data_dir() -> Path:
    """Where the larger real data set is looked for ($SPECSEARCH_REAL_DATA wins)."""
    env = os.environ.get(REAL_DATA_ENV)
    return Path(env) if env else REPO.parent / "shared" / "data" / "real"


def pytest_collection_modifyitems(config, items) -> None:
    """Mark every test that needs the larger real data set (directly or via a fixture)."""
    for item in items:
        if "real_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_data)


# --------------------------------------------------------------------------- real data

@pytest.fixture(scope="session")
def samples() -> Path:
    """tests/data: small real LAMOST (DR1, DR7, DR8), Gaia XP and MILES files (committed)."""
    if not (SAMPLES / "lamost").is_dir():
        raise FileNotFoundError(f"committed test samples missing: {SAMPLES} (see its README)")
    return SAMPLES


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The larger real data set (LAMOST, MILES, Gaia XP); skips the test where absent."""
    path = real_data_dir()
    if not path.is_dir():
        pytest.skip(f"larger real data set not found at {path} (set {REAL_DATA_ENV}; "
                    f"tests/data holds the committed samples)")
    return path


@pytest.fixture(scope="session",
                params=["samples", pytest.param("real_data", marks=pytest.mark.real_data)])
def data_root(request) -> Path:
    """The committed samples, then the larger set: the same layout, different sizes."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def lamost_sample_files(samples) -> list[Path]:
    """The committed LAMOST DR1 files, sorted (plain FITS, image layout)."""
    return sorted((samples / "lamost" / "dr1" / "spectra").glob("*.fits"))


# --------------------------------------------------------------------------- service

class ServiceIndex(NamedTuple):
    index: Path
    model: Path | None       # None: the shipped default model
    catalog: Path


@pytest.fixture(scope="session")
def service_index(tmp_path_factory) -> ServiceIndex:
    """A 300-star, 2-shard synthetic index, built once per session (see service_support)."""
    from service_support import small_index

    return ServiceIndex(*small_index(tmp_path_factory.getbasetemp() / "service-index"))


@pytest.fixture(scope="session")
def live_server() -> Callable:
    """``with live_server(app) as srv:`` serves an ASGI app over real HTTP at ``srv.url``."""
    from service_support import LiveServer

    return LiveServer


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """``free_port()``: a TCP port free on 127.0.0.1 right now."""
    from service_support import free_port

    return free_port


# --------------------------------------------------------------------------- misc

@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261125)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (``pytestmark =
    pytest.mark.usefixtures("one_torch_thread")``): on a small machine shared by several
    jobs, OpenMP's 2-thread barriers can be 5x slower than one thread. Restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _no_tex_from_gaiaxpy():
    """GaiaXPy's plotter sets matplotlib's text.usetex = True when gaiaxpy is imported (the
    XP equality tests import it); our figures must not need a LaTeX install."""
    if "matplotlib" in sys.modules:
        sys.modules["matplotlib"].rcParams["text.usetex"] = False
    yield
