"""A connection the network silently dropped: the kernel gives up on unacknowledged bytes
(TCP_USER_TIMEOUT) and the read fails with ETIMEDOUT. The async round trip must fail with a
transient error (retried on a fresh connection), never hand back a None reply for the command.

Redis runs in a network namespace of its own, behind a veth pair; taking the namespace's end of
the pair down drops everything we send without a word back, as a partition would (this kernel
has no netem qdisc). Needs root and `ip`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from burr_dist.transport.aio import _aroundtrip

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("redis-server"),
    reason="needs root, ip and redis-server (network namespaces)",
)


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture
def partitionable_redis() -> Iterator[tuple[str, int, list[str]]]:
    """(address, port, the command that partitions it): a Redis in namespace bd<pid>."""
    tag = os.getpid() % 10000
    ns, ours, theirs = f"bd{tag}", f"bd{tag}a", f"bd{tag}b"
    net = f"10.251.{tag % 250}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", ours, "type", "veth", "peer", "name", theirs)
        sh("ip", "link", "set", theirs, "netns", ns)
        sh("ip", "addr", "add", f"{net}.1/30", "dev", ours)
        sh("ip", "link", "set", ours, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{net}.2/30", "dev", theirs)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", theirs, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, "redis-server", "--port", "6390", "--bind", f"{net}.2",
             "--save", "", "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            give_up = time.monotonic() + 10
            while True:
                try:
                    redis.Redis(host=f"{net}.2", port=6390, socket_timeout=1).ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < give_up, "redis-server in the namespace did not start"
                    time.sleep(0.05)
            yield f"{net}.2", 6390, ["ip", "netns", "exec", ns, "ip", "link", "set", theirs, "down"]
        finally:
            server.kill()
            server.wait()
    finally:
        subprocess.run(["ip", "link", "del", ours], capture_output=True)  # gone with the namespace too
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


async def test_a_read_the_os_timed_out_is_a_transient_error_not_a_none_reply(
    partitionable_redis: tuple[str, int, list[str]],
) -> None:
    host, port, partition = partitionable_redis
    client = aioredis.Redis(
        host=host, port=port, socket_timeout=5.0, socket_keepalive=True,
        socket_keepalive_options={socket.TCP_USER_TIMEOUT: 300},  # ms of unacknowledged data
    )  # fmt: skip
    conn = await client.connection_pool.get_connection("_")
    try:
        assert await _aroundtrip(conn, [("SET", "k", "v"), ("GET", "k")]) == [b"OK", b"v"]
        sh(*partition)
        started = time.monotonic()
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
            await _aroundtrip(conn, [("GET", "k")])
        # The OS's verdict (0.3 s, give or take retransmission spacing), not our 5 s round-trip deadline.
        assert time.monotonic() - started < 4.0
        assert conn.socket_timeout == 5.0  # restored: the pool's next user gets its timeout back
    finally:
        await client.connection_pool.release(conn)
        await client.aclose()
