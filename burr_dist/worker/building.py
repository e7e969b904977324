"""Building a claimed app from its factory's builder, written as a plain Burr user writes it.

Burr refuses ``initialize_from`` on a builder that already has ``with_state`` or
``with_entrypoint``, and most Burr examples set both (many also ``initialize_from`` and
``with_identifiers``). The worker does not call ``initialize_from``: on a private copy of the
factory's builder it sets the fields that call would set (loader, defaults, resume flag, fork),
so Burr's own ``build()`` / ``abuild()`` load logic decides, unchanged. The rule:

* **Ids**: always the fleet's app id and partition key. A ``with_identifiers`` naming others, or
  a sequence id, is ignored, with one warning per app name (a fleet app is addressed by its
  queue record; a second id would split its history).
* **Stored state wins**: once the app committed a step (or when the fleet forks it), Burr loads
  that state and resumes at the next action (or re-runs a failed one), as it does for any load
  that finds something; the builder's state and entrypoint then only serve Burr's checks.
* **A new app** (nothing stored) starts at ``enqueue(entrypoint=)``, else
  ``@registry.app(entrypoint=)``, else the builder's own (``with_entrypoint`` or its
  ``initialize_from``'s ``default_entrypoint``). Its state is the builder's (``with_state``, or
  that ``default_state``), updated with ``@registry.app(default_state=)``, then with
  ``enqueue(state=)``: the most specific setting wins, as Burr applies ``default_state``.
* **The user's own** ``initialize_from(persister, ...)`` is honoured as the first load, which is
  what it is in Burr: for a new app the worker asks that persister for the fleet's (partition,
  app id), or for the fork its ``fork_from_*`` name, and the app starts from what it returns
  (with its ``resume_at_next_action`` and ``override_state_values``), else from the defaults
  above. That is also how an app moves to the fleet: enqueue it under the id it had, and its
  first claim continues from the old store. Once a step is committed the fleet's store is the
  truth and that persister is not asked again: another machine's copy of a local file cannot
  be. A sync loader is called on the event loop's thread (SQLite connections are bound to the
  thread that made them), once per new app. A ``with_state_persister`` of the user's keeps
  receiving Burr's saves, as in Burr.

Sync or async: an app with an async action, an async state persister or async hooks is built
with ``abuild()`` and every step goes through ``astep`` (Burr's rule; ``astep`` runs sync
actions too, on the loop); an all-sync app with ``build()``, so that a sync action may run on a
pool thread (burr_dist/worker/inline.py). Either way the load is answered by a loader holding the
state read beforehand (:class:`~burr_dist.store.persister.LoadedState`): the build does no I/O.
"""

from __future__ import annotations

import copy
import inspect
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from burr.core import Application, ApplicationBuilder
from burr.core.persistence import PersistedStateData
from burr.lifecycle.internal import LifecycleAdapterSet

from burr_dist.errors import ConfigurationError
from burr_dist.fleet.core import job_state
from burr_dist.fleet.registry import AppContext, AppSpec
from burr_dist.fleet.streams import stream_ttl_ms
from burr_dist.observability.burr_compat import resume_without_parent
from burr_dist.observability.tracking import StepTracker
from burr_dist.store.lease import AsyncLease
from burr_dist.store.persister import AsyncLoadedState, AsyncRedisPersister, LoadedState
from burr_dist.worker.streaming import StreamSink, bridge

log = logging.getLogger(__name__)

Key = tuple[str | None, str, int | None]


@dataclass
class Built:
    app: Application[Any]
    persister: AsyncRedisPersister
    is_async: bool  # built with abuild(): every step goes through astep


@dataclass(frozen=True)
class _Mine:
    """What the factory's builder set for itself, read before the worker changes anything."""

    start: str | None
    loader: Any  # the user's initialize_from persister, or None
    default_state: dict[str, Any]
    resume_at_next_action: bool
    fork: tuple[str | None, str | None, int | None]  # the user's fork_from_* (app id first)
    override: dict[str, Any] | None


