"""Real processes racing to commit the same steps of one app through unleased persisters:
the compare-and-set must serialize them into exactly the history of a serial run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from burr_dist.keys import KeySchema
from burr_dist.store import codec
from tests.support.targets import Target

pytestmark = pytest.mark.topologies(default=("cluster",))
ROOT = Path(__file__).resolve().parent.parent
PROCS = 8
TARGET = 200
PK, APP = "race", "counter"


def test_racing_processes_commit_each_step_exactly_once(target: Target, client: Any, tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs = []
    for i in range(PROCS):
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.support.workers",
                    "race",
                    target.url,
                    PK,
                    APP,
                    str(TARGET),
                    str(go),
                    str(tmp_path / f"ready-{i}"),
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        give_up = time.monotonic() + 30
        while not all((tmp_path / f"ready-{i}").exists() for i in range(PROCS)):
            assert all(p.poll() is None for p in procs), [
                p.communicate() for p in procs if p.poll() is not None
            ]
            assert time.monotonic() < give_up, "racers did not start"
            time.sleep(0.01)
        go.touch()  # all at once
        reports = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    committed = [seq for r in reports for seq in r["committed"]]
    # Exactly once: no sequence reported as committed by two processes, none missing.
    assert len(committed) == TARGET + 1
    assert sorted(committed) == list(range(TARGET + 1))
    assert sum(1 for r in reports if r["committed"]) >= 2, "no actual race happened"

    keys = KeySchema("burr").app(PK, APP)
    snaps = codec.stored_steps(client.hgetall(keys.snaps), key=keys.snaps)
    assert sorted(snaps) == list(range(TARGET + 1))  # no gaps, nothing beyond the target
    for seq, doc in snaps.items():
        assert doc["seq"] == seq
        assert doc["state"]["n"] == seq + 1  # what a serial run computes
    assert int(client.hget(keys.meta, "head")) == TARGET
    # The process that reported seq s is the one whose snapshot is stored at s.
    owner = {seq: r["pid"] for r in reports for seq in r["committed"]}
    assert all(snaps[s]["state"]["pid"] == owner[s] for s in snaps)
    print("conflicts per process:", [r["conflicts"] for r in reports])
