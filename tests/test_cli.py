"""The ``burr-dist`` command line against a real server (every topology, on the first server kind):
exit codes, --json output, bad input that must change nothing, an unreachable server, and a real
worker process started through the CLI."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from burr_dist.cli import main
from burr_dist.testing.embedded import EmbeddedServer, free_port
from tests.support.targets import Target

pytestmark = pytest.mark.topologies(kinds=1)
ROOT = Path(__file__).resolve().parent.parent


def run(url: str, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env=env).invoke(main, ["--redis-url", url, *args], catch_exceptions=False)


def ok(url: str, *args: str) -> Any:
    """Run with --json, expect exit 0, return the parsed document."""
    result = run(url, "--json", *args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return orjson.loads(result.stdout)


def assert_error(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in result.output


def heartbeat_key(key: bytes) -> bool:
    """Keys a running worker rewrites on every heartbeat: its registry entry and store epochs."""
    return key.startswith(b"burr:{fleet}:worker") or key.endswith(b":epoch")


def dump(target: Target, *, skip: Callable[[bytes], bool] = lambda key: False) -> dict[bytes, Any]:
    """Everything stored (on every primary) but the ``skip`` keys, to show that a failed command
    changed nothing."""
    c = target.client()
    out: dict[bytes, Any] = {}
    for key in c.scan_iter(match="*"):
        if skip(key):
            continue
        kind = c.type(key)
        if kind == b"hash":
            out[key] = c.hgetall(key)
        elif kind == b"zset":
            out[key] = c.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = c.dump(key)
    c.close()
    return out


# -- help, enqueue ---------------------------------------------------------------------------------
def test_help_documents_exit_codes() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for line in (
        "0  ok",
        "2  usage",
        "3  not found",
        "4  not allowed",
        "5  Redis unreachable",
        "6  bad input",
    ):
        assert line in result.stdout
    for command in (
        "worker",
        "enqueue",
        "resume",
        "cancel",
        "retry",
        "fork",
        "status",
        "show",
        "history",
        "ls",
    ):
        assert command in result.stdout


def test_enqueue_reports_created_then_existing(target: Target) -> None:
    url = target.url
    first = ok(url, "enqueue", "counter", "--app-id", "c1", "--state", '{"target": 3}')
    assert first == {"app_id": "c1", "partition_key": "default", "created": True, "status": "queued",
                     "run_at_ms": first["run_at_ms"], "queue": "default"}  # fmt: skip
    again = run(url, "enqueue", "counter", "--app-id", "c1", "--state", '{"target": 99}')
    assert again.exit_code == 0 and "c1 already existed (queued)" in again.stdout
    assert ok(url, "show", "c1")["state"] == {"target": 3}  # the first enqueue won
    human = run(url, "enqueue", "counter")
    assert human.exit_code == 0 and "created" in human.stdout
    assert ok(url, "status")["apps"]["queued"] == 2


def test_enqueue_options_reach_the_record(target: Target) -> None:
    url = target.url
    res = ok(url, "enqueue", "approval", "--module", "examples.apps", "--app-id", "a1", "-p", "tenant-1",
             "--state", '{"topic": "x"}', "--inputs", '{"k": 1}', "--entrypoint", "outline",
             "--delay", "60", "--queue", "slow")  # fmt: skip
    assert res["partition_key"] == "tenant-1" and res["created"]
    job = ok(url, "show", "a1", "-p", "tenant-1")
    assert (job["name"], job["queue"], job["state"], job["inputs"], job["entrypoint"]) == (
        "approval",
        "slow",
        {"topic": "x"},
        {"k": 1},
        "outline",
    )
    assert job["run_at"] - job["created_at"] >= 59_000
    assert ok(url, "status")["queues"]["slow"]["scheduled"] == 1  # delayed: not ready for a minute
    with_unknown_partition = run(url, "show", "a1")
    assert_error(with_unknown_partition, 3, "no app 'a1' in partition 'default'")
    assert [j["app_id"] for j in ok(url, "ls", "-p", "tenant-1")] == ["a1"]
    assert ok(url, "ls", "-p", "other") == []


def test_bulk_enqueue_in_chunks(target: Target) -> None:
    url = target.url
    res = ok(url, "enqueue", "counter", "--count", "1201", "--state", '{"target": 1}')
    assert res["count"] == res["created"] == 1201 and len(set(res["app_ids"])) == 1201
    overview = ok(url, "status")
    assert overview["apps"]["queued"] == 1201 and overview["queues"]["default"]["ready"] == 1201
    human = run(url, "enqueue", "counter", "--count", "3")
    assert human.exit_code == 0 and "enqueued 3 'counter' apps" in human.stdout
    conflict = run(url, "enqueue", "counter", "--count", "3", "--app-id", "x")
    assert conflict.exit_code == 2 and "--count" in conflict.stderr


def test_cancel_retry_and_listing(target: Target) -> None:
    url = target.url
    ok(url, "enqueue", "counter", "--app-id", "k1", "--delay", "30")
    ok(url, "enqueue", "counter", "--app-id", "k2", "--delay", "30")
    assert ok(url, "cancel", "k1") == {"app_id": "k1", "partition_key": "default", "status": "cancelled"}
    assert_error(run(url, "cancel", "k1"), 4, "cannot cancel app 'k1': it is cancelled")
    assert [j["app_id"] for j in ok(url, "ls", "--status", "cancelled")] == ["k1"]
    assert ok(url, "status")["queues"]["default"]["scheduled"] == 1  # k1 left the queue
    assert ok(url, "retry", "k1")["status"] == "queued"
    assert_error(run(url, "retry", "k2"), 4, "it is queued")
    assert sorted(j["app_id"] for j in ok(url, "ls", "--status", "queued")) == ["k1", "k2"]
    assert ok(url, "reconcile") == {"requeued": 0}
    assert ok(url, "workers") == []
    assert run(url, "ls", "--status", "bogus").exit_code == 2  # click's usage error
    # Human output renders.
    for args, expected in ((["status"], "queued"), (["ls"], "k2"), (["show", "k1"], "waiting for"),
                           (["history", "k1"], "History of k1"), (["workers"], "no live workers")):  # fmt: skip
        result = run(url, *args)
        assert result.exit_code == 0 and expected in result.stdout, (args, result.stdout)


def test_env_vars_and_json_after_the_command(target: Target) -> None:
    env = {"REDIS_URL": target.url, "BURR_DIST_PREFIX": "other"}
    result = CliRunner(env=env).invoke(main, ["enqueue", "counter", "--app-id", "e1", "--json"])
    assert result.exit_code == 0 and orjson.loads(result.stdout)["created"] is True
    assert ok(target.url, "ls") == []  # prefix "burr" does not see prefix "other"
    assert [j["app_id"] for j in ok(target.url, "--prefix", "other", "ls")] == ["e1"]


def test_json_error_document(target: Target) -> None:
    result = run(target.url, "--json", "show", "ghost")
    assert_error(result, 3, "no app 'ghost'")
    assert orjson.loads(result.stdout)["error"] == {
        "type": "AppNotFound", "message": "no app 'ghost' in partition 'default'", "exit_code": 3,
    }  # fmt: skip


# -- bad input changes nothing ---------------------------------------------------------------------
BAD_INPUTS = [
    (["enqueue", "nope", "--module", "examples.apps"], 6, "unknown app name 'nope'"),
    (["enqueue", "counter", "--delay", "nan"], 2, "--delay: must be a finite number of seconds"),
    (["enqueue", "counter", "--delay", "inf"], 2, "--delay: must be a finite number of seconds"),
    (
        ["enqueue", "counter", "--module", "broken_app_module"],
        6,
        "cannot import app module 'broken_app_module'",
    ),
    (["enqueue", "counter", "--module", "no_such_module_xyz"], 6, "No module named 'no_such_module_xyz'"),
    (["enqueue", "counter", "--module", "examples.apps:nothing"], 6, "is not a burr_dist Registry"),
    (["enqueue", "counter", "--app-id", "existing", "--state", "{not json"], 6, "--state is not valid JSON"),
    (
        ["enqueue", "counter", "--app-id", "existing", "--state", "[1, 2]"],
        6,
        "--state must be a JSON object, got an array",
    ),
    (["enqueue", "counter", "--state", "null"], 6, "--state must be a JSON object, got null"),
    (["enqueue", "counter", "--inputs", '"text"'], 6, "--inputs must be a JSON object, got a string"),
    (["enqueue", "counter", "--state", "@/nonexistent/state.json"], 6, "cannot read"),
    (["enqueue", "counter", "--app-id", ""], 6, "app_id must be a non-empty string"),
    (["--prefix", "bad prefix", "ls"], 6, "invalid key prefix"),
    (["resume", "existing"], 4, "cannot resume app 'existing': it is queued"),
    (["resume", "existing", "--inputs", "[]"], 6, "--inputs must be a JSON object"),
    (["retry", "existing"], 4, "cannot retry app 'existing': it is queued"),
    (["fork", "existing", "--at", "0"], 3, "no committed step to fork from"),
    (["fork", "ghost", "--at", "0"], 3, "no app 'ghost'"),
    (["show", "ghost"], 3, "no app 'ghost' in partition 'default'"),
    (["history", "ghost"], 3, "no app 'ghost'"),
    (["resume", "ghost"], 3, "no app 'ghost'"),
    (["cancel", "ghost", "-p", "t1"], 3, "no app 'ghost' in partition 't1'"),
    (["retry", "ghost"], 3, "no app 'ghost'"),
    (["worker", "broken_app_module"], 6, "cannot import app module 'broken_app_module'"),
    (["worker", "examples.apps", "--queues", ","], 2, ""),
    (["worker", "examples.apps", "--concurrency", "0"], 2, ""),
    (["worker", "examples.apps", "--poll-interval", "0"], 2, ""),
    (["worker", "examples.apps", "--poll-interval", "nan"], 6, "poll_interval must be > 0 s, got nan"),
    (["worker", "examples.apps", "--log-level", "loud"], 2, ""),
    (["worker", "examples.apps", "--inline-ms", "-1"], 2, ""),
    (["worker", "examples.apps", "--inline-ms", "nan"], 6, "inline_ms must be >= 0, got nan"),
    (["worker", "examples.apps", "--keep", "0"], 2, ""),
    (["worker", "examples.apps", "--snapshot-format", "3"], 2, ""),
    (["worker", "examples.apps", "--max-state-bytes", "0"], 2, ""),
]


@pytest.mark.parametrize("args,code,fragment", BAD_INPUTS, ids=[" ".join(a[0])[:60] for a in BAD_INPUTS])
def test_bad_input_fails_cleanly_and_changes_nothing(
    target: Target,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    code: int,
    fragment: str,
) -> None:
    url = target.url
    ok(url, "enqueue", "counter", "--app-id", "existing", "--state", '{"target": 2}')
    (tmp_path / "broken_app_module.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.chdir(tmp_path)  # the CLI makes the working directory importable
    monkeypatch.syspath_prepend(str(ROOT))  # examples.apps stays importable
    before = dump(target)
    result = run(url, *args)
    if code == 2:
        assert result.exit_code == 2 and "Traceback" not in result.output
    else:
        assert_error(result, code, fragment)
    assert dump(target) == before
    assert ok(url, "show", "existing")["state"] == {"target": 2}


def test_worker_option_errors_name_the_option(fleet_server: EmbeddedServer) -> None:
    for value in ("0", "-1", "soon"):
        result = run(fleet_server.url, "worker", "examples.apps", "--poll-interval", value)
        assert result.exit_code == 2 and "Invalid value for '--poll-interval'" in result.stderr, result.stderr
    result = run(fleet_server.url, "worker", "examples.apps", "--log-level", "loud")
    assert result.exit_code == 2 and "'loud' is not one of" in result.stderr and "critical" in result.stderr


@pytest.mark.parametrize("level", ["critical", "CRITICAL", "Warning", "debug"])
def test_worker_log_level_any_case_and_poll_interval(
    fleet_server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch, level: str
) -> None:
    """The options reach logging and the Worker (run_forever replaced: no worker loop here)."""
    from burr_dist.worker.process import Worker

    seen: dict[str, Any] = {}
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: seen.update(level=kw["level"]))
    monkeypatch.setattr(
        Worker, "run_forever", lambda self: seen.update(poll=self.poll_interval, inline=self.inline.budget)
    )
    monkeypatch.syspath_prepend(str(ROOT))
    result = run(fleet_server.url, "worker", "examples.apps", "--log-level", level, "--poll-interval", "0.25",
                 "--inline-ms", "0")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen == {"level": level.upper(), "poll": 0.25, "inline": 0.0}
    assert run(fleet_server.url, "worker", "examples.apps").exit_code == 0
    assert seen == {"level": "INFO", "poll": 0.1, "inline": 0.002}  # the defaults


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["ls"],
        ["workers"],
        ["show", "a1"],
        ["enqueue", "counter"],
        ["cancel", "a1"],
        ["history", "a1"],
        ["worker", "examples.apps"],
    ],
    ids=lambda a: a[0],
)
def test_unreachable_redis_exits_5_with_one_line(args: list[str]) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    result = run(url, *args)
    assert_error(result, 5)
    redacted = url.replace("hunter2", "***")
    assert result.stderr == f"error: cannot reach Redis at {redacted} (Connection refused)\n"
    assert "hunter2" not in result.output and result.stdout == ""
    assert time.monotonic() - started < 5
    as_json = run(url, "--json", *args)
    assert as_json.exit_code == 5 and orjson.loads(as_json.stdout)["error"]["type"] == "RedisUnavailable"


# -- a real worker ---------------------------------------------------------------------------------
def burr_dist_command() -> list[str]:
    script = Path(sys.executable).parent / "burr-dist"
    return [str(script)] if script.exists() else [sys.executable, "-m", "burr_dist.cli"]


def wait_for(
    url: str, proc: subprocess.Popen[bytes], log: Path, done: dict[str, int], timeout: float = 30
) -> None:
    give_up = time.monotonic() + timeout
    while True:
        apps = ok(url, "status")["apps"]
        if all(apps[k] == n for k, n in done.items()):
            return
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < give_up, (apps, log.read_text()[-3000:])
        time.sleep(0.1)


def test_worker_process_runs_apps_and_stops_on_sigterm(target: Target, tmp_path: Path) -> None:
    url = target.url
    env = {k: v for k, v in os.environ.items() if k != "BURR_DIST_PREFIX"} | {"REDIS_URL": url}
    log, stdout = tmp_path / "worker.log", tmp_path / "worker.json"
    with open(log, "wb") as err, open(stdout, "wb") as out:
        proc = subprocess.Popen(
            [*burr_dist_command(), "worker", "examples.apps", "--concurrency", "4", "--lease-ttl", "2",
             "--sweep-interval", "0.2", "--worker-id", "w-test", "--json"],
            cwd=ROOT, env=env, stdout=out, stderr=err,
        )  # fmt: skip
    try:
        for i in range(3):
            assert ok(url, "enqueue", "counter", "--app-id", f"c{i}", "--state", '{"target": 3}')["created"]
        ok(url, "enqueue", "approval", "--app-id", "a1", "--module", "examples.apps")
        wait_for(url, proc, log, {"completed": 3, "waiting": 1})
        [w] = ok(url, "workers")
        assert (w["id"], w["state"], w["concurrency"]) == ("w-test", "running", "4")

        job = ok(url, "show", "c0")
        assert (job["status"], job["sequence_id"], job["position"]) == ("completed", 3, "finish")
        steps = ok(url, "history", "c0", "--state")
        assert [s["action"] for s in steps] == ["tick", "tick", "tick", "finish"]
        assert steps[-1]["state"]["n"] == 3 and steps[-1]["state"]["done"] is True
        assert "state" not in ok(url, "history", "c0")[0]
        assert ok(url, "show", "a1")["waiting_for"] == "human_review"

        before = dump(target, skip=heartbeat_key)
        assert_error(run(url, "resume", "c0", "--inputs", "{}"), 4, "it is completed")
        assert_error(run(url, "fork", "c0", "--at", "9"), 3, "no snapshot 9", "retained sequences are 0..3")
        assert dump(target, skip=heartbeat_key) == before  # refused operations changed nothing

        forked = ok(url, "fork", "c0", "--at", "1", "--app-id", "c0-fork")
        assert forked["created"] and forked["forked_from"] == {"app_id": "c0", "sequence_id": 1}
        assert (
            ok(url, "resume", "a1", "--inputs", '{"approved": true, "reviewer": "ann"}')["status"] == "queued"
        )
        wait_for(url, proc, log, {"completed": 5, "waiting": 0})
        assert ok(url, "history", "a1", "--state")[-1]["state"]["reviewer"] == "ann"
        assert [s["sequence_id"] for s in ok(url, "history", "c0-fork")] == [2, 3]

        # SIGTERM while an app is mid-run: it is handed back at a step boundary, not lost.
        ok(url, "enqueue", "counter", "--app-id", "long", "--state", '{"target": 100000000}')
        give_up = time.monotonic() + 10
        while (ok(url, "show", "long")["sequence_id"] or 0) < 5:
            assert time.monotonic() < give_up, log.read_text()
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text() and "worker w-test stopped" in log.read_text()
    summary = orjson.loads(stdout.read_bytes())
    assert summary["worker_id"] == "w-test" and summary["claims"] >= 7 and summary["queues"] == ["default"]
    assert ok(url, "workers") == []  # deregistered on the way out
    long = ok(url, "show", "long")
    assert (long["status"], long["lease_holder"]) == ("queued", None) and long["sequence_id"] >= 5
    queue = ok(url, "status")["queues"]["default"]
    assert (queue["ready"], queue["active"]) == (1, 0)


@pytest.mark.parametrize("delay", [float("nan"), float("inf"), -1.0])
def test_fleet_client_refuses_a_delay_that_is_not_a_finite_duration(target: Target, delay: float) -> None:
    from burr_dist import ConfigurationError, FleetClient

    fc = FleetClient.from_url(target.url)
    before = dump(target)
    with pytest.raises(ConfigurationError, match="delay must be a finite number of seconds >= 0"):
        fc.enqueue("counter", app_id="later", delay=delay)
    assert dump(target) == before
    fc.client.close()
