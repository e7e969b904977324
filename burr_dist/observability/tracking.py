"""Burr tracking records written with the commit: what ``burr-dist ui`` shows.

:class:`StepTracker` is a Burr lifecycle hook. While a step runs it buffers the records Burr's
``LocalTrackingClient`` would write to ``log.jsonl`` (``begin_entry``, ``end_entry``, spans,
attributes, stream events), plus one ``attribute`` naming the worker that ran the step; the app's
metadata are kept from ``post_application_create``, with a reference to its graph: the digest of
the graph's JSON (:attr:`StepTracker.graph`). The graph itself is stored once per digest
(``KeySchema.graph``), by the first worker process that builds it, before that app's first
commit: an agent's graph holds the source of every action, so a copy per app would cost more
memory than the app's state. The persister's save takes the
buffered record of the sequence it commits (:meth:`StepTracker.take`) and commit.lua stores it in
the same script as the snapshot: a refused commit (zombie, conflict) stores nothing, a retried one
finds its write already there and stores nothing again.

What a record does not hold: the state. ``end_entry.state`` is filled by the UI backend from the
step's snapshot (``store.load``), so tracking never doubles the memory of the snapshots; steps
older than the app's retention show no state. Inputs and results larger than
:data:`MAX_FIELD_BYTES` (as JSON) are replaced by a summary.

Records are plain dicts encoded with orjson (no pydantic on the step's path; times are epoch
seconds); their fields are those of Burr's pydantic models (``burr.tracking.common.models``), which the backend validates.
Hook order: Burr calls ``post_run_step`` inside ``app.step()``; the worker commits after the step
returns, so the record is complete when it is taken. Burr de-duplicates hooks by identity only, so
one tracker must be added once per app (the worker makes one per build).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import traceback
import weakref
from typing import Any

import orjson
from burr.core import serde
from burr.lifecycle.base import (
    DoLogAttributeHook,
    PostApplicationCreateHook,
    PostEndSpanHook,
    PostEndStreamHook,
    PostRunStepHook,
    PostStreamItemHook,
    PreRunStepHook,
    PreStartSpanHook,
    PreStartStreamHook,
)

log = logging.getLogger(__name__)

MAX_FIELD_BYTES = 8192  # inputs / result / attribute value larger than this (JSON) are summarised
WORKER_ATTRIBUTE = "burr_dist.worker"
_HIDDEN_INPUTS = frozenset({"__tracer", "__context"})


def _now() -> float:
    """Seconds since the epoch: what Burr's models parse as a UTC time, cheaper than ISO text."""
    return time.time()


def _bounded(value: Any) -> Any:
    """``value`` serialized the way Burr's tracker does (as an orjson fragment: encoded once), or
    a summary when it is too large."""
    if not value:
        return value
    try:
        text = orjson.dumps(serde.serialize(value), default=str, option=orjson.OPT_NON_STR_KEYS)
    except Exception as e:  # a tracker must never fail the step
        return {"burr_dist_unserializable": repr(e)[:200]}
    if len(text) <= MAX_FIELD_BYTES:
        return orjson.Fragment(text)
    return {"burr_dist_truncated": True, "bytes": len(text), "preview": text[:512].decode(errors="replace")}


# Source text by the function (or class) an action comes from: inspect.getsource re-reads and
# tokenizes the module, which cost more than the rest of a one-step app; weak keys, so actions
# made per build (closures) are neither found again nor kept.
_SOURCES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _source(action: Any) -> str:
    origin = getattr(action, "_originating_fn", None) or type(action)
    try:
        return _SOURCES[origin]
    except (KeyError, TypeError):
        pass
    try:
        code = str(action.get_source())
    except Exception:
        code = ""
    with contextlib.suppress(TypeError):  # not weak-referenceable: not cached
        _SOURCES[origin] = code
    return code


def graph_record(graph: Any) -> dict[str, Any]:
    """Burr's ``ApplicationModel`` of an ``ApplicationGraph``, as a plain dict."""
    actions = []
    for a in graph.actions:
        code = _source(a)
        optional, required = a.optional_and_required_inputs
        actions.append(
            {
                "type": "action",
                "name": a.name,
                "reads": list(a.reads),
                "writes": list(a.writes),
                "code": code,
                "inputs": list(required),
                "optional_inputs": list(optional),
            }
        )
    transitions = [
        {"type": "transition", "from_": t.from_.name, "to": t.to.name, "condition": t.condition.name}
        for t in graph.transitions
    ]
    return {
        "type": "application",
        "entrypoint": graph.entrypoint.name,
        "actions": actions,
        "transitions": transitions,
    }


