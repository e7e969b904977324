"""The Burr UI on a fleet, as a user sees it: ``burr-dist ui`` in its own process, an app whose
steps ran on two worker processes, and the page opened in a real (headless) Chromium.

Needs Debian's chromium (``make browser``; .ci/run installs it): skipped where /usr/bin/chromium
is absent. Playwright's own browser download is not used. ``UI_SCREENSHOT=path`` saves the page
(README's docs/ui.png is made that way).
"""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from burr_dist import FleetClient
from burr_dist.testing.embedded import EmbeddedServer, free_port
from burr_dist.transport.connect import connect
from tests.test_metrics import process

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
APPS = "tests.support.ui_apps"


def wait_status(fleet: FleetClient, app_id: str, status: str, proc: Any, log: Path) -> None:
    give_up = time.monotonic() + 30
    while fleet.show(app_id, partition_key="team-a")["status"] != status:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < give_up, log.read_text()
        time.sleep(0.05)


def get_json(url: str, proc: Any, log: Path) -> Any:
    give_up = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return orjson.loads(reply.read())
        except OSError:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < give_up, log.read_text()
            time.sleep(0.1)


@pytest.fixture
def ran_on_two_workers(fleet_server: EmbeddedServer, tmp_path: Path) -> Iterator[FleetClient]:
    """``memo`` drafted on worker-a (which then stopped) and reviewed and published on worker-b."""
    fleet = FleetClient(connect(fleet_server.url))
    fleet.enqueue("memo", "memo-1", partition_key="team-a")
    base = ["worker", APPS, "--poll-interval", "0.05", "--lease-ttl", "2"]
    with process([*base, "--worker-id", "worker-a"], fleet_server.url, tmp_path / "a.log") as a:
        wait_status(fleet, "memo-1", "waiting", a, tmp_path / "a.log")
    fleet.resume("memo-1", {"approved": True}, partition_key="team-a")
    with process([*base, "--worker-id", "worker-b"], fleet_server.url, tmp_path / "b.log") as b:
        wait_status(fleet, "memo-1", "completed", b, tmp_path / "b.log")
    yield fleet
    fleet.client.close()


def test_ui_api_shows_each_step_and_its_worker(
    ran_on_two_workers: FleetClient, fleet_server: EmbeddedServer, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "ui.log"
    with process(["ui", "--port", str(port)], fleet_server.url, log) as ui:
        api = f"http://127.0.0.1:{port}/api/v0"
        projects = get_json(f"{api}/projects", ui, log)
        assert [(p["name"], p["num_apps"]) for p in projects] == [("memo", 1)]
        page = get_json(f"{api}/memo/team-a/apps", ui, log)
        assert [(a["app_id"], a["num_steps"], a["tags"]["status"]) for a in page["applications"]] == [
            ("memo-1", 3, "completed")
        ]
        logs = get_json(f"{api}/memo/memo-1/team-a/apps", ui, log)
    steps = logs["steps"]
    assert [s["step_start_log"]["action"] for s in steps] == ["draft", "review", "publish"]
    workers = [[a["value"] for a in s["attributes"] if a["key"] == "burr_dist.worker"] for s in steps]
    assert workers == [["worker-a"], ["worker-b"], ["worker-b"]]
    assert steps[1]["step_start_log"]["inputs"] == {"approved": True}
    assert steps[2]["step_end_log"]["state"]["published"] is True  # read from the snapshot
    assert [sp["begin_entry"]["span_name"] for sp in steps[0]["spans"]] == ["outline"]
    assert {a["key"] for a in steps[0]["attributes"]} == {"words", "burr_dist.worker"}
    assert logs["application"]["entrypoint"] == "draft"


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"no browser: {CHROMIUM} is absent (run `make browser`)"
)
def test_ui_in_a_browser_shows_the_app_and_its_steps_on_two_workers(
    ran_on_two_workers: FleetClient, fleet_server: EmbeddedServer, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    port = free_port()
    log = tmp_path / "ui.log"
    with process(["ui", "--port", str(port)], fleet_server.url, log) as ui:
        get_json(f"http://127.0.0.1:{port}/api/v0/projects", ui, log)
        with sync_playwright() as pw:
            # A fresh profile (--user-data-dir, which playwright passes for a persistent context).
            browser = pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=CHROMIUM, args=FLAGS, headless=True,
                viewport={"width": 1400, "height": 800},
            )  # fmt: skip
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/projects", wait_until="networkidle")
                page.get_by_text("memo", exact=True).first.wait_for(timeout=20_000)
                page.goto(f"http://127.0.0.1:{port}/project/memo/team-a", wait_until="networkidle")
                page.get_by_text("memo-1").first.wait_for(timeout=20_000)
                page.goto(f"http://127.0.0.1:{port}/project/memo/team-a/memo-1", wait_until="networkidle")
                for action in ("draft", "review", "publish"):
                    page.get_by_text(action, exact=True).first.wait_for(timeout=20_000)
                # The worker of a step is one of its attributes, shown with its state.
                page.locator("tr", has_text="draft").first.click()
                page.get_by_text("worker-a").first.wait_for(timeout=20_000)
                page.get_by_text("about q3").first.wait_for(timeout=20_000)  # state, from the snapshot
                page.locator("tr", has_text="review").first.click()
                page.get_by_text("worker-b").first.wait_for(timeout=20_000)
                shot = os.environ.get("UI_SCREENSHOT")
                if shot:
                    page.screenshot(path=shot)
                body = page.inner_text("body")
            finally:
                browser.close()
    assert "publish" in body and "worker-b" in body and "approved" in body


def test_ui_names_the_extra_when_the_server_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from burr_dist.cli import EXIT_BAD_INPUT, main, ui_cmd

    monkeypatch.setattr(ui_cmd.importlib.util, "find_spec", lambda name: None)
    result = CliRunner().invoke(main, ["--redis-url", "redis://127.0.0.1:1", "ui"])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "pip install 'burr_dist[ui]'" in result.output and "fastapi" in result.output


def test_ui_reports_an_unreachable_redis_at_once() -> None:
    from click.testing import CliRunner

    from burr_dist.cli import EXIT_UNREACHABLE, main

    result = CliRunner().invoke(main, ["--redis-url", f"redis://127.0.0.1:{free_port()}", "ui"])
    assert result.exit_code == EXIT_UNREACHABLE, result.output
