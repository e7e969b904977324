"""Observability as an operator sees it: a real worker process with ``--metrics-port`` and
``--log-format json``, scraped over HTTP after a run whose outcomes are known; the ``burr-dist
metrics`` exporter scraped after enqueueing delayed apps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families

from burr_dist import FleetClient
from burr_dist.fleet.core import EnqueueRequest
from burr_dist.observability.logs import EVENTS, FIELDS
from burr_dist.testing.embedded import EmbeddedServer, free_port
from burr_dist.transport.connect import connect

ROOT = Path(__file__).resolve().parent.parent


def cli() -> list[str]:
    script = Path(sys.executable).parent / "burr-dist"
    return [str(script)] if script.exists() else [sys.executable, "-m", "burr_dist.cli"]


@contextmanager
def process(args: list[str], url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if k != "BURR_DIST_PREFIX"} | {"REDIS_URL": url}
    with open(log, "wb") as err:
        proc = subprocess.Popen([*cli(), *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise


def scrape(
    port: int, proc: subprocess.Popen[bytes], log: Path
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by (name, sorted labels); waits for the server to answer."""
    give_up = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                body = reply.read().decode()
            break
        except OSError:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < give_up, log.read_text()
            time.sleep(0.1)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def total(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], metric: str, /, **labels: str
) -> float:
    return sum(
        v for (n, ls), v in samples.items() if n == metric and all((k, w) in ls for k, w in labels.items())
    )


def test_worker_metrics_and_json_logs_match_the_run(fleet_server: EmbeddedServer, tmp_path: Path) -> None:
    url, port = fleet_server.url, free_port()
    fleet = FleetClient(connect(url))
    marker = tmp_path / "failed-once"
    apps = {f"count-{i}": EnqueueRequest("count", f"count-{i}", state={"target": 2 + i}) for i in range(3)}
    apps["boom"] = EnqueueRequest("always_fails", "boom")
    apps["once"] = EnqueueRequest("fails_once", "once", state={"marker": str(marker)})
    log = tmp_path / "worker.log"
    args = ["worker", "tests.support.obs_apps", "--worker-id", "w-obs", "--metrics-port", str(port),
            "--log-format", "json", "--log-level", "debug", "--lease-ttl", "2", "--sweep-interval", "0.2"]  # fmt: skip
    with process(args, url, log) as proc:
        fleet.enqueue_many(list(apps.values()))
        give_up = time.monotonic() + 30
        while {fleet.show(a)["status"] for a in apps} - {"completed", "failed"}:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < give_up, log.read_text()[-3000:]
            time.sleep(0.1)
        samples = scrape(port, proc, log)
    jobs = {a: fleet.show(a) for a in apps}
    fleet.client.close()
    assert proc.returncode == 0, log.read_text()[-3000:]

    # What happened, from Redis; then the counters.
    assert {a: j["status"] for a, j in jobs.items()} == {**dict.fromkeys(apps, "completed"), "boom": "failed"}
    assert total(samples, "burr_dist_steps_committed_total") == sum(
        j["sequence_id"] + 1 for j in jobs.values()
    )
    assert total(samples, "burr_dist_steps_committed_total", status="failed") == 3  # boom twice, once once
    assert total(samples, "burr_dist_steps_committed_total", name="count") == sum(3 + i for i in range(3))
    assert total(samples, "burr_dist_commit_duration_seconds_count") == total(
        samples, "burr_dist_steps_committed_total"
    )
    assert total(samples, "burr_dist_claims_total", queue="default") == sum(
        int(j["claims"]) for j in jobs.values()
    )
    settled = {
        o: total(samples, "burr_dist_apps_settled_total", outcome=o)
        for o in ("completed", "waiting", "handed_back", "failed", "retry_scheduled", "cancelled")
    }
    assert settled == {"completed": 4, "waiting": 0, "handed_back": 0, "failed": 1, "retry_scheduled": 2,
                       "cancelled": 0}  # fmt: skip
    assert total(samples, "burr_dist_apps_settled_total", name="always_fails", outcome="failed") == 1
    assert total(samples, "burr_dist_action_failures_total") == 3
    assert total(samples, "burr_dist_leases_lost_total") == 0
    assert total(samples, "burr_dist_sequence_conflicts_total") == 0
    assert total(samples, "burr_dist_apps_held") == 0
    assert total(samples, "burr_dist_worker_info", worker="w-obs", queues="default") == 1
    assert not any("app_id" in dict(labels) for _, labels in samples)  # never a per-app label
    # Redis trouble is counted by error type; this run had none.
    assert (
        total(samples, "burr_dist_redis_retries_total") == total(samples, "burr_dist_redis_errors_total") == 0
    )

    # Every stderr line is one JSON object; the main events are there, with the app's ids.
    records = [orjson.loads(line) for line in log.read_text().splitlines()]
    for r in records:
        assert {"ts", "level", "logger", "event", "msg"} <= r.keys(), r
        assert r["event"] in (*EVENTS, "log"), r
        assert set(r) <= {"ts", "level", "logger", "event", "msg", "exc", *FIELDS}, r
    events = [r["event"] for r in records]
    assert {
        "metrics_serving",
        "worker_started",
        "worker_stopping",
        "worker_stopped",
        "retry_scheduled",
        "app_failed",
        "settled",
    } <= set(events)
    [failed] = [r for r in records if r["event"] == "app_failed"]
    assert (failed["app_id"], failed["worker"], failed["level"]) == ("boom", "w-obs", "warning")
    assert failed["sequence_id"] == jobs["boom"]["sequence_id"] and "always fails" in failed["error"]
    done = {r["app_id"]: r for r in records if r["event"] == "settled" and r.get("outcome") == "completed"}
    assert set(done) == set(apps) - {"boom"}
    assert all(done[a]["sequence_id"] == jobs[a]["sequence_id"] for a in done)


def test_exporter_reports_queue_depth_of_delayed_apps(fleet_server: EmbeddedServer, tmp_path: Path) -> None:
    url, port, n = fleet_server.url, free_port(), 7
    fleet = FleetClient(connect(url))
    fleet.enqueue_many([EnqueueRequest("count", None, delay=3600) for _ in range(n)])
    enqueued_at = time.time()
    fleet.enqueue_many([EnqueueRequest("count", None, queue="bulk") for _ in range(2)])
    fleet.client.close()
    log = tmp_path / "exporter.log"
    with process(["metrics", "--port", str(port)], url, log) as proc:
        samples = scrape(port, proc, log)
        scraped_at = time.time()
    assert proc.returncode == 0, log.read_text()
    assert samples[("burr_dist_up", ())] == 1
    assert samples[("burr_dist_queue_scheduled", (("queue", "default"),))] == n
    assert samples[("burr_dist_queue_ready", (("queue", "default"),))] == 0
    assert samples[("burr_dist_queue_ready", (("queue", "bulk"),))] == 2
    # The bulk apps have waited since they were enqueued: at most until the scrape (the server's
    # clock and ours agree to well under the 0.5 s allowed, on one machine).
    age = samples[("burr_dist_queue_oldest_ready_age_seconds", (("queue", "bulk"),))]
    assert 0 <= age <= scraped_at - enqueued_at + 0.5, (age, scraped_at - enqueued_at)
    assert samples[("burr_dist_apps", (("status", "queued"),))] == n + 2
    assert samples[("burr_dist_workers_live", ())] == 0


def test_a_worker_without_metrics_does_not_import_prometheus_client() -> None:
    code = "import sys, burr_dist.cli, burr_dist.worker.process; sys.exit('prometheus_client' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