class AppFactory:
    """Builds claimed apps for one worker (holds the warn-once set)."""

    def __init__(self, worker_id: str, track: bool) -> None:
        self.worker_id = worker_id
        self.track = track
        self._warned: set[str] = set()

    async def build(self, spec: AppSpec, lease: AsyncLease, persister: AsyncRedisPersister) -> Built:
        """The app of ``lease``, built as the module doc says."""
        job = lease.job
        key: Key = (lease.partition_key, lease.app_id, None)
        fleet_fork = lease.head is None and bool(job.get("fork_app"))
        if fleet_fork:
            key = (job["fork_pk"], job["fork_app"], int(job["fork_seq"]))
        # A fork of a sequence nobody can load (never saved, or trimmed past keep) is the app's
        # error, not a fresh start: Burr's load would answer None and start from the defaults.
        loaded = await (persister.load_or_raise(*key) if fleet_fork else persister.load(*key))
        builder = _private_copy(spec.factory(AppContext(spec.name, lease.app_id, lease.partition_key)))
        mine = _read_mine(builder)
        is_async = self._check(spec, builder)
        self._identifiers(spec, lease, builder)
        if self.track:
            self._add_tracker(spec, builder, persister)
        self._add_stream(builder, lease, persister)
        first = loaded is None and not fleet_fork and mine.loader is not None
        if first:
            loaded = await _first_load(mine, lease)
        _set_loader(builder, spec, job, mine, key, loaded, fleet_fork, first, is_async)
        app = await builder.abuild() if is_async else builder.build()
        return Built(app, persister, is_async)

    def _check(self, spec: AppSpec, builder: ApplicationBuilder[Any]) -> bool:
        """Refuse what cannot run, naming it; True when the app must be built with abuild()."""
        graph = builder.graph_builder
        if graph is None:
            raise ConfigurationError(
                f"factory of {spec.name!r} returned a builder without actions", name=spec.name
            )
        actions = {a.name: a for a in graph.actions}
        for what, names in (("blocking", spec.blocking), ("halt_before", spec.halt_before),
                            ("halt_after", spec.halt_after)):  # fmt: skip
            unknown = set(names).difference(actions)
            if unknown:
                raise ConfigurationError(
                    f"app {spec.name!r}: {what}= names {sorted(unknown)}, not actions of its graph "
                    f"({sorted(actions)})", name=spec.name,
                )  # fmt: skip
        is_async = _needs_async(builder, graph.actions)
        sync_blocking = sorted(n for n in spec.blocking if not actions[n].is_async())
        if is_async and sync_blocking:
            raise ConfigurationError(
                f"app {spec.name!r}: blocking= names sync actions {sync_blocking} of an async app; Burr "
                "runs the sync actions of an async app on the event loop (astep), so they cannot be kept "
                "off it: make them async (await asyncio.to_thread(...)) or drop them from blocking",
                name=spec.name,
            )  # fmt: skip
        return is_async

    def _identifiers(self, spec: AppSpec, lease: AsyncLease, builder: ApplicationBuilder[Any]) -> None:
        other = builder.partition_key not in (None, lease.partition_key) or builder.sequence_id is not None
        if not other and builder.app_id != lease.app_id and not _looks_generated(builder.app_id):
            other = True
        if other and spec.name not in self._warned:
            self._warned.add(spec.name)
            log.warning(
                "app %s: the factory's with_identifiers(app_id=%r, partition_key=%r, sequence_id=%r) is "
                "ignored: a fleet app runs under the ids it was enqueued with (AppContext has them)",
                spec.name, builder.app_id, builder.partition_key, builder.sequence_id,
                extra={"event": "identifiers_ignored", "app_id": lease.app_id},
            )  # fmt: skip
        builder.app_id, builder.partition_key, builder.sequence_id = lease.app_id, lease.partition_key, None

    def _add_tracker(
        self, spec: AppSpec, builder: ApplicationBuilder[Any], persister: AsyncRedisPersister
    ) -> None:
        # one tracker per build, its records committed with each step
        tracker = StepTracker(worker=self.worker_id, project=spec.name)
        adapters = [h for h in builder.lifecycle_adapters if not isinstance(h, StepTracker)]
        builder.lifecycle_adapters = [*adapters, tracker]
        persister.core.tracker = tracker

    def _add_stream(
        self, builder: ApplicationBuilder[Any], lease: AsyncLease, persister: AsyncRedisPersister
    ) -> None:
        """Items of streaming actions to the app's stream (worker/streaming.py); nothing at all
        for an app without a streaming action."""
        graph = builder.graph_builder
        assert graph is not None and graph.actions is not None  # _check refused it otherwise
        if not any(a.streaming for a in graph.actions):
            return
        store = persister.store
        key = store.keys(lease.partition_key, lease.app_id).stream
        sink = StreamSink(store, key, self.worker_id, stream_ttl_ms(store.config.finished_ttl))
        graph = copy.copy(graph)  # the factory's graph builder may serve other apps
        graph.actions = [bridge(a, sink) for a in graph.actions]
        builder.graph_builder = graph
        builder.lifecycle_adapters = [*builder.lifecycle_adapters, sink]  # for Burr's stream_result


