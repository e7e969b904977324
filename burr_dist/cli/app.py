"""The ``burr-dist`` group, its shared options, exit codes and output helpers; each command family
lives in a module of its own (``fleet_ops``, ``worker_cmd``, ``metrics_cmd``, ``ui_cmd``)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import click
import orjson
import redis
from rich.console import Console

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
from burr_dist.fleet.client import FleetClient
from burr_dist.fleet.registry import Registry, load_registry
from burr_dist.keys import DEFAULT_PREFIX
from burr_dist.store.core import StoreConfig
from burr_dist.transport.connect import DEFAULT_URL, connect, resolve_target
from burr_dist.transport.urls import redact

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


# The commands register themselves on ``main`` when their modules are imported.
