"""Log output for the CLI: text (the default) or one JSON object per line (``--log-format json``).

Modules log through ``logging.getLogger(__name__)`` and tag their main records with
``extra={"event": ..., "app_id": ..., ...}``; only the CLI configures handlers. A JSON line holds
``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``event``, ``msg`` and, when the record carries
them, ``app_id``, ``partition_key``, ``sequence_id``, ``worker``, ``queue``, ``error`` (and
``exc`` with the traceback). Records without an event (other libraries) get ``event: "log"``.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from typing import Any

import orjson

# The stable event names (docs: guides/observability.md); a record's `event` is one of these or "log".
EVENTS = (
    "worker_started",
    "worker_stopping",
    "worker_stopped",
    "claim_failed",
    "claim_aborted",
    "lease_lost",
    "settled",
    "retry_scheduled",
    "app_failed",
    "build_failed",
    "store_rewound",
    "swept",
    "metrics_serving",
    "inline_demoted",
)
FIELDS = ("app_id", "partition_key", "sequence_id", "worker", "queue", "outcome", "error")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", "log"),
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                doc[name] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure(level: str, fmt: str = "text") -> None:
    """Root logging on stderr, in ``fmt`` (text or json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # Python warnings (a library's DeprecationWarning, say) go through the same handler: with
    # --log-format json every stderr line stays one JSON object.
    logging.captureWarnings(True)
