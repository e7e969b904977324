"""Every shell command README.md and the documentation (docs/**/*.md) show is run by a test, so a
renamed flag breaks a test, not a user. ``COVERED`` maps each command (as extracted from the shell
code blocks of those pages, indented ones included) to the test that runs it; a test fails when a
page gains a command the table does not list, or the table names a command or a test that no longer
exists. The tests below run the commands as a user would: the
CLI as a subprocess with REDIS_URL pointed at a server the suite started, the real ``redis-cli``
(replayed with redis-py's raw connection only where the binary is missing).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from burr_dist import FleetClient
from burr_dist.store.codec import HEADER_BYTES
from burr_dist.testing.embedded import EmbeddedServer, free_port
from tests.support.targets import ACL
from tests.test_demo import make_env
from tests.test_migrate import write_v1_app

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# Every page whose shell commands must be covered: the README, the changelog and the docs site.
PAGES = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL_INFO = {"", "sh", "shell", "bash", "console"}

DEMO = "tests/test_demo.py::test_demo_end_to_end_on_the_embedded_server"
MAKE = "tests/test_readme.py::test_make_targets_exist_and_name_existing_files"
CLI = "tests/test_readme.py::test_cli_commands_from_the_readme"
SESSION = "tests/test_readme.py::test_quickstart_and_redis_cli_session"
BENCH = "tests/test_readme.py::test_bench_scripts_run_at_a_small_size"
OBS = "tests/test_readme.py::test_observability_commands_from_the_readme"
UI = "tests/test_readme.py::test_ui_command_from_the_readme"
MIGRATE = "tests/test_readme.py::test_migrate_keys_commands"
INSTALL = "tests/test_readme.py::test_install_commands_name_this_project_and_its_extras"
STREAM = "tests/test_streaming.py::test_burr_dist_tail_prints_items_as_they_arrive"

# Command shown in README or docs -> the test that runs it. `make test` is what CI runs (.ci/run);
# it and the long targets (chaos: 8 minutes, mutants, the benchmarks, the other test suites) are
# dry-run here: each target exists and every file its recipe names exists. The bench scripts
# themselves run small in BENCH; `make docs` is run by tests/test_docs.py (mkdocs build --strict).
# `pip install` of this project is checked against the installed distribution (INSTALL).
COVERED: dict[str, str] = {
    "make demo": DEMO,
    "make test": MAKE,
    "make chaos": MAKE,
    "make chaos-ha": MAKE,
    "make check": MAKE,
    "make test-oldest": MAKE,
    "make bench": MAKE,
    "make bench-fleet": MAKE,
    "make bench-state": MAKE,
    "make mutants": MAKE,
    "make browser": MAKE,
    "make docs": MAKE,
    "make test-ha": MAKE,
    "make test-acl": MAKE,
    "pip install .": INSTALL,
    "pip install '.[ui]'": INSTALL,
    "pip install '.[embedded]'": INSTALL,
    ".venv/bin/python examples/quickstart.py": SESSION,
    "redis-cli --scan --pattern 'burr:*'": SESSION,
    "redis-cli HGETALL burr:{142.129}:user-1:quickstart:meta": SESSION,
    "redis-cli HGET burr:{142.129}:user-1:quickstart:snaps 5": SESSION,
    "redis-cli ZRANGE burr:{142.129}:user-1:apps 0 -1 WITHSCORES": SESSION,
    "burr-dist worker examples.apps --concurrency 8": CLI,
    """burr-dist enqueue approval --app-id memo-1 -p team-a --state '{"topic": "Q3 plan"}'""": CLI,
    "burr-dist enqueue counter --count 1000": CLI,
    "burr-dist status": CLI,
    "burr-dist show memo-1 -p team-a": CLI,
    "burr-dist tail chat-1 -p team-a": STREAM,
    "burr-dist tail chat-1 -p team-a --json": STREAM,
    """burr-dist resume memo-1 -p team-a --inputs '{"approved": true}'""": CLI,
    "burr-dist history memo-1 -p team-a --state": CLI,
    "burr-dist cancel APP": CLI,
    "burr-dist retry APP": CLI,
    "burr-dist fork APP --at 3 --app-id APP2": CLI,
    "burr-dist ls --status failed": CLI,
    "burr-dist workers": CLI,
    "burr-dist status --json": CLI,
    "burr-dist reconcile": CLI,
    "burr-dist --help": CLI,
    "burr-dist migrate-keys --dry-run": MIGRATE,
    "burr-dist migrate-keys": MIGRATE,
    "burr-dist worker examples.apps --metrics-port 9101 --log-format json": OBS,
    "burr-dist metrics --port 9464": OBS,
    "burr-dist ui --port 7241": UI,
    ".venv/bin/python bench/steps.py": BENCH,
    ".venv/bin/python bench/script_cost.py": BENCH,
    ".venv/bin/python bench/app_memory.py": BENCH,
}


# -- extraction -----------------------------------------------------------------------------------
def fenced_blocks(text: str) -> list[tuple[str, list[str], str]]:
    """(info string, lines, the line before the fence) of each fenced code block. A fence may be
    indented (a block inside a tab or an admonition): its lines lose that indent."""
    blocks: list[tuple[str, list[str], str]] = []
    current: list[str] | None = None
    info, indent, before, previous = "", "", "", ""
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("```"):
            if current is None:
                current, info = [], stripped[3:].strip().lower()
                indent, before = line[: len(line) - len(stripped)], previous.strip()
            else:
                blocks.append((info, current, before))
                current = None
        elif current is not None:
            current.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
        previous = line
    return blocks


def shell_blocks(text: str) -> list[list[str]]:
    """The lines of each fenced code block whose info string is empty or a shell."""
    return [lines for info, lines, _ in fenced_blocks(text) if info in SHELL_INFO]


def strip_comment(line: str) -> str:
    return re.split(r"\s+#\s", line, maxsplit=1)[0].strip()


def commands_of(block: list[str]) -> list[str]:
    """A block with ``$ `` prompts is a session: its commands are the prompted lines (the rest
    is output). Otherwise every line is a command. ``burr-dist a | b`` lists several commands."""
    if any(line.startswith("$ ") for line in block):
        lines = [line[2:] for line in block if line.startswith("$ ")]
    else:
        lines = block
    found = []
    for line in map(strip_comment, lines):
        if not line:
            continue
        if line.startswith("burr-dist ") and " | " in line:
            found += [f"burr-dist {part.strip()}" for part in line[len("burr-dist ") :].split(" | ")]
        else:
            found.append(line)
    return found


def page_commands(page: Path) -> list[str]:
    return [cmd for block in shell_blocks(page.read_text()) for cmd in commands_of(block)]


def readme_commands() -> list[str]:
    """Every command of README and the docs, in page order (README first), each once."""
    return list(dict.fromkeys(cmd for page in PAGES for cmd in page_commands(page)))


def sessions(first: str) -> list[list[tuple[str, list[str]]]]:
    """The (command, output lines) pairs of every session, on any page, whose first command is
    ``first`` (the same session may be shown on several pages: each must match)."""
    found: list[list[tuple[str, list[str]]]] = []
    for page in PAGES:
        for block in shell_blocks(page.read_text()):
            if block and block[0] == f"$ {first}":
                pairs: list[tuple[str, list[str]]] = []
                for line in block:
                    if line.startswith("$ "):
                        pairs.append((line[2:], []))
                    else:
                        pairs[-1][1].append(line)
                found.append(pairs)
    assert found, f"no page has a session starting with {first!r}"
    return found


# -- the table --------------------------------------------------------------------------------------
def test_every_readme_command_is_covered() -> None:
    found = readme_commands()
    assert len(found) >= 25, found  # the extraction still finds the blocks
    assert len(PAGES) >= 20 and all(p.exists() for p in PAGES), PAGES  # the docs pages are read too
    missing = {
        str(page.relative_to(ROOT)): [cmd for cmd in page_commands(page) if cmd not in COVERED]
        for page in PAGES
    }
    missing = {page: cmds for page, cmds in missing.items() if cmds}
    assert missing == {}, f"commands without a test (add them to COVERED): {missing}"
    stale = [cmd for cmd in COVERED if cmd not in found]
    assert stale == [], f"COVERED lists commands no page shows any more: {stale}"


def test_covering_tests_exist() -> None:
    for node in set(COVERED.values()):
        path, name = node.split("::")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert callable(getattr(module, name, None)), node


def test_extraction_rules() -> None:
    block = ["burr-dist status      # a comment", "", "burr-dist cancel X | retry X --json  # two"]
    assert commands_of(block) == ["burr-dist status", "burr-dist cancel X", "burr-dist retry X --json"]
    assert commands_of(["$ make chaos", "scenario  apps", "$ redis-cli GET k # x"]) == [
        "make chaos",
        "redis-cli GET k",
    ]
    text = "```python\nprint(1)\n```\n```\nmake demo\n```\n```sh\nls\n```"
    assert [cmd for b in shell_blocks(text) for cmd in commands_of(b)] == ["make demo", "ls"]
    tabbed = '=== "tab"\n\n    ```\n    make docs   # in a tab\n    ```\n```text\nnot a command\n```'
    assert [cmd for b in shell_blocks(tabbed) for cmd in commands_of(b)] == ["make docs"]


# -- make targets ---------------------------------------------------------------------------------
def test_make_targets_exist_and_name_existing_files() -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make on this machine")
    targets = [cmd.split()[1] for cmd in COVERED if cmd.startswith("make ")]
    for target in targets:
        dry = subprocess.run(
            [make, "--no-print-directory", "-n", target],
            cwd=ROOT,
            env=make_env(),
            capture_output=True,
            text=True,
        )
        assert dry.returncode == 0, (target, dry.stderr)
        words = dry.stdout.split()
        named = [w for w in words if re.fullmatch(r"(bench|examples|tests|burr_dist)/[\w/.-]*", w)]
        named += [
            w.replace(".", "/") + ".py"
            for w, prev in zip(words[1:], words[:-1], strict=True)
            if prev == "-m" and "." in w
        ]
        for path in named:
            assert (ROOT / path).exists(), (target, path)
        if target == "chaos":
            assert "tests/chaos" in words


# -- the CLI ----------------------------------------------------------------------------------------
def burr_dist_exe() -> list[str]:
    script = Path(sys.executable).parent / "burr-dist"
    return [str(script)] if script.exists() else [sys.executable, "-m", "burr_dist.cli"]


def cli_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BURR_DIST_PREFIX", "REDIS_URL")}
    return env | {"REDIS_URL": url}


def wait_until(check: Callable[[], bool], timeout: float, what: str, worker: subprocess.Popen[bytes]) -> None:
    give_up = time.monotonic() + timeout
    while not check():
        assert worker.poll() is None, f"the worker exited while waiting for {what}"
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_cli_commands_from_the_readme(fleet_server: EmbeddedServer, tmp_path: Path) -> None:
    """The fleet commands of README and the docs, in page order, each exactly as shown (APP/APP2
    filled in)."""
    url, env = fleet_server.url, cli_env(fleet_server.url)
    commands = [cmd for cmd in readme_commands() if COVERED.get(cmd) == CLI]
    assert commands[0] == "burr-dist worker examples.apps --concurrency 8"
    fc = FleetClient.from_url(url)
    fc.enqueue("counter", "later", delay=600)  # APP for cancel and retry: queued, not yet due
    log = tmp_path / "worker.log"
    with open(log, "wb") as err:
        worker = subprocess.Popen(
            [*burr_dist_exe(), *shlex.split(commands[0])[1:]], cwd=ROOT, env=env, stderr=err
        )

    def run(cmd: str) -> str:
        result = subprocess.run(
            [*burr_dist_exe(), *shlex.split(cmd)[1:]], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, (cmd, result.stdout, result.stderr)
        assert "Traceback" not in result.stdout + result.stderr
        return result.stdout

    def status(app: str, pk: str | None = None) -> str:
        return str(fc.job(app, partition_key=pk)["status"])

    def a_completed_counter() -> str:
        done = [j["app_id"] for j in fc.ls(status="completed") if j["name"] == "counter"]
        return done[0] if done else ""

    expected: dict[str, tuple[Callable[[], Any] | None, str]] = {
        # command prefix -> (wait before running it, text its output contains)
        "burr-dist enqueue approval": (None, "memo-1 created (queued on partition 'team-a')"),
        "burr-dist enqueue counter": (None, "enqueued 1000 'counter' apps on queue 'default' (1000 created)"),
        "burr-dist status": (lambda: fc.workers(), "live workers: 1"),
        "burr-dist show": (lambda: status("memo-1", "team-a") == "waiting", "human_review"),
        "burr-dist resume": (None, "memo-1: queued"),
        "burr-dist history": (lambda: status("memo-1", "team-a") == "completed", "History of memo-1"),
        "burr-dist cancel": (None, "later: cancelled"),
        "burr-dist retry": (None, "later: queued"),
        "burr-dist fork": (a_completed_counter, "forked-app created"),
        "burr-dist ls": (None, "no apps"),
        "burr-dist workers": (None, "running"),
        "burr-dist status --json": (None, '"apps"'),
        "burr-dist reconcile": (None, "re-queued "),
        "burr-dist --help": (None, "Run Apache Burr apps on a fleet of workers"),
    }
    try:
        for cmd in commands[1:]:
            longest = max((k for k in expected if cmd.startswith(k)), key=len)  # status --json, status
            wait, text = expected[longest]
            if wait is not None:
                wait_until(lambda w=wait: bool(w()), 60, f"the state {cmd!r} needs", worker)
            app = a_completed_counter() if cmd.startswith("burr-dist fork") else "later"
            out = run(cmd.replace("APP2", "forked-app").replace("APP", app))
            assert text in out, (cmd, out)
        assert fc.history("memo-1", partition_key="team-a")[-1]["state"]["approved"] is True
        assert fc.job("forked-app")["fork_seq"] == "3"
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            raise
        fc.client.close()
    assert code == 0, log.read_text()[-3000:]


def test_observability_commands_from_the_readme(fleet_server: EmbeddedServer, tmp_path: Path) -> None:
    """The worker with metrics and JSON logs, and the exporter, as shown (each on a free port)."""
    url, env = fleet_server.url, cli_env(fleet_server.url)
    commands = [cmd for cmd in readme_commands() if COVERED.get(cmd) == OBS]
    assert len(commands) == 2
    fc = FleetClient.from_url(url)
    fc.enqueue("counter", "c1", state={"target": 3})
    for cmd in commands:
        shown = re.search(r"--(?:metrics-)?port (\d+)", cmd)
        assert shown is not None, cmd
        port = free_port()
        log = tmp_path / "stderr.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                [*burr_dist_exe(), *shlex.split(cmd.replace(shown.group(1), str(port)))[1:]],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        try:
            if "worker" in cmd:
                wait_until(lambda: fc.job("c1")["status"] == "completed", 60, "c1 to complete", proc)
            body = ""
            give_up = time.monotonic() + 20
            while not body:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                        body = reply.read().decode()
                except OSError:
                    assert proc.poll() is None and time.monotonic() < give_up, log.read_text()
                    time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=20)
        assert code == 0, log.read_text()[-3000:]
        if "worker" in cmd:
            assert 'burr_dist_steps_committed_total{name="counter",status="completed"} 4.0' in body
            events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
            assert {"worker_started", "metrics_serving", "worker_stopped"} <= set(events)
        else:
            assert 'burr_dist_apps{status="completed"} 1.0' in body
    fc.client.close()


def test_ui_command_from_the_readme(fleet_server: EmbeddedServer, tmp_path: Path) -> None:
    """`burr-dist ui` as shown (on a free port) serves Burr's API on the fleet: the app a worker
    ran is a project (tests/test_ui.py opens the page in a browser)."""
    (cmd,) = [c for c in readme_commands() if COVERED.get(c) == UI]
    fc = FleetClient.from_url(fleet_server.url)
    fc.enqueue("counter", "c1", state={"target": 2})
    env = cli_env(fleet_server.url)
    worker = subprocess.Popen([*burr_dist_exe(), "worker", "examples.apps"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_until(lambda: fc.job("c1")["status"] == "completed", 60, "c1 to complete", worker)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=20)
    port = free_port()
    log = tmp_path / "ui.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([*burr_dist_exe(), *shlex.split(cmd.replace("7241", str(port)))[1:]],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    try:
        give_up = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v0/projects", timeout=5) as reply:
                    projects = json.loads(reply.read())
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < give_up, log.read_text()
                time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert [(p["name"], p["num_apps"]) for p in projects] == [("counter", 1)]
    fc.client.close()


# -- quickstart and the redis-cli session --------------------------------------------------------------
def redis_cli(port: int, args: list[str], replay: bool) -> str:
    """Run ``redis-cli -p PORT ARGS``; with ``replay``, send the same command through redis-py's
    raw connection (no reply parsing; RESP2, as redis-cli speaks) and print it as redis-cli
    prints to a pipe."""
    if not replay:
        binary = shutil.which("redis-cli")
        assert binary is not None
        result = subprocess.run([binary, "-p", str(port), *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout
    client = redis.Redis(port=port, protocol=2)  # redis-py 8 would negotiate RESP3
    try:
        if args[:2] == ["--scan", "--pattern"]:
            return "".join(f"{k.decode()}\n" for k in client.scan_iter(match=args[2]))
        conn = client.connection_pool.get_connection()
        try:
            conn.send_command(*args)
            reply = conn.read_response()
        finally:
            client.connection_pool.release(conn)
        items = reply if isinstance(reply, list) else [reply]
        return "".join(f"{item.decode() if isinstance(item, bytes) else item}\n" for item in items)
    finally:
        client.close()


def normalize(command: str, output: str) -> Any:
    """Output without what differs from run to run (write ids, server times), in a form where
    order does not matter when Redis does not promise one."""
    if " HGET " in f" {command} ":  # a format 2 snapshot: a 74-byte JSON header, then the body
        head, body = json.loads(output[:HEADER_BYTES]), json.loads(output[HEADER_BYTES:])
        return head | {"w": "<write-id>"}, body | {"at": "<server-ms>"}
    text = re.sub(r"\b[0-9a-f]{16}\b", "<write-id>", output)
    tokens = re.sub(r"\b1\d{12}\b", "<server-ms>", text).split()
    if "--scan" in command:
        return sorted(tokens)
    if " HGETALL " in f" {command} ":
        return dict(zip(tokens[::2], tokens[1::2], strict=True))
    return tokens


@pytest.mark.parametrize("replay", [False, True], ids=["redis-cli", "replayed"])
def test_quickstart_and_redis_cli_session(fleet_server: EmbeddedServer, replay: bool) -> None:
    if not replay and shutil.which("redis-cli") is None:
        pytest.skip("no redis-cli binary: the replayed variant covers the session")
    shown = sessions(".venv/bin/python examples/quickstart.py")
    [(cmd, expected)] = shown[0]
    assert all(other == shown[0] for other in shown), "the pages show different quickstart outputs"
    args = shlex.split(cmd)
    assert args[0] == ".venv/bin/python"
    result = subprocess.run(
        [sys.executable, *args[1:]], cwd=ROOT, env=cli_env(fleet_server.url), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected

    [pairs] = sessions("redis-cli --scan --pattern 'burr:*'")
    assert [c for c, _ in pairs] == [c for c in COVERED if c.startswith("redis-cli ")]
    for cmd, shown in pairs:
        args = shlex.split(cmd)
        assert args[0] == "redis-cli"
        out = redis_cli(fleet_server.port, args[1:], replay)
        assert normalize(cmd, out) == normalize(cmd, "\n".join(shown)), (cmd, out)


# -- the benchmarks, small -------------------------------------------------------------------------
@pytest.mark.skipif(
    ACL, reason="the benchmarks use prefixes of their own and INFO, which ACL_RULES does not grant"
)
def test_bench_scripts_run_at_a_small_size(fleet_server: EmbeddedServer) -> None:
    """bench/steps.py as README runs it, with fewer steps; bench/fleet.py (what `make bench-fleet`
    runs) with a few apps per row: the peers (arq, RQ) when .venv-bench exists, else the line
    that says they were skipped."""
    env = cli_env(fleet_server.url)
    steps = subprocess.run(
        [sys.executable, "bench/steps.py", "--steps", "30", "--rounds", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert steps.returncode == 0, steps.stderr
    assert steps.stdout.splitlines()[-1].startswith("ratio_vs_burr_redis="), steps.stdout
    assert steps.stdout.splitlines()[-2].startswith("tracking: ratio_tracked_vs_leased="), steps.stdout
    growth = subprocess.run(
        [sys.executable, "bench/state_growth.py", "--steps", "20", "--big-steps", "20"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert growth.returncode == 0, growth.stderr
    assert growth.stdout.splitlines()[-1].startswith("append_memory_ratio="), growth.stdout
    scripts = subprocess.run(  # its own embedded servers: it records with MONITOR, replays on a fresh one
        [sys.executable, "bench/script_cost.py", "--apps", "20", "--rounds", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert scripts.returncode == 0, scripts.stderr
    replayed = [line.split()[0] for line in scripts.stdout.splitlines()[2:-1]]
    assert replayed == ["enqueue", "ready", "acquire", "commit", "ack"], scripts.stdout
    assert scripts.stdout.splitlines()[-1].startswith("script_us_per_app="), scripts.stdout
    memory = subprocess.run(  # its own embedded server
        [sys.executable, "bench/app_memory.py", "--apps", "5"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert memory.returncode == 0, memory.stderr
    last = dict(kv.split("=") for kv in memory.stdout.splitlines()[-1].split())
    assert list(last) == ["bytes_per_app", "track_bytes_per_app", "graph_keys", "graph_bytes",
                          "inline_graph_bytes_per_app"], memory.stdout  # fmt: skip
    assert last["graph_keys"] == "1" and int(last["graph_bytes"]) > 1000, memory.stdout  # one agent graph
    fleet = subprocess.run(
        [sys.executable, "bench/fleet.py", "--apps", "3", "--ten-step-apps", "2", "--idle-apps", "2",
         "--idle-gap", "0.005", "--concurrency", "4", "--scale-procs", "2", "--rounds", "1",
         "--burr-python", sys.executable],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert fleet.returncode == 0, fleet.stderr
    untracked = subprocess.run(  # README: `python bench/fleet.py --no-track`
        [sys.executable, "bench/fleet.py", "--no-track", "--systems", "burr_dist", "--apps", "2",
         "--ten-step-apps", "1", "--idle-apps", "1", "--idle-gap", "0.005", "--concurrency", "2",
         "--scale-procs", "1", "--rounds", "1", "--burr-python", sys.executable],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert untracked.returncode == 0, untracked.stderr
    assert " tracking=off " in untracked.stdout.splitlines()[0], untracked.stdout
    lines = fleet.stdout.splitlines()
    table = [line.split() for line in lines if len(line.split()) == 18 and line.split()[1].isdigit()]
    rows = [(r[0], r[1], f"{r[2]} {r[3]}", r[4], r[5]) for r in table]
    burr = [("burr_dist", "1", "1-step sync", "3", "3"), ("burr_dist", "1", "10-step sync", "2", "20"),
            ("burr_dist", "1", "1-step async", "3", "3"), ("burr_dist", "1", "10-step async", "2", "20")]  # fmt: skip
    scaling = [("burr_dist", "2", "1-step sync", "3", "3"), ("burr_dist", "2", "10-step sync", "2", "20")]
    idle = [line.split()[0] for line in lines if len(line.split()) == 5 and line.split()[0] != "system"]
    if (ROOT / ".venv-bench" / "bin" / "python").exists():
        peers = [("arq+burr", "1", r[2], r[3], r[4]) for r in burr] + [
            ("rq+burr", "1", "1-step sync", "3", "3"), ("rq+burr", "1", "10-step sync", "2", "20"),
            ("arq", "1", "no-op job", "3", "3"), ("rq", "1", "no-op job", "3", "3"),
        ]  # fmt: skip
        assert rows == burr + peers + scaling, fleet.stdout
        assert idle == ["burr_dist", "arq+burr", "rq+burr"], fleet.stdout
    else:
        assert any(line.startswith("peers skipped (arq, rq)") for line in lines), fleet.stdout
        assert rows == burr + scaling, fleet.stdout
        assert idle == ["burr_dist"], fleet.stdout
    last = dict(kv.split("=") for kv in lines[-1].split())
    assert list(last) == ["ratio_vs_rq", "ratio_vs_arq", "same_work_one", "same_work_ten",
                          "server_us_per_app", "start_p50_ms"], lines[-1]  # fmt: skip
    # A start is a claim plus an acquire round trip at the least; a server cost per app of zero
    # would mean the bench measured nothing.
    assert float(last["server_us_per_app"]) > 0 and float(last["start_p50_ms"]) > 0, lines[-1]


# -- migrate-keys and pip install ------------------------------------------------------------------
@pytest.mark.skipif(
    ACL, reason="migrate-keys is an admin operation: RENAME and MULTI/EXEC are not in ACL_RULES"
)
def test_migrate_keys_commands(fleet_server: EmbeddedServer) -> None:
    """`migrate-keys --dry-run` then `migrate-keys`, as shown, on a fleet with one app of the 0.1
    layout (tests/test_migrate.py covers every kind of key)."""
    commands = [cmd for cmd in readme_commands() if COVERED.get(cmd) == MIGRATE]
    assert commands == ["burr-dist migrate-keys --dry-run", "burr-dist migrate-keys"]
    client = redis.Redis(port=fleet_server.port)
    write_v1_app(client, "user 1", "chat:1", "queued", "default")
    client.close()
    outputs = []
    for cmd in commands:
        result = subprocess.run(
            [*burr_dist_exe(), *shlex.split(cmd)[1:]],
            cwd=ROOT, env=cli_env(fleet_server.url), capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 0, (cmd, result.stdout, result.stderr)
        outputs.append(result.stdout.strip())
    assert outputs == ["would move 1 apps and 0 queue entries", "moved 1 apps and 1 queue entries"]


def test_install_commands_name_this_project_and_its_extras() -> None:
    """`pip install .` / `pip install '.[EXTRA]'` as shown: the directory is this project, each
    extra exists, and what it requires is installed here (so pip would resolve it)."""
    commands = [cmd for cmd in readme_commands() if COVERED.get(cmd) == INSTALL]
    assert commands, "no pip install command is shown"
    assert re.search(r'(?m)^name = "burr_dist"$', (ROOT / "pyproject.toml").read_text())
    meta = importlib.metadata.metadata("burr_dist")
    extras = set(meta.get_all("Provides-Extra") or [])
    requires = meta.get_all("Requires-Dist") or []
    for cmd in commands:
        args = shlex.split(cmd)
        assert args[:2] == ["pip", "install"] and len(args) == 3, cmd
        found = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", args[2])
        assert found is not None, cmd
        for extra in (found.group(1) or "").split(","):
            if not extra:
                continue
            assert extra in extras, (cmd, sorted(extras))
            wanted = [r for r in requires if re.search(rf"""extra == ["']{extra}["']""", r)]
            assert wanted, (cmd, extra)
            for req in wanted:
                name = re.split(r"[\s\[<>=!~;(]", req, maxsplit=1)[0]
                if name.replace("-", "_") == "burr_dist":
                    continue
                importlib.metadata.version(name)  # PackageNotFoundError if the extra is not installed
