"""Chaos fixtures: a dedicated server per scenario (scenarios kill, pause and wipe it), and the
table of results printed at the end of the session (``make chaos``)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from burr_dist.testing.embedded import EmbeddedServer, find_server_binary
from tests.chaos.harness import LARGE, RECOVERY_BOUND, RESULTS
from tests.conftest import KINDS


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Scenarios marked ``ha_long`` (failovers that take longer than ``make test`` can afford) run
    only when asked for: ``-m`` naming ``ha`` (make test-ha) or ``CHAOS_SIZE=large`` (make chaos)."""
    if LARGE or "ha" in re.findall(r"\w+", config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(
        reason="long failover scenario: run with -m ha (make test-ha) or CHAOS_SIZE=large"
    )
    for item in items:
        if item.get_closest_marker("ha_long") is not None:
            item.add_marker(skip)


@pytest.fixture
def chaos_server() -> Iterator[EmbeddedServer]:
    with EmbeddedServer(binary=find_server_binary(KINDS[0])) as srv:
        yield srv


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section(f"chaos results (CHAOS_SIZE={'large' if LARGE else 'small'})")
    head = (
        f"{'scenario':<34} {'apps':>5} {'steps':>6} {'faults':>6} {'anomalies':>9} {'lost':>5} "
        f"{'recovery':>9} {'time':>6}  note"
    )
    tr.write_line(head)
    tr.write_line("-" * len(head))
    for r in RESULTS:
        rec = "-" if r.recovery_max is None else f"{r.recovery_max:.2f}s"
        lost = "-" if r.lost is None else str(r.lost)
        tr.write_line(
            f"{r.scenario:<34} {r.apps:>5} {r.steps:>6} {r.faults:>6} {r.anomalies:>9} {lost:>5} {rec:>9} "
            f"{r.seconds:>5.1f}s  {r.note}"
        )
    tr.write_line(
        f"recovery: longest wait of an app held by a killed or paused worker; bound {RECOVERY_BOUND:.1f} s"
    )
    tr.write_line(
        "failover rows (test_failover.py): lost = acknowledged commits the store no longer holds; "
        "recovery = longest time one app went without a commit or settle across a Redis fault"
    )
