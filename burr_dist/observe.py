"""Where the worker reports what a :class:`~burr_dist.registry.FleetEvent` does not carry: commit
latency, claims per queue, action failures, sequence conflicts. The base class does nothing (a
worker without ``--metrics-port`` pays one no-op call per step and never imports
``prometheus_client``); :class:`burr_dist.metrics.WorkerMetrics` fills it in.
"""

from __future__ import annotations


class Observer:
    """No-op hooks; called from the event loop and from the step pool's threads."""

    def claimed(self, queue: str, n: int) -> None:
        """``n`` apps of ``queue`` were claimed and leased by this worker."""

    def committed(self, name: str, status: str, seconds: float) -> None:
        """One step of an app named ``name`` committed (``status``: completed or failed, as Burr
        saves it), its commit round trip(s) took ``seconds``."""

    def action_failed(self, name: str) -> None:
        """An action raised (the step is saved as failed; a retry or a failure follows)."""

    def claim_ended_by(self, name: str, error: BaseException) -> None:
        """A claim stopped without a settle (lost lease, sequence conflict, Redis trouble)."""


NOOP = Observer()
