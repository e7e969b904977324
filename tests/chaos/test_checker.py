"""The history checker, on hand-built histories that contain each anomaly, and the recorder on
real files written by several processes (one of them SIGKILLed)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from burr_dist.testing.history import (
    Anomaly,
    Event,
    FinalState,
    HistoryRecorder,
    check,
    load_history,
    operations,
    recoveries,
    state_digest,
    summary,
)


class H:
    """Builds a history by hand: each event one tick after the previous one."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.n = 0

    def _add(self, **kw: Any) -> None:
        self.events.append(Event(time_ns=(len(self.events) + 1) * 10, **kw))

    def invoke(
        self, w: str, op: str, app: str = "a", new: int | None = None, digest: str | None = None
    ) -> str:
        self.n += 1
        op_id = f"{w}/{self.n}"
        exp = None if new is None else new - 1
        self._add(
            type="invoke", worker=w, op_id=op_id, op=op, app=app, expected_seq=exp, new_seq=new, digest=digest
        )
        return op_id

    def complete(
        self, w: str, op_id: str, outcome: str, obs: int | None = None, digest: str | None = None
    ) -> None:
        self._add(type="complete", worker=w, op_id=op_id, outcome=outcome, observed_seq=obs, digest=digest)

    def commit(
        self, w: str, seq: int, outcome: str | None = "ok", digest: str | None = None, app: str = "a"
    ) -> str:
        """outcome None: the worker died before completing (recorded as nothing)."""
        op_id = self.invoke(w, "commit", app, seq, digest or f"d{seq}")
        if outcome is not None:
            self.complete(w, op_id, outcome)
        return op_id

    def read(
        self, w: str, seq: int | None, digest: str | None = None, op: str = "read", app: str = "a"
    ) -> None:
        op_id = self.invoke(w, op, app)
        self.complete(w, op_id, "ok", seq, digest or (None if seq is None else f"d{seq}"))

    def final(self, app: str, status: str, head: int | None, snaps: dict[int, str] | None = None) -> None:
        self._add(
            type="final", worker="observer", app=app, status=status, head_seq=head, snapshots=snaps or {}
        )

    def check(self) -> list[Anomaly]:
        return check(self.events)


def kinds(anomalies: list[Anomaly]) -> list[str]:
    return sorted(a.kind for a in anomalies)


def commits(h: H, seqs: range, w: str = "w1") -> None:
    for s in seqs:
        h.commit(w, s)


# -- whole histories -------------------------------------------------------------------------


def test_clean_history_with_faults_and_uncertain_writes_has_no_anomalies() -> None:
    h = H()
    h.read("w1", None, op="acquire")
    commits(h, range(5))
    h.read("w1", 4)
    h.commit("w1", 5, None, digest="d5-lost")  # killed mid-commit: never applied
    h.events.append(
        Event(
            type="invoke",
            time_ns=h.events[-1].time_ns + 1,
            worker="chaos",
            op_id="f1",
            op="fault",
            note="kill",
        )
    )
    h.read("w2", 4, op="acquire")
    h.commit("w2", 5)
    h.commit("w3", 5, "failed")  # a zombie refused by the CAS
    h.commit("w2", 6)
    h.read("w2", 6)
    h.final("a", "completed", 6, {4: "d4", 5: "d5", 6: "d6"})
    h.final("b", "runnable", None)
    anomalies = h.check()
    assert anomalies == []
    s = summary(h.events, anomalies)
    assert (s["apps"], s["ok_commits"], s["unknown_commits"], s["failed_commits"], s["faults"]) == (
        2,
        7,
        1,
        1,
        1,
    )
    assert s["anomalies"] == {} and s["valid"]


def test_duplicate_commit() -> None:
    h = H()
    commits(h, range(3))
    h.commit("w2", 2, digest="d2-other")
    h.final("a", "completed", 2, {2: "d2"})
    (a,) = h.check()
    assert (a.kind, a.app) == ("duplicate_commit", "a") and "seq 2" in a.detail


def test_unknown_outcome_and_ok_of_same_sequence_is_not_a_duplicate() -> None:
    h = H()
    commits(h, range(2))
    h.commit("w1", 2, "unknown", digest="d2-maybe")
    h.commit("w2", 2)
    h.final("a", "completed", 2, {2: "d2"})
    assert h.check() == []