def graph_digest(encoded: bytes) -> str:
    """The name a graph is stored under: 128 bits of BLAKE2b of its JSON, as 32 hex digits."""
    return hashlib.blake2b(encoded, digest_size=16).hexdigest()


class StoredGraphs:
    """The graph digests this process has stored (or found stored): each is written once per
    process, before the first commit that names it. Bounded: a factory that builds a new graph
    for every app only makes this process write again what is already there (``SET NX``)."""

    LIMIT = 10_000

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def missing(self, tracker: StepTracker | None) -> tuple[str, bytes] | None:
        """The (digest, JSON) ``tracker``'s app needs stored, or None."""
        if tracker is None or tracker.graph is None or tracker.graph[0] in self._seen:
            return None
        return tracker.graph

    def stored(self, digest: str) -> None:
        if len(self._seen) >= self.LIMIT:
            self._seen.clear()
        self._seen.add(digest)


def resolve_app(app: dict[str, Any], graph: bytes | None) -> dict[str, Any]:
    """A stored ``app`` record with its graph in place: records name it by digest
    (``graph_ref``, read from ``KeySchema.graph``: ``graph``), older ones hold it inline. A
    reference whose graph is missing (its write failed, or was deleted) gives an empty graph,
    so that the steps still show."""
    if "graph" in app or "graph_ref" not in app:
        return app
    if graph is None:
        log.warning(
            "tracking graph %s is missing: the app's steps show without their graph", app["graph_ref"]
        )
        shown: Any = {"type": "application", "entrypoint": "", "actions": [], "transitions": []}
    else:
        shown = orjson.loads(graph)
    return {**app, "graph": shown}


def _pointer(p: Any) -> dict[str, Any] | None:
    if p is None or getattr(p, "app_id", None) is None:
        return None  # Burr passes ParentPointer(app_id=None) after any load: not a fork
    return {
        "type": "pointer_data",
        "app_id": p.app_id,
        "sequence_id": p.sequence_id,
        "partition_key": p.partition_key,
    }


