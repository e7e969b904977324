"""burr_dist as a restricted ACL user: a server that hides CONFIG still runs workers (with a clear
warning), and a password in the URL appears nowhere: not in CLI output (human or --json), not in
error messages, not in a worker's log, not in what is stored in Redis (the worker registry)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from burr_dist import FleetClient, RedisStore
from burr_dist.acl import ACL_RULES
from burr_dist.cli import EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_UNREACHABLE, main
from burr_dist.errors import BurrDistError
from burr_dist.testing.embedded import EmbeddedServer, find_server_binary
from tests.conftest import KINDS
from tests.support.fleet import start_worker, wait_until
from tests.support.targets import Target
from tests.test_cli import ROOT, burr_dist_command, dump

pytestmark = pytest.mark.topologies(kinds=1)
CONFIG_WARNING = "cannot read maxmemory-policy"


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def test_worker_starts_with_a_warning_when_the_user_may_not_read_config(
    target: Target, tmp_path: Path
) -> None:
    user, password = "burr-noconfig", f"pw-{secrets.token_hex(8)}"
    target.add_user(user, password, [r for r in ACL_RULES if r != "+config|get"])
    url = target.url_as(user, password)
    try:
        w = start_worker(url, tmp_path, events_key=None, lease_ttl=2.0)
        try:
            fc = FleetClient.from_url(url)
            fc.enqueue("counter", app_id="c1", state={"target": 2})
            wait_until(lambda: fc.job("c1")["status"] == "completed", 15, "c1 completed", alive=w)
            fc.client.close()
        finally:
            w.kill()
        log = w.log()
        assert CONFIG_WARNING in log and "noeviction" in log and "config|get" in log, log[-2000:]
        assert password not in log
    finally:
        target.delete_user(user)


@pytest.mark.parametrize("kind", KINDS[:1])
def test_worker_starts_with_a_warning_when_the_server_renamed_config(kind: str, tmp_path: Path) -> None:
    srv = EmbeddedServer(binary=find_server_binary(kind), extra=["--rename-command", "CONFIG", ""]).start()
    try:
        w = start_worker(srv.url, tmp_path, events_key=None, lease_ttl=2.0)
        try:
            fc = FleetClient.from_url(srv.url)
            fc.enqueue("counter", app_id="c1", state={"target": 2})
            wait_until(lambda: fc.job("c1")["status"] == "completed", 15, "c1 completed", alive=w)
            fc.client.close()
        finally:
            w.kill()
        log = w.log()
        assert CONFIG_WARNING in log and "unknown command" in log.lower(), log[-2000:]
        assert f"127.0.0.1:{srv.port}" in log  # names the server
    finally:
        srv.stop()


def _all_text(target: Target) -> str:
    """Every key and value stored (on every primary), as text."""
    return repr(dump(target))


def test_a_password_in_the_url_appears_nowhere(target: Target, tmp_path: Path) -> None:
    user, password = "burr-secret", f"Pw-{secrets.token_hex(12)}"
    target.add_user(user, password, ACL_RULES, on_sentinels=True)
    url = target.url_as(user, password, sentinel_user=True)
    assert password in url
    wrong = url.replace(password, password[::-1])  # a rejected password must not be echoed either
    outputs: list[str] = []
    try:
        runner = CliRunner()
        bogus = url + ("&" if "?" in url else "?") + "bogus_option=1"
        for u, args, code in (
            (url, ["show", "ghost"], EXIT_NOT_FOUND),
            (url, ["--json", "show", "ghost"], EXIT_NOT_FOUND),
            (url, ["enqueue", "nope", "--module", "examples.apps"], EXIT_BAD_INPUT),
            (url, ["--json", "enqueue", "counter", "--app-id", "bad", "--state", "[1]"], EXIT_BAD_INPUT),
            (bogus, ["status"], EXIT_BAD_INPUT),
            (bogus, ["--json", "status"], EXIT_BAD_INPUT),
            (wrong, ["status"], EXIT_UNREACHABLE),
            (wrong, ["--json", "ls"], EXIT_UNREACHABLE),
        ):
            result = runner.invoke(main, ["--redis-url", u, *args], catch_exceptions=False)
            assert result.exit_code == code, (args, result.exit_code, result.output)
            assert "Traceback" not in result.output
            outputs.append(result.stdout + result.stderr)
        for bad in (url + ("&" if "?" in url else "?") + "wait_replicas=x", wrong):
            with pytest.raises(BurrDistError) as e:  # refused: ours, with context, never redis-py's
                RedisStore.from_url(bad).head_sequence("a", partition_key="p")
            outputs.append(f"{e.value} {e.value.context!r}")

        # A worker started through the CLI, password in REDIS_URL, logging everything.
        env = {k: v for k, v in os.environ.items() if k != "BURR_DIST_PREFIX"} | {"REDIS_URL": url}
        log, out = tmp_path / "worker.log", tmp_path / "worker.json"
        with open(log, "wb") as err, open(out, "wb") as so:
            proc = subprocess.Popen(
                [*burr_dist_command(), "worker", "examples.apps", "--concurrency", "2", "--lease-ttl", "2",
                 "--sweep-interval", "0.2", "--worker-id", "w-secret", "--log-level", "DEBUG", "--json"],
                cwd=ROOT, env=env, stdout=so, stderr=err,
            )  # fmt: skip
        try:
            fc = FleetClient.from_url(url)
            wait_until(lambda: any(w["id"] == "w-secret" for w in fc.workers()), 20, "worker registered")
            fc.enqueue("counter", app_id="c1", state={"target": 3})
            wait_until(lambda: fc.job("c1")["status"] == "completed", 20, "c1 completed")
            registry: list[dict[str, Any]] = fc.workers()
            stored = _all_text(target)
            fc.client.close()
        finally:
            code = stop(proc)
        assert code == 0, log.read_text()[-3000:]
        assert [w["id"] for w in registry] == ["w-secret"]
        assert orjson.loads(out.read_bytes())["worker_id"] == "w-secret"
        outputs += [log.read_text(errors="replace"), out.read_text(), repr(registry), stored]
    finally:
        target.delete_user(user)
    for text in outputs:
        assert password not in text and password[::-1] not in text, text[-3000:]
    assert any("***" in text for text in outputs)  # the URL is shown, redacted


def test_the_script_commands_are_exactly_what_the_scripts_call() -> None:
    """A script that calls a command the rules lack fails only for an ACL user, and only when
    that line runs: keep the list in step with every ``redis.call`` of ``burr_dist/scripts``."""
    import re

    from burr_dist.acl import SCRIPT_COMMANDS

    scripts = Path(__file__).resolve().parent.parent / "burr_dist" / "scripts"
    called = {
        m.lower()
        for f in scripts.glob("*.lua")
        for m in re.findall(r"redis\.call\('([A-Z]+)'", f.read_text())
    }
    assert called == set(SCRIPT_COMMANDS)
    assert list(SCRIPT_COMMANDS) == sorted(SCRIPT_COMMANDS)
