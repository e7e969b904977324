"""The ``burr-dist`` command line: run workers, enqueue apps and operate on them.

    burr-dist worker examples.apps --concurrency 8
    burr-dist enqueue counter --state '{"target": 3}'
    burr-dist status

Every command that talks to Redis first sends a PING, so an unreachable server is reported at once
(exit 5) instead of after the store's retries. Errors print one line on stderr, never a traceback;
exit codes are listed in :data:`EPILOG`. With ``--json`` every command writes one JSON document on
stdout (and an ``{"error": ...}`` document when it fails).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import click
import orjson
import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from burr_dist.connection import DEFAULT_URL, connect, redact, resolve_target
from burr_dist.errors import (
    AppNotFound,
    AppNotRunnable,
    BurrDistError,
    ConfigurationError,
    RedisUnavailable,
    SerializationError,
    SnapshotNotFound,
    StoreRewound,
)
from burr_dist.keys import DEFAULT_PREFIX, KeySchema
from burr_dist.queue import DEFAULT_QUEUE, STATUSES, Enqueued, EnqueueRequest, FleetClient
from burr_dist.registry import Registry, load_registry
from burr_dist.store import StoreConfig

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_NOT_ALLOWED = 4
EXIT_UNREACHABLE = 5
EXIT_BAD_INPUT = 6
EXIT_STORE_REWOUND = 7

LOG_LEVELS = ["debug", "info", "warning", "error", "critical"]  # --log-level, any case
ENQUEUE_CHUNK = 500  # apps per enqueue_many round (two Redis round trips each)

EPILOG = """\b
Exit codes:
  0  ok
  1  any other burr_dist error
  2  usage error (unknown option, missing argument...)
  3  not found: unknown app id, or a snapshot that is not retained
  4  not allowed in the app's current status (e.g. resume of an app that is not waiting)
  5  Redis unreachable
  6  bad input or configuration: invalid JSON for --state/--inputs, unknown app name,
     app module that fails to import, invalid id, prefix or Redis URL, an evicting
     maxmemory-policy (worker)
  7  worker: Redis lost data (the store went back in time); the worker stopped committing

\b
Errors print one line on stderr. With --json, stdout holds one JSON document: the result, or
{"error": {"type": ..., "message": ..., "exit_code": ...}} when the command failed.
"""

F = TypeVar("F", bound=Callable[..., Any])


# -- settings and output --------------------------------------------------------------------------
@dataclass
class Settings:
    """The group options, shared by every command (``ctx.obj``)."""

    url: str = DEFAULT_URL
    prefix: str = DEFAULT_PREFIX
    json: bool = False
    _fleet: FleetClient | None = None

    def config(self) -> StoreConfig:
        # Validates the prefix; replication settings come from the URL's query options.
        return StoreConfig.for_target(resolve_target(self.url), prefix=self.prefix)

    def fleet(self) -> FleetClient:
        """A client, after checking that Redis answers a PING (closed when the command ends)."""
        if self._fleet is None:
            config = self.config()
            client = check_redis(self.url)
            click.get_current_context().find_root().call_on_close(client.close)
            self._fleet = FleetClient(client, config)
        return self._fleet


def check_redis(url: str) -> redis.Redis:
    """Connect and PING: RedisUnavailable (exit 5) when the server cannot be reached."""
    client = connect(url)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError, redis.InvalidResponse) as e:
        client.close()
        raise RedisUnavailable(f"cannot reach Redis at {redact(url)} ({reason(e)})", url=redact(url)) from e
    except redis.ResponseError as e:  # e.g. a database index the server does not have
        client.close()
        raise ConfigurationError(
            f"Redis at {redact(url)} refused the connection: {e}", url=redact(url)
        ) from e
    return client


def reason(exc: BaseException) -> str:
    """The most specific description in an exception chain: the OS error if there is one."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for e in chain:
        if isinstance(e, OSError) and e.strerror:
            return str(e.strerror)
    for e in reversed(chain):
        msg = str(e).strip().rstrip(".")
        if msg:
            return msg
    return type(exc).__name__


def settings() -> Settings:
    return click.get_current_context().ensure_object(Settings)


def emit_json(doc: Any) -> None:
    click.echo(orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS).decode())


def console(stderr: bool = False) -> Console:
    out = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not out.is_terminal:
        out.width = max(out.width, 160)  # piped output: do not squeeze tables to 80 columns
    return out


def when(ms: Any) -> str:
    """A server timestamp (ms) as UTC time plus how long ago (or how far ahead) it is."""
    if ms in (None, ""):
        return "-"
    ms = int(ms)
    at = datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    delta = time.time() - ms / 1000
    return f"{at} ({delta:.1f}s ago)" if delta >= 0 else f"{at} (in {-delta:.1f}s)"


