"""``burr-dist tail``: follow what an app's streaming actions yield, live (FleetClient.stream)."""

from __future__ import annotations

import sys

import click

from burr_dist.cli.app import emit_json, json_flag, main, partition_option, settings, text
from burr_dist.errors import BurrDistError
from burr_dist.fleet.streams import DONE, StreamEvent
from burr_dist.keys import check_id


def _line(event: StreamEvent) -> str:
    where = f"[{event.sequence_id} {event.action}]"
    if event.kind == "start":
        worker = event.value.get("worker") if isinstance(event.value, dict) else None
        return f"{where} started on {text(worker)}"
    if event.kind == "item":
        if event.error is not None:
            return f"{where} item {event.index} not stored: {event.error}"
        return f"{where} {text(event.value)}"
    if event.error is not None:
        return f"{where} raised after {event.index} items: {event.error}"
    return f"{where} result: {text(event.value)}"


@main.command()
@click.argument("app_id")
@partition_option
@click.option("--new", "new_only", is_flag=True, help="Skip the retained records: only what comes next.")
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
    help="Stop after this many seconds (exit 1 when the app still runs).",
)  # fmt: skip
@json_flag
def tail(app_id: str, partition_key: str | None, new_only: bool, timeout: float | None) -> None:
    """Print what APP_ID's streaming actions yield as it arrives (the retained records first),
    each step's result, and exit once the app parks or finishes.

    With --json: one JSON object per record (kind, sequence_id, action, index, value, id, error),
    then {"app_id": ..., "status": ...}.
    """
    check_id("app_id", app_id)
    s = settings()
    fleet = s.fleet()
    for event in fleet.stream(app_id, partition_key=partition_key, from_start=not new_only, timeout=timeout):
        if s.json:
            emit_json(event.to_json())
        else:
            click.echo(_line(event))
        sys.stdout.flush()  # a pipe buffers: the reader wants each record now
    status = fleet.read_stream_status(
        fleet.commands([fleet.stream_status_cmd(partition_key, app_id)])[0], app_id, partition_key
    )
    if status not in DONE:
        raise BurrDistError(f"app {app_id!r} still {status} after {timeout} s")
    if s.json:
        emit_json({"app_id": app_id, "status": status})
    else:
        click.echo(f"{app_id}: {status}")
