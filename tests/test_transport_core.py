"""BatchCore (the sans-IO half of the transport) on replies a failover or a migration produces."""

from __future__ import annotations

import pytest
import redis

from burr_dist.connection import is_transient
from burr_dist.errors import NotDurable
from burr_dist.transport import BatchCore, Cmd, Durability

CMDS = [Cmd("burr:{7}:a", ("SET", "burr:{7}:a", "1"))]
WAIT1 = Durability(1, 100)
ON_REPLICA = redis.ResponseError(
    "WAIT cannot be used with replica instances. Please also note that since Redis 4.0 if a replica is "
    "configured to be writable (which is not the default) writes to replicas are just local and are not "
    "propagated."
)


def test_wait_on_a_node_that_became_a_replica_is_transient() -> None:
    """A restarted old master rejoins as a replica at the same address: the command is MOVED and
    WAIT is refused there. The batch is sent again (after a refresh), not failed for good."""
    assert is_transient(ON_REPLICA)
    batch = BatchCore(CMDS, WAIT1, durable=True)
    moved = redis.exceptions.MovedError("3 127.0.0.1:7001")
    assert batch.take([0], [moved, moved, ON_REPLICA], "n1") == []
    assert batch.pending == {0}


def test_a_refused_incr_leaves_the_batch_unconfirmed() -> None:
    """The command ran but the INCR that WAIT's offset must cover was redirected (its key moved
    away mid-migration): WAIT's count proves nothing about what the command read."""
    batch = BatchCore(CMDS, WAIT1, durable=True)
    ask = redis.exceptions.AskError("3 127.0.0.1:7002")
    assert batch.take([0], ["OK", ask, 1], "n1") == []
    assert batch.pending == {0}


def test_short_wait_is_not_durable() -> None:
    batch = BatchCore(CMDS, WAIT1, durable=True)
    with pytest.raises(NotDurable):
        batch.take([0], ["OK", 5, 0], "n1")
    ok = BatchCore(CMDS, WAIT1, durable=True)
    ok.take([0], ["OK", 6, 1], "n1")
    assert ok.pending == set() and ok.replies == ["OK"]