def text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)


def json_object(raw: str | None, option: str) -> dict[str, Any] | None:
    """Parse an option's JSON object (``@path`` reads a file): ConfigurationError (exit 6) otherwise."""
    if raw is None:
        return None
    if raw.startswith("@"):
        try:
            with open(raw[1:], "rb") as f:
                raw_bytes = f.read()
        except OSError as e:
            raise ConfigurationError(f"{option}: cannot read {raw[1:]!r}: {reason(e)}", option=option) from e
    else:
        raw_bytes = raw.encode()
    try:
        value = orjson.loads(raw_bytes)
    except orjson.JSONDecodeError as e:
        raise ConfigurationError(f"{option} is not valid JSON: {e}", option=option) from e
    if not isinstance(value, dict):
        kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
        kind = "null" if value is None else kinds.get(type(value), type(value).__name__)
        raise ConfigurationError(f"{option} must be a JSON object, got {kind}", option=option)
    return value


def import_registry(module: str) -> Registry:
    """load_registry with the working directory importable (console scripts do not add it)."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    return load_registry(module)


# -- errors -----------------------------------------------------------------------------------------
def classify(exc: Exception, url: str) -> tuple[int, str]:
    """Exit code and one-line message of an error."""
    if isinstance(exc, (AppNotFound, SnapshotNotFound)):
        return EXIT_NOT_FOUND, str(exc)
    if isinstance(exc, AppNotRunnable):
        return EXIT_NOT_ALLOWED, str(exc)
    if isinstance(exc, (RedisUnavailable, redis.ConnectionError, redis.TimeoutError)):
        msg = str(exc)
        if not msg.startswith("cannot reach Redis"):
            msg = f"cannot reach Redis at {redact(url)} ({reason(exc)})"
        return EXIT_UNREACHABLE, msg
    if isinstance(exc, StoreRewound):
        return EXIT_STORE_REWOUND, str(exc)
    if isinstance(exc, (ConfigurationError, SerializationError)):
        return EXIT_BAD_INPUT, str(exc)
    if isinstance(exc, BurrDistError):
        return EXIT_ERROR, f"{type(exc).__name__}: {exc}"
    return EXIT_ERROR, f"Redis refused the command: {exc}"


class FleetGroup(click.Group):
    """Turns burr_dist and Redis errors into one stderr line and a meaningful exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (BurrDistError, redis.RedisError) as e:
            obj = ctx.obj if isinstance(ctx.obj, Settings) else Settings()
            code, message = classify(e, obj.url)
            message = " ".join(message.split())  # one line
            if obj.json:
                emit_json({"error": {"type": type(e).__name__, "message": message, "exit_code": code}})
            click.echo(f"error: {message}", err=True)
            ctx.exit(code)


def json_flag(f: F) -> F:
    """``--json`` after the command name, too (``burr-dist status --json``)."""

    def set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.ensure_object(Settings).json = True

    return click.option(
        "--json",
        "_json",
        is_flag=True,
        expose_value=False,
        callback=set_json,
        help="Machine-readable output.",
    )(f)


def partition_option(f: F) -> F:
    return click.option(
        "-p", "--partition-key", default=None, help="Partition of the app (default: default)."
    )(f)


# -- the group ----------------------------------------------------------------------------------------
@click.group(
    cls=FleetGroup,
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--redis-url", envvar="REDIS_URL", default=DEFAULT_URL, show_default=True, help="Env: REDIS_URL."
)
@click.option(
    "--prefix",
    envvar="BURR_DIST_PREFIX",
    default=DEFAULT_PREFIX,
    show_default=True,
    help="Env: BURR_DIST_PREFIX.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout for every command.")
@click.version_option(package_name="burr_dist")
@click.pass_context
def main(ctx: click.Context, redis_url: str, prefix: str, as_json: bool) -> None:
    """Run Apache Burr apps on a fleet of workers coordinated through Redis."""
    ctx.obj = Settings(url=redis_url, prefix=prefix, json=as_json)


