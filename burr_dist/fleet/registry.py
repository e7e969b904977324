"""Registering Burr application factories by name, and the fleet's lifecycle hooks.

    registry = Registry()

    @registry.app("approval", entrypoint="draft", default_state={"draft": ""},
                  halt_before=["human_review"])
    def approval(ctx: AppContext) -> ApplicationBuilder:
        return ApplicationBuilder().with_actions(...).with_transitions(...)

The factory returns a builder as a Burr user writes it: ``with_entrypoint``, ``with_state``,
``with_identifiers`` and ``initialize_from`` may all be there. How the worker combines them with
the fleet's stored state and ids: burr_dist/worker/building.py. The worker commits every step
itself, fenced by its lease. ``halt_before`` / ``halt_after`` park the app the way Burr's
``run(halt_before=..., halt_after=...)`` stops it; ``resume`` starts the next run.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from burr.core import ApplicationBuilder

from burr_dist.errors import ConfigurationError

log = logging.getLogger(__name__)

EVENTS = (
    "claimed",
    "step_committed",
    "parked",
    "completed",
    "failed",
    "retry_scheduled",
    "cancelled",
    "lease_lost",
    "handed_back",
)


@dataclass(frozen=True)
class AppContext:
    """What a factory gets: the ids of the app being built and its registered name."""

    name: str
    app_id: str
    partition_key: str | None


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of an action that raised: ``max_attempts`` in all, exponential backoff with jitter.
    The next run time is kept in Redis (the job's ``run_at``), not in worker memory."""

    max_attempts: int = 3
    initial_delay: float = 1.0
    max_delay: float = 60.0

    def delay(self, attempt: int) -> float:
        base = min(self.initial_delay * (2 ** max(attempt - 1, 0)), self.max_delay)
        return base * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class AppSpec:
    name: str
    factory: Callable[[AppContext], ApplicationBuilder]
    entrypoint: str | None = None  # None: the builder's (with_entrypoint / initialize_from)
    default_state: dict[str, Any] = field(default_factory=dict)
    halt_before: tuple[str, ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    queue: str = "default"
    # Sync actions that may block on I/O: always in the thread pool, never on the event loop
    # (burr_dist/worker/inline.py learns the others from their run times).
    blocking: frozenset[str] = frozenset()
    halt_after: tuple[str, ...] = ()


@dataclass(frozen=True)
class FleetEvent:
    """Passed to hooks. ``sequence_id``/``position`` are the app's head after the event."""

    kind: str
    name: str
    app_id: str
    partition_key: str | None
    sequence_id: int | None
    position: str | None
    worker: str
    error: str | None = None


Hook = Callable[[FleetEvent], "Awaitable[None] | None"]


class Registry:
    """Named app factories plus hooks. Workers import the module that defines one.

    ``pydantic_modules``: the modules (prefixes) whose pydantic models a worker of this registry
    may load from stored state, for models in an untyped state; Burr refuses any other class (and
    warns that loading is unsafe when no list is declared). A worker applies it process-wide,
    through Burr's own allowlist (``burr.integrations.serde.pydantic.set_allowlist``)."""

    def __init__(self, *, pydantic_modules: Sequence[str] | None = None) -> None:
        self.apps: dict[str, AppSpec] = {}
        self.hooks: dict[str, list[Hook]] = {kind: [] for kind in EVENTS}
        self.pydantic_modules = None if pydantic_modules is None else tuple(pydantic_modules)
        if self.pydantic_modules is not None and not all(
            isinstance(m, str) and m for m in self.pydantic_modules
        ):
            raise ConfigurationError(f"pydantic_modules must be module names, got {pydantic_modules!r}")

    def app(
        self,
        name: str,
        *,
        entrypoint: str | None = None,
        default_state: dict[str, Any] | None = None,
        halt_before: Sequence[str] = (),
        halt_after: Sequence[str] = (),
        retry: RetryPolicy | None = None,
        queue: str = "default",
        blocking: Sequence[str] = (),
    ) -> Callable[[Callable[[AppContext], ApplicationBuilder]], Callable[[AppContext], ApplicationBuilder]]:
        """Register an app factory under ``name``.

        ``entrypoint`` / ``default_state``: a new app's, over what the builder sets itself
        (``with_entrypoint``, ``with_state``); ``enqueue(entrypoint=, state=)`` wins over both.
        ``halt_before`` / ``halt_after``: action names; the app parks (``waiting``) before or
        after them, as Burr's ``run`` halts. ``blocking``: names of sync actions that may block on
        I/O (a model call, a database query): they always run in the worker's thread pool, never
        on its event loop, even when they were fast so far. A name that is not an action of the
        built graph fails the app's build, saying so."""
        for what, names in (("blocking", blocking), ("halt_before", halt_before), ("halt_after", halt_after)):
            if isinstance(names, str):
                raise ConfigurationError(
                    f"{what} must be a list of action names, got the string {names!r}", name=name
                )

        def register(
            factory: Callable[[AppContext], ApplicationBuilder],
        ) -> Callable[[AppContext], ApplicationBuilder]:
            if name in self.apps:
                raise ConfigurationError(f"app name {name!r} is registered twice", name=name)
            self.apps[name] = AppSpec(
                name,
                factory,
                entrypoint,
                dict(default_state or {}),
                tuple(halt_before),
                retry or RetryPolicy(),
                queue,
                frozenset(blocking),
                tuple(halt_after),
            )
            return factory

        return register

    def get(self, name: str) -> AppSpec:
        try:
            return self.apps[name]
        except KeyError:
            raise ConfigurationError(
                f"unknown app name {name!r}; registered: {sorted(self.apps) or 'none'}", name=name
            ) from None

    def on(self, *kinds: str) -> Callable[[Hook], Hook]:
        """Decorator: call ``hook(event)`` (sync or async) on these events (all when none given)."""
        for kind in kinds:
            if kind not in self.hooks:
                raise ConfigurationError(f"unknown hook event {kind!r}; one of {EVENTS}", kind=kind)

        def register(hook: Hook) -> Hook:
            for kind in kinds or EVENTS:
                self.hooks[kind].append(hook)
            return hook

        return register

    def wants(self, kind: str) -> bool:
        """Whether any hook listens to ``kind`` (an event nobody hears is not even built)."""
        return bool(self.hooks.get(kind))

    async def emit(self, event: FleetEvent) -> None:
        """Call the hooks of ``event.kind``; a failing hook is logged and never affects the app."""
        for hook in self.hooks.get(event.kind, ()):
            try:
                result = hook(event)
                if inspect.isawaitable(result):
                    await asyncio.wait_for(result, timeout=30)
            except Exception:
                log.exception("hook %r failed on %s of %s", hook, event.kind, event.app_id)


def load_registry(target: str) -> Registry:
    """Import ``module`` or ``module:attribute`` and return its Registry (the first one found)."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ConfigurationError(
            f"cannot import app module {module_name!r}: {e!r}", module=module_name
        ) from e
    if attr:
        found = getattr(module, attr, None)
        if not isinstance(found, Registry):
            raise ConfigurationError(f"{target!r} is not a burr_dist Registry", module=module_name)
        return found
    for value in vars(module).values():
        if isinstance(value, Registry):
            return value
    raise ConfigurationError(f"module {module_name!r} defines no burr_dist Registry", module=module_name)