class StepTracker(
    PostApplicationCreateHook,
    PreRunStepHook,
    PostRunStepHook,
    PreStartSpanHook,
    PostEndSpanHook,
    DoLogAttributeHook,
    PreStartStreamHook,
    PostStreamItemHook,
    PostEndStreamHook,
):
    """Buffers one app's tracking records until the persister commits them (see module doc)."""

    def __init__(self, worker: str = "", project: str = "") -> None:
        self.worker = worker
        self.project = project
        self._steps: dict[int, list[dict[str, Any]]] = {}
        self._app: bytes | None = None  # graph digest + metadata, sent with the first commit of a build
        self.graph: tuple[str, bytes] | None = None  # (digest, JSON) of the app's graph, once built
        self._app_at: int | None = None  # the sequence whose commit carries them
        self._streamed: dict[int, int] = {}

    # -- what the persister takes ------------------------------------------------------------
    def take(self, sequence_id: int) -> tuple[bytes, bytes] | None:
        """The encoded records of ``sequence_id`` and (with the first step taken after a build)
        the app's graph and metadata (``b""`` otherwise), or None when nothing was recorded.

        Taking the same sequence again gives the same records and graph: a commit built twice
        (a delta refused because its base moved is re-sent as a keyframe) carries them both
        times. Records of earlier sequences are dropped (committed, or never to be)."""
        for stale in [s for s in self._steps if s < sequence_id]:
            del self._steps[stale]
        records = self._steps.get(sequence_id)
        if records is None:
            return None
        app = b""
        if self._app is not None and self._app_at in (None, sequence_id):
            self._app_at, app = sequence_id, self._app
        return orjson.dumps(records), app

    def _add(self, sequence_id: int, record: dict[str, Any]) -> None:
        self._steps.setdefault(sequence_id, []).append(record)

    # -- Burr hooks ------------------------------------------------------------------------
    def post_application_create(
        self,
        *,
        partition_key: str | None,
        application_graph: Any,
        parent_pointer: Any = None,
        spawning_parent_pointer: Any = None,
        **future_kwargs: Any,
    ) -> None:
        try:
            graph = graph_record(application_graph)
        except Exception:
            log.exception("tracking: cannot describe the app's graph")
            return
        metadata = {
            "type": "application_metadata",
            "partition_key": partition_key,
            "parent_pointer": _pointer(parent_pointer),
            "spawning_parent_pointer": _pointer(spawning_parent_pointer),
        }
        encoded = orjson.dumps(graph)
        digest = graph_digest(encoded)
        self.graph = (digest, encoded)
        self._app = orjson.dumps({"graph_ref": digest, "metadata": metadata, "project": self.project})
        self._app_at = None

    def pre_run_step(
        self, *, action: Any, inputs: dict[str, Any], sequence_id: int, **future_kwargs: Any
    ) -> None:
        shown = {k: v for k, v in inputs.items() if k not in _HIDDEN_INPUTS}
        self._steps[sequence_id] = [
            {
                "type": "begin_entry",
                "start_time": _now(),
                "action": action.name,
                "inputs": _bounded(shown),
                "sequence_id": sequence_id,
            }
        ]

    def post_run_step(
        self,
        *,
        action: Any,
        result: dict[str, Any] | None,
        sequence_id: int,
        exception: Exception | None,
        **future_kwargs: Any,
    ) -> None:
        error = None
        if exception is not None:
            error = "".join(traceback.format_exception(type(exception), exception, exception.__traceback__))
        now = _now()
        self._add(
            sequence_id,
            {
                "type": "end_entry",
                "end_time": now,
                "action": action.name,
                "result": None if result is None else _bounded(result),
                "exception": error,
                "sequence_id": sequence_id,
            },
        )
        if self.worker:
            self._add(
                sequence_id,
                {
                    "type": "attribute",
                    "key": WORKER_ATTRIBUTE,
                    "action_sequence_id": sequence_id,
                    "span_id": None,
                    "value": self.worker,
                    "tags": {},
                    "time_logged": now,
                },
            )

    def pre_start_span(
        self, *, action_sequence_id: int, span: Any, span_dependencies: list[str], **future_kwargs: Any
    ) -> None:
        self._add(
            action_sequence_id,
            {
                "type": "begin_span",
                "start_time": _now(),
                "action_sequence_id": action_sequence_id,
                "span_id": span.uid,
                "span_name": span.name,
                "parent_span_id": span.parent.uid if span.parent else None,
                "span_dependencies": list(span_dependencies),
            },
        )

    def post_end_span(self, *, action_sequence_id: int, span: Any, **future_kwargs: Any) -> None:
        self._add(
            action_sequence_id,
            {
                "type": "end_span",
                "end_time": _now(),
                "action_sequence_id": action_sequence_id,
                "span_id": span.uid,
            },
        )

    def do_log_attributes(
        self,
        *,
        attributes: dict[str, Any],
        tags: dict[str, str],
        action_sequence_id: int,
        span: Any,
        **future_kwargs: Any,
    ) -> None:
        now = _now()
        for key, value in attributes.items():
            self._add(
                action_sequence_id,
                {
                    "type": "attribute",
                    "key": key,
                    "action_sequence_id": action_sequence_id,
                    "span_id": span.uid if span is not None else None,
                    "value": _bounded(value),
                    "tags": dict(tags),
                    "time_logged": now,
                },
            )

    def pre_start_stream(self, *, sequence_id: int, **future_kwargs: Any) -> None:
        self._streamed[sequence_id] = 0
        self._add(
            sequence_id,
            {
                "type": "begin_stream",
                "action_sequence_id": sequence_id,
                "span_id": None,
                "stream_init_time": _now(),
            },
        )

    def post_stream_item(self, *, sequence_id: int, **future_kwargs: Any) -> None:
        count = self._streamed.get(sequence_id, 0)
        self._streamed[sequence_id] = count + 1
        if count == 0:
            self._add(
                sequence_id,
                {
                    "type": "first_item_stream",
                    "action_sequence_id": sequence_id,
                    "span_id": None,
                    "first_item_time": _now(),
                },
            )

    def post_end_stream(self, *, sequence_id: int, **future_kwargs: Any) -> None:
        self._add(
            sequence_id,
            {
                "type": "end_stream",
                "action_sequence_id": sequence_id,
                "span_id": None,
                "end_time": _now(),
                "items_streamed": self._streamed.pop(sequence_id, 0),
            },
        )
