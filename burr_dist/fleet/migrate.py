"""Move data written by burr_dist 0.1 (one hash tag per partition) to the bucketed layout.

0.1 stored an app under ``burr:{P}:A:meta|snaps|lease|job``, a partition index under
``burr:{P}:apps``, queues under ``burr:q{Q}:ready|active`` and the fleet under ``burr:w{fleet}:*``.
That layout only ever ran on one server (Cluster was not supported), so migration is for one
server or a Sentinel-managed master: there RENAME may cross slots.

Stop every worker first. Each app moves in one MULTI/EXEC (meta, snaps and job renamed, its
index entry and status count added, its queue entry re-added to its new shard), so a crash leaves
every app either old or new; running the command again finishes the rest. Snapshots themselves
keep their format. Leases and the old worker registry are dropped (no worker may be running).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import redis

from burr_dist.errors import ConfigurationError
from burr_dist.keys import KeySchema, decode_id
from burr_dist.store.core import _s, scored

log = logging.getLogger(__name__)
_KINDS = ("meta", "snaps", "job", "lease")


@dataclass
class MigrationReport:
    apps: int = 0
    queue_entries: int = 0
    dropped: list[str] = field(default_factory=list)


def _old_app(prefix: str, key: str) -> tuple[str, str, str] | None:
    """(partition, app id, kind) of a 0.1 app key, or None for anything else (new keys have
    three segments after the tag, 0.1 keys two)."""
    head = f"{prefix}:{{"
    if not key.startswith(head) or "}:" not in key:
        return None
    tag, _, rest = key[len(head) :].partition("}:")
    parts = rest.split(":")
    if len(parts) != 2 or parts[1] not in _KINDS:
        return None
    return decode_id(tag), decode_id(parts[0]), parts[1]


def migrate_v1_layout(client: Any, schema: KeySchema, *, dry_run: bool = False) -> MigrationReport:
    """Move every 0.1 key under ``schema.prefix`` to the current layout; see the module doc."""
    if isinstance(client, redis.RedisCluster):
        raise ConfigurationError(
            "0.1 data can only exist on one server or a Sentinel-managed master; this is a Cluster"
        )
    p = schema.prefix
    apps: dict[tuple[str, str], set[str]] = {}
    for raw in client.scan_iter(match=f"{p}:{{*}}:*", count=1000):
        found = _old_app(p, _s(raw))
        if found is not None:
            apps.setdefault((found[0], found[1]), set()).add(found[2])
    queues = [_s(k) for k in client.scan_iter(match=f"{p}:q{{*}}:*", count=1000)]
    old_fleet = [_s(k) for k in client.scan_iter(match=f"{p}:w{{fleet}}:*", count=1000)]
    # Queue entries: member -> (queue, score); active entries go back to ready (no worker runs).
    entries: dict[str, tuple[str, float]] = {}
    for key in queues:
        name = decode_id(key[len(p) + 3 :].split("}")[0])
        for member, score in scored(client.zrange(key, 0, -1, withscores=True)):
            entries.setdefault(_s(member), (name, score))
    report = MigrationReport()
    for (pk, app_id), kinds in sorted(apps.items()):
        member = KeySchema.member(pk, app_id)
        enc_pk, enc_app = member.split(":")
        old_base, old_index = f"{p}:{{{enc_pk}}}:{enc_app}", f"{p}:{{{enc_pk}}}:apps"
        new = schema.app(pk, app_id)
        score = client.zscore(old_index, app_id)
        status = client.hget(f"{old_base}:job", "status") if "job" in kinds else None
        report.apps += 1
        if dry_run:
            continue
        pipe = client.pipeline(transaction=True)
        for kind in ("meta", "snaps", "job"):
            if kind in kinds:
                pipe.rename(f"{old_base}:{kind}", getattr(new, kind))
        if "lease" in kinds:
            pipe.delete(f"{old_base}:lease")
        if score is not None:
            pipe.zadd(new.index, {app_id: score}, nx=True)
            pipe.zrem(old_index, app_id)
        if status is not None:
            pipe.hincrby(new.counts, _s(status), 1)
        if member in entries:
            queue, due = entries.pop(member)
            pipe.zadd(schema.queue_for(queue, member).ready, {member: due}, nx=True)
            for key in queues:
                pipe.zrem(key, member)
            report.queue_entries += 1
        pipe.execute()
    if not dry_run:
        for key in old_fleet:
            client.delete(key)
        report.dropped = old_fleet
    log.info("migrated %d apps and %d queue entries", report.apps, report.queue_entries)
    return report
