"""The HTTP API against its own OpenAPI contract: schemathesis, every check, two servers.

One run:
1. builds (or reuses, ``--cache``) the tests' 300-star index (``tests/service_support.py``);
2. serves it in this process (uvicorn on 127.0.0.1) twice: ``open`` (no API keys: the
   schema declares no security) and ``keys`` (one API key: schemathesis sends it, and its
   auth checks send none or a wrong one and expect 401);
3. runs ``schemathesis run --checks all --mode all`` (examples, coverage and fuzzing phases;
   positive and negative data; response status, content type, headers and body schema
   conformance, no 5xx, auth) against each, with a HAR report of every exchange;
4. prints a table (requests and status classes per operation, failures by check) and writes
   ``benchmarks/results/contract_check.json``. Exit status 1 when any check failed.

Two choices, stated here because they shape what "clean" means:

* ``positive_data_acceptance`` (a schema-valid request must succeed) accepts 400, 413, 415
  and 422 besides schemathesis' defaults: a request can be valid JSON Schema and still not
  be a usable spectrum (a flux of two NaNs, an empty or unreadable file, an embedding of
  another dimension). Those answers are documented per route with their ``ErrorBody`` and
  are checked by the response-schema checks like every other answer.
* ``source_id`` path parameters draw half of their values from ids present in the index
  (a schemathesis dictionary), so the 200 answers of those routes are exercised too.

    python benchmarks/contract_check.py                  # ~100 examples an operation
    python benchmarks/contract_check.py --examples 10    # quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
API_KEY = "contract-check-key-0123"
SEMANTIC_REFUSALS = ("400", "413", "415", "422")
"""Answers a schema-valid request may get when its content is unusable (see docstring)."""
ALL_PHASES = "examples,coverage,fuzzing,stateful"
MAX_RESPONSE_S = 60
"""``max_response_time`` check: above the server's 30 s request timeout (504), so it catches
a request the server failed to bound; latency itself is measured by ``soak_service.py``."""
DEFAULT_ACCEPTED = ("2xx", "3xx", "401", "403", "404", "409", "429", "5xx")
"""schemathesis' own expected statuses of positive_data_acceptance (5xx: its own check)."""


def config_toml(source_ids: list[int]) -> str:
    """The schemathesis configuration of both runs (see the module docstring)."""
    statuses = ", ".join(f'"{s}"' for s in DEFAULT_ACCEPTED + SEMANTIC_REFUSALS)
    ids = ", ".join(str(i) for i in source_ids)
    return (f"[checks.positive_data_acceptance]\nexpected-statuses = [{statuses}]\n\n"
            f"[dictionaries.source_ids]\nvalues = [{ids}]\n\n"
            f'[parameters]\n"path.source_id" = {{ dictionary = "source_ids", '
            f"probability = 0.5 }}\n")


