"""docker-compose.yml and the Dockerfile: every ``burr-dist`` command in the compose file is parsed
by the real CLI (down to the subcommand and its options), and Redis is configured for durability."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click
import orjson
import pytest
import yaml
from click.testing import CliRunner

from burr_dist.cli import main
from burr_dist.fleet.registry import load_registry
from burr_dist.testing.embedded import EmbeddedServer

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def parse(argv: list[str]) -> click.Context:
    """Parse a full ``burr-dist ...`` command line the way the console script would, without
    running it: group options, then the subcommand resolved and its own arguments parsed.
    Raises click's UsageError/BadParameter for an invalid invocation."""
    assert argv[0] == "burr-dist", argv
    ctx = main.make_context("burr-dist", argv[1:], resilient_parsing=False)
    protected = getattr(ctx, "_protected_args", None)  # click >= 8.2
    if protected is None:
        protected = ctx.protected_args
    name, command, args = main.resolve_command(ctx, [*protected, *ctx.args])
    assert name is not None and command is not None
    return command.make_context(name, args, parent=ctx)


BURR_DIST_SERVICES = {name: s for name, s in SERVICES.items() if command_of(s)[:1] == ["burr-dist"]}


def test_compose_has_the_fleet_services() -> None:
    assert {"redis", "worker", "enqueue"} <= set(SERVICES)
    assert set(BURR_DIST_SERVICES) == {"worker", "enqueue"}


@pytest.mark.parametrize("service", sorted(BURR_DIST_SERVICES))
def test_burr_dist_commands_are_valid_invocations(service: str) -> None:
    ctx = parse(command_of(SERVICES[service]))
    assert ctx.info_name == service  # both services are named after their subcommand
    if service == "worker":
        assert ctx.params["concurrency"] == 8
        load_registry(ctx.params["module"])  # the module the workers import exists and has a registry
    else:
        assert ctx.params["count"] == 50
        assert ctx.params["name"] in load_registry("examples.apps").apps


@pytest.mark.parametrize(
    "command",
    [
        "burr-dist worker",
        "burr-dist worker examples.apps --concurrency 0",
        "burr-dist enqueu counter",
        "burr-dist enqueue counter --count many",
        "burr-dist --no-such-option status",
    ],
)
def test_parse_rejects_invalid_invocations(command: str) -> None:
    with pytest.raises(click.UsageError):
        parse(shlex.split(command))


def test_redis_is_durable_and_never_evicts() -> None:
    redis = SERVICES["redis"]
    assert str(redis["image"]).startswith("redis:7")
    args = command_of(redis)
    options = dict(zip(args[1::2], args[2::2], strict=True))
    assert args[0] == "redis-server"
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"
    assert any(str(v).endswith(":/data") for v in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"] and "ping" in redis["healthcheck"]["test"]
    volume = next(str(v).split(":")[0] for v in redis["volumes"])
    assert volume in COMPOSE["volumes"]


@pytest.mark.parametrize("service", ["worker", "enqueue"])
def test_fleet_services_reach_the_redis_service(service: str) -> None:
    spec = SERVICES[service]
    assert spec["build"] == "."
    assert environment_of(spec)["REDIS_URL"] == "redis://redis:6379/0"
    assert spec["depends_on"]["redis"]["condition"] == "service_healthy"
    if service == "worker":
        assert spec["deploy"]["replicas"] == 3


def test_dockerfile_installs_the_package_and_the_examples() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "\nFROM python:" in text
    assert "pip install ." in text
    assert "COPY pyproject.toml" in text and "COPY burr_dist" in text and "COPY examples" in text


def test_compose_enqueue_command_runs(fleet_server: EmbeddedServer) -> None:
    """The enqueue service's exact command, against a real server (REDIS_URL from the env)."""
    args = command_of(SERVICES["enqueue"])[1:]
    env = environment_of(SERVICES["enqueue"]) | {"REDIS_URL": fleet_server.url}
    result = CliRunner(env=env).invoke(main, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert orjson.loads(result.stdout)["created"] == 50
