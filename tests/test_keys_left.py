"""After apps run to completion and their leases are released, the server holds exactly the
documented keys: meta and snaps per app, and the partition index. Nothing stray."""

from __future__ import annotations

import pytest
import redis

from burr_dist import AsyncRedisStore, RedisStore, arun_app, run_app
from burr_dist.keys import KeySchema
from tests.support.apps import counter_builder

PK = "user-1"
KEYS = KeySchema("burr")


def expected_keys(pk: str | None, apps: list[str]) -> set[bytes]:
    out: set[bytes] = set()
    for app_id in apps:
        k = KEYS.app(pk, app_id)
        out |= {k.meta.encode(), k.snaps.encode(), k.index.encode()}  # the index of the app's bucket
    return out


def scan(client: redis.Redis) -> set[bytes]:
    return set(client.scan_iter(match=KEYS.scan_pattern(), count=1000))


@pytest.mark.parametrize("pk", [PK, None])
def test_run_app_leaves_only_meta_snaps_and_index(
    store: RedisStore, client: redis.Redis, pk: str | None
) -> None:
    apps = ["chat:1", "chat 2"]  # ids that need encoding

    def factory(persister, app_id, partition_key):  # type: ignore[no-untyped-def]
        return counter_builder(persister, app_id, partition_key, limit=3)

    for app_id in apps:
        out = run_app(store, factory, app_id=app_id, partition_key=pk, ttl=5, halt_before=["done"])
        assert out.steps == 3
        # Resume to completion in a second run, as another worker would.
        out = run_app(store, factory, app_id=app_id, partition_key=pk, ttl=5)
        assert out.finished
        assert out.sequence_id == 3

    assert scan(client) == expected_keys(pk, apps)
    assert set(client.keys("*")) == expected_keys(pk, apps)  # nothing outside the prefix either
    for app_id in apps:
        k = KEYS.app(pk, app_id)
        assert client.hlen(k.snaps) == 4
        assert client.pttl(k.meta) == -1
    indexed = [m.decode() for key in KEYS.partition_indexes(pk) for m in client.zrange(key, 0, -1)]
    assert sorted(indexed) == sorted(apps)


async def test_arun_app_leaves_only_meta_snaps_and_index(
    astore: AsyncRedisStore, client: redis.Redis
) -> None:
    apps = ["a1", "a2"]

    def factory(persister, app_id, partition_key):  # type: ignore[no-untyped-def]
        return counter_builder(persister, app_id, partition_key, is_async=True, limit=2)

    for app_id in apps:
        out = await arun_app(astore, factory, app_id=app_id, partition_key=PK, ttl=5)
        assert out.finished
    assert scan(client) == expected_keys(PK, apps)