def index_source_ids(index: Path, count: int = 20) -> list[int]:
    """A few source_ids stored in the index (spread over its rows)."""
    from specsearch.query import SearchEngine

    engine = SearchEngine.open(index, verify=False)
    table = engine.index[engine.modalities[0]].shards[0].rows
    ids = table.column("source_id").to_pylist()
    step = max(1, len(ids) // count)
    return [int(i) for i in ids[::step][:count]]


def status_table(har: Path, documented: set[str]) -> dict[str, dict[str, int]]:
    """Operation ("GET /v1/info") -> status class counts, from the HAR of a run; requests
    with methods the schema does not declare (schemathesis probes them) are one row."""
    from urllib.parse import urlparse

    out: dict[str, Counter] = defaultdict(Counter)
    for e in json.loads(har.read_text())["log"]["entries"]:
        parts = urlparse(e["request"]["url"]).path.split("/")
        if len(parts) > 3 and parts[-2] in ("objects", "source"):
            parts[-1] = "{source_id}"
        op = f"{e['request']['method']} {'/'.join(parts)}"
        op = op if op in documented else "(undeclared methods)"
        status = int(e["response"]["status"])
        out[op][f"{status // 100}xx"] += 1
        out[op]["total"] += 1
    return {op: dict(sorted(c.items())) for op, c in sorted(out.items())}


def documented_operations(url: str) -> set[str]:
    import httpx

    paths = httpx.get(f"{url}/openapi.json", timeout=60).json()["paths"]
    return {f"{method.upper()} {path}" for path, ops in paths.items() for method in ops}


def run_schemathesis(url: str, work: Path, name: str, *, examples: int, config: Path,
                     api_key: str | None, timeout_s: float, phases: str) -> dict:
    """One ``schemathesis run`` against ``url``; its JSON report, the HAR's status counts."""
    report, har = work / f"{name}.report.json", work / f"{name}.har"
    cmd = [str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(config),
           "run", f"{url}/openapi.json", "--checks", "all", "--mode", "all",
           "--max-examples", str(examples), "--generation-deterministic", "--workers", "1",
           "--request-timeout", "60", "--suppress-health-check", "all",
           "--report", "json,har", "--report-json-path", str(report),
           "--report-har-path", str(har), "--phases", phases,
           "--max-response-time", str(MAX_RESPONSE_S)]
    if api_key is not None:
        cmd += ["--header", f"X-API-Key: {api_key}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=work)
    seconds = time.perf_counter() - t0
    if not report.is_file():
        raise RuntimeError(f"schemathesis wrote no report (exit {proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    data = json.loads(report.read_text())
    statuses = status_table(har, documented_operations(url)) if har.is_file() else {}
    return {"name": name, "exit_code": proc.returncode, "seconds": round(seconds, 1),
            "operations": data["operations"], "test_cases": data["test_cases"],
            "failures": data["failures"], "errors": data["errors"],
            "warnings": {k: v for k, v in data["warnings"].items() if v},
            "requests": sum(s["total"] for s in statuses.values()),
            "server_errors": sum(s.get("5xx", 0) for s in statuses.values()),
            "statuses": statuses, "output_tail": proc.stdout[-4000:] if proc.returncode
            else ""}


def check_contract(index: Path, model: Path | None, work: Path, *, examples: int,
                   configs: tuple[str, ...] = ("open", "keys"), phases: str = ALL_PHASES,
                   timeout_s: float = 3600) -> list[dict]:
    """Serve ``index`` once per configuration and run schemathesis against it."""
    sys.path.insert(0, str(ROOT / "tests"))
    from service_support import LiveServer

    from service.app import create_app
    from service.settings import Settings

    config = work / "schemathesis.toml"
    config.write_text(config_toml(index_source_ids(index)))
    runs = []
    for name in configs:
        keys = (API_KEY,) if name == "keys" else ()
        settings = Settings(index_dir=index, model_dir=model, api_keys=keys,
                            max_upload_bytes=1_000_000, max_k=200)
        with LiveServer(create_app(settings)) as server:
            runs.append(run_schemathesis(server.url, work, name, examples=examples,
                                         config=config, api_key=keys[0] if keys else None,
                                         timeout_s=timeout_s, phases=phases))
    return runs


def print_table(runs: list[dict]) -> None:
    print(f"\n{'server':<6} {'operation':<34} {'requests':>8} {'2xx':>6} {'4xx':>6} "
          f"{'5xx':>5}")
    for run in runs:
        for op, c in run["statuses"].items():
            print(f"{run['name']:<6} {op:<34} {c['total']:>8} {c.get('2xx', 0):>6} "
                  f"{c.get('4xx', 0):>6} {c.get('5xx', 0):>5}")
    print(f"\n{'server':<6} {'ops':>4} {'cases':>6} {'requests':>8} {'5xx':>4} "
          f"{'failures':>8} {'errors':>6} {'seconds':>8}  warnings")
    for run in runs:
        failures = sum(f["count"] for f in run["failures"])
        print(f"{run['name']:<6} {run['operations']['tested']:>4} "
              f"{run['test_cases']['generated']:>6} {run['requests']:>8} "
              f"{run['server_errors']:>4} {failures:>8} {len(run['errors']):>6} "
              f"{run['seconds']:>8.1f}  {', '.join(run['warnings']) or '-'}")
        for f in run["failures"]:
            print(f"   {f['code']} {f['title']}: {f['count']} ({', '.join(f['operations'])})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=100,
                    help="schemathesis --max-examples (per operation and phase)")
    ap.add_argument("--phases", default=ALL_PHASES, help="schemathesis test phases")
    ap.add_argument("--cache", default=None, help="where the index is built and kept")
    ap.add_argument("--out", default=str(RESULTS / "contract_check.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from service_support import small_index

    cache = Path(args.cache or Path(tempfile.gettempdir()) / "specsearch-contract-check")
    index, model, _ = small_index(cache / "index")
    with tempfile.TemporaryDirectory(prefix="contract-") as tmp:
        runs = check_contract(index, model, Path(tmp), examples=args.examples,
                              phases=args.phases)
    print_table(runs)
    clean = all(r["exit_code"] == 0 and not r["failures"] and not r["errors"]
                and r["server_errors"] == 0 for r in runs)
    summary = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "examples": args.examples, "phases": args.phases, "cpus": os.cpu_count(),
               "clean": clean,
               "positive_data_accepts": list(DEFAULT_ACCEPTED + SEMANTIC_REFUSALS),
               "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"{'clean' if clean else 'NOT clean'}; wrote {args.out}")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
