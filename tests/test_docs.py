"""The documentation runs: every Python block marked ``<!-- runnable -->`` (the line right before
its fence) in README.md and docs/ runs against a server the suite started, and the site builds with
``mkdocs build --strict`` (a broken link, a missing page or an API name that no longer exists fails).
The shell commands of the same pages are covered by tests/test_readme.py."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from burr_dist.testing.embedded import EmbeddedServer
from tests.support.targets import ACL
from tests.test_readme import PAGES, README, ROOT, cli_env, fenced_blocks

MARKER = "<!-- runnable -->"
# Pages whose quickstarts must stay runnable (each has at least one marked block).
QUICKSTARTS = [
    README,
    ROOT / "docs/getting-started/quickstart.md",
    ROOT / "docs/getting-started/first-fleet.md",
]
# Commands ACL_RULES does not grant (Burr's own persister, MEMORY USAGE) or servers of their own.
NEEDS_ADMIN = ("RedisBasePersister", "memory_usage", "EmbeddedCluster")


def snippets(page: Path) -> list[tuple[str, str]]:
    """(id, code) of each marked Python block of a page."""
    found = []
    for n, (info, lines, before) in enumerate(fenced_blocks(page.read_text())):
        if before == MARKER:
            assert info.split()[0] in ("python", "py"), (page, n, info)
            found.append((f"{page.relative_to(ROOT)}#{n}", "\n".join(lines) + "\n"))
    return found


ALL = [snippet for page in PAGES for snippet in snippets(page)]


def test_the_quickstarts_are_marked_runnable() -> None:
    for page in QUICKSTARTS:
        assert snippets(page), f"{page.relative_to(ROOT)} has no {MARKER} Python block"
    assert len(ALL) >= 15, [name for name, _ in ALL]


def test_a_marker_names_the_next_block() -> None:
    text = f"text\n\n{MARKER}\n```python\nprint(1)\n```\n\n```python\nprint(2)\n```\n"
    blocks = [(lines, before) for _, lines, before in fenced_blocks(text)]
    assert blocks == [(["print(1)"], MARKER), (["print(2)"], "")]
    tabbed = f'=== "a"\n\n    {MARKER}\n    ```python\n    x = 1\n    ```\n'
    assert [(lines, before) for _, lines, before in fenced_blocks(tabbed)] == [(["x = 1"], MARKER)]


@pytest.mark.parametrize("name,code", ALL, ids=[name for name, _ in ALL])
def test_runnable_snippet(fleet_server: EmbeddedServer, tmp_path: Path, name: str, code: str) -> None:
    """The block as a script of its own, from the repository root, with REDIS_URL set."""
    if ACL and any(word in code for word in NEEDS_ADMIN):
        pytest.skip("the snippet uses commands ACL_RULES does not grant, or starts its own servers")
    script = tmp_path / "snippet.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT, env=cli_env(fleet_server.url), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, (name, result.stdout, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, (name, result.stderr[-3000:])
    assert result.stdout.strip(), f"{name} printed nothing"


def test_pages_speak_of_the_product() -> None:
    """No work log in README or the docs (docs/performance.md is the engineering record)."""
    log = re.compile(
        r"\b(this|that|the previous|last|next) session\b|\bissues? #?\d+|\bgoals? of issue", re.I
    )
    for page in PAGES:
        if page.name == "performance.md":
            continue
        hits = [line for line in page.read_text().splitlines() if log.search(line)]
        assert hits == [], (str(page.relative_to(ROOT)), hits)
    assert len(README.read_text().splitlines()) <= 150


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    """What `make docs` runs, into a temporary directory."""
    missing = [m for m in ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_click")
               if importlib.util.find_spec(m.split(".")[0]) is None
               or (m == "mkdocstrings_handlers.python" and importlib.util.find_spec(m) is None)]  # fmt: skip
    if missing:
        pytest.skip(f"the docs extra is not installed (missing {missing}): pip install -e '.[docs]'")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=cli_env("redis://unused") | {"NO_MKDOCS_2_WARNING": "1"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    site = tmp_path / "site"
    assert (site / "reference/cli/index.html").read_text().count("migrate-keys") > 0  # mkdocs-click ran
    api = (site / "reference/api/store/index.html").read_text()
    assert "burr_dist.store.clients.RedisStore" in api  # mkdocstrings ran
    assert (site / "changelog/index.html").read_text().count("Unreleased") > 0  # CHANGELOG.md included


def test_readme_links_resolve() -> None:
    """README is read on the forge, not on the site: its relative links name files of the repository."""
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    local = [link.split("#")[0] for link in links if not re.match(r"[a-z]+:", link)]
    assert local, "README links to no page of the docs"
    assert [link for link in local if not (ROOT / link).exists()] == []
