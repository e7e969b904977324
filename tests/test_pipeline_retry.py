"""A pipeline retried after a connection reset is sent again in full, not as an empty one
(redis-py empties a pipeline when execute() fails; see store._pipeline_refill)."""

from __future__ import annotations

from burr_dist import RedisStore
from burr_dist.testing.embedded import EmbeddedServer
from burr_dist.transport.connect import connect
from tests.support.proxy import FaultProxy


def test_pipeline_retried_after_reset_is_sent_in_full(fleet_server: EmbeddedServer) -> None:
    proxy = FaultProxy(fleet_server.port)
    proxy.start()
    try:
        store = RedisStore(connect(proxy.url))
        store.client.ping()
        pipe = store.client.pipeline(transaction=False)
        pipe.set("burr:test:a", "1").set("burr:test:b", "2").get("burr:test:a")
        proxy.set_mode("reset")
        assert store._with_retry(pipe.execute) == [True, True, b"1"]
        assert proxy.stats["resets"] >= 1, proxy.stats  # the fault really happened
    finally:
        proxy.stop()
