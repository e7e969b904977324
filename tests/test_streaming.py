"""Streaming actions' items reach clients in other processes while the action runs.

A real ``burr-dist worker`` process runs the apps of tests/support/stream_apps.py (tokens 0.2 s
apart); this test process is the client: ``FleetClient.stream``, ``AsyncFleetClient.stream`` and
``burr-dist tail`` as a subprocess. "Before the commit" is checked on the store itself: when the
first token is read, the app has no committed head for that step yet.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from burr_dist import AsyncFleetClient, FleetClient
from burr_dist.errors import AppNotFound
from burr_dist.fleet.streams import Follower, StreamEvent, append_cmds, record
from tests.conftest import KINDS, TARGETS
from tests.support import stream_apps
from tests.support.cli_workers import cli, cli_workers, command
from tests.support.fleet import ROOT, wait_until


class Fleet:
    def __init__(self, url: str) -> None:
        self.url = url
        self.fc = FleetClient.from_url(url)

    def status(self, app_id: str) -> str:
        return str(self.fc.show(app_id)["status"])

    def wait(self, app_id: str, *statuses: str) -> dict[str, Any]:
        def settled() -> dict[str, Any] | None:
            job = self.fc.show(app_id)
            return job if job["status"] in statuses and job["lease_holder"] is None else None

        found: dict[str, Any] = wait_until(settled, 30, f"{app_id} {statuses}", interval=0.05)
        return found


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    target = TARGETS.get(f"single-{KINDS[0]}")
    target.flush()
    logs = tmp_path_factory.mktemp("streaming")
    with cli_workers(target.url, logs, "tests.support.stream_apps", 1, "--concurrency", "4",
                     "--finished-ttl", "600"):  # fmt: skip
        f = Fleet(target.url)
        yield f
        f.fc.client.close()


def _new(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def _read_with_heads(fc: FleetClient, app_id: str) -> list[tuple[StreamEvent, Any]]:
    """Every record, each with the app's committed head at the moment it was read."""
    return [(ev, fc.head_sequence(app_id)) for ev in fc.stream(app_id, timeout=30)]


def test_a_second_process_reads_the_tokens_before_the_step_commits(fleet: Fleet) -> None:
    app_id = _new("sync")
    fleet.fc.enqueue("stream_sync", app_id)
    seen = _read_with_heads(fleet.fc, app_id)
    kinds = [ev.kind for ev, _ in seen]
    assert kinds == ["start", *["item"] * len(stream_apps.TOKENS), "end"], kinds
    start, first = seen[0][0], seen[1]
    assert (start.sequence_id, start.action) == (0, "write_answer")
    assert first[0].value == {"token": "Streams"}
    assert first[1] is None, "the first token was read after step 0 committed"
    assert [ev.index for ev, _ in seen[1:-1]] == list(range(1, len(stream_apps.TOKENS) + 1))
    end = seen[-1][0]
    assert end.value == {"answer": "".join(stream_apps.TOKENS)} and end.index == len(stream_apps.TOKENS)
    assert fleet.status(app_id) == "completed"  # the iterator ended because the app finished
    assert fleet.fc.head_sequence(app_id) == 0


def test_a_late_reader_gets_what_is_retained_then_stops(fleet: Fleet) -> None:
    app_id = _new("late")
    fleet.fc.enqueue("stream_sync", app_id)
    fleet.wait(app_id, "completed")
    started = time.monotonic()
    events = list(fleet.fc.stream(app_id, timeout=10))
    assert time.monotonic() - started < 3  # no waiting once the app is done and nothing is new
    assert [e.kind for e in events] == ["start", *["item"] * len(stream_apps.TOKENS), "end"]
    assert list(fleet.fc.stream(app_id, from_start=False, timeout=10)) == []
    key = fleet.fc.stream_key(None, app_id)
    ttl = fleet.fc.client.pttl(key)
    assert 0 < ttl <= 600_000  # the worker's finished_ttl, refreshed on each write


async def test_async_action_halt_after_and_a_resume_stream_live(fleet: Fleet) -> None:
    app_id = _new("chat")
    fleet.fc.enqueue("stream_chat", app_id, inputs={"question": "q1"})
    afc = AsyncFleetClient.from_url(fleet.url)
    try:
        first: list[tuple[StreamEvent, Any]] = []
        async for ev in afc.stream(app_id, timeout=30):
            first.append((ev, await afc.head_sequence(app_id)))
        assert [e.kind for e, _ in first] == ["start", *["item"] * 6, "end"]
        assert first[1][0].value == {"token": "q1:"} and first[1][1] is None
        assert fleet.status(app_id) == "waiting"  # halt_after parked it: the reader stopped
        assert fleet.fc.resume(app_id, {"question": "q2"}) == "queued"
        second: list[tuple[StreamEvent, Any]] = []
        async for ev in afc.stream(app_id, timeout=30):
            second.append((ev, await afc.head_sequence(app_id)))
    finally:
        await afc.aclose()
    new = [(e, h) for e, h in second if e.sequence_id == 1]
    assert [e.kind for e, _ in new] == ["start", *["item"] * 6, "end"]
    assert new[1][0].value == {"token": "q2:"} and new[1][1] == 0  # step 1 not committed yet
    assert new[-1][0].value == {"answer": "q2:" + "".join(stream_apps.TOKENS)}
    assert fleet.status(app_id) == "waiting"