def _private_copy(builder: Any) -> ApplicationBuilder[Any]:
    """A copy the worker may change and await around: a factory may hand out one builder to
    every call, and Burr's build appends to its adapter list."""
    if not isinstance(builder, ApplicationBuilder):
        raise ConfigurationError(
            f"an app factory must return an ApplicationBuilder, got {type(builder).__name__}"
        )
    resume_without_parent(builder)  # a .with_tracker() that fails a resume otherwise
    mine = copy.copy(builder)
    mine.lifecycle_adapters = list(builder.lifecycle_adapters)
    return mine


def _read_mine(builder: ApplicationBuilder[Any]) -> _Mine:
    loader = builder.state_initializer
    if loader is None:
        return _Mine(builder.start, None, {}, True, (None, None, None), None)
    return _Mine(
        builder.start, loader, dict(builder.default_state or {}), bool(builder.resume_at_next_action),
        (builder.fork_from_app_id, builder.fork_from_partition_key, builder.fork_from_sequence_id),
        getattr(builder, "override_state_values", None),
    )  # fmt: skip


def _needs_async(builder: ApplicationBuilder[Any], actions: Any) -> bool:
    if any(a.is_async() for a in actions):
        return True
    saver = builder.state_persister
    if saver is not None and callable(getattr(saver, "is_async", None)) and saver.is_async():
        return True
    return bool(LifecycleAdapterSet(*builder.lifecycle_adapters).async_hooks)


def _looks_generated(app_id: str) -> bool:
    """Burr's ApplicationBuilder starts with a random uuid4 app id: not the user's choice."""
    try:
        return str(uuid.UUID(app_id)) == app_id and uuid.UUID(app_id).version == 4
    except (ValueError, TypeError, AttributeError):
        return False


async def _first_load(mine: _Mine, lease: AsyncLease) -> PersistedStateData | None:
    """The user's initialize_from loader asked for this new app (or the fork it names)."""
    fork_app, fork_pk, fork_seq = mine.fork
    if fork_app is not None:
        args: Key = (fork_pk, fork_app, fork_seq)
    else:
        args = (lease.partition_key, lease.app_id, None)
    answer = mine.loader.load(*args)
    if inspect.isawaitable(answer):
        answer = await answer
    if answer is not None:
        log.info("app %s starts from %s's sequence %s", lease.app_id, type(mine.loader).__name__,
                 answer["sequence_id"], extra={"event": "initialized_from_user_loader", "app_id": lease.app_id})  # fmt: skip
    return answer


def _set_loader(
    builder: ApplicationBuilder[Any], spec: AppSpec, job: dict[str, str], mine: _Mine, key: Key,
    loaded: PersistedStateData | None, fleet_fork: bool, first: bool, is_async: bool,
) -> None:  # fmt: skip
    """What initialize_from would set, without its refusal of a builder with state or entrypoint."""
    start = job.get("entrypoint") or spec.entrypoint or mine.start
    if start is None:
        raise ConfigurationError(
            f"app {spec.name!r} has no entrypoint: set it in @registry.app(entrypoint=...), in the "
            "factory's builder (with_entrypoint) or at enqueue", name=spec.name,
        )  # fmt: skip
    enqueued = job_state(job.get("state"))  # through Burr's serde, as enqueue stored it
    builder.state_initializer = AsyncLoadedState(key, loaded) if is_async else LoadedState(key, loaded)
    builder.start = start
    builder.default_state = {**mine.default_state, **spec.default_state, **enqueued}
    builder.resume_at_next_action = mine.resume_at_next_action if first else True
    builder.override_state_values = mine.override if first else None
    if fleet_fork:
        builder.fork_from_app_id, builder.fork_from_partition_key, builder.fork_from_sequence_id = (
            key[1], key[0], key[2],
        )  # fmt: skip
    else:
        builder.fork_from_app_id = builder.fork_from_partition_key = builder.fork_from_sequence_id = None
