"""The worker's start-up warning for wait_replicas above the replicas a primary has: read with
ROLE, which burr_dist's ACL rules grant, so it works for the restricted user it documents."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from burr_dist.acl import ACL_RULES, set_acl_user
from burr_dist.testing.embedded import EmbeddedServer, wait_for
from burr_dist.worker.safety import check_replicas


@pytest.fixture(scope="module")
def primary_with_one_replica() -> Iterator[tuple[EmbeddedServer, str]]:
    """A primary, one replica attached to it, and the password of an ACL user with ACL_RULES."""
    with (
        EmbeddedServer(extra=["--repl-diskless-sync-delay", "0"]) as primary,
        EmbeddedServer(extra=["--replicaof", "127.0.0.1", str(primary.port)]),
    ):
        # online: synced and acknowledging, what WAIT counts (and ROLE lists)
        wait_for(lambda: "online" in str(primary.info("replication").get("slave0")) or None, 30,
                 "the replica to sync")  # fmt: skip
        password = secrets.token_hex(8)
        with primary.client() as c:
            set_acl_user(c, "burr-app", password, ACL_RULES)
        yield primary, password


@pytest.mark.parametrize(("wanted", "warned"), [(0, False), (1, False), (2, True)])
async def test_warns_only_when_wait_replicas_exceeds_the_connected_replicas(
    primary_with_one_replica: tuple[EmbeddedServer, str], wanted: int, warned: bool
) -> None:
    primary, password = primary_with_one_replica
    client = aioredis.Redis(port=primary.port, username="burr-app", password=password)
    try:
        warnings = await check_replicas([client], wanted)
    finally:
        await client.aclose()
    if warned:
        assert len(warnings) == 1, warnings
        assert f":{primary.port} has 1 connected replica(s) but wait_replicas={wanted}" in warnings[0]
    else:
        assert warnings == []  # ROLE was granted: no "cannot read" warning either


async def test_a_lone_server_has_no_replicas() -> None:
    with EmbeddedServer() as lone:
        client = aioredis.Redis(port=lone.port)
        try:
            warnings = await check_replicas([client], 1)
        finally:
            await client.aclose()
    assert len(warnings) == 1 and "has 0 connected replica(s) but wait_replicas=1" in warnings[0]
