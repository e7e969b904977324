"""Streaming actions' items, live, to the app's Redis stream (record format: fleet/streams.py).

:class:`StreamSink` is a Burr stream lifecycle hook (``pre_start_stream``, ``post_stream_item``,
``post_end_stream``), added by the worker at build time to apps whose graph has a streaming
action; apps without one get nothing (no hook, no Redis command). Burr calls stream hooks only
from ``stream_result`` / ``astream_result``: ``step()`` / ``astep()``, which the worker drives,
consume the generator silently. So the build gives the app private copies of its streaming
actions (:func:`bridge`) whose step path calls the same hook, with Burr's own semantics for the
step unchanged (same generator, same final result and state).

Cost on the step path: a hook call encodes the item (strict codec, as a state field), appends it
to a buffer and, when no write is in flight, wakes the event loop. Writes go out through the
worker's async transport, never from the action: one round trip carries everything buffered
meanwhile (XADD per record + PEXPIRE), so slow tokens go out one by one (lowest latency) and fast
ones in batches of up to :data:`BATCH` (one round trip per batch, not per token). The end of a
step waits for its records to be written (at most :data:`DRAIN_S`) before the step returns, so a
reader sees a step's end before its commit; except for a sync action run on the event loop (a sync
action of an async app, or one the inline policy found fast), whose records go out right after.
A write that fails is logged and dropped: streaming is live output, the commit is the truth.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from burr.core import ApplicationContext
from burr.core.action import Action, AsyncStreamingAction, SingleStepStreamingAction, StreamingAction
from burr.lifecycle.base import PostEndStreamHook, PostStreamItemHook, PreStartStreamHook

from burr_dist.fleet.streams import MAXLEN, append_cmds, encode_value, record

if TYPE_CHECKING:
    from burr_dist.store.clients import AsyncRedisStore

log = logging.getLogger(__name__)

BATCH = 256  # records per round trip at most
DRAIN_S = 5.0  # how long the end of a step waits for its records to be written


class StreamSink(PreStartStreamHook, PostStreamItemHook, PostEndStreamHook):
    """One app's stream writer on one worker. Hook methods may run on the event loop or on a pool
    thread; the buffer is guarded by a lock, the writes run on the loop."""

    def __init__(
        self, fleet: AsyncRedisStore, key: str, worker: str, ttl_ms: int, maxlen: int = MAXLEN
    ) -> None:
        self.fleet, self.key, self.worker, self.ttl_ms, self.maxlen = fleet, key, worker, ttl_ms, maxlen
        self.loop = asyncio.get_running_loop()  # built on the worker's loop
        self._loop_thread = threading.get_ident()
        self._lock = threading.Lock()
        self._buf: list[tuple[Any, ...]] = []
        self._writing = False  # a write task is running (it takes what is buffered until empty)
        self._waiters: list[asyncio.Future[None]] = []  # drained() callers (loop thread only)
        self._run, self._seq, self._action, self._count = "", 0, "", 0

    # -- Burr's stream hooks ------------------------------------------------------------------
    def pre_start_stream(self, *, action: str, sequence_id: int, **future: Any) -> None:
        self._run, self._seq, self._action, self._count = os.urandom(4).hex(), sequence_id, action, 0
        data, _ = encode_value({"worker": self.worker})
        self._add(record("start", self._run, sequence_id, action, 0, data))

    def post_stream_item(self, *, item: Any, **future: Any) -> None:
        self._count += 1
        data, error = encode_value(item)
        self._add(record("item", self._run, self._seq, self._action, self._count, data, error))

    def post_end_stream(
        self, *, result: Any = None, error: BaseException | None = None, **future: Any
    ) -> None:
        data: bytes | None
        why: str | None
        if error is not None:
            data, why = None, f"{type(error).__name__}: {error}"
        else:
            data, why = encode_value(result)
        self._add(record("end", self._run, self._seq, self._action, self._count, data, why))

    # -- writing ------------------------------------------------------------------------------
    def _add(self, rec: tuple[Any, ...]) -> None:
        with self._lock:
            self._buf.append(rec)
            if self._writing:
                return  # the running write takes it with the next round trip
            self._writing = True
        if threading.get_ident() == self._loop_thread:
            self._start()
        else:
            self.loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        self.loop.create_task(self._write())

    async def _write(self) -> None:
        batch: list[tuple[Any, ...]] = []
        try:
            while True:
                with self._lock:
                    batch, self._buf = self._buf[:BATCH], self._buf[BATCH:]
                    if not batch:
                        break
                try:
                    await self.fleet.commands(append_cmds(self.key, batch, self.ttl_ms, self.maxlen))
                except Exception as e:  # live output only: the step and its commit go on
                    log.warning("stream %s: %d records not written: %s", self.key, len(batch), e,
                                extra={"event": "stream_write_failed"})  # fmt: skip
        finally:
            with self._lock:
                self._writing = False
                waiters, self._waiters = self._waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    async def drained(self) -> None:
        """Once everything buffered so far is written (or DRAIN_S passed). On the loop."""
        with self._lock:
            if not self._writing:
                return
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, DRAIN_S)
        except asyncio.TimeoutError:
            log.warning("stream %s: records still unwritten after %.0f s", self.key, DRAIN_S)

    def wait_drained(self) -> None:
        """:meth:`drained` from the step: awaited on a pool thread; impossible on the loop's own
        thread (the loop is busy running the step), so the records follow the step there."""
        if threading.get_ident() == self._loop_thread:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.drained(), self.loop).result(DRAIN_S + 1)
        except Exception as e:
            log.warning("stream %s: end of step not confirmed: %s", self.key, e)


def bridge(action: Action, sink: StreamSink) -> Action:
    """A copy of streaming ``action`` whose step path reports its items to ``sink`` (any other
    action is returned as it is). A copy: a factory may share its action objects between apps."""
    if isinstance(action, SingleStepStreamingAction):
        mine = _copy(action)
        wrap = _astream_single if action.is_async() else _stream_single
        mine.run_and_update = functools.wraps(action.run_and_update)(wrap(mine, sink))
        return mine
    if isinstance(action, (StreamingAction, AsyncStreamingAction)):
        mine = _copy(action)
        wrap = _astream_multi if isinstance(action, AsyncStreamingAction) else _stream_multi
        mine.run = functools.wraps(action.run)(wrap(mine, sink))
        return mine
    return action


def _copy(action: Action) -> Any:
    return copy.copy(action)


def _seq() -> int:
    ctx = ApplicationContext.get()  # set by Burr's step for the action it runs
    return ctx.sequence_id if ctx is not None and ctx.sequence_id is not None else 0


def _stream_single(action: Any, sink: StreamSink) -> Callable[..., Any]:
    def run_and_update(state: Any, **kw: Any) -> tuple[Any, Any]:
        result, new_state = None, state  # as SingleStepStreamingAction._run_and_update
        sink.pre_start_stream(action=action.name, sequence_id=_seq())
        try:
            for result, new_state in action.stream_run_and_update(state, **kw):
                if new_state is None:
                    sink.post_stream_item(item=result)
        except BaseException as e:
            sink.post_end_stream(error=e)
            raise
        sink.post_end_stream(result=result)
        sink.wait_drained()
        return result, new_state

    return run_and_update


def _astream_single(action: Any, sink: StreamSink) -> Callable[..., Any]:
    async def run_and_update(state: Any, **kw: Any) -> tuple[Any, Any]:
        result, new_state = None, state
        sink.pre_start_stream(action=action.name, sequence_id=_seq())
        try:
            async for result, new_state in action.stream_run_and_update(state, **kw):
                if new_state is None:
                    sink.post_stream_item(item=result)
        except BaseException as e:
            sink.post_end_stream(error=e)
            raise
        sink.post_end_stream(result=result)
        await sink.drained()
        return result, new_state

    return run_and_update


def _peeked(items: Iterator[Any], sink: StreamSink) -> Any:
    """A multi-step streaming action yields items, then its result last (Burr peeks ahead)."""
    last = None
    for n, item in enumerate(items):
        if n:
            sink.post_stream_item(item=last)
        last = item
    return last


def _stream_multi(action: Any, sink: StreamSink) -> Callable[..., Any]:
    def run(state: Any, **kw: Any) -> Any:
        sink.pre_start_stream(action=action.name, sequence_id=_seq())
        try:
            result = _peeked(action.stream_run(state, **kw), sink)
        except BaseException as e:
            sink.post_end_stream(error=e)
            raise
        sink.post_end_stream(result=result)
        sink.wait_drained()
        return result

    return run


def _astream_multi(action: Any, sink: StreamSink) -> Callable[..., Any]:
    async def run(state: Any, **kw: Any) -> Any:
        sink.pre_start_stream(action=action.name, sequence_id=_seq())
        last, n = None, 0
        try:
            gen: AsyncIterator[Any] = action.stream_run(state, **kw)
            async for item in gen:
                if n:
                    sink.post_stream_item(item=last)
                last, n = item, n + 1
        except BaseException as e:
            sink.post_end_stream(error=e)
            raise
        sink.post_end_stream(result=last)
        await sink.drained()
        return last

    return run
