"""A Burr tracking-server backend reading a burr_dist fleet from Redis (``burr-dist ui``).

Burr's server builds it from the class named in ``BURR_BACKEND_IMPL`` and its pydantic settings
(``BURR_DIST_URL``, ``BURR_DIST_PREFIX``, ``BURR_DIST_BUCKETS``, ``BURR_DIST_QUEUE_SHARDS``)::

    BURR_BACKEND_IMPL=burr_dist.ui.backend.RedisBackend python -m uvicorn burr.tracking.server.run:app

Reads: projects and apps come from the fleet records (a SCAN of our prefix on every primary,
cached for ``list_seconds``); an open app, which the UI re-fetches about every 500 ms, costs one
round trip while nothing changed (its meta and the track hash's bounds), and otherwise reads only
the sequences it has not seen, then each new step's state through ``store.load`` (snapshots past
the app's retention show no state). Needs the ``ui`` extra (FastAPI, pydantic-settings).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import fastapi
from burr.tracking.common.models import ApplicationModel, PointerModel
from burr.tracking.server import schema
from burr.tracking.server.backend import BackendBase, BurrSettings

from burr_dist.errors import SnapshotNotFound
from burr_dist.fleet.client import FleetClient
from burr_dist.keys import DEFAULT_BUCKETS, DEFAULT_PREFIX, DEFAULT_QUEUE_SHARDS
from burr_dist.observability.tracking import resolve_app
from burr_dist.store.core import StoreConfig
from burr_dist.transport.connect import DEFAULT_URL
from burr_dist.transport.core import Cmd
from burr_dist.ui.view import AppView, _s, apps_of, projects, summary

T = TypeVar("T")
MAX_APPS_CACHED = 64


class RedisBackend(BackendBase):
    """Burr UI backend over the fleet's Redis (see the module doc)."""

    def __init__(
        self,
        dist_url: str = DEFAULT_URL,
        dist_prefix: str = DEFAULT_PREFIX,
        dist_buckets: int = DEFAULT_BUCKETS,
        dist_queue_shards: int = DEFAULT_QUEUE_SHARDS,
        list_seconds: float = 2.0,
        fleet: FleetClient | None = None,
    ) -> None:
        """``fleet``: a client to read through instead of one made from the other settings."""
        if fleet is None:
            config = StoreConfig(prefix=dist_prefix, buckets=dist_buckets, queue_shards=dist_queue_shards)
            fleet = FleetClient.from_url(dist_url, **config.__dict__)
        self.fleet = fleet
        self.list_seconds = list_seconds
        self._lock = threading.Lock()  # one request at a time on the sync client and the caches
        self._jobs: tuple[float, list[dict[str, Any]]] = (0.0, [])
        self._views: OrderedDict[tuple[str, str], AppView] = OrderedDict()

    class BackendSettings(BurrSettings):
        dist_url: str = DEFAULT_URL
        dist_prefix: str = DEFAULT_PREFIX
        dist_buckets: int = DEFAULT_BUCKETS
        dist_queue_shards: int = DEFAULT_QUEUE_SHARDS
        list_seconds: float = 2.0

    @classmethod
    def settings_model(cls) -> type[BurrSettings]:
        return cls.BackendSettings

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        def locked() -> T:
            with self._lock:
                return fn(*args)

        return await asyncio.to_thread(locked)

    # -- projects and apps ---------------------------------------------------------------
    def _all_jobs(self) -> list[dict[str, Any]]:
        at, jobs = self._jobs
        if time.monotonic() - at > self.list_seconds:
            jobs = self.fleet.scan_jobs()
            self._jobs = (time.monotonic(), jobs)
        return jobs

    async def list_projects(self, request: fastapi.Request) -> Sequence[schema.Project]:
        found = await self._call(lambda: projects(self._all_jobs()))
        return [schema.Project(**p) for p in found]

    def _apps(
        self, project_id: str, partition_key: str | None, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        chosen = apps_of(self._all_jobs(), project_id, partition_key)
        page = chosen[offset : offset + limit]
        heads = (
            self.fleet.commands([self.fleet.head_cmd(j["partition_key"], j["app_id"]) for j in page])
            if page
            else []
        )
        return [summary(j, h) for j, h in zip(page, heads, strict=True)], len(chosen)

    async def list_apps(
        self, request: fastapi.Request, project_id: str, partition_key: str | None, limit: int = 100,
        offset: int = 0,
    ) -> tuple[Sequence[schema.ApplicationSummary], int]:  # fmt: skip
        page, total = await self._call(self._apps, project_id, partition_key, limit, offset)
        return [schema.ApplicationSummary(**s) for s in page], total

    # -- one app's steps -----------------------------------------------------------------
    def _view(self, partition_key: str, app_id: str) -> AppView:
        key = (partition_key, app_id)
        view = self._views.pop(key, None) or AppView()
        self._views[key] = view
        while len(self._views) > MAX_APPS_CACHED:
            self._views.popitem(last=False)
        return view

    def _refresh(self, partition_key: str, app_id: str) -> AppView:
        k = self.fleet.keys(partition_key, app_id)
        view = self._view(partition_key, app_id)
        fields = ("lo", "app") if view.app is None else ("lo",)
        meta, track = self.fleet.commands(
            [
                Cmd(k.meta, ("HMGET", k.meta, "head", "oldest", "wid")),
                Cmd(k.track, ("HMGET", k.track, *fields)),
            ]
        )
        head, oldest, wid = meta
        if head is None:
            raise fastapi.HTTPException(
                404, f"app {app_id!r} (partition {partition_key!r}) has no committed step"
            )
        if view.app is None and track[1]:
            import orjson

            app = orjson.loads(track[1])
            graph = None
            if "graph_ref" in app and "graph" not in app:
                key = self.fleet.schema.graph(str(app["graph_ref"]))
                (graph,) = self.fleet.commands([Cmd(key, ("GET", key))])
            view.app = resolve_app(app, graph)
        changed = view.update_head(int(head), _s(wid or ""), int(oldest or 0), int(track[0] or head))
        if not changed:
            return view
        missing = view.missing_records()
        for i in range(0, len(missing), 500):
            seqs = missing[i : i + 500]
            (raw,) = self.fleet.commands([Cmd(k.track, ("HMGET", k.track, *seqs))])
            view.take_records(seqs, raw)
        for seq in view.missing_states():
            try:
                data = self.fleet.load(partition_key, app_id, seq)
            except SnapshotNotFound:  # trimmed since the head was read
                data = None
            view.states[seq] = data["state"].serialize() if data is not None else {}
        return view

    async def get_application_logs(
        self, request: fastapi.Request, project_id: str, app_id: str, partition_key: str | None
    ) -> schema.ApplicationLogs:
        pk = partition_key if partition_key is not None else "default"
        view = await self._call(self._refresh, pk, app_id)
        if view.app is None:
            raise fastapi.HTTPException(
                404,
                f"app {app_id!r} (partition {pk!r}) has no tracking records: its workers ran with "
                "--no-track, or before tracking existed",
            )
        if view.built is None:
            meta = view.app.get("metadata") or {}
            pointer = meta.get("parent_pointer")
            spawner = meta.get("spawning_parent_pointer")
            view.built = schema.ApplicationLogs(
                application=ApplicationModel.model_validate(view.app["graph"]),
                steps=schema.Step.from_logs(view.lines()),
                children=[],
                parent_pointer=PointerModel.model_validate(pointer) if pointer else None,
                spawning_parent_pointer=PointerModel.model_validate(spawner) if spawner else None,
            )
        return view.built
