"""The HTTP API against its OpenAPI contract: a bounded slice of
``benchmarks/contract_check.py`` (schemathesis, every check including response schemas,
positive and negative data); the full run lives in the benchmark."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from contract_check import check_contract  # noqa: E402


def test_schemathesis_all_checks_clean(service_index, tmp_path):
    pytest.importorskip("schemathesis", reason="schemathesis (dev extra) is not installed")
    if shutil.which("schemathesis", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("the schemathesis command is not installed next to this Python")
    index, model, _ = service_index
    runs = check_contract(index, model, tmp_path, examples=5, configs=("open", "keys"),
                          phases="examples,fuzzing", timeout_s=300)
    for run in runs:
        assert run["operations"]["tested"] >= 12, run["operations"]
        assert run["server_errors"] == 0, run["output_tail"]
        assert not run["failures"] and not run["errors"], run["output_tail"]
        assert run["exit_code"] == 0, run["output_tail"]
    # The examples reach the routes' 200 answers (their bodies are schema-checked too).
    ok = {op for op, counts in runs[0]["statuses"].items() if counts.get("2xx")}
    assert {"POST /v1/search/spectrum", "POST /v1/search/embedding",
            "POST /v1/predict/spectrum", "GET /v1/info"} <= ok, ok
