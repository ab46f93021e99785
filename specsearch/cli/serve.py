"""``specsearch serve``: the HTTP API and web page over an index directory (uvicorn)."""

from __future__ import annotations

import argparse

EPILOG = """\
Example:
  specsearch serve indexes/survey                  # http://127.0.0.1:8000/ (web page)
  specsearch serve                                 # the embedded default index
  specsearch serve indexes/survey --host 0.0.0.0 --port 9000 --api-keys-file keys.txt
  specsearch serve indexes/survey --engine ray --shard-groups 4 --replicas 2
                                                   # shards as Ray Serve deployments (local
                                                   # Ray, or --ray-address auto on a cluster)

Every option can also come from a SPECSEARCH_<OPTION> environment variable
(SPECSEARCH_API_KEYS=key1,key2, SPECSEARCH_CORS_ORIGINS=https://example.org,
SPECSEARCH_MAX_UPLOAD_BYTES, SPECSEARCH_MAX_K, SPECSEARCH_REQUEST_TIMEOUT_S, ...).
API documentation: http://HOST:PORT/docs ; metrics: /metrics ; health: /v1/health/ready.

Hostile uploads are bounded: SPECSEARCH_MAX_DECOMPRESSED_BYTES (64 MiB after gzip),
SPECSEARCH_MAX_UPLOAD_ROWS (10000 table rows), SPECSEARCH_MAX_HEADER_CARDS (10000 FITS
cards) answer 413; uploads are parsed in SPECSEARCH_PARSE_WORKERS (2) processes capped at
SPECSEARCH_PARSE_MEMORY_BYTES (512 MiB) each and killed after SPECSEARCH_PARSE_TIMEOUT_S
(10 s: 504). With API keys set, /metrics needs a key too (SPECSEARCH_METRICS_PUBLIC=1 opens
it); /v1/health/ready says only ok/starting.
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
    ray = p.add_argument_group("distributed serving (--engine ray; needs specsearch[ray])")
    ray.add_argument("--engine", choices=["local", "ray"], default="local",
                     help="local: one process; ray: shard groups as Ray Serve deployments "
                          "behind the same HTTP API (see README, Serving on a Ray cluster)")
    ray.add_argument("--ray-address", default=None,
                     help="Ray cluster to deploy on ('auto' or ray://HOST:10001; default: "
                          "RAY_ADDRESS, else a local Ray instance)")
    ray.add_argument("--shard-groups", type=int, default=2,
                     help="shard-group deployments; any number from 1 to the index's shards")
    ray.add_argument("--replicas", type=int, default=1,
                     help="replicas of each shard group (no rebuild needed to change it)")
    ray.add_argument("--ingress-replicas", type=int, default=1,
                     help="replicas of the HTTP ingress (it runs the model)")
    ray.add_argument("--shard-timeout", type=float, default=10.0,
                     help="seconds a query waits for every shard group before answering "
                          "503 naming the missing shards")
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
    if args.engine == "ray":
        from service.ray_serve import RayServeOptions, serve_forever

        options = RayServeOptions(shard_groups=args.shard_groups, replicas=args.replicas,
                                  ingress_replicas=args.ingress_replicas,
                                  shard_timeout_s=args.shard_timeout)
        serve_forever(settings, options, address=args.ray_address, host=args.host,
                      port=args.port)
        return 0
    app = create_app(settings)
    print(f"specsearch serve: {settings.index_dir} on http://{args.host}:{args.port}/ "
          f"(API docs /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.log_level == "debug")
    return 0
