"""``burr-dist metrics``: a Prometheus exporter of the fleet's apps and queues.

One exporter for the whole fleet: its gauges are read from Redis on every scrape, so they are
not multiplied by the number of workers (each worker's own counters: ``worker --metrics-port``).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from burr_dist.cli.app import LOG_LEVELS, main, settings
from burr_dist.observability.logs import FORMATS, configure


@main.command()
@click.option(
    "--port", type=click.IntRange(min=0, max=65535), default=9464, show_default=True, help="Port of /metrics."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="info", show_default=True
)
@click.option("--log-format", type=click.Choice(FORMATS), default="text", show_default=True)
def metrics(port: int, host: str, log_level: str, log_format: str) -> None:
    """Serve the fleet's apps by status and its queues' depth and oldest age as Prometheus gauges.

    Read from Redis at every scrape. Runs until SIGTERM/SIGINT.
    """
    import logging

    from prometheus_client import start_http_server

    from burr_dist.observability.metrics import fleet_registry

    configure(log_level, log_format)
    fleet = settings().fleet()  # PING first: exit 5 when Redis cannot be reached
    server, _thread = start_http_server(port, addr=host, registry=fleet_registry(fleet))
    logging.getLogger(__name__).info(
        "fleet metrics on http://%s:%d/metrics", host, server.server_address[1],
        extra={"event": "metrics_serving"},
    )  # fmt: skip
    stop = threading.Event()

    def on_signal(_sig: int, _frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    while not stop.wait(0.5):
        pass
    server.shutdown()
