"""An app id and a partition key are both strings, so a swapped call used to return "no app"
instead of failing. The rule now: every method that names an app takes the app id first and the
partition key only by keyword; only Burr's persister contract (``load(partition_key, app_id,
sequence_id)``, ``list_app_ids(partition_key)``) keeps Burr's positional order."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from burr_dist import (
    AsyncFleetClient,
    AsyncRedisPersister,
    AsyncRedisStore,
    EnqueueRequest,
    FleetClient,
    RedisPersister,
    RedisStore,
)
from burr_dist.testing.embedded import EmbeddedServer, free_port
from burr_dist.transport.connect import aconnect

BURR_CONTRACT = {
    "load",
    "load_or_raise",  # load with SnapshotNotFound for a missing sequence: the same arguments
    "save",
    "list_app_ids",
    "save_and_settle",
}  # Burr's order (save_and_settle: save plus a settle)
PUBLIC = [FleetClient, AsyncFleetClient, RedisStore, AsyncRedisStore, RedisPersister, AsyncRedisPersister]


def public_methods_with_partition_key() -> list[tuple[str, str, inspect.Parameter]]:
    found = []
    for cls in PUBLIC:
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            # StoreCore/FleetCore hold the internal plumbing (key cache, call builders, readers).
            if name.startswith("_") or fn.__qualname__.split(".")[0] in ("StoreCore", "FleetCore"):
                continue
            param = inspect.signature(fn).parameters.get("partition_key")
            if param is not None:
                found.append((cls.__name__, name, param))
    return found


def test_partition_key_is_keyword_only_outside_burrs_contract() -> None:
    found = public_methods_with_partition_key()
    names = {name for _, name, _ in found}
    assert {"show", "resume", "cancel", "retry", "fork", "job", "history", "ls", "enqueue"} <= names
    assert {"head_sequence", "expire_app", "load", "list_app_ids"} <= names
    wrong = [
        f"{cls}.{name}"
        for cls, name, param in found
        if name not in BURR_CONTRACT and param.kind is not inspect.Parameter.KEYWORD_ONLY
    ]
    assert wrong == []
    positional = {name for _, name, param in found if param.kind is not inspect.Parameter.KEYWORD_ONLY}
    assert positional == BURR_CONTRACT  # and these follow Burr: partition key first
    for _, name, _ in found:
        if name in BURR_CONTRACT:
            for cls in PUBLIC:
                if hasattr(cls, name):
                    params = list(inspect.signature(getattr(cls, name)).parameters)
                    assert params[1] == "partition_key", (cls, name, params)


SWAPPED: list[tuple[str, Callable[[Any], Any]]] = [
    ("show", lambda fc: fc.show("team-a", "memo-1")),
    ("job", lambda fc: fc.job("team-a", "memo-1")),
    ("history", lambda fc: fc.history("team-a", "memo-1")),
    ("cancel", lambda fc: fc.cancel("team-a", "memo-1")),
    ("retry", lambda fc: fc.retry("team-a", "memo-1")),
    ("resume", lambda fc: fc.resume("memo-1", {"approved": True}, "team-a")),
    ("fork", lambda fc: fc.fork("memo-1", 0, "memo-2", "team-a")),
    ("enqueue", lambda fc: fc.enqueue("approval", "memo-1", "team-a")),
    ("ls", lambda fc: fc.ls("team-a")),
    ("head_sequence", lambda fc: fc.head_sequence("team-a", "memo-1")),
    ("expire_app", lambda fc: fc.expire_app("team-a", "memo-1")),
]


@pytest.mark.parametrize("call", [c for _, c in SWAPPED], ids=[n for n, _ in SWAPPED])
def test_a_swapped_call_raises_type_error(fleet_server: EmbeddedServer, call: Callable[[Any], Any]) -> None:
    fc = FleetClient.from_url(fleet_server.url)
    fc.enqueue("approval", "memo-1", partition_key="team-a")
    with pytest.raises(TypeError, match="positional argument"):
        call(fc)
    assert fc.show("memo-1", partition_key="team-a")["status"] == "queued"  # and the right call works
    fc.client.close()


ASYNC_SWAPPED: list[tuple[str, Callable[[Any], Any]]] = [
    ("cancel", lambda afc: afc.cancel("team-a", "memo-1")),
    ("retry", lambda afc: afc.retry("team-a", "memo-1")),
    ("resume", lambda afc: afc.resume("memo-1", {"approved": True}, "team-a")),
    ("enqueue", lambda afc: afc.enqueue("approval", "memo-1", "team-a")),
    ("head_sequence", lambda afc: afc.head_sequence("team-a", "memo-1")),
    ("expire_app", lambda afc: afc.expire_app("team-a", "memo-1")),
]


@pytest.mark.parametrize("call", [c for _, c in ASYNC_SWAPPED], ids=[n for n, _ in ASYNC_SWAPPED])
def test_async_swapped_call_raises_type_error(call: Callable[[Any], Any]) -> None:
    # Binding the arguments fails when the coroutine function is called, before any I/O.
    afc = AsyncFleetClient(aconnect(f"redis://127.0.0.1:{free_port()}/0"))
    with pytest.raises(TypeError, match="positional argument"):
        call(afc)


def test_enqueue_request_takes_the_partition_key_by_keyword() -> None:
    with pytest.raises(TypeError):
        EnqueueRequest("approval", "memo-1", "team-a")  # type: ignore[misc]
    req = EnqueueRequest("approval", "memo-1", partition_key="team-a", state={"topic": "x"})
    assert (req.app_id, req.partition_key) == ("memo-1", "team-a")
