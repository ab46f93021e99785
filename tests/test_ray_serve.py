"""The HTTP API on Ray Serve (shard groups as deployments) against the single-process
service on the same index: identical answers, same limits / API keys / metrics, and a
shard group that cannot answer -> 503 naming its shards. Local Ray, num_cpus=2."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

serve = pytest.importorskip("ray.serve", reason="ray[serve] is not installed: "
                                                "pip install 'specsearch[ray]'")

from service.app import create_app  # noqa: E402
from service.ray_serve import APP_NAME, RayServeOptions, build_application  # noqa: E402
from service.settings import Settings  # noqa: E402
from service_support import LiveServer, free_port, model_dir  # noqa: E402
from specsearch.index import BuildOptions, HNSWConfig, build_index  # noqa: E402
from specsearch.index.synthetic import synthetic_embeddings  # noqa: E402
from specsearch.query import SearchEngine  # noqa: E402

API_KEY = "ray-test-key-0123"
KEY = {"X-API-Key": API_KEY}
N_GROUPS = 2


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> tuple[Path, Path | None]:
    """A 3-shard HNSW index of 800 paired LAMOST/XP rows tied to the served model."""
    from specsearch.model import load_model

    root = tmp_path_factory.mktemp("ray-serve")
    model = model_dir(root)
    m = load_model(model)
    emb = synthetic_embeddings(root / "emb", n=800, dim=m.embedding_dim,
                               model_hash=m.model_hash)
    build_index(emb.root, root / "idx", BuildOptions(
        kind="hnsw", config=HNSWConfig(m=16, ef_construction=40), shards=3,
        target_recall=0.95, tune_queries=100))
    return root / "idx", model


@pytest.fixture(scope="module")
def settings(index_dir) -> Settings:
    return Settings(index_dir=index_dir[0], model_dir=index_dir[1], api_keys=(API_KEY,),
                    max_k=200, worker_threads=2)


@pytest.fixture(scope="module")
def local(settings):
    with LiveServer(create_app(settings)) as srv, \
            httpx.Client(base_url=srv.url, timeout=60, headers=KEY) as c:
        yield c


@pytest.fixture(scope="module")
def ray_url(settings):
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_application(settings, RayServeOptions(
            shard_groups=N_GROUPS, group_cpus=0.25, ingress_cpus=0.25, shard_timeout_s=3)),
            name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def remote(ray_url):
    with httpx.Client(base_url=ray_url, timeout=60, headers=KEY) as c:
        yield c


@pytest.fixture(scope="module")
def ids(settings) -> dict[str, list[int]]:
    engine = SearchEngine.open(settings.index_dir)
    return {m: [int(s) for shard in engine.index[m].shards
                for s in shard.column("source_id")[:3]] for m in engine.modalities}


def requests(ids, settings, lamost_file):
    engine = SearchEngine.open(settings.index_dir)
    vec = engine.vector_of(ids["xp"][4], "xp")[1].tolist()
    lam = ids["lamost"]
    yield "GET", f"/v1/search/source/{lam[0]}", {"k": 10}
    yield "GET", f"/v1/search/source/{lam[3]}", {"k": 10, "filter": ["snr>=20",
                                                                     "feh_pred<-0.5"]}
    yield "GET", f"/v1/search/source/{lam[6]}", {"k": 60, "offset": 20, "limit": 15}
    yield "GET", f"/v1/search/source/{lam[1]}", {"k": 8, "target": "cross"}
    yield "GET", f"/v1/search/source/{ids['xp'][2]}", {"modality": "xp", "k": 5,
                                                       "target": "lamost"}
    yield "POST", "/v1/search/embedding", {"embedding": vec, "modality": "xp", "k": 12}
    yield "POST", "/v1/search/embedding", {"embedding": vec, "modality": "xp", "k": 12,
                                           "target": "cross", "filters": ["cone=180,0,60"]}
    yield "GET", f"/v1/objects/{lam[2]}", {}
    # a real LAMOST file (committed sample), parsed and embedded by the ingress's model
    yield "UPLOAD", "/v1/search/upload", {"k": 7, "target": "cross", "path": lamost_file}


def call(client, method, url, params):
    if method == "POST":
        return client.post(url, json=params)
    if method == "UPLOAD":
        path = params.pop("path")
        try:
            return client.post(url, params=params,
                               files={"file": (path.name, path.read_bytes())})
        finally:
            params["path"] = path
    return client.get(url, params=params)


def comparable(body: dict) -> dict:
    body.pop("took_ms", None)
    return body


def test_app_builder_checks_its_arguments(index_dir):
    """The Serve CLI / KubeRay entry point builds the same application (no Ray started)."""
    from service.ray_serve import app_builder
    from specsearch.errors import ConfigError

    app = app_builder({"index_dir": str(index_dir[0]), "shard_groups": "3",
                       "replicas": "2", "max_k": "100"})
    assert isinstance(app, serve.Application)
    with pytest.raises(ConfigError, match="shard_grups"):
        app_builder({"index_dir": str(index_dir[0]), "shard_grups": 2})
    with pytest.raises(ConfigError, match="1 to 6 groups"):
        app_builder({"index_dir": str(index_dir[0]), "shard_groups": 7})
    with pytest.raises(ConfigError, match="replicas must be >= 1"):
        RayServeOptions(replicas=0)


def test_identical_to_single_process(local, remote, ids, settings, lamost_sample_files):
    for method, url, params in requests(ids, settings, lamost_sample_files[0]):
        a, b = call(local, method, url, params), call(remote, method, url, params)
        assert a.status_code == b.status_code == 200, (url, a.text[:300], b.text[:300])
        a, b = comparable(a.json()), comparable(b.json())
        assert a == b, url
        if "neighbours" in a:
            sims = [n["similarity"] for n in b["neighbours"]]
            assert len(sims) > 0 and np.all(np.diff(sims) <= 0), url


def test_same_limits_keys_and_metrics(local, remote, ids):
    url = f"/v1/search/source/{ids['lamost'][0]}"
    for client in (local, remote):
        assert client.get(url, headers={"X-API-Key": ""}).status_code == 401
    a, b = local.get(url, params={"k": 201}), remote.get(url, params={"k": 201})
    assert a.status_code == b.status_code == 400 and a.json() == b.json()
    bad = remote.get(url, params={"filter": "no_such_column>1"})
    assert bad.status_code == 400 and "no_such_column" in bad.json()["detail"]
    info = remote.get("/v1/info").json()["index"]
    assert len(info["shard_groups"]) == N_GROUPS
    assert remote.get("/v1/health/ready").json()["status"] == "ok"
    text = remote.get("/metrics").text
    assert 'specsearch_http_requests_total{method="GET",route="/v1/search/source/' \
           '{source_id}",status="200"}' in text
    lists = remote.get("/v1/candidates/anomalies")
    assert lists.status_code == 503 and "specsearch anomalies" in lists.json()["detail"]


def test_unavailable_shard_group_is_503_naming_its_shards(remote, ids, settings):
    """Group 1's replica dies and cannot come back (a shard file is gone): queries fail
    with 503 naming the group's shards; once the file is back, Serve restarts the replica
    and the answers are complete again."""
    import ray

    info = remote.get("/v1/info").json()["index"]["shard_groups"][1]
    shards = [f"{m}/{s}" for m, s in info["shards"]]
    modality, number = info["shards"][0]
    rows_file = Path(settings.index_dir) / modality / f"shard-{number:05d}.rows.parquet"
    assert rows_file.is_file()
    url = f"/v1/search/source/{ids[modality][0]}"
    before = comparable(remote.get(url, params={"k": 10}).json())
    aside = rows_file.with_name(rows_file.name + ".aside")
    rows_file.rename(aside)
    try:
        (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                   if "#shard-group-1#" in a["name"]]
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        deadline = time.monotonic() + 20
        while any(a["name"] == name for a in ray.util.list_named_actors(all_namespaces=True)):
            assert time.monotonic() < deadline, f"{name} did not die"
            time.sleep(0.2)
        r = remote.get(url, params={"k": 10})
        assert r.status_code == 503, r.text[:300]
        body = r.json()
        assert body["error"] == "index_unavailable"
        assert all(s in body["detail"] for s in shards) and "partial" in body["detail"]
    finally:
        aside.rename(rows_file)
    deadline = time.monotonic() + 45
    while (r := remote.get(url, params={"k": 10})).status_code != 200:
        assert time.monotonic() < deadline, r.text[:300]
        time.sleep(1)
    assert comparable(r.json()) == before


def test_every_group_call_reaches_a_serve_replica():
    """The distributed engine calls a group by method name: each one the Serve handles are
    made for must exist on the replica and on the group it wraps (``columns``: the
    parameter re-rank's window)."""
    from service.ray_serve import GROUP_METHODS, ShardGroupReplica
    from specsearch.query.shard_groups import ShardGroup

    assert "columns" in GROUP_METHODS
    for name in GROUP_METHODS:
        assert callable(getattr(ShardGroupReplica, name, None)), name
        assert callable(getattr(ShardGroup, name, None)), name
