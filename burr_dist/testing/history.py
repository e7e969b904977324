"""Jepsen-style histories of a chaos run: what each worker tried, what it saw, what the store kept.

Every process appends its events to a file of its own, one ``write(2)`` per line, so a SIGKILL
loses at most a partial last line. :func:`load_history` merges the files by CLOCK_MONOTONIC, which
all processes of one machine share, and :func:`check` looks for executions the fenced
compare-and-set store must never allow. An operation that was invoked but never completed (its
process died) counts as outcome ``unknown``: it may or may not have taken effect.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from burr_dist.observability.history import Outcome as Outcome
from burr_dist.observability.history import app_key as app_key
from burr_dist.observability.history import state_digest as state_digest

PathLike = str | os.PathLike[str]
OUTCOMES = frozenset({"ok", "failed", "unknown"})
# Final statuses an app may legitimately end a run in: finished, waiting for a worker, or leased.
ALIVE = frozenset({"completed", "runnable", "queued", "waiting", "held"})
# Ops whose completion reports the head sequence they observed in the store.
READS = frozenset({"read", "acquire"})


@dataclass(frozen=True)
class Event:
    """One history line: ``type`` is invoke, complete or final; fields it does not use stay None."""

    type: str
    time_ns: int
    worker: str
    app: str = ""
    op_id: str | None = None
    op: str | None = None
    expected_seq: int | None = None
    new_seq: int | None = None
    outcome: str | None = None
    observed_seq: int | None = None
    digest: str | None = None
    status: str | None = None
    head_seq: int | None = None
    snapshots: Mapping[int, str] | None = None  # final only: digest of each retained snapshot
    note: str | None = None
    target: str | None = None  # faults: the worker it hit (a kill, a pause), if one

    def to_json(self) -> bytes:
        doc = {k: v for k, v in asdict(self).items() if v is not None}
        return orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Event:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in doc.items() if k in known}  # newer writers may add fields
        if values.get("snapshots") is not None:
            values["snapshots"] = {int(k): str(v) for k, v in values["snapshots"].items()}
        return cls(**values)


@dataclass(frozen=True)
class Anomaly:
    kind: str
    app: str
    detail: str


@dataclass(frozen=True)
class FinalState:
    """What the store holds for an app at the end of a run."""

    status: str
    head_seq: int | None
    snapshots: Mapping[int, str] = field(default_factory=dict)


@dataclass
class Op:
    """An invocation paired with its completion (outcome ``unknown`` when none was recorded)."""

    op_id: str
    op: str
    app: str
    worker: str
    invoke_ns: int
    expected_seq: int | None = None
    new_seq: int | None = None
    digest: str | None = None  # what a write wrote, or what a read read
    complete_ns: int | None = None
    outcome: str = "unknown"
    observed_seq: int | None = None
    note: str | None = None
    target: str | None = None


def _drop_partial_tail(fd: int) -> None:
    # A previous process on this file may have died mid-line: cut the fragment so it cannot
    # glue itself to our first line.
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        os.ftruncate(fd, os.pread(fd, size, 0).rfind(b"\n") + 1)  # rare: reading it all is fine


class HistoryRecorder:
    """Appends one process's events to ``path`` (a file no other live process writes).

    Each line is one ``os.write`` on an O_APPEND descriptor: it reaches the kernel before the call
    returns, so it survives a SIGKILL of this process (not a crash of the machine)."""

    def __init__(self, path: PathLike, worker: str) -> None:
        self.path = Path(path)
        self.worker = worker
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        _drop_partial_tail(self._fd)
        self._lock = threading.Lock()
        self._count = 0
        self._prefix = f"{worker}/{os.getpid()}/{os.urandom(3).hex()}"  # unique across restarts
        self._pending: dict[str, tuple[str, str]] = {}

    def _write(self, **values: Any) -> None:
        # Under the lock: the file order of one process is its time order.
        with self._lock:
            event = Event(time_ns=time.monotonic_ns(), worker=self.worker, **values)
            view = memoryview(event.to_json() + b"\n")
            while view:
                view = view[os.write(self._fd, view) :]

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
    ) -> str:
        """Record the start of ``op`` on ``app``; returns the id to pass to :meth:`complete`."""
        with self._lock:
            self._count += 1
            op_id = f"{self._prefix}/{self._count}"
            self._pending[op_id] = (op, app)
        seqs = {"expected_seq": expected_seq, "new_seq": new_seq}
        self._write(
            type="invoke", op_id=op_id, op=op, app=app, digest=digest, note=note, target=target, **seqs
        )
        return op_id

    def complete(
        self, op_id: str, outcome: Outcome, observed_seq: int | None = None, digest: str | None = None
    ) -> None:
        """Record how ``op_id`` ended: ``unknown`` when it may or may not have taken effect."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}, got {outcome!r}")
        with self._lock:
            found = self._pending.pop(op_id, None)
        if found is None:
            raise ValueError(f"operation {op_id!r} was not invoked by this recorder, or is complete")
        op, app = found
        seen = {"observed_seq": observed_seq, "digest": digest}
        self._write(type="complete", op_id=op_id, op=op, app=app, outcome=outcome, **seen)

    def fault(self, name: str, app: str = "", target: str | None = None) -> None:
        """Record an injected fault (kill, partition, Redis restart...) so reports can count them;
        ``target``: the worker it hit, whose apps must then be recovered by others."""
        self.complete(self.invoke("fault", app, note=name, target=target), "ok")

    def final(
        self, app: str, status: str, head_seq: int | None, digest: Mapping[int, str] | str | None
    ) -> None:
        """Record the end-of-run observation of ``app``. ``digest``: digest per retained snapshot
        sequence, or just the head's digest."""
        if isinstance(digest, str):
            snapshots: Mapping[int, str] = {} if head_seq is None else {head_seq: digest}
        else:
            snapshots = dict(digest or {})
        self._write(type="final", app=app, status=status, head_seq=head_seq, snapshots=snapshots)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> HistoryRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_file(path: Path) -> list[Event]:
    lines = path.read_bytes().split(b"\n")
    tail = lines.pop()  # after the last newline: empty, or the line a killed process was writing
    events = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                events.append(Event.from_doc(orjson.loads(line)))
            except (orjson.JSONDecodeError, TypeError, ValueError) as e:
                raise ValueError(f"{path}:{n}: corrupt history line: {e}") from e
    if tail.strip():
        # Truncated by a kill: the operation it began counts as never recorded.
        with contextlib.suppress(orjson.JSONDecodeError, TypeError, ValueError):
            events.append(Event.from_doc(orjson.loads(tail)))
    return events


