"""``burr-dist worker``: run a worker for the apps of a registry module."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import click

from burr_dist.cli.app import LOG_LEVELS, check_redis, emit_json, import_registry, json_flag, main, settings
from burr_dist.fleet.core import DEFAULT_QUEUE
from burr_dist.keys import KeySchema
from burr_dist.observability.logs import FORMATS, configure
from burr_dist.store.core import StoreConfig

if TYPE_CHECKING:
    from burr_dist.fleet.registry import Registry
    from burr_dist.worker.process import Worker

# -- worker -------------------------------------------------------------------------------------------


class _WaitReplicas(click.ParamType):
    name = "N|all"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if value == "all" or (isinstance(value, int) and value >= 0):
            return value
        if isinstance(value, str) and value.isascii() and value.isdigit():
            return int(value)
        self.fail(f"{value!r} is not a count >= 0 or 'all'", param, ctx)


WAIT_REPLICAS = _WaitReplicas()


@main.command()
@click.argument("module")
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=8, show_default=True, help="Apps run at once."
)
@click.option(
    "--queues",
    default=None,
    metavar="Q1,Q2",
    help="Queues to claim from, in priority order [default: 'default' plus every queue the registry's apps use].",
)
@click.option(
    "--lease-ttl",
    type=click.FloatRange(min=0.3, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds an unrenewed claim lasts.",
)
@click.option(
    "--sweep-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Seconds between sweeps of expired claims.",
)
@click.option(
    "--max-steps-per-claim",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Steps before an app goes back to its queue.",
)
@click.option(
    "--max-seconds-per-claim",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds before an app goes back to its queue.",
)
@click.option(
    "--finished-ttl",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds a completed app's state is kept [default: forever].",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=0.1,
    show_default=True,
    help="Seconds an idle worker waits before it tries to claim again.",
)
@click.option("--worker-id", default=None, help="[default: host-pid-random]")
@click.option(
    "--allow-evicting-redis",
    is_flag=True,
    help="Start even if Redis has an evicting maxmemory-policy (eviction can drop a live lease).",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="Case-insensitive.",
)
@click.option(
    "--log-format",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="json: one JSON object per line on stderr (fields and event names: docs, guides/observability).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=None,
    help="Serve Prometheus metrics on http://HOST:PORT/metrics [default: no metrics].",
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address of --metrics-port.")
@click.option(
    "--track/--no-track",
    default=True,
    show_default=True,
    help="Commit Burr tracking records with each step, for `burr-dist ui` (cost: docs, guides/burr-ui).",
)
@click.option(
    "--inline-ms",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Sync actions seen faster than this in the thread pool run on the event loop (0: never).",
)
@click.option(
    "--snapshot-format",
    type=click.Choice(["1", "2"]),
    default=None,
    help="1: a full snapshot per step (readable by burr_dist 0.3 workers); 2: deltas with keyframes "
    "[default: 2].",
)
@click.option(
    "--keep", type=click.IntRange(min=1), default=None, help="Snapshots retained per app [default: 100]."
)
@click.option(
    "--max-state-bytes",
    type=click.IntRange(min=1),
    default=None,
    help="Largest snapshot a commit may store; a larger state fails the app, naming it [default: 16 MiB].",
)
@click.option(
    "--wait-replicas",
    type=WAIT_REPLICAS,
    default=None,
    help="Replicas that must confirm each commit, settle and lease write, or 'all' (every online "
    "replica, at least one: recommended with replicas) [default: the URL's, else 0].",
)
@click.option(
    "--wait-timeout-ms",
    type=click.IntRange(min=1),
    default=None,
    help="How long to wait for those confirmations [default: the URL's, else 1000].",
)
@click.option(
    "--compress-min-bytes",
    type=click.IntRange(min=0),
    default=None,
    help="Snapshot entries at least this large are stored zstd-compressed (0: never) [default: 4096].",
)
@json_flag
def worker(
    module: str,
    concurrency: int,
    queues: str | None,
    lease_ttl: float,
    sweep_interval: float,
    max_steps_per_claim: int,
    max_seconds_per_claim: float,
    finished_ttl: float | None,
    poll_interval: float,
    worker_id: str | None,
    allow_evicting_redis: bool,
    log_level: str,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
    track: bool,
    inline_ms: float,
    snapshot_format: str | None,
    keep: int | None,
    max_state_bytes: int | None,
    wait_replicas: int | str | None,
    wait_timeout_ms: int | None,
    compress_min_bytes: int | None,
) -> None:
    """Run a worker for the apps registered in MODULE.

    MODULE is pkg.module or pkg.module:registry, importable from the working directory.

    Stops on SIGTERM/SIGINT: no new claims, running apps are handed back at their next step
    boundary; a second signal exits at once.
    """
    from burr_dist.worker.process import Worker, WorkerConfig

    s = settings()
    configure(log_level, log_format)
    registry = import_registry(module)
    names = _queue_names(registry, queues, s.prefix)
    store: dict[str, Any] = {"prefix": s.prefix, "finished_ttl": finished_ttl, "keep": keep, "max_state_bytes": max_state_bytes,
             "wait_replicas": wait_replicas, "wait_timeout_ms": wait_timeout_ms,
             "compress_min_bytes": compress_min_bytes,
             "snapshot_format": int(snapshot_format) if snapshot_format else None}  # fmt: skip
    config = WorkerConfig(
        url=s.url, queues=tuple(names), concurrency=concurrency, lease_ttl=lease_ttl,
        sweep_interval=sweep_interval, max_steps_per_claim=max_steps_per_claim,
        max_seconds_per_claim=max_seconds_per_claim, poll_interval=poll_interval, worker_id=worker_id,
        allow_evicting_redis=allow_evicting_redis, track=track, inline_ms=inline_ms,
        store=StoreConfig(**{k: v for k, v in store.items() if v is not None}),
    )  # fmt: skip
    w = Worker(registry, config)
    check_redis(s.url).close()
    if metrics_port is not None:
        _serve_metrics(w, metrics_port, metrics_host)
    w.run_forever()
    if s.json:
        emit_json({"worker_id": w.id, "claims": w.completed_claims, "queues": names})


def _queue_names(registry: Registry, queues: str | None, prefix: str) -> list[str]:
    """--queues, or the default queue plus every queue the registry's apps use."""
    if queues is None:
        names = [DEFAULT_QUEUE, *sorted({spec.queue for spec in registry.apps.values()} - {DEFAULT_QUEUE})]
    else:
        names = [q.strip() for q in queues.split(",") if q.strip()]
        if not names:
            raise click.BadParameter("no queue names given", param_hint="--queues")
    schema = KeySchema(prefix)
    for name in names:
        schema.queue_shard(name, 0)  # ConfigurationError for an invalid name
    return names


def _serve_metrics(w: Worker, port: int, host: str) -> None:
    from burr_dist.observability.metrics import WorkerMetrics  # prometheus_client only when asked for

    metrics = WorkerMetrics()
    metrics.attach(w)
    w.observer = metrics
    server = metrics.serve(port, host)
    logging.getLogger(__name__).info(
        "metrics on http://%s:%d/metrics", host, server.server_address[1], extra={"event": "metrics_serving"}
    )
