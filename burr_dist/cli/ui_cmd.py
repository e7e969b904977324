"""``burr-dist ui``: Burr's own tracking server (the Burr UI) on the fleet's Redis.

Burr's ``burr`` command sets ``BURR_BACKEND_IMPL`` itself, so this starts the server the way Burr
documents for a custom backend: ``python -m uvicorn burr.tracking.server.run:app``, with
:class:`burr_dist.ui.backend.RedisBackend` and its settings in ``BURR_`` environment variables.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import click

from burr_dist.cli.app import check_redis, main, settings
from burr_dist.errors import ConfigurationError
from burr_dist.transport.urls import redact

BACKEND = "burr_dist.ui.backend.RedisBackend"
# What the server imports, and the package each comes from (all installed by the `ui` extra).
NEEDS = {"fastapi": "fastapi", "uvicorn": "uvicorn", "pydantic_settings": "pydantic-settings",
         "loguru": "loguru", "aiofiles": "aiofiles"}  # fmt: skip


def missing_modules() -> list[str]:
    return [pkg for mod, pkg in NEEDS.items() if importlib.util.find_spec(mod) is None]


def server_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "burr.tracking.server.run:app", "--host", host,
            "--port", str(port), "--log-level", "warning"]  # fmt: skip


def server_env(url: str, prefix: str) -> dict[str, str]:
    return {**os.environ, "BURR_BACKEND_IMPL": BACKEND, "BURR_DIST_URL": url, "BURR_DIST_PREFIX": prefix}


@main.command()
@click.option("--port", type=click.IntRange(min=1, max=65535), default=7241, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
def ui(port: int, host: str) -> None:
    """Serve the Burr UI on the fleet: every app's steps and the worker that ran each.

    Needs the ui extra: pip install 'burr_dist[ui]'. Workers record what it shows unless they run
    with --no-track. Runs until SIGTERM/SIGINT.
    """
    missing = missing_modules()
    if missing:
        raise ConfigurationError(
            f"burr-dist ui needs Burr's tracking server, which is not installed (missing: "
            f"{', '.join(missing)}): pip install 'burr_dist[ui]'",
            missing=missing,
        )
    s = settings()
    s.config()  # validates the prefix
    check_redis(s.url).close()  # exit 5 at once when Redis cannot be reached
    click.echo(f"Burr UI on http://{host}:{port} (Redis {redact(s.url)})", err=True)
    sys.stdout.flush()
    os.execve(sys.executable, server_command(host, port), server_env(s.url, s.prefix))
