"""The environment the tests run in is the one users get: the newest redis-py that pyproject.toml
allows (the benchmark peers, which pin redis<6, live in .venv-bench), and behaviour that changed
between redis-py 5.3 and 8 is pinned down by our own settings."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import redis

from burr_dist.errors import ConfigurationError
from burr_dist.testing.embedded import EmbeddedServer
from burr_dist.transport.connect import aconnect, connect

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parent.parent


def pyproject() -> dict:
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def redis_requirement() -> tuple[int, int]:
    """(lowest major.minor, first major not allowed) of the redis-py requirement."""
    [req] = [d for d in pyproject()["project"]["dependencies"] if re.match(r"redis\b", d)]
    low = re.search(r">=\s*(\d+)\.(\d+)", req)
    high = re.search(r"<\s*(\d+)", req)
    assert low and high, f"the redis-py requirement states no range: {req!r}"
    return int(low[1]) * 100 + int(low[2]), int(high[1])


def test_dev_env_runs_the_newest_redis_py_allowed() -> None:
    _, first_not_allowed = redis_requirement()
    assert int(redis.__version__.split(".")[0]) == first_not_allowed - 1, (
        f"redis-py {redis.__version__} in the test env; pyproject allows up to <{first_not_allowed}. "
        "Did a package that pins redis join the dev extra? (make clean test rebuilds .venv)"
    )


def test_benchmark_peers_stay_out_of_the_dev_extra() -> None:
    extras = pyproject()["project"]["optional-dependencies"]
    dev = " ".join(extras["dev"])
    for peer in ("arq", "rq"):
        assert not re.search(rf"\b{peer}\b", dev), f"{peer} pins redis-py; it belongs in the bench extra"
        assert any(d.startswith(peer) for d in extras["bench"])


def test_clients_do_not_retry_on_their_own() -> None:
    """redis-py >= 6 retries every command by default; our retry policy (with commit read-back)
    must be the only one, on every supported version."""
    for client in (connect("redis://127.0.0.1:1/0"), aconnect("redis://127.0.0.1:1/0")):
        retry = client.connection_pool.connection_kwargs["retry"]
        assert retry._retries == 0


def test_a_server_that_cannot_start_is_reported_at_once() -> None:
    server = EmbeddedServer(extra=["--no-such-option", "x"])
    started = time.monotonic()
    try:
        with pytest.raises(ConfigurationError, match="did not start"):
            server.start()
    finally:
        server.stop()
    assert time.monotonic() - started < 2  # 3.8 s with redis-py 8's default client retries