# -- worker -------------------------------------------------------------------------------------------
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
) -> None:
    """Run a worker for the apps registered in MODULE.

    MODULE is pkg.module or pkg.module:registry, importable from the working directory.

    Stops on SIGTERM/SIGINT: no new claims, running apps are handed back at their next step
    boundary; a second signal exits at once.
    """
    from burr_dist.worker import Worker

    s = settings()
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    registry = import_registry(module)
    if queues is None:
        names = [DEFAULT_QUEUE, *sorted({spec.queue for spec in registry.apps.values()} - {DEFAULT_QUEUE})]
    else:
        names = [q.strip() for q in queues.split(",") if q.strip()]
        if not names:
            raise click.BadParameter("no queue names given", param_hint="--queues")
    schema = KeySchema(s.prefix)
    for name in names:
        schema.queue_shard(name, 0)  # ConfigurationError for an invalid name
    w = Worker(
        registry,
        url=s.url,
        prefix=s.prefix,
        queues=names,
        concurrency=concurrency,
        lease_ttl=lease_ttl,
        sweep_interval=sweep_interval,
        max_steps_per_claim=max_steps_per_claim,
        max_seconds_per_claim=max_seconds_per_claim,
        finished_ttl=finished_ttl,
        poll_interval=poll_interval,
        worker_id=worker_id,
        allow_evicting_redis=allow_evicting_redis,
    )
    check_redis(s.url).close()
    w.run_forever()
    if s.json:
        emit_json({"worker_id": w.id, "claims": w.completed_claims, "queues": names})


# -- enqueue --------------------------------------------------------------------------------------------
def _chunks(requests: Callable[[int], list[EnqueueRequest]], total: int) -> Iterator[list[EnqueueRequest]]:
    for start in range(0, total, ENQUEUE_CHUNK):
        yield requests(min(ENQUEUE_CHUNK, total - start))


def _enqueued_text(res: Enqueued) -> str:
    if not res.created:
        return f"{res.app_id} already existed ({res.status}); nothing new was queued"
    due = ""
    if res.run_at_ms is not None and res.run_at_ms / 1000 > time.time() + 0.5:
        due = f", runs at {when(res.run_at_ms)}"
    return f"{res.app_id} created (queued on partition {res.partition_key!r}{due})"


