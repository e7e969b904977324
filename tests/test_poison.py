"""Poison pills on real ``burr-dist worker`` processes: a failure that recurs on
every worker (a state no codec can store, a factory that raises, a build Burr refuses) is
recorded on the app, retried under its RetryPolicy, then ``failed``; each try releases its lease
and its slot at once (the workers run with a 30 s lease: waiting for one to expire would time
the test out)."""

from __future__ import annotations

import time
from pathlib import Path

from burr_dist import FleetClient
from burr_dist.errors import (
    ConfigurationError,
    LeaseLost,
    NotDurable,
    RedisUnavailable,
    SequenceConflict,
    SerializationError,
)
from burr_dist.testing.embedded import EmbeddedServer
from burr_dist.worker.failures import is_poison
from tests.support.cli_workers import cli_json, cli_workers
from tests.support.fleet import wait_until
from tests.support.shapes import POISON_POLICY

APPS = {
    "poison_state": ("state field 'handle'", "Opaque"),
    "poison_factory": ("build", "RuntimeError: factory cannot build"),
    "poison_entrypoint": ("build", "nowhere"),
}


def test_poison_pills_fail_after_max_attempts_with_the_error(
    fleet_server: EmbeddedServer, tmp_path: Path
) -> None:
    url = fleet_server.url
    fc = FleetClient.from_url(url)
    with cli_workers(url, tmp_path, "tests.support.shapes", 2, "--lease-ttl", "30", "--concurrency", "1"):
        started = time.monotonic()
        for name in APPS:
            fc.enqueue(name, f"{name}-1")
        for name in APPS:
            wait_until(lambda n=name: fc.job(f"{n}-1")["status"] == "failed", 20, f"{name} failed")
        fc.enqueue("shape_counter", "after")  # the slots are free: it runs at once
        wait_until(lambda: fc.job("after")["status"] == "completed", 10, "a good app completes")
        assert time.monotonic() - started < 25
        time.sleep(0.5)  # nothing claims a failed app again
        for name, fragments in APPS.items():
            shown = cli_json(url, "show", f"{name}-1")
            assert shown["status"] == "failed" and shown["lease_holder"] is None, shown
            assert all(f in shown["last_error"] for f in fragments), shown["last_error"]
            assert shown["claims"] == shown["attempts"] == POISON_POLICY.max_attempts, shown
        # The step before the poisoned one is stored; the poisoned one is not.
        state = fc.load("default", "poison_state-1")
        assert state is not None and state["state"]["n"] == 1 and "handle" not in state["state"]
    queue = cli_json(url, "status")["queues"]["default"]
    assert (queue["ready"], queue["active"], queue["scheduled"]) == (0, 0, 0)
    fc.client.close()


def test_only_the_apps_own_failures_are_poison() -> None:
    """The other side: infrastructure trouble never ends an app (the sweep gives it back)."""
    assert is_poison(SerializationError("state field 'x' holds a Opaque"))
    assert is_poison(AssertionError()) and is_poison(TypeError("raised by Burr"))
    assert is_poison(ConfigurationError("unknown app name"), user_code=True)
    assert is_poison(FileNotFoundError("the factory's file"), user_code=True)
    assert not is_poison(FileNotFoundError("a socket"))  # from a commit: the transport's
    for transient in (LeaseLost("x"), NotDurable("x"), RedisUnavailable("x"), SequenceConflict("x")):
        assert not is_poison(transient) and not is_poison(transient, user_code=True)
    assert not is_poison(ConnectionError()) and not is_poison(TimeoutError())
