"""Fleet operations: enqueue, operator transitions (resume, cancel, retry, fork) and inspection
(status, show, history, ls, workers), plus repairs (reconcile, migrate-keys)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

import click
import redis
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from burr_dist.cli.app import (
    ENQUEUE_CHUNK,
    Settings,
    console,
    emit_json,
    import_registry,
    json_flag,
    json_object,
    main,
    partition_option,
    settings,
    text,
    when,
)
from burr_dist.errors import BurrDistError
from burr_dist.fleet.core import DEFAULT_QUEUE, STATUSES, Enqueued, EnqueueRequest
from burr_dist.fleet.core import state_values as fleet_state_values


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
@click.option(
    "--state", default=None, metavar="JSON",
    help="Initial state as Burr serializes it (a JSON object, or @file); typed values use Burr's serde records.",
)  # fmt: skip
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
    if not math.isfinite(delay):  # click's FloatRange(min=0) lets nan and inf through
        raise click.BadParameter(f"must be a finite number of seconds, got {delay}", param_hint="--delay")
    state_obj = json_object(state, "--state")
    inputs_obj = json_object(inputs, "--inputs")
    if module is not None:
        spec = import_registry(module).get(name)  # ConfigurationError for an unknown name
        queue = queue or spec.queue
    queue = queue or DEFAULT_QUEUE
    # --state is a state as Burr serializes it: read back with State.deserialize (after --module
    # imported the serdes it may register), then checked and encoded as a commit would be.
    state_values = None if state_obj is None else fleet_state_values(state_obj, "--state")

    def requests(n: int) -> list[EnqueueRequest]:
        return [
            EnqueueRequest(
                name,
                app_id,
                partition_key=partition_key,
                state=state_values,
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

    _enqueue_count(s, requests, name, count, queue)


def _enqueue_count(
    s: Settings, requests: Callable[[int], list[EnqueueRequest]], name: str, count: int, queue: str
) -> None:
    """``enqueue --count N``: chunks of ENQUEUE_CHUNK apps, with a progress bar on stderr."""
    fleet = s.fleet()
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
    from burr_dist.fleet.migrate import migrate_v1_layout

    s = settings()
    fleet = s.fleet()
    report = migrate_v1_layout(fleet.client, fleet.schema, dry_run=dry_run)
    if s.json:
        emit_json({"apps": report.apps, "queue_entries": report.queue_entries, "dry_run": dry_run})
    else:
        verb = "would move" if dry_run else "moved"
        click.echo(f"{verb} {report.apps} apps and {report.queue_entries} queue entries")
