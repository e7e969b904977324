"""Prometheus metrics: a worker's own (``burr-dist worker --metrics-port``) and the fleet's queues
(``burr-dist metrics``, one exporter process, so queue gauges are not multiplied by the fleet size).

Only imported when metrics are asked for (``prometheus_client`` is not loaded otherwise). Labels are
the app's registered ``name``, ``queue``, ``outcome``/``status`` and error types: never an app id.

A worker's metrics come from two sources: the registry's FleetEvent stream (apps settled by
outcome, leases lost), and :class:`~burr_dist.worker.hooks.Observer` hooks for what an event does not
carry (commit latency, claims per queue, action failures, sequence conflicts). Redis retries and
errors are read at scrape time from :data:`burr_dist.transport.core.COUNTS`.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from burr_dist.errors import SequenceConflict
from burr_dist.fleet.registry import FleetEvent
from burr_dist.transport.core import COUNTS
from burr_dist.worker.hooks import Observer

if TYPE_CHECKING:
    from burr_dist.fleet.client import FleetClient
    from burr_dist.worker.process import Worker

# FleetEvent kind -> the outcome label of burr_dist_apps_settled_total.
OUTCOMES = {
    "completed": "completed",
    "parked": "waiting",
    "handed_back": "handed_back",
    "failed": "failed",
    "retry_scheduled": "retry_scheduled",
    "cancelled": "cancelled",
}
# A commit is one round trip on loopback (~0.1 ms) to a few with WAIT or retries.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def package_version() -> str:
    try:
        return version("burr_dist")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


class RedisCollector(Collector):
    """The transports' retries and errors, read at scrape time (plain counts in transport.py)."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        retries, errors = COUNTS.snapshot()
        for name, doc, counts in (
            ("burr_dist_redis_retries", "Transient Redis failures followed by a retry.", retries),
            (
                "burr_dist_redis_errors",
                "Redis errors raised to the caller (retries exhausted included).",
                errors,
            ),
        ):
            family = CounterMetricFamily(name, doc, labels=["error"])
            for error, n in sorted(counts.items()):
                family.add_metric([error], n)
            yield family


class WorkerMetrics(Observer):
    """One worker's metrics, in their own CollectorRegistry (tests can make several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.steps = Counter("burr_dist_steps_committed", "Steps committed, by Burr save status.",
                             ["name", "status"], registry=r)  # fmt: skip
        self.commit_seconds = Histogram("burr_dist_commit_duration_seconds",
                                        "Time to commit one step (its Redis round trips).", ["name"],
                                        buckets=COMMIT_BUCKETS, registry=r)  # fmt: skip
        self.claims = Counter(
            "burr_dist_claims", "Apps claimed and leased by this worker.", ["queue"], registry=r
        )
        self.settled = Counter("burr_dist_apps_settled", "Claims that ended in a settle, by outcome.",
                               ["name", "outcome"], registry=r)  # fmt: skip
        self.leases_lost = Counter("burr_dist_leases_lost",
                                   "Claims that ended without a settle (lease lost, conflict, Redis trouble).",
                                   ["name"], registry=r)  # fmt: skip
        self.conflicts = Counter("burr_dist_sequence_conflicts",
                                 "Commits refused because another writer committed that step.", ["name"],
                                 registry=r)  # fmt: skip
        self.action_failures = Counter(
            "burr_dist_action_failures", "Actions that raised.", ["name"], registry=r
        )
        self.held = Gauge("burr_dist_apps_held", "Apps this worker holds a claim on.", registry=r)
        self.info = Info("burr_dist_worker", "This worker.", registry=r)
        r.register(RedisCollector())

    # -- wiring ----------------------------------------------------------------------------
    def attach(self, worker: Worker) -> None:
        """Subscribe to the worker's FleetEvents and read its held apps at scrape time."""
        worker.registry.on(*OUTCOMES, "lease_lost")(self.on_event)
        self.held.set_function(lambda: worker.held_apps)
        self.info.info({"worker": worker.id, "queues": ",".join(worker.queues),
                        "concurrency": str(worker.concurrency), "version": package_version()})  # fmt: skip

    def serve(self, port: int, host: str = "127.0.0.1") -> Any:
        """Serve /metrics on a daemon thread; returns the server (``.server_address`` has the port)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server

    # -- FleetEvents ---------------------------------------------------------------------
    def on_event(self, event: FleetEvent) -> None:
        if event.kind == "lease_lost":
            self.leases_lost.labels(event.name).inc()
        else:
            self.settled.labels(event.name, OUTCOMES[event.kind]).inc()

    # -- Observer hooks ------------------------------------------------------------------
    def claimed(self, queue: str, n: int) -> None:
        self.claims.labels(queue).inc(n)

    def committed(self, name: str, status: str, seconds: float) -> None:
        self.steps.labels(name, status).inc()
        self.commit_seconds.labels(name).observe(seconds)

    def action_failed(self, name: str) -> None:
        self.action_failures.labels(name).inc()

    def claim_ended_by(self, name: str, error: BaseException) -> None:
        if isinstance(error, SequenceConflict):
            self.conflicts.labels(name).inc()


class FleetCollector(Collector):
    """The fleet's apps by status and its queues, read from Redis on every scrape
    (``FleetClient.overview()``: a few round trips, whatever the number of apps)."""

    def __init__(self, fleet: FleetClient) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("burr_dist_up", "1 when the last read of the fleet from Redis succeeded.")
        try:
            ov = self.fleet.overview()
        except Exception:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        apps = GaugeMetricFamily("burr_dist_apps", "Apps by status.", labels=["status"])
        for status, n in ov["apps"].items():
            apps.add_metric([status], n)
        yield apps
        families = {
            field: GaugeMetricFamily(f"burr_dist_queue_{field}", doc, labels=["queue"])
            for field, doc in (
                ("ready", "Apps ready to run now."),
                ("scheduled", "Apps queued to run later (delay, retry backoff)."),
                ("active", "Apps claimed by a worker."),
            )
        }
        oldest = GaugeMetricFamily("burr_dist_queue_oldest_ready_age_seconds",
                                   "Age of the fairest ready app (0 when none is ready).", labels=["queue"])  # fmt: skip
        for queue, q in ov["queues"].items():
            for field, family in families.items():
                family.add_metric([queue], q[field])
            oldest.add_metric([queue], q["oldest_ready_age_s"] or 0)
        yield from families.values()
        yield oldest
        workers = GaugeMetricFamily("burr_dist_workers_live", "Workers whose heartbeat is current.")
        workers.add_metric([], ov["workers"])
        yield workers


def fleet_registry(fleet: FleetClient) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(FleetCollector(fleet))
    registry.register(RedisCollector())
    return registry