@main.command()
@click.argument("name")
@click.option(
    "--app-id", default=None, help="[default: generated]; enqueueing an existing id changes nothing."
)
@partition_option
@click.option("--state", default=None, metavar="JSON", help="Initial state (a JSON object, or @file).")
@click.option(
    "--inputs", default=None, metavar="JSON", help="Inputs of the first step (JSON object, or @file)."
)
@click.option("--entrypoint", default=None, help="Action to start at [default: the app's entrypoint].")
@click.option(
    "--delay", type=click.FloatRange(min=0), default=0.0, show_default=True, help="Seconds before it may run."
)
@click.option("--queue", default=None, help="[default: the app's queue with --module, else 'default']")
@click.option("--module", default=None, metavar="MODULE", help="Check NAME against this registry first.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Enqueue N apps with generated ids.")
@json_flag
def enqueue(
    name: str,
    app_id: str | None,
    partition_key: str | None,
    state: str | None,
    inputs: str | None,
    entrypoint: str | None,
    delay: float,
    queue: str | None,
    module: str | None,
    count: int | None,
) -> None:
    """Queue an app registered as NAME. Prints its id and whether it was created."""
    s = settings()
    if count is not None and app_id is not None:
        raise click.UsageError("--count generates the app ids; it cannot be combined with --app-id")
    state_obj = json_object(state, "--state")
    inputs_obj = json_object(inputs, "--inputs")
    if module is not None:
        spec = import_registry(module).get(name)  # ConfigurationError for an unknown name
        queue = queue or spec.queue
    queue = queue or DEFAULT_QUEUE

    def requests(n: int) -> list[EnqueueRequest]:
        return [
            EnqueueRequest(
                name,
                app_id,
                partition_key=partition_key,
                state=state_obj,
                inputs=inputs_obj,
                entrypoint=entrypoint,
                delay=delay,
                queue=queue,
            )
            for _ in range(n)
        ]

    fleet = s.fleet()
    if count is None:
        res = fleet.enqueue_many(requests(1))[0]
        if s.json:
            emit_json(asdict(res))
        else:
            click.echo(_enqueued_text(res))
        return

    results: list[Enqueued] = []
    progress = Progress(
        TextColumn("enqueue {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console(stderr=True),
        disable=s.json,
    )
    try:
        with progress:
            task = progress.add_task(name, total=count)
            for chunk in _chunks(requests, count):
                results += fleet.enqueue_many(chunk)
                progress.advance(task, len(chunk))
    except (BurrDistError, redis.RedisError):
        if not s.json:
            click.echo(
                f"enqueued {len(results)} of {count} apps before the error; "
                "`burr-dist reconcile` queues any record of the failed chunk that no queue lists",
                err=True,
            )
        raise
    created = sum(r.created for r in results)
    if s.json:
        emit_json(
            {
                "count": len(results),
                "created": created,
                "queue": queue,
                "app_ids": [r.app_id for r in results],
            }
        )
    else:
        click.echo(f"enqueued {len(results)} {name!r} apps on queue {queue!r} ({created} created)")


# -- operator transitions -------------------------------------------------------------------------------
def _report(app_id: str, partition_key: str | None, status: str, extra: dict[str, Any] | None = None) -> None:
    s = settings()
    if s.json:
        emit_json(
            {"app_id": app_id, "partition_key": partition_key or "default", "status": status, **(extra or {})}
        )
    elif status == "cancel_requested":
        click.echo(f"{app_id}: cancel requested; it stops before its next step")
    else:
        click.echo(f"{app_id}: {status}")


@main.command()
@click.argument("app_id")
@click.option("--inputs", default=None, metavar="JSON", help="Inputs for the action it waits for (or @file).")
@partition_option
@json_flag
def resume(app_id: str, inputs: str | None, partition_key: str | None) -> None:
    """Resume a waiting app with --inputs for the action it waits for."""
    inputs_obj = json_object(inputs, "--inputs")
    _report(app_id, partition_key, settings().fleet().resume(app_id, inputs_obj, partition_key=partition_key))


@main.command()
@click.argument("app_id")
@partition_option
@json_flag
def cancel(app_id: str, partition_key: str | None) -> None:
    """Cancel an app.

    Queued, waiting and failed apps are cancelled now; a running app stops before its next step.
    """
    _report(app_id, partition_key, settings().fleet().cancel(app_id, partition_key=partition_key))


@main.command()
@click.argument("app_id")
@partition_option
@json_flag
def retry(app_id: str, partition_key: str | None) -> None:
    """Run a failed or cancelled app again.

    It continues from its last committed step.
    """
    _report(app_id, partition_key, settings().fleet().retry(app_id, partition_key=partition_key))


@main.command()
@click.argument("app_id")
@click.option(
    "--at", "at", type=int, required=True, metavar="SEQ", help="Sequence id of the step to fork from."
)
@click.option("--app-id", "new_app_id", default=None, help="Id of the new app [default: generated].")
@partition_option
@json_flag
def fork(app_id: str, at: int, new_app_id: str | None, partition_key: str | None) -> None:
    """Queue a new app continuing from a retained step of APP_ID."""
    s = settings()
    res = s.fleet().fork(app_id, at, new_app_id, partition_key=partition_key)
    if s.json:
        emit_json(asdict(res) | {"forked_from": {"app_id": app_id, "sequence_id": at}})
    else:
        click.echo(f"{_enqueued_text(res)}; forked from {app_id} at step {at}")


# -- inspection -----------------------------------------------------------------------------------------
@main.command()
@json_flag
def status() -> None:
    """Fleet overview: apps by status, queues, live workers."""
    s = settings()
    ov = s.fleet().overview()
    if s.json:
        emit_json(ov)
        return
    out = console()
    apps = Table(title="Apps")
    apps.add_column("status")
    apps.add_column("count", justify="right")
    for name, n in ov["apps"].items():
        apps.add_row(name, str(n))
    apps.add_row("total", str(sum(ov["apps"].values())), style="bold")
    queues = Table(title="Queues")
    for col in ("queue", "ready", "scheduled", "active", "oldest ready"):
        queues.add_column(col, justify="left" if col == "queue" else "right")
    for name, q in ov["queues"].items():
        age = "-" if q["oldest_ready_age_s"] is None else f"{q['oldest_ready_age_s']}s"
        queues.add_row(name, str(q["ready"]), str(q["scheduled"]), str(q["active"]), age)
    out.print(apps)
    out.print(queues)
    out.print(f"live workers: {ov['workers']}")


SHOW_FIELDS: Sequence[tuple[str, str]] = (
    ("app_id", "app id"),
    ("partition_key", "partition"),
    ("name", "name"),
    ("queue", "queue"),
    ("status", "status"),
    ("waiting_for", "waiting for"),
    ("sequence_id", "sequence"),
    ("position", "position"),
    ("step_status", "last step"),
    ("lease_holder", "lease holder"),
    ("lease_ttl", "lease ttl"),
    ("attempts", "attempts"),
    ("claims", "claims"),
    ("last_error", "last error"),
    ("worker", "worker"),
    ("cancel", "cancel requested"),
    ("forked_from", "forked from"),
    ("created_at", "created"),
    ("updated_at", "updated"),
    ("run_at", "run at"),
)


@main.command()
@click.argument("app_id")
@partition_option
@json_flag
def show(app_id: str, partition_key: str | None) -> None:
    """One app: status, position, lease, attempts, errors, times."""
    s = settings()
    job = s.fleet().show(app_id, partition_key=partition_key)
    if s.json:
        emit_json(job)
        return
    view = dict(job)
    view["lease_ttl"] = None if job.get("lease_ttl_ms") is None else f"{job['lease_ttl_ms'] / 1000:.1f}s"
    view["cancel"] = "yes" if job.get("cancel") == "1" else None
    if job.get("fork_app"):
        view["forked_from"] = (
            f"{job['fork_app']} at step {job.get('fork_seq')} (partition {job.get('fork_pk')})"
        )
    for field in ("created_at", "updated_at"):
        view[field] = when(job.get(field))
    view["run_at"] = when(job.get("run_at")) if job.get("status") == "queued" else None
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, label in SHOW_FIELDS:
        table.add_row(label, text(view.get(key)))
    console().print(table)


@main.command()
@click.argument("app_id")
@partition_option
@click.option("--state", "with_state", is_flag=True, help="Include each step's state.")
@json_flag
def history(app_id: str, partition_key: str | None, with_state: bool) -> None:
    """Every retained step of an app, oldest first."""
    s = settings()
    rows = s.fleet().history(app_id, partition_key=partition_key)
    if not with_state:
        rows = [{k: v for k, v in row.items() if k != "state"} for row in rows]
    if s.json:
        emit_json(rows)
        return
    table = Table(title=f"History of {app_id}")
    for col in ("sequence", "action", "status", "time", *(["state"] if with_state else [])):
        table.add_column(col, justify="right" if col == "sequence" else "left", overflow="fold")
    for row in rows:
        cells = [str(row["sequence_id"]), text(row["action"]), text(row["status"]), text(row["created_at"])]
        table.add_row(*cells, *([text(row["state"])] if with_state else []))
    console().print(table)


@main.command(name="ls")
@partition_option
@click.option(
    "--status", "status_filter", type=click.Choice(STATUSES), default=None, help="Only apps in this status."
)
@json_flag
def ls_(partition_key: str | None, status_filter: str | None) -> None:
    """List apps, oldest first.

    Filter by partition (-p) or status (--status).
    """
    s = settings()
    jobs = s.fleet().ls(partition_key=partition_key, status=status_filter)
    if s.json:
        emit_json(jobs)
        return
    if not jobs:
        click.echo("no apps")
        return
    table = Table()
    for col in ("app id", "partition", "name", "status", "queue", "attempts", "updated"):
        table.add_column(col, no_wrap=col == "app id")
    for j in jobs:
        table.add_row(
            j.get("app_id", "?"),
            text(j.get("partition_key")),
            text(j.get("name")),
            text(j.get("status")),
            text(j.get("queue")),
            text(j.get("attempts")),
            when(j.get("updated_at")),
        )
    console().print(table)


@main.command()
@json_flag
def workers() -> None:
    """Live workers and what they run."""
    s = settings()
    found = s.fleet().workers()
    if s.json:
        emit_json(found)
        return
    if not found:
        click.echo("no live workers")
        return
    table = Table()
    for col in ("id", "host", "pid", "queues", "concurrency", "running", "state"):
        table.add_column(col)
    for w in found:
        table.add_row(
            *(text(w.get(k)) for k in ("id", "host", "pid", "queues", "concurrency", "running", "state"))
        )
    console().print(table)


@main.command()
@json_flag
def reconcile() -> None:
    """Re-queue queued apps that no queue lists.

    Repairs what a client that crashed mid-enqueue left behind.
    """
    s = settings()
    fixed = s.fleet().reconcile()
    if s.json:
        emit_json({"requeued": fixed})
    else:
        click.echo(f"re-queued {fixed} apps")


@main.command("migrate-keys")
@click.option("--dry-run", is_flag=True, help="Count what would move; change nothing.")
@json_flag
def migrate_keys(dry_run: bool) -> None:
    """Move data written by burr_dist 0.1 to the current key layout.

    Stop every worker first. One server or Sentinel only (0.1 never ran on Cluster). Safe to run
    again: each app moves in one transaction.
    """
    from burr_dist.migrate import migrate_v1_layout

    s = settings()
    fleet = s.fleet()
    report = migrate_v1_layout(fleet.client, fleet.schema, dry_run=dry_run)
    if s.json:
        emit_json({"apps": report.apps, "queue_entries": report.queue_entries, "dry_run": dry_run})
    else:
        verb = "would move" if dry_run else "moved"
        click.echo(f"{verb} {report.apps} apps and {report.queue_entries} queue entries")


if __name__ == "__main__":  # pragma: no cover
    main()
