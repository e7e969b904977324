"""Which failures of a claim end as the app's error (poison pills) and which end the claim only.

A *poison pill* fails the same way on every worker: a state the codec refuses
(``SerializationError``: a field no serde can store, a state over ``max_state_bytes``), a snapshot
nobody can read (``CorruptSnapshot``), a factory or a build that raises, an error Burr raises
while stepping. Requeueing it as infrastructure trouble would loop for ever, each try holding a
slot until its lease expired. It is treated like an action that raised: recorded on
the job (``last_error``), retried under the app's RetryPolicy with backoff, then ``failed``; the
settle releases the lease at once.

*Transient* failures say nothing about the app: Redis unreachable or failing over, the lease lost
or not confirmed by replicas (``NotDurable``), a sequence conflict (another holder committed),
the store rewound. They keep ending the claim without a settle: the lease expires, the sweep
requeues the app, the next claim runs it.
"""

from __future__ import annotations

import redis

from burr_dist.errors import (
    LeaseError,
    NotDurable,
    RedisUnavailable,
    SequenceConflict,
    StoreRewound,
)
from burr_dist.transport.connect import is_transient

# Not the app's doing: the claim ends without a settle (the module doc).
INFRASTRUCTURE: tuple[type[BaseException], ...] = (
    LeaseError,
    SequenceConflict,
    StoreRewound,
    NotDurable,
    RedisUnavailable,
    redis.RedisError,
)


def is_poison(error: BaseException, *, user_code: bool = False) -> bool:
    """True when ``error`` would recur on any worker: the app's error, not the claim's.
    ``user_code``: raised by the factory or the build (a ``FileNotFoundError`` there is the app's,
    not a network blip; only burr_dist's and redis-py's own errors are transient), else by a commit."""
    if not isinstance(error, Exception):  # CancelledError, KeyboardInterrupt...
        return False
    if isinstance(error, INFRASTRUCTURE):
        return False
    return user_code or not is_transient(error)


def describe(error: BaseException, where: str = "") -> str:
    """``last_error`` text: where it happened, the error's type and message."""
    text = f"{type(error).__name__}: {error}"
    return f"{where}: {text}" if where else text
