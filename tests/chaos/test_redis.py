"""Faults that hit Redis itself: SIGKILL and restart with AOF on, a restart that loses everything,
a server paused (SIGSTOP, CLIENT PAUSE) past the lease TTL, an evicting maxmemory-policy."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from burr_dist.cli import EXIT_BAD_INPUT, EXIT_STORE_REWOUND
from burr_dist.errors import ConfigurationError
from burr_dist.testing.embedded import EmbeddedServer, find_server_binary
from burr_dist.testing.history import load_history, operations
from burr_dist.worker.process import Worker
from tests.chaos.apps import registry
from tests.chaos.harness import LARGE, LEASE_TTL, RESULTS, ChaosRun, Row, size, spread
from tests.conftest import KINDS
from tests.support.fleet import ROOT, wait_until

pytestmark = pytest.mark.chaos


def server(appendonly: str | None = None, extra: list[str] | None = None) -> EmbeddedServer:
    """A server of this test's own: these scenarios kill, pause and wipe it."""
    return EmbeddedServer(binary=find_server_binary(KINDS[0]), appendonly=appendonly, extra=extra)


@pytest.mark.parametrize("fsync", ["always", "everysec"])
def test_redis_sigkill_restart_with_aof(tmp_path: Path, fsync: str) -> None:
    """No acknowledged commit is lost; workers reconnect with backoff and carry on."""
    apps, steps = size((24, 10))
    kills = 8 if LARGE else 2
    with server(appendonly=fsync) as srv:
        run = ChaosRun(
            f"redis SIGKILL, AOF {fsync}",
            srv,
            tmp_path,
            apps=apps,
            steps=steps,
            delay=0.1,
            stagger=spread(0.5, 2.0),
        )
        with run:
            run.launch()

            def kill_redis() -> None:
                run.fault("redis sigkill")
                srv.kill()
                time.sleep(0.3)
                srv.start()

            done_kills = run.repeat(kills, 1.0, kill_redis)
            run.wait()
            dead = [w.id for w in run.workers if not w.alive()]
            report = run.finish(note=f"{done_kills} kills + restarts")
        assert not dead, f"workers died: {dead}"
        report.assert_ok(min_faults=kills, recovery_bound=None)


def test_redis_restarted_empty_stops_the_workers(tmp_path: Path) -> None:
    """Redis comes back with nothing (no persistence): the workers notice the store went back in
    time (the epoch in their heartbeats), stop committing and exit with a clear error, instead of
    carrying on from nothing."""
    apps, steps = size((24, 10))
    with server() as srv:
        run = ChaosRun("redis restarted empty", srv, tmp_path, apps=apps, steps=steps, delay=0.3)
        with run:
            workers = [run.start_worker() for _ in range(3)]
            run.enqueue()
            time.sleep(1.5)
            run.fault("redis restarted empty")
            srv.kill()
            wiped_at = time.monotonic_ns()
            srv.start()
            for w in workers:
                wait_until(lambda w=w: not w.alive(), 15, f"worker {w.id} noticed nothing")
            stopped_in = (time.monotonic_ns() - wiped_at) / 1e9
            codes = {w.id: w.proc.returncode for w in workers}
            logs = {w.id: w.log() for w in workers}
            report = run.finish(note=f"all workers exited (code 7) within {stopped_in:.1f}s", observe=False)
    assert codes == dict.fromkeys(codes, EXIT_STORE_REWOUND), codes
    for wid, text in logs.items():
        assert "Redis lost data" in text, f"{wid} gave no clear reason:\n{text[-2000:]}"
    ops = operations(load_history(tmp_path / "history"))
    before = [o for o in ops if o.op == "commit" and o.outcome == "ok" and o.invoke_ns < wiped_at]
    after = [o for o in ops if o.op in ("commit", "acquire") and o.outcome == "ok" and o.invoke_ns > wiped_at]
    assert 0 < len(before) < apps * (steps + 1), "the wipe must hit apps mid-run to prove anything"
    assert not after, f"work done on the empty store: {after[:5]}"
    assert report.row.faults == 1


@pytest.mark.parametrize("how", ["sigstop", "client_pause"])
def test_redis_paused_past_the_ttl(tmp_path: Path, how: str) -> None:
    apps, steps = size((24, 10))
    pauses = 6 if LARGE else 2
    pause = LEASE_TTL * 1.6
    with server() as srv:
        admin = redis.Redis(port=srv.port)
        run = ChaosRun(
            f"redis paused ({how})",
            srv,
            tmp_path,
            apps=apps,
            steps=steps,
            delay=0.1,
            stagger=spread(0.5, 3.0),
        )
        with run:
            run.launch()

            def pause_redis() -> None:
                run.fault(f"redis {how} {pause:.1f}s")
                if how == "sigstop":
                    srv.signal(signal.SIGSTOP)
                    time.sleep(pause)
                    srv.signal(signal.SIGCONT)
                else:
                    admin.execute_command("CLIENT", "PAUSE", int(pause * 1000), "ALL")
                    time.sleep(pause)

            done = run.repeat(pauses, 1.0, pause_redis)
            run.wait()
            dead = [w.id for w in run.workers if not w.alive()]
            report = run.finish(note=f"{done} pauses of {pause:.1f}s")
        admin.close()
        assert not dead, f"workers died: {dead}"
        report.assert_ok(min_faults=pauses, recovery_bound=None)


def test_evicting_maxmemory_policy_refused(caplog: pytest.LogCaptureFixture) -> None:
    """Eviction could drop a live lease and let two workers run one app: a worker refuses to
    start on such a server unless told otherwise, and warns when it cannot read the policy."""
    import asyncio

    started = time.monotonic()
    with server(extra=["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]) as srv:
        with pytest.raises(ConfigurationError, match="allkeys-lru") as err:
            asyncio.run(Worker(registry, url=srv.url).run())
        assert err.value.policy == "allkeys-lru"
        cli = [sys.executable, "-m", "burr_dist.cli", "--redis-url", srv.url, "worker", "tests.chaos.apps"]
        refused = subprocess.run(cli, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert refused.returncode == EXIT_BAD_INPUT, refused.stderr
        assert "maxmemory-policy" in refused.stderr and "--allow-evicting-redis" in refused.stderr
        assert redis.Redis(port=srv.port).zcard("burr:{fleet}:workers") == 0  # it never started

        allowed = subprocess.Popen(
            [*cli, "--allow-evicting-redis"], cwd=ROOT, stderr=subprocess.PIPE, text=True
        )
        client = redis.Redis(port=srv.port)
        wait_until(lambda: client.zcard("burr:{fleet}:workers") == 1, 30, "the allowed worker to start")
        allowed.send_signal(signal.SIGTERM)
        _, stderr = allowed.communicate(timeout=30)
        assert allowed.returncode == 0 and "starting anyway" in stderr, stderr
        client.close()
    with server(extra=["--rename-command", "CONFIG", ""]) as srv:  # managed services often do this
        w = Worker(registry, url=srv.url)
        w.request_stop()
        asyncio.run(w.run())  # starts (and stops at once), with a warning
    assert "cannot read maxmemory-policy" in caplog.text
    RESULTS.append(Row("evicting maxmemory-policy", 0, 0, 1, 0, None, time.monotonic() - started,
                       "worker refused to start (exit 6)"))  # fmt: skip
