"""Sentinel-managed replication built from :class:`EmbeddedServer` processes on free loopback
ports: a master, its replicas and the sentinels that fail it over. Import it from
``burr_dist.testing.topologies`` with the cluster.

The sentinels' config names the other sentinels and the replicas up front (``known-sentinel``,
``known-replica``), so a fresh setup is ready as soon as the links are up instead of after a
hello/INFO discovery round of several seconds.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis

from burr_dist.testing.embedded import (
    FAST_REPLICATION,
    LOOPBACK,
    EmbeddedServer,
    TLSFiles,
    find_server_binary,
    userinfo,
    wait_for,
)

HOST = LOOPBACK


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(reply: Any) -> dict[str, str]:
    """A SENTINEL MASTER reply (a flat [name, value...] list, or a map) as a dict of text."""
    if isinstance(reply, dict):
        return {_text(k): _text(v) for k, v in reply.items()}
    return {_text(reply[i]): _text(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}


class SentinelServer(EmbeddedServer):
    """A sentinel process. Its config file is written once (sentinels rewrite it), naming the
    other sentinels and the replicas up front so that no discovery round is waited for."""

    def __init__(self, conf_lines: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.myid = secrets.token_hex(20)
        self.conf_lines = conf_lines

    def args(self) -> list[str]:
        conf = Path(self.dir, "sentinel.conf")
        if not conf.exists():
            if self.tls:
                listen = ["port 0", f"tls-port {self.port}", "tls-replication yes"]
                flags = self.tls.server_args(self.tls_auth_clients)
                listen += [f"{flags[i][2:]} {flags[i + 1]}" for i in range(0, len(flags), 2)]
            else:
                listen = [f"port {self.port}"]
            head = [*listen, f"bind {HOST}", f"dir {self.dir}", f"sentinel myid {self.myid}"]
            conf.write_text("\n".join(head + self.conf_lines) + "\n")
        return [self.binary, str(conf), "--sentinel", *self.extra]


class EmbeddedSentinel:
    """A master, ``replicas`` replicas and ``sentinels`` sentinels watching ``service``.

    ``extra`` goes to the data servers (e.g. ``["--min-replicas-to-write", "1"]``). With ``tls``
    the data servers and sentinels listen with TLS only and replicate over TLS.
    """

    def __init__(
        self,
        binary: str | None = None,
        replicas: int = 1,
        sentinels: int = 3,
        tls: TLSFiles | None = None,
        extra: list[str] | None = None,
        *,
        service: str = "mymaster",
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        self.binary = binary or find_server_binary()
        self.service = service
        self.tls = tls
        # Credentials ``url`` carries: for the data servers (user:password@) and for the
        # sentinels (sentinel_username / sentinel_password options).
        self.auth: tuple[str, str] | None = None
        self.sentinel_auth: tuple[str, str] | None = None
        self.dir = tempfile.mkdtemp(prefix="burr-dist-sentinel-")
        repl = FAST_REPLICATION + (["--tls-replication", "yes"] if tls else [])
        self.master_server = EmbeddedServer(
            binary=self.binary,
            tls=tls,
            directory=str(Path(self.dir, "data0")),
            extra=repl + list(extra or []),
        )
        mport = str(self.master_server.port)
        self.replica_servers = [
            EmbeddedServer(
                binary=self.binary,
                tls=tls,
                directory=str(Path(self.dir, f"data{i + 1}")),
                extra=["--replicaof", HOST, mport, *repl, *(extra or [])],
            )
            for i in range(replicas)
        ]
        base = [
            f"sentinel monitor {service} {HOST} {mport} {quorum}",
            f"sentinel down-after-milliseconds {service} {down_after_ms}",
            f"sentinel failover-timeout {service} {failover_timeout_ms}",
            f"sentinel parallel-syncs {service} 1",
        ] + [f"sentinel known-replica {service} {HOST} {r.port}" for r in self.replica_servers]
        self.sentinels = [
            SentinelServer(base, binary=self.binary, tls=tls, directory=str(Path(self.dir, f"sentinel{i}")))
            for i in range(sentinels)
        ]
        for s in self.sentinels:
            s.conf_lines = s.conf_lines + [
                f"sentinel known-sentinel {service} {HOST} {o.port} {o.myid}"
                for o in self.sentinels
                if o is not s
            ]

    @property
    def data_servers(self) -> list[EmbeddedServer]:
        return [self.master_server, *self.replica_servers]

    @property
    def seeds(self) -> list[tuple[str, int]]:
        return [(HOST, s.port) for s in self.sentinels]

    @property
    def url(self) -> str:
        hosts = userinfo(self.auth) + ",".join(f"{h}:{p}" for h, p in self.seeds)
        query = [self.tls.query()] if self.tls else []
        if self.sentinel_auth is not None:
            user, password = (quote(x, safe="") for x in self.sentinel_auth)
            query.append(f"sentinel_username={user}&sentinel_password={password}")
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        return f"{scheme}://{hosts}/{self.service}" + (f"?{'&'.join(query)}" if query else "")

    def client(self, **kwargs: Any) -> redis.Redis:
        """A redis-py client to the master the sentinels name (re-resolved on reconnect)."""
        tls = self.tls.client_kwargs() if self.tls else {}
        s = redis.Sentinel(self.seeds, sentinel_kwargs=tls | {"socket_timeout": 1.0}, **tls)  # type: ignore[no-untyped-call,unused-ignore]
        return s.master_for(self.service, **kwargs)  # type: ignore[no-untyped-call,unused-ignore]

    def start(self, timeout: float = 30.0) -> EmbeddedSentinel:
        try:
            for srv in [*self.data_servers, *self.sentinels]:
                srv.start()
            wait_for(self._watching, timeout, "sentinels see the master, its replicas and each other")
        except BaseException:
            self.stop()
            raise
        return self

    def _watching(self) -> bool:
        for replica in self.replica_servers:
            if replica.info("replication").get("master_link_status") != "up":
                return False
        for s in self.sentinels:
            with s.client(socket_timeout=1.0) as c:
                m = _pairs(c.execute_command("SENTINEL", "MASTER", self.service))
                if m["flags"] != "master" or int(m["num-other-sentinels"]) != len(self.sentinels) - 1:
                    return False
                if int(m["num-slaves"]) != len(self.replica_servers):
                    return False
                for flat in c.execute_command("SENTINEL", "REPLICAS", self.service):
                    r = _pairs(flat)
                    if r["flags"] != "slave" or r.get("master-link-status") != "ok":
                        return False
        return True

    def stop(self) -> None:
        for srv in [*self.sentinels, *self.data_servers]:
            srv.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedSentinel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _announced(self, sentinel: SentinelServer) -> int:
        with sentinel.client(socket_timeout=1.0) as c:
            _, port = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(port)

    def master(self) -> EmbeddedServer:
        """The data server the first reachable sentinel announces as master."""
        s = next(s for s in self.sentinels if s.alive)
        port = self._announced(s)
        return next(d for d in self.data_servers if d.port == port)

    def kill_master(self) -> EmbeddedServer:
        """SIGKILL the announced master; returns it (for :meth:`wait_new_master`)."""
        m = self.master()
        m.kill()
        return m

    def force_failover(self) -> EmbeddedServer:
        """SENTINEL FAILOVER (no agreement needed); returns the master before it."""
        old = self.master()
        s = next(s for s in self.sentinels if s.alive)
        with s.client() as c:
            c.execute_command("SENTINEL", "FAILOVER", self.service)
        return old

    def restart(self, server: EmbeddedServer, *, as_replica: bool = True, timeout: float = 30.0) -> None:
        """Start a killed data server again. ``as_replica``: as a replica of the announced master,
        waiting until it is in sync (what the sentinels would do themselves, but only after
        about 8 s of seeing it claim to be a master). Otherwise it starts with no --replicaof."""
        server.kill()
        extra = server.extra
        if "--replicaof" in extra:
            i = extra.index("--replicaof")
            del extra[i : i + 3]
        master = self.master()
        as_replica = as_replica and master is not server  # not failed over (yet): master again
        if as_replica:
            extra += ["--replicaof", HOST, str(master.port)]
        server.start()
        if as_replica:
            wait_for(
                lambda: server.info("replication").get("master_link_status") == "up",
                timeout,
                f"port {server.port} in sync with the master",
            )

    def wait_new_master(self, old: EmbeddedServer, timeout: float = 30.0) -> EmbeddedServer:
        """Wait until every running sentinel announces the same master, not ``old``, and that
        server reports role:master; return it."""

        def agreed() -> EmbeddedServer | None:
            ports = {self._announced(s) for s in self.sentinels if s.alive}
            if len(ports) != 1 or old.port in ports:
                return None
            new = next(d for d in self.data_servers if d.port in ports)
            return new if new.alive and new.info("replication").get("role") == "master" else None

        return wait_for(agreed, timeout, f"sentinels agree on a master other than port {old.port}")
