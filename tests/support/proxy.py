"""A threaded TCP proxy between a client and a Redis server, with faults switched at run time.

    proxy = FaultProxy(server_port).start()
    client = connect(proxy.url)
    proxy.set_mode("drop_reply")          # the next command runs, its reply never arrives
    ...
    proxy.stop()

Modes (``set_mode(mode, seconds=..., count=...)``):

``pass``        forward both ways.
``drop_reply``  forward the client's next request, read the server's reply, then close the client
                connection without relaying it: the command WAS applied, the client sees a
                connection error. One-shot by default (``count=1``), then back to ``pass``.
``delay``       hold every chunk, both ways, ``seconds`` before forwarding it.
``blackhole``   accept connections but forward nothing either way: bytes are read and discarded,
                so the peer waits until its own timeout. A connection that lost bytes this way
                is out of step with the protocol: ``close_all()`` after switching back.
``reset``       on the client's next request, forward only its first half, then reset both
                connections (RST to the client): the server never runs the command.
                One-shot by default.

``stats`` counts connections and injected faults; ``close_all()`` cuts every live connection.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections import Counter
from typing import Literal

Mode = Literal["pass", "drop_reply", "delay", "blackhole", "reset"]
MODES = ("pass", "drop_reply", "delay", "blackhole", "reset")
_ONE_SHOT = ("drop_reply", "reset")


def _rst(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class _Link:
    """One proxied connection: a client socket, a server socket and two pump threads."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.drop_next_reply = False
        self.closed = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> None:
        for src, dst, upstream in ((self.client, self.server, True), (self.server, self.client, False)):
            threading.Thread(target=self._pump, args=(src, dst, upstream), daemon=True).start()

    def close(self, *, reset_client: bool = False) -> None:
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
        if reset_client:
            _rst(self.client)
        else:
            _close(self.client)
        _close(self.server)
        self.proxy._forget(self)

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while not self.closed.is_set():
                ready, _, _ = select.select([src], [], [], 0.1)
                if not ready:
                    continue
                data = src.recv(65536)
                if not data:
                    break
                mode, seconds = self.proxy._take(upstream)
                if mode == "blackhole":
                    self.proxy._count("blackholed_chunks")
                    continue
                if mode == "delay" and seconds > 0 and self.closed.wait(seconds):
                    break
                if upstream:
                    if mode == "reset":
                        dst.sendall(data[: len(data) // 2])
                        self.proxy._count("resets")
                        self.close(reset_client=True)
                        break
                    if mode == "drop_reply":
                        self.drop_next_reply = True  # before sending: the reply cannot overtake it
                    dst.sendall(data)
                else:
                    if self.drop_next_reply:
                        self.proxy._count("dropped_replies")
                        self.close()
                        break
                    dst.sendall(data)
        except OSError:
            pass
        self.close()


class FaultProxy:
    """TCP proxy on 127.0.0.1 (a free port unless given) to ``target_host:target_port``."""

    def __init__(
        self, target_port: int, target_host: str = "127.0.0.1", *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self._port = port
        self.mode: Mode = "pass"
        self.seconds = 0.0
        self._remaining: int | None = None
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self.stats: Counter[str] = Counter()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self._port))
        listener.listen(128)
        self._port = listener.getsockname()[1]
        self._listener = listener
        self._running.set()
        self._thread = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._running.clear()
        if self._listener is not None:
            _close(self._listener)
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.close_all()

    def __enter__(self) -> FaultProxy:
        return self.start() if self._listener is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self._port}/0"

    # -- faults ----------------------------------------------------------------------------
    def set_mode(self, mode: Mode, *, seconds: float = 0.0, count: int | None = None) -> None:
        """Switch the fault. ``count``: how many requests a one-shot fault hits (default 1 for
        drop_reply and reset; None = until changed). ``seconds``: the delay of ``delay``."""
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}; use one of {MODES}")
        with self._lock:
            self.mode = mode
            self.seconds = seconds
            self._remaining = (1 if count is None else count) if mode in _ONE_SHOT else count

    def close_all(self) -> None:
        """Cut every live connection (FIN to both sides)."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._links)

    def wait_for(self, stat: str, value: int = 1, timeout: float = 5.0) -> bool:
        give_up = time.monotonic() + timeout
        while self.stats[stat] < value:
            if time.monotonic() > give_up:
                return False
            time.sleep(0.005)
        return True

    # -- internals -------------------------------------------------------------------------
    def _take(self, upstream: bool) -> tuple[Mode, float]:
        """The mode for one chunk; consumes one shot of a one-shot fault on client requests."""
        with self._lock:
            mode, seconds = self.mode, self.seconds
            if mode in _ONE_SHOT:
                if not upstream:
                    return "pass", 0.0
                if self._remaining is not None:
                    self._remaining -= 1
                    if self._remaining <= 0:
                        self.mode, self._remaining = "pass", None
            return mode, seconds

    def _count(self, stat: str) -> None:
        with self._lock:
            self.stats[stat] += 1

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while self._running.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                _rst(client)
                self._count("upstream_failures")
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(self, client, server)
            with self._lock:
                self._links.add(link)
                self.stats["connections"] += 1
            link.start()
