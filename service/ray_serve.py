"""Serve an index bigger than one machine with Ray Serve, behind the same HTTP API.

    specsearch serve indexes/survey --engine ray --shard-groups 4 --replicas 2
    serve run service.ray_serve:app_builder index_dir=/data/index shard_groups=8   # Serve CLI

One Serve application (``specsearch``) of two kinds of deployment:

- ``shard-group-<g>`` (g = 0..N-1): a :class:`~specsearch.query.shard_groups.ShardGroup`
  that memory-maps only its shards (:func:`~specsearch.query.shard_groups.plan_shard_groups`
  spreads any number of shards over any number of groups); ``--replicas`` copies of each
  serve the same files, so adding replicas needs no rebuild.
- ``ingress``: the app of ``specsearch serve`` itself (:func:`service.app.create_app`:
  same routes, limits, API keys, ``/metrics``), whose engine is a
  :class:`~specsearch.query.distributed.DistributedEngine` calling the groups through
  their deployment handles. Model calls (spectrum uploads, predictions) run here.

The index directory must be readable at the same path on every node (shared storage or a
copy per node); each group reads only its own shard files. A group that fails or does not
answer in ``shard_timeout_s`` makes the query fail with 503 naming its shards.
Nothing here runs at import time; ``ray`` is imported by the functions that need it.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from service.settings import Settings
from specsearch.errors import ConfigError, SearchIndexError, SpecsearchError
from specsearch.query.distributed import SHARD_TIMEOUT_S, DistributedEngine, Pending
from specsearch.query.shard_groups import (ShardGroup, ShardGroupSpec, open_manifests,
                                           plan_shard_groups)

APP_NAME = "specsearch"
GROUP_METHODS = ("knn", "range", "source_ids", "rows", "columns", "identity",
                 "source_info", "describe")


@dataclass(frozen=True)
class RayServeOptions:
    """How the index is laid out on the cluster.

    Attributes:
        shard_groups: shard-group deployments (1..number of shards). More groups spread
            the index's memory over more machines; each query calls every group once.
        replicas: replicas of each group (more queries per second, survives a lost
            replica; each replica maps its group's shards again).
        ingress_replicas: replicas of the HTTP ingress (the model runs there).
        group_cpus / ingress_cpus: CPUs Ray reserves for each replica.
        shard_timeout_s: how long a query waits for all groups before answering 503.
        max_ongoing_requests: concurrent calls one replica accepts before Serve queues.
    """

    shard_groups: int = 2
    replicas: int = 1
    ingress_replicas: int = 1
    group_cpus: float = 1.0
    ingress_cpus: float = 1.0
    shard_timeout_s: float = SHARD_TIMEOUT_S
    max_ongoing_requests: int = 32

    @property
    def cpus_needed(self) -> float:
        """CPUs the replicas reserve in all."""
        return (self.shard_groups * self.replicas * self.group_cpus
                + self.ingress_replicas * self.ingress_cpus)

    def __post_init__(self) -> None:
        for name in ("shard_groups", "replicas", "ingress_replicas", "max_ongoing_requests"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.group_cpus < 0 or self.ingress_cpus < 0 or self.shard_timeout_s <= 0:
            raise ConfigError(f"need group_cpus, ingress_cpus >= 0 and shard_timeout_s > 0; "
                              f"got {self.group_cpus}, {self.ingress_cpus}, "
                              f"{self.shard_timeout_s}")


# ----------------------------------------------------------------------------- replicas


class ShardGroupReplica:
    """One replica of a shard-group deployment (a :class:`ShardGroup` behind a handle)."""

    def __init__(self, index_dir: str, spec: dict[str, Any], generation: int,
                 verify: bool) -> None:
        self.group = ShardGroup(index_dir, ShardGroupSpec.from_dict(spec),
                                generation=generation, verify=verify)

    def knn(self, **kw: Any) -> Any:
        return self.group.knn(**kw)

    def range(self, **kw: Any) -> Any:
        return self.group.range(**kw)

    def source_ids(self, **kw: Any) -> Any:
        return self.group.source_ids(**kw)

    def rows(self, **kw: Any) -> Any:
        return self.group.rows(**kw)

    def columns(self, **kw: Any) -> Any:
        return self.group.columns(**kw)

    def identity(self, **kw: Any) -> Any:
        return self.group.identity(**kw)

    def source_info(self, **kw: Any) -> Any:
        return self.group.source_info(**kw)

    def describe(self) -> dict[str, Any]:
        return self.group.describe()


class _ServePending:
    __slots__ = ("response",)

    def __init__(self, response: Any) -> None:
        self.response = response

    def result(self, timeout_s: float) -> Any:
        from ray.exceptions import RayTaskError

        try:
            return self.response.result(timeout_s=timeout_s)
        except RayTaskError as exc:
            # A library error inside the group (a filter on a missing column...) reaches
            # the client as itself, not wrapped in a remote traceback.
            cause = getattr(exc, "cause", None)
            if isinstance(cause, SpecsearchError):
                raise cause from None
            raise


class ServeGroups:
    """:class:`~specsearch.query.distributed.GroupCalls` over Serve deployment handles."""

    def __init__(self, handles: list[Any]) -> None:
        self._methods = [{m: h.options(method_name=m) for m in GROUP_METHODS} for h in handles]

    def submit(self, group: int, method: str, kwargs: dict[str, Any]) -> Pending:
        return _ServePending(self._methods[group][method].remote(**kwargs))


class IngressReplica:
    """One replica of the ingress: ``create_app`` with a distributed engine."""

    def __init__(self, settings: dict[str, Any], specs: list[dict[str, Any]],
                 generation: int, shard_timeout_s: float, *groups: Any) -> None:
        self.settings = Settings(**settings)
        self.specs = [ShardGroupSpec.from_dict(s) for s in specs]
        self.generation = generation
        self.shard_timeout_s = shard_timeout_s
        self.groups = list(groups)

    def __serve_build_asgi_app__(self) -> Any:
        from service.app import create_app

        return create_app(self.settings, state_factory=self._open_state)

    def _open_state(self, settings: Settings, metrics: Any) -> Any:
        from service.state import open_state
        from specsearch.index import ThreadPolicy

        index = open_manifests(settings.index_dir)
        if index.manifest.generation != self.generation:
            raise SearchIndexError(
                f"{settings.index_dir}: index generation {index.manifest.generation} on disk, "
                f"deployed for generation {self.generation}; redeploy after an index update")
        engine = DistributedEngine(
            index, self.specs, ServeGroups(self.groups), timeout_s=self.shard_timeout_s,
            threads=ThreadPolicy(single=settings.faiss_threads, batch=settings.faiss_threads),
            max_k=settings.max_k)
        return open_state(settings, metrics, engine=engine)


# ----------------------------------------------------------------------------- building


def _portable(settings: Settings) -> dict[str, Any]:
    """Settings as plain JSON values with absolute paths (replicas run elsewhere)."""
    values = settings.model_dump(mode="json")
    for name, value in settings.model_dump().items():
        if isinstance(value, Path):
            values[name] = str(value.resolve())
    return values


def build_application(settings: Settings, options: RayServeOptions) -> Any:
    """The Serve application (``serve.run(app, name=APP_NAME)``) for ``settings.index_dir``.

    Raises:
        SearchIndexError: the index directory's manifests are missing or inconsistent.
        ConfigError: more shard groups than shards, or bad options.
    """
    from ray import serve

    index = open_manifests(settings.index_dir)
    specs = plan_shard_groups(index, options.shard_groups)
    generation = index.manifest.generation
    root = str(Path(settings.index_dir).resolve())
    group = serve.deployment(ShardGroupReplica)
    groups = [group.options(name=f"shard-group-{spec.group}", num_replicas=options.replicas,
                            max_ongoing_requests=options.max_ongoing_requests,
                            ray_actor_options={"num_cpus": options.group_cpus})
              .bind(root, spec.to_dict(), generation, settings.verify_checksums)
              for spec in specs]
    ingress = serve.deployment(serve.ingress()(IngressReplica)).options(
        name="ingress", num_replicas=options.ingress_replicas,
        max_ongoing_requests=options.max_ongoing_requests,
        ray_actor_options={"num_cpus": options.ingress_cpus})
    return ingress.bind(_portable(settings), [s.to_dict() for s in specs], generation,
                        options.shard_timeout_s, *groups)


def app_builder(args: dict[str, Any]) -> Any:
    """Application builder for the Serve CLI and KubeRay's RayService config::

        serve run service.ray_serve:app_builder index_dir=/data/index shard_groups=8

    ``args``: any :class:`RayServeOptions` field and any service setting
    (:class:`service.settings.Settings`, e.g. ``max_k``, ``api_keys_file``); the
    ``SPECSEARCH_*`` environment variables apply as for ``specsearch serve``.
    """
    option_names = {f.name: f.type for f in fields(RayServeOptions)}
    unknown = sorted(set(args) - set(option_names) - set(Settings.model_fields))
    if unknown:
        raise ConfigError(f"unknown argument(s) {unknown}; valid: "
                          f"{sorted(option_names) + sorted(Settings.model_fields)}")
    defaults = asdict(RayServeOptions())
    options = RayServeOptions(**{k: type(defaults[k])(v) for k, v in args.items()
                                 if k in option_names})
    settings = Settings.from_env(**{k: v for k, v in args.items() if k in Settings.model_fields})
    return build_application(settings, options)


def serve_forever(settings: Settings, options: RayServeOptions, *, address: str | None,
                  host: str, port: int) -> None:
    """Deploy on the Ray cluster at ``address`` (None: start a local Ray instance) and keep
    serving until interrupted; then delete the application (a cluster stays up)."""
    import ray
    from ray import serve

    app = build_application(settings, options)   # checks the index before Ray starts
    local = address is None and not os.environ.get("RAY_ADDRESS")
    if local:
        # A local instance gets enough logical CPUs for every replica's reservation
        # (they are scheduling tokens; Serve would otherwise wait for CPUs forever).
        ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(options.cpus_needed)),
                 log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
        have = ray.cluster_resources().get("CPU", 0)
        if have < options.cpus_needed:
            print(f"warning: the replicas reserve {options.cpus_needed:g} CPUs, the cluster "
                  f"has {have:g}: Serve waits until the cluster grows (autoscaler) or use "
                  f"fewer --shard-groups/--replicas", flush=True)
    # SIGTERM (Kubernetes, process managers) ends the process like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name=APP_NAME, route_prefix="/")
        print(f"specsearch serve --engine ray: {settings.index_dir} in "
              f"{options.shard_groups} shard group(s) x {options.replicas} replica(s) on "
              f"http://{host}:{port}/ (`serve status` shows the deployments)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if not local:  # a local instance ends with this process, its application too
            serve.delete(APP_NAME)
