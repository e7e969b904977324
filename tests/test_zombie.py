"""A lease holder paused (SIGSTOP) past its TTL wakes up as a zombie: its next commit must be
refused, and the state must be what the holder that took over wrote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from burr.core import State

from burr_dist import Lease, RedisStore
from burr_dist.keys import KeySchema
from tests.support.targets import Target
from tests.support.workers import EXIT_LEASE_LOST

pytestmark = pytest.mark.topologies()

ROOT = Path(__file__).resolve().parent.parent
PK, APP = "user-1", "chat"
TTL = 1.0


def wait_file(path: Path, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    give_up = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"worker exited early: {proc.communicate()}")
        assert time.monotonic() < give_up, f"{path.name} never appeared"
        time.sleep(0.005)


@pytest.mark.parametrize("mode", ["plain", "stale"])
def test_paused_lease_holder_is_fenced_out(
    target: Target,
    store: RedisStore,
    client: Any,
    tmp_path: Path,
    mode: str,
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.workers",
            "zombie",
            target.url,
            PK,
            APP,
            str(TTL),
            str(tmp_path),
            mode,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stopped = False
    try:
        wait_file(tmp_path / "ready", proc)
        assert store.head_sequence(APP, partition_key=PK) == 0
        os.kill(proc.pid, signal.SIGSTOP)
        stopped = True
        time.sleep(TTL + 0.5)  # past the TTL, even from the last renewal before the pause

        rescuer = Lease(store, PK, APP, ttl=10).acquire(wait=3, auto_renew=False)
        assert rescuer.head["state"]["by"] == "zombie"
        rescuer.persister.save(PK, APP, 1, "inc", State({"n": 2, "by": "rescuer"}), "completed")
        (tmp_path / "go").touch()

        os.kill(proc.pid, signal.SIGCONT)
        stopped = False
        out, err = proc.communicate(timeout=20)
    finally:
        if stopped:
            os.kill(proc.pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    report = json.loads(out.strip().splitlines()[-1])
    assert proc.returncode == EXIT_LEASE_LOST, (report, err)
    assert report["result"] == "lease_lost"
    if mode == "stale":
        assert "refused by Redis" in report["message"]  # only the server could refuse it

    keys = KeySchema("burr").app(PK, APP)
    assert int(client.hget(keys.meta, "head")) == 1
    assert client.hlen(keys.snaps) == 2
    head = store.load(PK, APP)
    assert head["state"]["by"] == "rescuer"
    assert head["state"]["n"] == 2
    assert store.load(PK, APP, 0)["state"]["by"] == "zombie"
    assert client.get(keys.lease) == rescuer.token.encode()
    rescuer.release()