def test_gap_between_ok_commits() -> None:
    h = H()
    commits(h, range(2))
    h.commit("w1", 3)
    assert kinds(h.check()) == ["gap"]  # no final observation needed
    h.final("a", "completed", 3, {3: "d3"})
    (a,) = h.check()
    assert a.kind == "gap" and "2..2" in a.detail


def test_trimmed_history_is_not_a_gap() -> None:
    h = H()
    commits(h, range(40, 45))  # contiguity counts from the first ok commit, not from 0
    h.final("a", "completed", 44, {43: "d43", 44: "d44"})
    assert h.check() == []


@pytest.mark.parametrize("stored", [{2: "d2", 3: "d3"}, {3: "d3"}], ids=["retained", "trimmed"])
def test_gap_filled_by_unknown_commit_the_store_shows_applied(stored: dict[int, str]) -> None:
    h = H()
    commits(h, range(2))
    h.commit("w1", 2, None)  # killed: the CAS of 3 below proves it applied
    h.commit("w2", 3)
    h.final("a", "completed", 3, stored)
    assert h.check() == []


def test_gap_filled_by_unknown_commit_the_store_contradicts() -> None:
    h = H()
    commits(h, range(2))
    h.commit("w1", 2, "unknown")
    h.commit("w2", 3)
    h.final("a", "completed", 3, {2: "d2-from-nowhere", 3: "d3"})
    assert kinds(h.check()) == ["digest_mismatch", "gap"]


def test_unknown_commit_above_last_ok_commit_may_be_the_head() -> None:
    h = H()
    commits(h, range(2))
    h.commit("w1", 2, None)
    h.final("a", "completed", 2, {2: "d2"})
    assert h.check() == []


def test_phantom_head_above_every_commit() -> None:
    h = H()
    commits(h, range(2))
    h.final("a", "completed", 2, {2: "dx"})
    found = h.check()
    assert kinds(found) == ["digest_mismatch", "gap"]
    assert any("no ok or unknown-outcome commit" in a.detail for a in found)


def test_rollback_seen_by_final_observation() -> None:
    h = H()
    commits(h, range(4))
    h.final("a", "completed", 2, {2: "d2"})
    (a,) = h.check()
    assert a.kind == "rollback" and "final head 2" in a.detail


def test_rollback_seen_by_read_then_recommitted() -> None:
    h = H()
    commits(h, range(4))
    h.read("w2", 2, op="acquire")  # the store forgot 3 ...
    h.commit("w2", 3, digest="d3-again")  # ... so the CAS let 3 be written twice
    h.final("a", "completed", 3, {3: "d3-again"})
    assert kinds(h.check()) == ["duplicate_commit", "rollback"]


def test_rollback_seen_by_read_and_final() -> None:
    h = H()
    commits(h, range(4))
    h.read("w2", 2)
    h.final("a", "completed", 2, {2: "d2"})
    assert kinds(h.check()) == ["rollback", "rollback"]


def test_stale_read_after_ok_write() -> None:
    h = H()
    commits(h, range(4))
    h.read("w2", 2)
    h.final("a", "completed", 3, {3: "d3"})  # the store kept 3: the read was served stale
    (a,) = h.check()
    assert a.kind == "stale_read" and "saw seq 2" in a.detail and "established 3" in a.detail


def test_stale_read_after_newer_read() -> None:
    h = H()
    commits(h, range(2))
    h.commit("w1", 2, None)  # unknown outcome, but a read then sees it
    h.read("w2", 2)
    h.read("w3", 1)
    assert kinds(h.check()) == ["stale_read"]


def test_read_concurrent_with_write_may_see_old_value() -> None:
    h = H()
    commits(h, range(2))
    op = h.invoke("w1", "commit", "a", 2, "d2")
    h.read("w2", 1)  # invoked before the commit completed: either value is linearizable
    h.complete("w1", op, "ok")
    h.final("a", "completed", 2, {2: "d2"})
    assert h.check() == []


def test_digest_mismatch_against_ok_writer() -> None:
    h = H()
    commits(h, range(3))
    h.final("a", "completed", 2, {1: "d1", 2: "evil"})
    (a,) = h.check()
    assert a.kind == "digest_mismatch" and "seq 2" in a.detail and "evil" in a.detail


