"""Can the checks fail? Break one Lua script at a time and see which tests notice.

    .venv/bin/python -m tests.chaos.mutants        # or: make mutants

Each mutant is one textual change to a script in ``burr_dist/scripts/``, applied to a copy of the
working tree in a temporary directory (this checkout is never touched). The copy's tests named by
the mutant run against it; the mutant is *caught* when they fail. A mutant that survives means
the suite cannot see that defect: the script prints it and exits 1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mutant:
    name: str
    script: str  # file name under burr_dist/scripts/
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments that must fail
    env: tuple[tuple[str, str], ...] = ()


MUTANTS = (
    Mutant("commit ignores the lease token", "commit.lua", "if token ~= '' then", "if false then",
           ("tests/chaos/test_stateful.py", "tests/test_lease.py")),
    Mutant("commit ignores the head (no CAS) and the token", "commit.lua", "if token ~= '' then", "if false then",
           ("tests/chaos/test_network.py", "-k", "delay"),
           # At the small size a delay episode may find no commit in flight; 200 apps always have.
           (("CHAOS_SIZE", "large"),)),
    Mutant("commit does not recognise its own write", "commit.lua",
           "return stored and string.sub(stored, 7, 22) == ARGV[5]", "return false",
           ("tests/chaos/test_stateful.py", "tests/test_lost_reply.py")),
    Mutant("commit applies a delta on any head", "commit.lua", "if not head or meta[3] ~= base then",
           "if false then", ("tests/test_deltas.py", "-k", "not_computed_from")),
    Mutant("commit trims the keyframe a retained delta needs", "commit.lua",
           "need = tonumber(redis.call('HGET', KEYS[2], 'k' .. floor) or floor)", "need = floor",
           ("tests/test_deltas.py", "-k", "every_retained")),
    Mutant("commit keeps tracking records past keep", "commit.lua", "while lo < first do",
           "while false do", ("tests/test_tracking.py", "-k", "trimmed_to_keep")),
    Mutant("loads read a delta without its keyframe", "_prelude.lua",
           "local kf = redis.call('HGET', snaps, 'k' .. target)", "local kf = false",
           ("tests/test_deltas.py", "-k", "fresh_process")),
    Mutant("renew extends any lease", "renew.lua", "if redis.call('GET', KEYS[1]) == ARGV[1] then", "if true then",
           ("tests/chaos/test_stateful.py",)),
    Mutant("release deletes any lease", "release.lua", "if redis.call('GET', KEYS[1]) == ARGV[1] then",
           "if true then", ("tests/chaos/test_stateful.py",)),
    Mutant("touch revives expired claims", "touch.lua",
           "if current and current > now and current < tonumber(ARGV[i + 1]) + claim_ms then",
           "if current and current < tonumber(ARGV[i + 1]) + claim_ms then", ("tests/test_claims.py",)),
    Mutant("touch extends another worker's claim", "touch.lua",
           "if current and current > now and current < tonumber(ARGV[i + 1]) + claim_ms then",
           "if current and current > now then", ("tests/test_claims.py", "-k", "stale_worker_touch")),
    Mutant("a step's commit ignores the cancel hint", "commit.lua", "if meta[6] == '1' then", "if false then",
           ("tests/test_fleet_e2e.py", "-k", "cancel_running")),
    Mutant("status changes are not counted", "_prelude.lua",
           "redis.call('HINCRBY', counts, from .. '>' .. to, '1')", "local _ = from",
           ("tests/test_claims.py", "-k", "counters")),
    Mutant("heartbeat never bumps the store epoch", "epoch.lua", "redis.call('HINCRBY', KEYS[1], 'n', 1)",
           "tonumber(redis.call('HGET', KEYS[1], 'n') or 1)", ("tests/test_rewind.py", "-k", "counter_back")),
)  # fmt: skip
# The CAS mutant needs more edits: every check that refuses a stale commit goes. A delta's base
# check is one: a stale delta is refused because its base is no longer the stored head (with it
# left in, the delayed commits of the network scenario were refused and the mutant survived).
EXTRA = {
    "commit ignores the head (no CAS) and the token": (
        ("  if h ~= seq - 1 then", "  if false then"),
        ("if not head or meta[3] ~= base then", "if false then"),
    )
}


def copy_tree(dest: Path) -> None:
    """The working tree as git sees it (tracked and untracked, not ignored), without the venv."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    for raw in filter(None, files):
        src = ROOT / raw.decode()
        if src.is_file():
            (dest / raw.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / raw.decode())


def run(m: Mutant | None, tests: tuple[str, ...] = ()) -> tuple[bool, float, str]:
    """Run the mutant's tests on a mutated copy (``m`` None: ``tests`` on an intact copy)."""
    with tempfile.TemporaryDirectory(prefix="burr-dist-mutant-") as tmp:
        copy_tree(Path(tmp))
        extra: dict[str, str] = {}
        if m is not None:
            mutate(Path(tmp), m)
            tests, extra = m.tests, dict(m.env)
        env = {
            **os.environ,
            "PYTHONPATH": tmp,
            "PYTHONDONTWRITEBYTECODE": "1",
            "CHAOS_NO_SHRINK": "1",
            **extra,
        }
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
            cwd=tmp, env=env, capture_output=True, text=True,
        )  # fmt: skip
        tail = (proc.stdout.strip().splitlines() or [""])[-1]
        return proc.returncode != 0, time.monotonic() - started, tail


def mutate(tmp: Path, m: Mutant) -> None:
    path = tmp / "burr_dist" / "scripts" / m.script
    text = path.read_text()
    for old, new in [(m.old, m.new), *EXTRA.get(m.name, ())]:
        if old not in text:
            raise SystemExit(f"mutant {m.name!r}: {old!r} is no longer in {m.script}: update the mutant")
        text = text.replace(old, new, 1)
    path.write_text(text)


def main() -> int:
    # Control: the same tests on an intact copy pass, so a failure below is the mutant's doing.
    failed, seconds, tail = run(None, ("tests/chaos/test_stateful.py", "tests/test_lease.py",
                                       "tests/test_lost_reply.py", "tests/test_claims.py", "tests/test_rewind.py"))  # fmt: skip
    print(
        f"{'FAILED  ' if failed else 'passed  '} {'control: no mutation':<48} {seconds:5.1f}s  {tail}",
        flush=True,
    )
    if failed:
        return 2
    survivors = []
    for m in MUTANTS:
        caught, seconds, tail = run(m)
        print(f"{'caught  ' if caught else 'SURVIVED'} {m.name:<48} {seconds:5.1f}s  {tail}", flush=True)
        if not caught:
            survivors.append(m.name)
    print(f"{len(MUTANTS) - len(survivors)}/{len(MUTANTS)} mutants caught")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
