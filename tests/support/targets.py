"""One Redis deployment a test runs against, whatever its topology: the ``target`` fixture.

A :class:`Target` is a single server, a 3-primary Cluster or a Sentinel-managed master + replica,
each with or without TLS, on Redis or Valkey. Tests use ``target.url`` (what burr_dist gets: with
``BURR_DIST_TEST_ACL=1`` it carries a restricted ACL user), ``target.client()`` (an admin client,
cluster-aware, for inspecting keys made with :class:`burr_dist.keys.KeySchema`) and
``target.flush()``.

Deployments are started once per session and reused (flushed before each test); one that a test
broke (a node killed or paused, a failover) is replaced. Tests that kill or pause nodes on purpose
use the ``cluster_ha`` / ``sentinel`` fixtures, which are fresh per test.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import redis

from burr_dist.acl import SENTINEL_ACL_RULES, acl_rules, set_acl_user
from burr_dist.testing.embedded import (
    EmbeddedServer,
    TLSFiles,
    find_server_binary,
    make_tls_files,
    tls_unsupported_reason,
)
from burr_dist.testing.sentinel import EmbeddedSentinel
from burr_dist.testing.topologies import EmbeddedCluster

Env = EmbeddedServer | EmbeddedCluster | EmbeddedSentinel

TOPOLOGIES = ("single", "cluster", "sentinel", "tls-single", "tls-cluster", "tls-sentinel")

# BURR_DIST_TEST_ACL=1: every target (and the ``server`` fixture) hands out URLs of a user limited
# to burr_dist's published ACL rules, for the prefixes the tests use, plus ``test:*`` keys for
# the test harness (RPUSH events, INCRBY gates). The sentinels get a user with SENTINEL_ACL_RULES.
ACL = os.environ.get("BURR_DIST_TEST_ACL") == "1"
ACL_USER = "burr-test-user"
ACL_PASSWORD = f"acl-{secrets.token_hex(8)}"
# The demo's prefix too (tests/test_demo.py runs it against the suite's server).
ACL_TEST_RULES = (
    *acl_rules("burr", "other", "burrdemo"),
    "~test:*",
    "+rpush",
    "+incrby",
)  # harness: events, gates


def acl_denials(nodes: list[EmbeddedServer], user: str = ACL_USER) -> list[str]:
    """ACL LOG entries of ``user`` on ``nodes`` (then reset): what the rules refused."""
    out: list[str] = []
    for node in nodes:
        if not node.alive:
            continue
        with node.client() as c:
            for entry in c.acl_log():
                if entry.get("username") == user:
                    out.append(
                        f"port {node.port}: {entry.get('reason')} {entry.get('object')!r} "
                        f"(context {entry.get('context')}, count {entry.get('count')})"
                    )
            c.acl_log_reset()
    return out


@dataclass
class Target:
    name: str  # e.g. "cluster-redis", "tls-sentinel-redis"
    topology: str  # single | cluster | sentinel
    tls: bool
    kind: str  # redis | valkey
    env: Env

    @property
    def url(self) -> str:
        return self.env.url

    def url_with(self, **options: Any) -> str:
        """``url`` with query options added (wait_replicas=1, socket_timeout=...)."""
        sep = "&" if "?" in self.url else "?"
        return self.url + sep + urlencode(options)

    def url_as(self, user: str, password: str, *, sentinel_user: bool = False) -> str:
        """``url`` for another user (made with :meth:`add_user`); with ``sentinel_user`` the
        sentinels are asked as that user too (sentinel_username / sentinel_password)."""
        env = self.env
        saved = env.auth, getattr(env, "sentinel_auth", None)
        env.auth = (user, password)
        if isinstance(env, EmbeddedSentinel):
            env.sentinel_auth = (user, password) if sentinel_user else None
        try:
            return env.url
        finally:
            env.auth = saved[0]
            if isinstance(env, EmbeddedSentinel):
                env.sentinel_auth = saved[1]

    def add_user(self, user: str, password: str, rules: Iterable[str], *, on_sentinels: bool = False) -> None:
        """ACL user ``user`` on every data node (and on the sentinels, with SENTINEL_ACL_RULES)."""
        for node in self.data_nodes():
            with node.client() as c:
                set_acl_user(c, user, password, rules)
        if on_sentinels and isinstance(self.env, EmbeddedSentinel):
            for s in self.env.sentinels:
                with s.client() as c:
                    set_acl_user(c, user, password, SENTINEL_ACL_RULES)

    def delete_user(self, user: str) -> None:
        nodes = self.data_nodes() + (self.env.sentinels if isinstance(self.env, EmbeddedSentinel) else [])
        for node in nodes:
            if node.alive:
                with node.client() as c:
                    c.execute_command("ACL", "DELUSER", user)

    @property
    def server(self) -> EmbeddedServer:
        """The single server (only for single-server targets)."""
        assert isinstance(self.env, EmbeddedServer), self.name
        return self.env

    def client(self, **kwargs: Any) -> Any:
        """An admin client (the default user), cluster-aware, TLS included. Close it after use."""
        return self.env.client(**kwargs)

    def data_nodes(self) -> list[EmbeddedServer]:
        if isinstance(self.env, EmbeddedCluster):
            return list(self.env.nodes)
        if isinstance(self.env, EmbeddedSentinel):
            return list(self.env.data_servers)
        return [self.env]

    def primaries(self) -> list[EmbeddedServer]:
        if isinstance(self.env, EmbeddedCluster):
            return self.env.primaries()
        if isinstance(self.env, EmbeddedSentinel):
            return [self.env.master()]
        return [self.env]

    def healthy(self) -> bool:
        env = self.env
        if isinstance(env, EmbeddedServer):
            return env.alive
        if isinstance(env, EmbeddedCluster):
            return len(env.reachable()) == len(env.nodes)
        if not all(s.alive for s in [*env.data_servers, *env.sentinels]):
            return False
        try:
            return env.master() is env.master_server
        except (redis.RedisError, OSError, StopIteration):
            return False

    def flush(self) -> None:
        """FLUSHALL on every primary, confirmed on replicas."""
        env = self.env
        if isinstance(env, EmbeddedCluster):
            if env.replicas_per_master:
                env.flushall()
            else:  # every node is a primary: one connection each (TLS handshakes add up)
                for node in env.nodes:
                    with node.client() as c:
                        c.flushall()
            return
        node = env.master_server if isinstance(env, EmbeddedSentinel) else env
        with node.client() as c:
            c.flushall()
            if isinstance(env, EmbeddedSentinel):
                c.execute_command("WAIT", len(env.replica_servers), 2000)

    def acl_denials(self) -> list[str]:
        return acl_denials(self.data_nodes())

    def stop(self) -> None:
        self.env.stop()


_tls: TLSFiles | None = None


def session_tls() -> TLSFiles:
    global _tls
    if _tls is None:
        directory = tempfile.mkdtemp(prefix="burr-dist-tls-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)  # certificates and keys
        _tls = make_tls_files(directory)
    return _tls


def unsupported(name: str) -> str | None:
    """Why target ``name`` cannot run here (a binary without TLS), else None."""
    topology, kind = name.rsplit("-", 1)
    if topology.startswith("tls-"):
        return tls_unsupported_reason(find_server_binary(kind), session_tls())
    return None


def start(name: str) -> Target:
    """Start target ``name`` ("<topology>-<kind>"), with the ACL user in ACL mode."""
    topology, kind = name.rsplit("-", 1)
    tls = session_tls() if topology.startswith("tls-") else None
    base = topology.removeprefix("tls-")
    binary = find_server_binary(kind)
    env: Env
    if base == "single":
        env = EmbeddedServer(binary=binary, tls=tls, tls_auth_clients="yes" if tls else "optional").start()
    elif base == "cluster":
        env = EmbeddedCluster(binary, tls=tls).start()
    else:
        env = EmbeddedSentinel(binary, tls=tls).start()
    target = Target(name, base, tls is not None, kind, env)
    if ACL:
        add_acl_users(target)
    return target


def add_acl_users(target: Target) -> None:
    """The restricted user on every data node (and on the sentinels); ``url`` then carries it."""
    target.add_user(ACL_USER, ACL_PASSWORD, ACL_TEST_RULES, on_sentinels=True)
    target.env.auth = (ACL_USER, ACL_PASSWORD)
    if isinstance(target.env, EmbeddedSentinel):
        target.env.sentinel_auth = (ACL_USER, ACL_PASSWORD)


class Targets:
    """The session's deployments by name, started on first use, replaced when broken."""

    def __init__(self) -> None:
        self.running: dict[str, Target] = {}

    def get(self, name: str) -> Target:
        t = self.running.get(name)
        if t is not None and not t.healthy():
            if isinstance(t.env, EmbeddedServer) and t.env.proc is not None and t.env.proc.poll() is not None:
                t.env.start()  # a test killed the single server: same port, fresh data
                if ACL:
                    add_acl_users(t)
            else:
                t.stop()
                t = None
        if t is None:
            t = self.running[name] = start(name)
        return t

    def stop_all(self) -> None:
        for t in self.running.values():
            t.stop()
        self.running.clear()
