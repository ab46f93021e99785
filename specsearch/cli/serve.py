"""``specsearch serve``: the HTTP API and web page over an index directory (uvicorn)."""

from __future__ import annotations

import argparse

EPILOG = """\
Example:
  specsearch serve indexes/survey                  # http://127.0.0.1:8000/ (web page)
  specsearch serve                                 # the embedded default index
  specsearch serve indexes/survey --host 0.0.0.0 --port 9000 --api-keys-file keys.txt

Every option can also come from a SPECSEARCH_<OPTION> environment variable
(SPECSEARCH_API_KEYS=key1,key2, SPECSEARCH_CORS_ORIGINS=https://example.org,
SPECSEARCH_MAX_UPLOAD_BYTES, SPECSEARCH_MAX_K, SPECSEARCH_REQUEST_TIMEOUT_S, ...).
API documentation: http://HOST:PORT/docs ; metrics: /metrics ; health: /v1/health/ready.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from specsearch.cli import HelpFormatter

    p = sub.add_parser("serve", help="serve an index over HTTP (API + web page)",
                       description="Start the HTTP service: search by spectrum upload, "
                                   "arrays or source_id, cross-modal matches, predictions, "
                                   "anomaly and metal-poor lists, and a web page.",
                       formatter_class=HelpFormatter, epilog=EPILOG)
    p.add_argument("index_dir", nargs="?", default=None,
                   help="index directory (default: the embedded default under indexes/, "
                        "built on first start)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default=None, help="model directory (default: shipped model)")
    p.add_argument("--catalog", default=None,
                   help="the index's catalog, for artefact screening of the anomaly list "
                        "(default: the one the index's embeddings record, if present)")
    p.add_argument("--calibration", default=None,
                   help="[Fe/H] calibration for the metal-poor list (default: the one "
                        "next to the model, if any)")
    p.add_argument("--max-upload-bytes", type=int, default=None)
    p.add_argument("--max-k", type=int, default=None)
    p.add_argument("--request-timeout", type=float, default=None, help="seconds")
    p.add_argument("--worker-threads", dest="worker_threads", type=int, default=None,
                   help="threads running searches and model calls")
    p.add_argument("--api-keys-file", default=None, help="file with one API key a line")
    p.add_argument("--cors-origin", action="append", default=None,
                   help="allowed browser origin (repeatable)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.default_index import ensure_default_index
    from service.settings import Settings

    index_dir = args.index_dir
    if index_dir is None:
        index_dir = ensure_default_index(model_dir=args.model)
    settings = Settings.from_env(
        index_dir=index_dir, model_dir=args.model, catalog_dir=args.catalog,
        hunt_calibration=args.calibration,
        max_upload_bytes=args.max_upload_bytes, max_k=args.max_k,
        request_timeout_s=args.request_timeout, worker_threads=args.worker_threads,
        api_keys_file=args.api_keys_file,
        cors_origins=tuple(args.cors_origin) if args.cors_origin else None)
    app = create_app(settings)
    print(f"specsearch serve: {settings.index_dir} on http://{args.host}:{args.port}/ "
          f"(API docs /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.log_level == "debug")
    return 0