def test_burr_dist_tail_prints_items_as_they_arrive(fleet: Fleet) -> None:
    app_id = _new("tail")
    fleet.fc.enqueue("stream_sync", app_id)
    env = {"REDIS_URL": fleet.url, "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([*command(), "tail", app_id, "--json"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None
    lines: list[tuple[dict[str, Any], Any]] = []
    for raw in proc.stdout:
        lines.append((orjson.loads(raw), fleet.fc.head_sequence(app_id)))
    assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    kinds = [doc.get("kind") for doc, _ in lines]
    assert kinds == ["start", *["item"] * len(stream_apps.TOKENS), "end", None], kinds
    assert lines[1][0]["value"] == {"token": "Streams"} and lines[1][1] is None
    assert lines[-2][0]["value"] == {"answer": "".join(stream_apps.TOKENS)}
    assert lines[-1][0] == {"app_id": app_id, "status": "completed"}
    assert cli(fleet.url, "tail", app_id).returncode == 0  # a finished app: its records, then exit
    other = _new("tail")  # in a partition: -p, as the docs show it
    fleet.fc.enqueue("stream_sync", other, partition_key="team-a")
    plain = subprocess.run([*command(), "tail", other, "-p", "team-a"], cwd=ROOT, env=env,
                           capture_output=True, timeout=30)  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    out = plain.stdout.decode().splitlines()
    assert out[0].startswith("[0 write_answer] started on cli-"), out
    assert out[1] == '[0 write_answer] {"token":"Streams"}', out
    assert out[-2] == '[0 write_answer] result: {"answer":"Streams reach clients live."}', out
    assert out[-1] == f"{other}: completed"


def test_tail_of_an_unknown_app_is_one_line_and_exit_3(fleet: Fleet) -> None:
    done = subprocess.run([*command(), "tail", "nobody-here"], cwd=ROOT, capture_output=True, timeout=30,
                          env={"REDIS_URL": fleet.url, "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert done.stderr.decode().strip() == "error: no app 'nobody-here' in partition 'default'"
    with pytest.raises(AppNotFound):
        list(fleet.fc.stream("nobody-here"))


def test_an_item_no_codec_stores_is_an_error_record_and_the_step_goes_on(fleet: Fleet) -> None:
    app_id = _new("odd")
    fleet.fc.enqueue("stream_odd", app_id)
    events = list(fleet.fc.stream(app_id, timeout=30))
    assert [(e.kind, e.value) for e in events if e.error is None] == [
        ("start", {"worker": events[0].value["worker"]}), ("item", {"token": "fine"}),
        ("item", {"token": "also fine"}), ("end", {"done": True}),
    ]  # fmt: skip
    bad = [e for e in events if e.error is not None]
    assert len(bad) == 1 and bad[0].index == 2 and "Opaque" in (bad[0].error or ""), bad
    assert fleet.wait(app_id, "completed")["status"] == "completed"


def test_an_app_that_does_not_stream_writes_no_stream_key(fleet: Fleet) -> None:
    app_id = _new("plain")
    fleet.fc.enqueue("no_stream", app_id)
    fleet.wait(app_id, "completed")
    key = fleet.fc.stream_key(None, app_id)
    assert fleet.fc.client.exists(key) == 0
    app_keys = [k.decode() for k in fleet.fc.client.scan_iter(match=f"*{app_id}*")]
    assert app_keys and not [k for k in app_keys if k.endswith(":stream")], app_keys
    assert list(fleet.fc.stream(app_id, timeout=5)) == []


def test_the_follower_drops_duplicates_and_abandoned_attempts() -> None:
    """Sans-IO: a retried write (same run, same index) and a zombie's items (an older run of the
    same step) are not yielded twice or at all."""

    def entry(n: int, rec: tuple[Any, ...]) -> tuple[str, list[Any]]:
        return f"{n}-0", [str(x).encode() if not isinstance(x, bytes) else x for x in rec]

    recs = [record("start", "a", 3, "act", 0, b"{}"), record("item", "a", 3, "act", 1, b'"x"'),
            record("item", "a", 3, "act", 1, b'"x"'), record("start", "b", 3, "act", 0, b"{}"),
            record("item", "a", 3, "act", 2, b'"zombie"'), record("item", "b", 3, "act", 1, b'"y"'),
            record("end", "b", 3, "act", 1, b"null")]  # fmt: skip
    follower = Follower()
    events, stop = follower.after("running", [[b"k", [entry(n, r) for n, r in enumerate(recs)]]], 0.0)
    assert [(e.kind, e.value) for e in events] == [
        ("start", {}),
        ("item", "x"),
        ("start", {}),
        ("item", "y"),
        ("end", None),
    ]
    assert not stop and follower.last_id == "6-0"
    assert follower.after("waiting", [], 1.0) == ([], True)
    cmds = append_cmds("k", recs[:2], 1000)
    assert [c.args[:5] for c in cmds[:2]] == [("XADD", "k", "MAXLEN", "~", 10_000)] * 2
    assert cmds[-1].args == ("PEXPIRE", "k", 1000)
