"""``burr-dist worker`` processes (the real command line) for tests that run apps as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from burr_dist import FleetClient
from tests.support.fleet import ROOT, wait_until


def command() -> list[str]:
    script = Path(sys.executable).parent / "burr-dist"
    return [str(script)] if script.exists() else [sys.executable, "-m", "burr_dist.cli"]


def cli(url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """One ``burr-dist --json ...`` command against ``url``."""
    env = {k: v for k, v in os.environ.items() if k != "BURR_DIST_PREFIX"} | {"REDIS_URL": url}
    return subprocess.run([*command(), "--json", *args], cwd=ROOT, env=env, capture_output=True, timeout=60)


def cli_json(url: str, *args: str) -> Any:
    done = cli(url, *args)
    assert done.returncode == 0, (args, done.returncode, done.stdout, done.stderr)
    return orjson.loads(done.stdout)


class CliWorker:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, worker_id: str) -> None:
        self.proc, self.log_path, self.id = proc, log, worker_id

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait(timeout=10)


@contextmanager
def cli_workers(url: str, log_dir: Path, module: str, n: int = 2, *args: str) -> Iterator[list[CliWorker]]:
    """``n`` ``burr-dist worker MODULE ARGS`` processes, registered before this yields, killed after."""
    env = {k: v for k, v in os.environ.items() if k != "BURR_DIST_PREFIX"} | {
        "REDIS_URL": url, "BURR_DIST_TEST_URL": url, "PYTHONUNBUFFERED": "1",
    }  # fmt: skip
    workers: list[CliWorker] = []
    fleet = FleetClient.from_url(url)
    try:
        for _ in range(n):
            wid = f"cli-{uuid.uuid4().hex[:6]}"
            log = log_dir / f"{wid}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [*command(), "worker", module, "--worker-id", wid, "--poll-interval", "0.05",
                     "--sweep-interval", "0.2", *args],
                    cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            workers.append(CliWorker(proc, log, wid))
        for w in workers:
            wait_until(lambda w=w: any(x["id"] == w.id for x in fleet.workers()), 30, f"{w.id} registered")
            assert w.alive(), w.log()
        yield workers
    finally:
        fleet.client.close()
        for w in workers:
            w.stop()
        for w in workers:  # shown by pytest only when the test failed
            print(f"----- {w.id} (rc {w.proc.returncode}) -----\n{w.log()[-6000:]}")
