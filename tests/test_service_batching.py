"""Micro-batched k-NN: ``SearchEngine.search_many`` answers each query as a single search
does, the service's batcher groups only compatible requests and keeps errors per request,
and the HTTP responses are the unbatched ones."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi import HTTPException

from service.app import create_app
from service.batching import BatchKey, SearchBatcher, SearchJob
from service.metrics import ServiceMetrics
from service.settings import Settings
from service.worker import Worker
from specsearch.errors import QueryError
from specsearch.index import ArrayEmbeddings, BuildOptions, HNSWConfig, build_index
from specsearch.index.synthetic import clustered_unit_vectors
from specsearch.query import SearchEngine
from specsearch.query.batched import MAX_BATCH

N, DIM = 2000, 32
KINDS = {"flat": (None, 1), "flat-2-shards": (None, 2), "ivf_flat": (None, 1),
         "hnsw-pca-fp16": (HNSWConfig(m=16, ef_construction=40, storage="fp16", pca_dim=8,
                                      refine_factor=3.0), 1),
         "hnswlib": (None, 1)}


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered_unit_vectors(N + 40, DIM, n_clusters=20, seed=5)


@pytest.fixture(scope="module", params=list(KINDS))
def engine(request, vectors, tmp_path_factory) -> SearchEngine:
    config, shards = KINDS[request.param]
    kind = request.param.split("-")[0]
    src = ArrayEmbeddings({"xp": {"embedding": vectors[:N],
                                  "source_id": np.arange(N, dtype=np.int64) * 7 + 3,
                                  "snr": np.linspace(1, 50, N).astype(np.float32)}},
                          model_hash="test")
    path = tmp_path_factory.mktemp(request.param) / "idx"
    build_index(src, path, BuildOptions(kind=kind, config=config, shards=shards,
                                        target_recall=None))
    return SearchEngine.open(path)


def _same(a, b) -> None:
    assert np.array_equal(a.source_id, b.source_id)
    assert np.array_equal(a.similarity, b.similarity)     # bit for bit
    assert np.array_equal(a.rank, b.rank)
    assert (a.modality, a.total, a.query) == (b.modality, b.total, b.query)
    assert a.metadata.equals(b.metadata)


# ----------------------------------------------------------------------------- engine


def test_search_many_equals_single_searches(engine, vectors, monkeypatch):
    queries = list(vectors[N:N + MAX_BATCH])
    pages = [(i % 3, None if i % 2 else 1 + i % 7) for i in range(MAX_BATCH)]
    singles = [engine.search(q, k=10, offset=o, limit=lim) for q, (o, lim) in
               zip(queries, pages)]
    for one in singles:
        one.metadata    # gathered now, not in the count below
    fetches = []
    fetch_rows = engine._fetch_rows
    monkeypatch.setattr(engine, "_fetch_rows",
                        lambda mi, ids: fetches.append(len(ids)) or fetch_rows(mi, ids))
    many = engine.search_many(queries, k=10, pages=pages)
    for one, batched in zip(singles, many):
        _same(one, batched)
    assert fetches == [sum(len(n) for n in many)]     # one metadata gather for the batch
    filtered = engine.search_many(queries[:5], k=7, filter="snr>=20")
    for q, batched in zip(queries[:5], filtered):
        _same(engine.search(q, k=7, filter="snr>=20"), batched)
        assert batched.metadata.column("snr").to_numpy().min() >= 20


def test_search_many_keeps_errors_per_query(engine, vectors):
    good = vectors[N]
    batch = [good, np.zeros(DIM, np.float32), good[:5], np.full(DIM, np.nan, np.float32),
             vectors[N + 1], good]
    pages = [(0, None)] * 5 + [(8, 5)]      # the last page is past k=10
    out = engine.search_many(batch, k=10, pages=pages)
    _same(out[0], engine.search(good, k=10))
    _same(out[4], engine.search(vectors[N + 1], k=10))
    for i in (1, 2, 3, 5):
        assert isinstance(out[i], QueryError)
        with pytest.raises(QueryError) as alone:
            engine.search(batch[i], k=10, offset=pages[i][0], limit=pages[i][1])
        assert str(out[i]) == str(alone.value)


def test_search_many_shared_errors_raise(engine, vectors):
    queries = list(vectors[N:N + 3])
    with pytest.raises(QueryError, match="no column"):
        engine.search_many(queries, k=10, filter="no_such_column>1")
    with pytest.raises(QueryError, match="exceeds the maximum"):
        engine.search_many(queries, k=engine.max_k + 1)
    with pytest.raises(QueryError, match="at most 16"):
        engine.search_many(list(vectors[:MAX_BATCH + 1]), k=10)


# ----------------------------------------------------------------------------- batcher


class FakeEngine:
    """Records each batched call; blocks while ``gate`` is clear; a NaN vector is a bad
    query and modality ``broken`` fails the whole call."""

    def __init__(self) -> None:
        self.calls: list[tuple[BatchKey, list[float]]] = []
        self.gate = threading.Event()
        self.gate.set()

    def search_many(self, vectors, *, modality, k, filter, pages):
        self.gate.wait(5)
        self.calls.append((BatchKey(modality, k, tuple(filter)), [float(v[0]) for v in vectors]))
        if modality == "broken":
            raise QueryError("no index for modality 'broken'")
        return [QueryError("bad vector") if np.isnan(v[0]) else ("result", float(v[0]), page)
                for v, page in zip(vectors, pages)]


def _batcher(threads: int = 1, timeout_s: float = 10.0, max_batch: int = 16):
    metrics = ServiceMetrics.create()
    worker = Worker(threads=threads, timeout_s=timeout_s, metrics=metrics)
    engine = FakeEngine()
    return engine, SearchBatcher(engine, worker, max_batch=max_batch, metrics=metrics)


def _job(x: float, key: BatchKey = BatchKey("xp", 10, ()), finish=lambda r: r, **kw):
    return SearchJob(key=key, vector=np.array([x, 1.0], np.float32), finish=finish, **kw)


def test_lone_request_runs_at_once():
    engine, batcher = _batcher(threads=2)

    async def main():
        start = time.perf_counter()
        out = await batcher.run(_job(1.0, offset=2, limit=3))
        return out, time.perf_counter() - start

    out, took = asyncio.run(main())
    assert out == ("result", 1.0, (2, 3))
    assert engine.calls == [(BatchKey("xp", 10, ()), [1.0])]
    assert took < 1.0       # no batching window: it waited for nothing


def test_queued_requests_batch_by_key_and_keep_their_results():
    engine, batcher = _batcher(threads=1, max_batch=16)
    other = BatchKey("xp", 5, ("snr>=20",))

    async def main():
        engine.gate.clear()                       # the first batch holds the only slot
        first = asyncio.ensure_future(batcher.run(_job(-1.0)))
        await asyncio.sleep(0.05)
        jobs = [_job(float(i)) for i in range(40)] + [_job(100.0 + i, other) for i in range(5)]
        tasks = [asyncio.ensure_future(batcher.run(j)) for j in jobs]
        await asyncio.sleep(0.05)
        engine.gate.set()
        return await first, await asyncio.gather(*tasks)

    first, results = asyncio.run(main())
    assert first[1] == -1.0
    assert [r[1] for r in results] == [float(i) for i in range(40)] + \
        [100.0 + i for i in range(5)]
    sizes = [(key, len(xs)) for key, xs in engine.calls]
    assert sizes == [(BatchKey("xp", 10, ()), 1), (BatchKey("xp", 10, ()), 16), (other, 5),
                     (BatchKey("xp", 10, ()), 16), (BatchKey("xp", 10, ()), 8)]


def test_errors_stay_per_request():
    engine, batcher = _batcher(threads=1)

    def explode(result):
        raise ValueError("finish failed")

    async def main():
        engine.gate.clear()
        blocker = asyncio.ensure_future(batcher.run(_job(-1.0)))
        await asyncio.sleep(0.05)
        jobs = [_job(1.0), _job(float("nan")), _job(3.0, finish=explode), _job(4.0),
                _job(5.0, BatchKey("broken", 10, ())), _job(6.0, BatchKey("broken", 10, ()))]
        tasks = [asyncio.ensure_future(batcher.run(j)) for j in jobs]
        await asyncio.sleep(0.05)
        engine.gate.set()
        await blocker
        return await asyncio.gather(*tasks, return_exceptions=True)

    ok1, bad_vector, bad_finish, ok4, broken5, broken6 = asyncio.run(main())
    assert ok1[1] == 1.0 and ok4[1] == 4.0
    assert isinstance(bad_vector, QueryError) and str(bad_vector) == "bad vector"
    assert isinstance(bad_finish, ValueError)
    assert isinstance(broken5, QueryError) and isinstance(broken6, QueryError)
    assert [len(xs) for _, xs in engine.calls] == [1, 4, 2]


def test_timeout_is_504_and_timed_out_requests_are_not_searched():
    engine, batcher = _batcher(threads=1, timeout_s=0.3)

    async def main():
        engine.gate.clear()
        tasks = [asyncio.ensure_future(batcher.run(_job(0.0)))]
        await asyncio.sleep(0.05)               # running (and stuck) when the others queue
        tasks += [asyncio.ensure_future(batcher.run(_job(float(i)))) for i in (1, 2)]
        out = await asyncio.gather(*tasks, return_exceptions=True)
        engine.gate.set()
        await asyncio.sleep(0.1)
        return out

    out = asyncio.run(main())
    assert all(isinstance(e, HTTPException) and e.status_code == 504 for e in out)
    assert [xs for _, xs in engine.calls] == [[0.0]]    # the two queued ones were dropped


# ----------------------------------------------------------------------------- HTTP


@pytest.fixture(scope="module")
def servers(service_index, live_server):
    index, model, _ = service_index
    apps = [create_app(Settings(index_dir=index, model_dir=model, worker_threads=1,
                                search_batching=on)) for on in (True, False)]
    with live_server(apps[0]) as batched, live_server(apps[1]) as single:
        engine = apps[0].state.service.engine
        search_many = engine.search_many

        def slow_search_many(*args, **kwargs):
            time.sleep(0.02)    # a tiny index answers in microseconds: let requests queue
            return search_many(*args, **kwargs)

        engine.search_many = slow_search_many
        yield batched, single


def _bodies(dim: int, modality: str) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(24):
        body = {"embedding": rng.normal(size=dim).round(5).tolist(), "modality": modality,
                "k": (5, 10, 10, 20)[i % 4], "offset": i % 3}
        if i % 5 == 0:
            body["filters"] = ["snr>=5"]
        if i % 4 == 1:
            body["limit"] = 2
        if i % 6 == 0:
            body["target"] = "cross"
        out.append(body)
    out.append({"embedding": [0.0] * dim, "modality": modality})           # 400
    out.append({"embedding": [1.0] * (dim - 1), "modality": modality})     # 400
    out.append({"embedding": [1.0] * dim, "modality": modality, "k": 5, "offset": 3,
                "limit": 4})                                                 # 400
    return out


def test_batched_http_answers_equal_unbatched(servers):
    batched, single = servers
    info = httpx.get(f"{single.url}/v1/info").json()
    dim = info["index"]["embedding_dim"]
    modality = sorted(info["index"]["modalities"])[0]
    bodies = _bodies(dim, modality)

    def post(url_body):
        url, body = url_body
        r = httpx.post(f"{url}/v1/search/embedding", json=body, timeout=60)
        return r.status_code, r.json()

    with ThreadPoolExecutor(8) as pool:      # concurrent: the batched server groups them
        got = list(pool.map(post, [(batched.url, b) for b in bodies]))
    want = [post((single.url, b)) for b in bodies]
    for (status, body), (want_status, want_body) in zip(got, want):
        assert status == want_status
        body.pop("took_ms", None), want_body.pop("took_ms", None)
        assert body == want_body
    assert [s for s, _ in got].count(200) == 24 and [s for s, _ in got].count(400) == 3
    metrics = httpx.get(f"{batched.url}/metrics").text
    count, total = (float(line.split()[-1]) for line in metrics.splitlines()
                    if line.startswith(("specsearch_search_batch_size_count",
                                        "specsearch_search_batch_size_sum")))
    assert count < total == 27        # every request batched, some together
    r = httpx.post(f"{batched.url}/v1/search/embedding", json=bodies[1])
    assert r.headers["content-type"] == "application/json"
