"""What the Burr UI shows of a fleet, built from Redis replies (no I/O here; backend.py sends).

Projects are the registered app names of the fleet records (job hashes); an app's steps are the
tracking records commit.lua stored (tracking.py), with each step's state read from its snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from burr_dist.observability.tracking import WORKER_ATTRIBUTE


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def ms_time(ms: Any) -> datetime:
    return datetime.fromtimestamp(int(ms or 0) / 1000, tz=timezone.utc)


def projects(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One project per registered app name: its app count, first creation, last update."""
    out: dict[str, dict[str, Any]] = {}
    for job in jobs:
        name = job.get("name") or ""
        if not name:
            continue
        p = out.setdefault(name, {"name": name, "id": name, "uri": "", "num_apps": 0,
                                  "created": job.get("created_at") or 0, "last_written": 0})  # fmt: skip
        p["num_apps"] += 1
        p["created"] = min(p["created"], job.get("created_at") or 0)
        p["last_written"] = max(p["last_written"], job.get("updated_at") or 0)
    for p in out.values():
        p["created"], p["last_written"] = ms_time(p["created"]), ms_time(p["last_written"])
    return sorted(out.values(), key=lambda p: p["name"])


def apps_of(jobs: list[dict[str, Any]], project: str, partition_key: str | None) -> list[dict[str, Any]]:
    """The project's fleet records (of one partition when given), most recently updated first."""
    chosen = [
        j
        for j in jobs
        if j.get("name") == project and (partition_key is None or j.get("partition_key") == partition_key)
    ]
    return sorted(chosen, key=lambda j: (j.get("updated_at") or 0, j.get("app_id", "")), reverse=True)


def summary(job: dict[str, Any], head: Any) -> dict[str, Any]:
    tags = {"status": _s(job.get("status", ""))}
    if job.get("worker"):
        tags["worker"] = _s(job["worker"])
    return {
        "app_id": job.get("app_id", ""),
        "partition_key": job.get("partition_key"),
        "first_written": ms_time(job.get("created_at")),
        "last_written": ms_time(job.get("updated_at")),
        "num_steps": 0 if head is None else int(head) + 1,
        "tags": tags,
    }


@dataclass
class AppView:
    """One app's steps as last read: refreshed incrementally (only new sequences are read)."""

    version: tuple[int, str] = (-1, "")  # (head, write id of the head): any change is seen
    lo: int = 0
    oldest: int = 0
    app: dict[str, Any] | None = None
    records: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # [] : nothing tracked
    states: dict[int, dict[str, Any]] = field(default_factory=dict)
    built: Any = None  # the last ApplicationLogs, while the version is unchanged

    def update_head(self, head: int, wid: str, oldest: int, lo: int) -> bool:
        """Take the app's new head; False when nothing changed. A lower head or another write id
        at the same head (a rewind) drops what was read."""
        if (head, wid) == self.version:
            return False
        if head < self.version[0] or (head == self.version[0] and wid != self.version[1]):
            self.records.clear()
            self.states.clear()
        self.version, self.oldest, self.lo, self.built = (head, wid), oldest, lo, None
        for seq in [s for s in self.records if s < lo]:
            del self.records[seq]
        for seq in [s for s in self.states if s < oldest]:
            del self.states[seq]
        return True

    def missing_records(self) -> list[int]:
        return [s for s in range(self.lo, self.version[0] + 1) if s not in self.records]

    def take_records(self, seqs: list[int], raw: list[Any]) -> None:
        for seq, blob in zip(seqs, raw, strict=True):
            self.records[seq] = orjson.loads(blob) if blob else []

    def missing_states(self) -> list[int]:
        return [s for s, r in self.records.items() if r and s >= self.oldest and s not in self.states]

    def lines(self) -> list[bytes]:
        """The app's log as Burr's log.jsonl lines, the state of each end_entry filled in."""
        out = []
        for seq in sorted(self.records):
            for record in self.records[seq]:
                if record.get("type") == "end_entry":
                    record = {**record, "state": self.states.get(seq, {})}
                out.append(orjson.dumps(record))
        return out

    def workers(self) -> dict[int, str]:
        """Which worker ran each tracked step."""
        return {
            seq: r["value"]
            for seq, records in self.records.items()
            for r in records
            if r.get("type") == "attribute" and r.get("key") == WORKER_ATTRIBUTE
        }