def load_history(paths: PathLike | Iterable[PathLike]) -> list[Event]:
    """Merge history files (a directory stands for its ``*.jsonl``) in monotonic time order."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[Path] = []
    for item in map(Path, items):
        files.extend(sorted(item.glob("*.jsonl")) if item.is_dir() else [item])
    events = [e for f in files for e in _read_file(f)]
    return sorted(events, key=lambda e: e.time_ns)  # stable: ties keep each file's own order


def operations(events: Iterable[Event]) -> list[Op]:
    """Pair invocations with completions, in invocation order."""
    events = list(events)
    ops: dict[str, Op] = {}
    for e in events:
        if e.type == "invoke" and e.op_id is not None:
            seqs = (e.expected_seq, e.new_seq, e.digest)
            ops[e.op_id] = Op(
                e.op_id, e.op or "", e.app, e.worker, e.time_ns, *seqs, note=e.note, target=e.target
            )
    for e in events:
        o = ops.get(e.op_id) if e.type == "complete" and e.op_id is not None else None
        if o is not None:
            o.complete_ns, o.outcome, o.observed_seq = e.time_ns, e.outcome or "unknown", e.observed_seq
            o.digest = o.digest if e.digest is None else e.digest
    for o in ops.values():
        if o.new_seq is None and o.expected_seq is not None and o.op == "commit":
            o.new_seq = o.expected_seq + 1
    return sorted(ops.values(), key=lambda o: o.invoke_ns)


def final_states(events: Iterable[Event]) -> dict[str, FinalState]:
    """The last final observation recorded for each app."""
    return {
        e.app: FinalState(e.status or "missing", e.head_seq, dict(e.snapshots or {}))
        for e in sorted((e for e in events if e.type == "final"), key=lambda e: e.time_ns)
    }


def check(events: Iterable[Event], final: Mapping[str, FinalState] | None = None) -> list[Anomaly]:
    """Every anomaly in a history. ``final`` adds to (and overrides) recorded final observations;
    with none at all, the checks that need one are skipped. A read older than what an earlier ok
    op established is a rollback when the store shows the loss (final head below it, another
    snapshot stored there, or the sequence committed twice), else a stale read."""
    events = list(events)
    finals = final_states(events)
    finals.update(final or {})
    by_app: dict[str, list[Op]] = defaultdict(list)
    for o in operations(events):
        if o.op != "fault":
            by_app[o.app].append(o)
    anomalies: list[Anomaly] = []
    for app in sorted(set(by_app) | set(finals)):
        anomalies.extend(_AppCheck(app, by_app.get(app, []), finals.get(app), bool(finals)).run())
    return anomalies


class _AppCheck:
    def __init__(self, app: str, ops: list[Op], fin: FinalState | None, observed: bool) -> None:
        self.app, self.ops, self.fin, self.observed = app, ops, fin, observed
        self.commits = [o for o in ops if o.op == "commit" and o.new_seq is not None]
        self.ok: dict[int, list[Op]] = defaultdict(list)
        self.maybe: dict[int, list[Op]] = defaultdict(list)
        for o in self.commits:
            if o.new_seq is not None and o.outcome in ("ok", "unknown"):
                (self.ok if o.outcome == "ok" else self.maybe)[o.new_seq].append(o)
        self.out: list[Anomaly] = []

    def flag(self, kind: str, detail: str) -> None:
        self.out.append(Anomaly(kind, self.app, detail))

    def run(self) -> list[Anomaly]:
        for seq, writers in sorted(self.ok.items()):
            if len(writers) > 1:
                self.flag("duplicate_commit", f"seq {seq} committed ok by {_ids(writers)}")
        self.gaps()
        self.reads()
        fin = self.fin
        if fin is not None:
            for seq, digest in sorted(fin.snapshots.items()):
                problem = self.digest_problem(seq, digest)
                if problem:
                    self.flag("digest_mismatch", f"stored snapshot {problem}")
        if self.observed and fin is None:
            self.flag("lost_app", "absent from the final observation")
        elif fin is not None and fin.status not in ALIVE:
            self.flag("lost_app", f"final status {fin.status!r} (head {fin.head_seq})")
        return self.out

    def writers(self, seq: int) -> list[Op]:
        # Only one write per sequence can apply; an ok one is it, else one of the unknown ones was.
        return self.ok.get(seq) or self.maybe.get(seq) or []

    def digest_problem(self, seq: int, digest: str) -> str | None:
        writers = self.writers(seq)
        if not writers:
            return (
                f"seq {seq} (digest {digest}) was written by no ok or unknown-outcome commit"
                if self.commits
                else None
            )
        wrote = {o.digest for o in writers if o.digest is not None}
        if wrote and digest not in wrote:
            return f"seq {seq} has digest {digest}, but {_ids(writers)} wrote {sorted(wrote)}"
        return None

    def unknown_applied(self, seq: int) -> bool:
        # An unknown-outcome commit fills a hole unless the store keeps a different snapshot there;
        # a later ok commit (whose CAS needed head == seq) or the final head proves the seq existed.
        if seq not in self.maybe:
            return False
        stored = self.fin.snapshots.get(seq) if self.fin is not None else None
        return stored is None or self.digest_problem(seq, stored) is None

    def gaps(self) -> None:
        if not self.ok:
            return
        lo, top = min(self.ok), max(self.ok)
        head = self.fin.head_seq if self.fin is not None else None
        hi = max(top, head if head is not None else top)
        covered = sorted(set(self.ok) | {s for s in self.maybe if lo <= s <= hi and self.unknown_applied(s)})
        prev = lo - 1
        for seq in [*covered, hi + 1]:
            if seq > prev + 1:
                self.flag("gap", f"no commit accounts for seq {prev + 1}..{seq - 1} (ok commits {lo}..{top})")
            prev = seq

    def lost(self, seq: int, source: Op) -> bool:
        """Is there evidence the store itself dropped ``seq`` (rather than a read being stale)?"""
        fin = self.fin
        if len(self.ok.get(seq, [])) > 1:
            return True  # committed again: the head went back below it
        if fin is None or fin.head_seq is None:
            return False
        stored = fin.snapshots.get(seq)
        return fin.head_seq < seq or (stored is not None and source.digest not in (None, stored))

    def reads(self) -> None:
        # Sequences the store had certainly reached, by when: ok commits and ok reads.
        known: list[tuple[int, int, Op]] = []
        for o in self.ops:
            s = o.new_seq if o.op == "commit" else o.observed_seq if o.op in READS else None
            if o.outcome == "ok" and o.complete_ns is not None and s is not None:
                known.append((o.complete_ns, s, o))
        known.sort(key=lambda k: k[0])
        times = [t for t, _, _ in known]
        best: list[tuple[int, Op]] = []
        for _, s, o in known:
            best.append((s, o) if not best or s > best[-1][0] else best[-1])
        for r in self.ops:
            if r.op not in READS or r.outcome != "ok":
                continue
            seen = -1 if r.observed_seq is None else r.observed_seq
            if r.observed_seq is not None and r.digest is not None:
                problem = self.digest_problem(r.observed_seq, r.digest)
                if problem:
                    self.flag("digest_mismatch", f"{r.op} {r.op_id} read {problem}")
            i = bisect.bisect_left(times, r.invoke_ns)
            if i and best[i - 1][0] > seen:
                seq, src = best[i - 1]
                kind = "rollback" if self.lost(seq, src) else "stale_read"
                self.flag(
                    kind, f"{r.op} {r.op_id} saw seq {seen} after {src.op} {src.op_id} established {seq}"
                )
        head = self.fin.head_seq if self.fin is not None else None
        if head is not None and best and best[-1][0] > head:
            seq, src = best[-1]
            self.flag("rollback", f"final head {head} is below seq {seq} ({src.op} {src.op_id})")


def _ids(ops: Iterable[Op]) -> str:
    return ", ".join(f"{o.op_id} ({o.worker}, {o.outcome})" for o in ops)


@dataclass(frozen=True)
class Recovery:
    """How long an app held by a faulted worker waited until it was leased again."""

    app: str
    fault: str
    target: str
    seconds: float | None  # None: never leased again (the checker's final state says why)


def recoveries(events: Iterable[Event]) -> list[Recovery]:
    """For every fault aimed at a worker: each app that worker held at that moment (an acquire that
    may have succeeded, with no release invoked since), and the time from the fault to the next ok
    acquire of the app (by another worker, or by the target itself once a pause ended)."""
    ops = operations(events)
    by_app: dict[str, list[Op]] = defaultdict(list)
    for o in ops:
        if o.op in ("acquire", "release"):
            by_app[o.app].append(o)
    out: list[Recovery] = []
    for f in (o for o in ops if o.op == "fault" and o.target):
        assert f.target is not None
        for app, app_ops in by_app.items():
            holder_since: int | None = None
            for o in app_ops:
                if o.invoke_ns > f.invoke_ns:
                    break
                if o.worker != f.target:
                    if o.op == "acquire" and o.outcome == "ok":
                        holder_since = None  # someone else holds it now
                elif o.op == "acquire" and o.outcome in ("ok", "unknown"):
                    holder_since = o.invoke_ns
                elif o.op == "release":
                    holder_since = None
            if holder_since is None:
                continue
            after = (
                o.complete_ns
                for o in app_ops
                if o.op == "acquire" and o.outcome == "ok" and o.invoke_ns > f.invoke_ns
            )
            done = next(after, None)
            wait = None if done is None else (done - f.invoke_ns) / 1e9
            out.append(Recovery(app, f.note or "fault", f.target, wait))
    return out


def summary(events: Iterable[Event], anomalies: Iterable[Anomaly]) -> dict[str, Any]:
    """Counts for a run report: a chaos run that injected no faults proves little."""
    events = list(events)
    ops = operations(events)
    commits = Counter(o.outcome for o in ops if o.op == "commit")
    apps = {o.app for o in ops if o.op != "fault"} | {e.app for e in events if e.type == "final"}
    by_kind = Counter(a.kind for a in anomalies)
    return {
        "events": len(events),
        "workers": len({e.worker for e in events if e.type != "final"}),
        "apps": len(apps),
        "ops": dict(Counter(o.op for o in ops)),
        "ok_commits": commits["ok"],
        "unknown_commits": commits["unknown"],
        "failed_commits": commits["failed"],
        "faults": sum(1 for o in ops if o.op == "fault"),
        "anomalies": dict(sorted(by_kind.items())),
        "valid": not by_kind,
    }
