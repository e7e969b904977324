"""The ``burr-dist`` command line: run workers, enqueue apps and operate on them.

    burr-dist worker examples.apps --concurrency 8
    burr-dist enqueue counter --state '{"target": 3}'
    burr-dist status

Every command that talks to Redis first sends a PING, so an unreachable server is reported at once
(exit 5) instead of after the store's retries. Errors print one line on stderr, never a traceback;
exit codes are listed in :data:`EPILOG`. With ``--json`` every command writes one JSON document on
stdout (and an ``{"error": ...}`` document when it fails).
"""

from burr_dist.cli import fleet_ops, metrics_cmd, tail_cmd, ui_cmd, worker_cmd  # registers the commands
from burr_dist.cli.app import (
    EXIT_BAD_INPUT,
    EXIT_ERROR,
    EXIT_NOT_ALLOWED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_STORE_REWOUND,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    main,
)

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_ERROR",
    "EXIT_NOT_ALLOWED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_STORE_REWOUND",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "fleet_ops",
    "main",
    "metrics_cmd",
    "tail_cmd",
    "ui_cmd",
    "worker_cmd",
]
