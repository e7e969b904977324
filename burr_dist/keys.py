"""The key schema: the only place that makes Redis key names.

Layout (prefix ``burr``; ``P`` and ``A`` are the encoded partition key and app id)::

    burr:{P}:A:meta      hash   head sequence, position, status, fencing counter, write id
    burr:{P}:A:snaps     hash   sequence id -> snapshot JSON (the last ``keep`` steps)
    burr:{P}:A:lease     string lease token, expires on the server's clock (PX)
    burr:{P}:A:job       hash   fleet record: app name, status, attempts, last error, inputs...
    burr:{P}:apps        zset   app ids of the partition, scored by first commit (server ms)
    burr:q{Q}:ready      zset   runnable apps of queue Q ("P:A" members), scored by due time (ms)
    burr:q{Q}:active     zset   claimed apps of queue Q, scored by claim deadline (server ms)
    burr:w{fleet}:workers   zset  worker ids, scored by last heartbeat (server ms)
    burr:w{fleet}:worker:W  hash  one worker's host, pid, queues, concurrency (expires)
    burr:w{fleet}:epoch     hash  id (set once) and n (bumped by every heartbeat): a worker that
                                  sees another id, or n go back, knows Redis lost data

Everything of one partition shares the hash tag ``{P}``, so a commit (app keys plus the
partition index) touches one Redis Cluster slot. The partition key is therefore the unit of
sharding: put independent users or tenants under different partition keys.

Queue keys carry their own hash tag (``q{Q}``) and so live in another slot than the apps they
list: every step that crosses the two is ordered so that a crash leaves at worst an entry that a
later claim or sweep recognises and drops (see burr_dist/queue.py).

Encoding: ids are percent-encoded outside a small safe alphabet, so ``:``, ``{``, ``}``, glob
characters, spaces and non-ASCII never appear raw. The encoding is injective (``%`` itself is
escaped) and an empty string encodes as a lone ``%``, which no other string produces. Ordinary
ids (``user-42``, ``chat_7``) stay readable in ``redis-cli``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from burr_dist.errors import ConfigurationError

DEFAULT_PREFIX = "burr"
# Burr passes partition_key=None when none was given; that is this partition.
DEFAULT_PARTITION = "default"

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.@+=,;!~")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.\-]+(:[A-Za-z0-9_.\-]+)*$")


def encode_id(value: str) -> str:
    """Percent-encode an id so that it cannot contain ``:``, braces, glob characters or spaces."""
    if value == "":
        return "%"
    if all(ch in _SAFE for ch in value):
        return value
    out: list[str] = []
    for ch in value:
        if ch in _SAFE:
            out.append(ch)
        else:
            try:
                out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
            except UnicodeEncodeError:  # a lone surrogate: no UTF-8 form, so no key name either
                raise ConfigurationError(
                    f"id {value!r} is not valid Unicode text (lone surrogate {ch!r})", id=value
                ) from None
    return "".join(out)


def decode_id(encoded: str) -> str:
    """Inverse of :func:`encode_id`."""
    if encoded == "%":
        return ""
    if "%" not in encoded:
        return encoded
    data = bytearray()
    i = 0
    while i < len(encoded):
        ch = encoded[i]
        if ch == "%":
            data.append(int(encoded[i + 1 : i + 3], 16))
            i += 3
        else:
            data.extend(ch.encode("utf-8"))
            i += 1
    return data.decode("utf-8")


def partition_of(partition_key: str | None) -> str:
    return DEFAULT_PARTITION if partition_key is None else partition_key


def check_id(kind: str, value: object) -> str:
    """Reject ids that are not non-empty strings, with a message naming the argument."""
    if not isinstance(value, str) or value == "":
        raise ConfigurationError(f"{kind} must be a non-empty string, got {value!r}", **{kind: value})
    return value


@dataclass(frozen=True)
class AppKeys:
    meta: str
    snaps: str
    lease: str
    index: str
    job: str


@dataclass(frozen=True)
class QueueKeys:
    ready: str
    active: str


@dataclass(frozen=True)
class KeySchema:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str) or not _PREFIX_RE.fullmatch(self.prefix):
            raise ConfigurationError(
                f"invalid key prefix {self.prefix!r}: use letters, digits, '_', '.', '-' "
                "in ':'-separated parts (no braces, glob characters or spaces)",
                prefix=self.prefix,
            )

    def _tag(self, partition_key: str | None) -> str:
        return f"{self.prefix}:{{{encode_id(partition_of(partition_key))}}}"

    def partition_index(self, partition_key: str | None) -> str:
        return f"{self._tag(partition_key)}:apps"

    def app(self, partition_key: str | None, app_id: str) -> AppKeys:
        check_id("app_id", app_id)
        base = f"{self._tag(partition_key)}:{encode_id(app_id)}"
        return AppKeys(
            meta=f"{base}:meta",
            snaps=f"{base}:snaps",
            lease=f"{base}:lease",
            index=self.partition_index(partition_key),
            job=f"{base}:job",
        )

    @staticmethod
    def member(partition_key: str | None, app_id: str) -> str:
        """Queue member naming an app: injective, parseable back with :meth:`parse_member`."""
        return f"{encode_id(partition_of(partition_key))}:{encode_id(check_id('app_id', app_id))}"

    @staticmethod
    def parse_member(member: str) -> tuple[str, str]:
        pk, app = member.split(":")
        return decode_id(pk), decode_id(app)

    def queue(self, name: str) -> QueueKeys:
        check_id("queue", name)
        tag = f"{self.prefix}:q{{{encode_id(name)}}}"
        return QueueKeys(ready=f"{tag}:ready", active=f"{tag}:active")

    def workers(self) -> str:
        return f"{self.prefix}:w{{fleet}}:workers"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:w{{fleet}}:worker:{encode_id(check_id('worker_id', worker_id))}"

    def epoch(self) -> str:
        return f"{self.prefix}:w{{fleet}}:epoch"

    def job_pattern(self) -> str:
        """SCAN MATCH pattern for job records (braces are not glob characters)."""
        return f"{self.prefix}:{{*}}:*:job"

    def scan_pattern(self) -> str:
        """A SCAN MATCH pattern for everything under the prefix (the prefix has no glob chars)."""
        return f"{self.prefix}:*"