def test_digest_of_any_unknown_writer_is_accepted() -> None:
    h = H()
    commits(h, range(2))
    h.commit("w1", 2, "unknown", digest="d2-w1")
    h.commit("w2", 2, None, digest="d2-w2")
    h.final("a", "completed", 2, {2: "d2-w2"})
    assert h.check() == []


def test_failed_commit_that_applied() -> None:
    h = H()
    commits(h, range(2))
    h.commit("w1", 2, "failed")
    h.final("a", "completed", 2, {2: "d2"})
    assert kinds(h.check()) == ["digest_mismatch", "gap"]


def test_read_of_wrong_state() -> None:
    h = H()
    commits(h, range(2))
    h.read("w2", 1, digest="not-d1")
    (a,) = h.check()
    assert a.kind == "digest_mismatch" and "read" in a.detail


def test_lost_apps() -> None:
    h = H()
    for app in "abcdef":
        h.commit("w1", 0, app=app)
    h.final("a", "failed", 0, {0: "d0"})
    h.final("b", "missing", None)
    # c: absent from the final observation
    h.final("d", "held", 0, {0: "d0"})
    h.final("e", "runnable", 0, {0: "d0"})
    h.final("f", "completed", 0, {0: "d0"})
    found = h.check()
    assert kinds(found) == ["lost_app"] * 3
    assert sorted(a.app for a in found) == ["a", "b", "c"]


def test_final_argument_overrides_recorded_observation() -> None:
    h = H()
    commits(h, range(3))
    h.final("a", "missing", None)
    assert kinds(h.check()) == ["lost_app"]
    assert check(h.events, final={"a": FinalState("completed", 2, {2: "d2"})}) == []
    assert kinds(check(h.events, final={"a": FinalState("completed", 1, {1: "d1"})})) == ["rollback"]


# -- digests and files -----------------------------------------------------------------------


def test_state_digest_ignores_key_order() -> None:
    one = state_digest({"a": 1, "b": {"x": [1, 2], "y": None}})
    assert one == state_digest({"b": {"y": None, "x": [1, 2]}, "a": 1})
    assert one != state_digest({"a": 1, "b": {"x": [2, 1], "y": None}})
    assert len(one) == 16


def test_recorder_round_trip_and_truncated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "w1.jsonl"
    with HistoryRecorder(path, "w1") as rec:
        op = rec.invoke("commit", "p/a", 0, 1, "d1")
        rec.complete(op, "ok")
        rec.invoke("commit", "p/a", 1, 2, "d2")
        rec.final("p/a", "completed", 1, "d1")
        with pytest.raises(ValueError):
            rec.complete(op, "ok")  # already complete
        with pytest.raises(ValueError):
            rec.complete("nope", "maybe")  # type: ignore[arg-type]
    with path.open("ab") as f:
        f.write(b'{"type":"invoke","time_ns":99999999999999,"wor')  # SIGKILLed mid-line
    events = load_history([path])
    assert [e.type for e in events] == ["invoke", "complete", "invoke", "final"]
    assert events[3].snapshots == {1: "d1"}
    ops = operations(events)
    assert [(o.new_seq, o.outcome) for o in ops] == [(1, "ok"), (2, "unknown")]
    assert check(events) == []


def test_last_line_missing_only_its_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    path.write_bytes(Event(type="final", time_ns=1, worker="o", app="a", status="runnable").to_json())
    assert load_history(path)[0].status == "runnable"


def test_corrupt_line_before_the_last_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    good = Event(type="final", time_ns=1, worker="o", app="a", status="runnable").to_json()
    path.write_bytes(good + b"\n{garbage\n" + good + b"\n")
    with pytest.raises(ValueError, match=r"w\.jsonl:2"):
        load_history(path)


def test_reopened_file_drops_partial_tail(tmp_path: Path) -> None:
    path = tmp_path / "w1.jsonl"
    with HistoryRecorder(path, "w1") as rec:
        rec.complete(rec.invoke("read", "a"), "ok", 3)
    with path.open("ab") as f:
        f.write(b'{"type":"inv')
    with HistoryRecorder(path, "w1") as rec:  # the worker restarted on the same file
        rec.fault("restart")
    events = load_history(path)
    assert [e.op for e in events] == ["read", "read", "fault", "fault"]
    assert summary(events, [])["faults"] == 1


