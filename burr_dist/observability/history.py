"""What the runtime tells a history sink: every lease and commit operation, invoked then completed.

Chaos runs pass a :class:`burr_dist.testing.history.HistoryRecorder`; the runtime only knows this
protocol, so it never imports the testing package.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Literal, Protocol

import orjson

Outcome = Literal["ok", "failed", "unknown"]


class HistorySink(Protocol):
    def invoke(
        self,
        op: str,
        app: str,
        expected_seq: int | None = None,
        new_seq: int | None = None,
        digest: str | None = None,
        *,
        note: str | None = None,
        target: str | None = None,
    ) -> str: ...

    def complete(
        self, op_id: str, outcome: Outcome, observed_seq: int | None = None, digest: str | None = None
    ) -> None: ...


def state_digest(state: Mapping[str, Any]) -> str:
    """Short digest of a state that neither key order nor the process computing it can change."""
    blob = orjson.dumps(dict(state), option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def app_key(partition_key: str | None, app_id: str) -> str:
    """One string naming an app, as histories record it."""
    return app_id if partition_key is None else f"{partition_key}/{app_id}"