# -- real processes --------------------------------------------------------------------------


def _worker(directory: str, name: str, lock: Any, head: Any, rounds: int) -> None:
    with HistoryRecorder(Path(directory) / f"{name}.jsonl", name) as rec:
        for _ in range(rounds):
            with lock:  # the lock plays the store: one commit at a time, head must be seq - 1
                seq = head.value + 1
                op = rec.invoke("commit", "app", seq - 1, seq, state_digest({"n": seq}))
                head.value = seq
                rec.complete(op, "ok")
            with lock:
                op = rec.invoke("read", "app")
                rec.complete(op, "ok", head.value, state_digest({"n": head.value}))


def _scribbler(path: str) -> None:
    rec = HistoryRecorder(path, "doomed")
    while True:
        rec.invoke("commit", "app", 0, 1, "d" * 200)


def test_three_processes_merge_in_time_order(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    lock, head = ctx.Lock(), ctx.Value("i", 0, lock=False)
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), f"w{i}", lock, head, 20)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with HistoryRecorder(tmp_path / "observer.jsonl", "observer") as rec:
        rec.final("app", "completed", 60, {59: state_digest({"n": 59}), 60: state_digest({"n": 60})})
    events = load_history(tmp_path)
    assert len(events) == 3 * 20 * 4 + 1
    times = [e.time_ns for e in events]
    assert times == sorted(times)
    seqs = [e.new_seq for e in events if e.type == "invoke" and e.op == "commit"]
    assert seqs == list(range(1, 61))  # the lock's order, recovered from three files
    assert {e.worker for e in events} == {"w0", "w1", "w2", "observer"}
    anomalies = check(events)
    assert anomalies == []
    s = summary(events, anomalies)
    assert (s["workers"], s["apps"], s["ok_commits"], s["ops"]) == (3, 1, 60, {"commit": 60, "read": 60})


def test_sigkilled_writer_leaves_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "doomed.jsonl"
    proc = multiprocessing.get_context("spawn").Process(target=_scribbler, args=(str(path),))
    proc.start()
    deadline = time.monotonic() + 30
    while (not path.exists() or path.stat().st_size < 100_000) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    events = load_history(path)
    assert len(events) > 100
    assert {o.outcome for o in operations(events)} == {"unknown"}


# -- recovery times ---------------------------------------------------------------------------
def _fault(h: H, target: str) -> None:
    op_id = h.invoke("harness", "fault", "")
    h.events[-1] = Event(**{**h.events[-1].__dict__, "note": "sigkill", "target": target})
    h.complete("harness", op_id, "ok")


def _op(h: H, w: str, op: str, outcome: str | None = "ok", app: str = "a") -> None:
    op_id = h.invoke(w, op, app)
    if outcome is not None:
        h.complete(w, op_id, outcome)


def test_recovery_is_time_from_fault_to_next_acquire() -> None:
    h = H()
    _op(h, "w1", "acquire")
    _fault(h, "w1")  # invoked at t=30
    _op(h, "w1", "commit", None)  # nothing: a dead worker's op never completes
    _op(h, "w2", "acquire")  # completes at t=70 (each event is 10 ns after the previous)
    (rec,) = recoveries(h.events)
    assert (rec.app, rec.target, rec.fault) == ("a", "w1", "sigkill")
    assert rec.seconds == (70 - 30) / 1e9


def test_no_recovery_needed_when_released_or_taken_over_before_the_fault() -> None:
    h = H()
    _op(h, "w1", "acquire", app="released")
    _op(h, "w1", "release", app="released")
    _op(h, "w1", "acquire", app="taken")
    _op(h, "w2", "acquire", app="taken")  # w1's lease had expired: w2 holds it now
    _op(h, "w1", "acquire", outcome="failed", app="refused")
    _fault(h, "w1")
    assert recoveries(h.events) == []


def test_unknown_acquire_counts_as_held_and_no_reacquire_is_none() -> None:
    h = H()
    _op(h, "w1", "acquire", outcome=None)  # died mid-acquire: it may hold the lease
    _fault(h, "w1")
    (rec,) = recoveries(h.events)
    assert rec.seconds is None  # never leased again: a run reports it as a failure
