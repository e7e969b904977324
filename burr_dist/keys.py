"""The key schema: the only place that makes Redis key names.

Layout (prefix ``burr``; ``P`` and ``A`` are the encoded partition key and app id, ``Q`` an
encoded queue name, ``T`` a bucket tag, ``U`` a queue-shard tag, see below)::

    burr:{T}:P:A:meta      hash   head sequence, position, status, fencing counter, write id;
                                  'tlo' mirrors the track hash's 'lo' (commit.lua reads it here);
                                  'cancel' hints that the job record's cancel flag is set
    burr:{T}:P:A:snaps     hash   sequence id -> snapshot JSON (the last ``keep`` steps)
    burr:{T}:P:A:lease     string lease token, expires on the server's clock (PX)
    burr:{T}:P:A:job       hash   fleet record: app name, status, attempts, last error, inputs...
    burr:{T}:P:A:track     hash   Burr tracking (tracking.py): sequence id -> that step's
                                  records (JSON list, no state); 'app' -> graph + metadata; 'lo'
                                  -> lowest sequence still kept (trimmed to ``keep`` by commit.lua)
    burr:{T}:P:A:stream    stream what streaming actions yield, live (worker/streaming.py; capped
                                  with XADD MAXLEN ~, expires as the app's keys do)
    burr:{T}:P:apps        zset   app ids of partition P in bucket T, scored by first commit (ms)
    burr:{T}:counts        hash   status counters of bucket T: '<status>' -> records created with it,
                                  '<from>><to>' -> records moved (count = own + in - out)
    burr:{T}:sync          int    written before WAIT to confirm a batch (transport.py); a batch
                                  sent through ASK writes burr:{T}:sync:<random> instead (PX 10 s)
    burr:{T}:epoch         hash   store epoch of the primary that owns T (safety.py)
    burr:{U}:q:Q:ready     zset   runnable apps of one shard of queue Q ("P:A"), by fair time (ms)
    burr:{U}:q:Q:sched     zset   apps of that shard not due yet (delays, retry backoff), by due time
    burr:{U}:q:Q:active    zset   claimed apps of that shard, scored by claim deadline (ms)
    burr:{U}:q:Q:vt        hash   fair-queuing state of that shard (per partition: last, pending)
    burr:{fleet}:workers   zset   worker ids, scored by last heartbeat (server ms)
    burr:{fleet}:worker:W  hash   one worker's host, pid, queues, concurrency (expires)
    burr:{fleet}:queues    set    names of queues ever enqueued to (for status and sweeps)
    burr:{fleet}:bell:Q    list   wake-up tokens for idle workers of queue Q (bounded)
    burr:{fleet}:graph:D   string an app graph (Burr tracking) by the digest D of its JSON: written
                                  once, shared by every app built from the same graph; no TTL

**Buckets.** An app lives in bucket ``crc32("P:A") % buckets`` (default 256). Everything of the
bucket shares the hash tag ``{T}``, so each script touches one Cluster slot and still updates the
bucket's status counters and partition index atomically with the app. Bucket tags are chosen so
that bucket ``i`` hashes into the ``i``-th equal range of the 16384 slots: buckets, and so apps
(even of one partition), spread evenly over any set of masters that own contiguous slot ranges.
Queues are split the same way into ``queue_shards`` shards (default 24: an even split over 1, 2, 3, 4, 6, 8, 12 or 24 masters) with tags ``q<i>...``.
Both counts are part of the key layout: every process of one fleet must use the same values.

Encoding: ids are percent-encoded outside a small safe alphabet, so ``:``, ``{``, ``}``, glob
characters, spaces and non-ASCII never appear raw. The encoding is injective (``%`` itself is
escaped) and an empty string encodes as a lone ``%``, which no other string produces. Ordinary
ids (``user-42``, ``chat_7``) stay readable in ``redis-cli``. Because encoded ids never contain
``:``, a key's segments can be read back unambiguously and no id can produce another app's key.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from functools import cache

from redis.crc import key_slot

from burr_dist.errors import ConfigurationError

DEFAULT_PREFIX = "burr"
# Burr passes partition_key=None when none was given; that is this partition.
DEFAULT_PARTITION = "default"
DEFAULT_BUCKETS = 256
DEFAULT_QUEUE_SHARDS = 24
_DIGEST = re.compile(r"[0-9a-f]{32}")
SLOTS = 16384

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.@+=,;!~")
_SAFE_RE = re.compile(r"[A-Za-z0-9\-_.@+=,;!~]+")  # every character in _SAFE
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.\-]+(:[A-Za-z0-9_.\-]+)*$")


def encode_id(value: str) -> str:
    """Percent-encode an id so that it cannot contain ``:``, braces, glob characters or spaces."""
    if value == "":
        return "%"
    if _SAFE_RE.fullmatch(value):
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


def sync_key(prefix: str, tag: str) -> str:
    """The key a confirmed batch writes before WAIT, in the slot of hash tag ``tag``."""
    return f"{prefix}:{{{tag}}}:sync"


@cache
def spread_tags(count: int, lead: str = "") -> tuple[str, ...]:
    """``count`` hash tags, the ``i``-th hashing into the ``i``-th equal range of Cluster slots.

    Deterministic (key names depend on it): tag ``i`` is ``lead + str(i)`` when that already
    lands in its range, else the first ``lead + f"{i}.{n}"`` (n = 1, 2, ...) that does."""
    if not 1 <= count <= SLOTS:
        raise ConfigurationError(f"tag count must be in 1..{SLOTS}, got {count}", count=count)
    tags = []
    for i in range(count):
        lo, hi = i * SLOTS // count, (i + 1) * SLOTS // count
        n = 0
        while True:
            tag = f"{lead}{i}" if n == 0 else f"{lead}{i}.{n}"
            if lo <= key_slot(tag.encode()) < hi:
                break
            n += 1
        tags.append(tag)
    return tuple(tags)


@dataclass(frozen=True)
class AppKeys:
    meta: str
    snaps: str
    lease: str
    index: str
    job: str
    counts: str
    bucket: int
    track: str  # Burr tracking records; written by commit.lua only when it gets some
    stream: str  # items of streaming actions (fleet/streams.py); written only by apps that stream


@dataclass(frozen=True)
class QueueKeys:
    ready: str
    active: str
    scheduled: str
    vt: str


@dataclass(frozen=True)
class KeySchema:
    prefix: str = DEFAULT_PREFIX
    buckets: int = DEFAULT_BUCKETS
    queue_shards: int = DEFAULT_QUEUE_SHARDS

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str) or not _PREFIX_RE.fullmatch(self.prefix):
            raise ConfigurationError(
                f"invalid key prefix {self.prefix!r}: use letters, digits, '_', '.', '-' "
                "in ':'-separated parts (no braces, glob characters or spaces)",
                prefix=self.prefix,
            )
        for name in ("buckets", "queue_shards"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 4096:
                raise ConfigurationError(f"{name} must be an int in 1..4096, got {value!r}", **{name: value})

    # -- apps ----------------------------------------------------------------------------
    def bucket_of(self, partition_key: str | None, app_id: str) -> int:
        return zlib.crc32(self.member(partition_key, app_id).encode()) % self.buckets

    def bucket_tag(self, bucket: int) -> str:
        return f"{self.prefix}:{{{spread_tags(self.buckets)[bucket]}}}"

    def partition_index(self, partition_key: str | None, bucket: int) -> str:
        return f"{self.bucket_tag(bucket)}:{encode_id(partition_of(partition_key))}:apps"

    def partition_indexes(self, partition_key: str | None) -> list[str]:
        """The partition's index in every bucket (list them all to list the partition)."""
        return [self.partition_index(partition_key, b) for b in range(self.buckets)]

    def app(self, partition_key: str | None, app_id: str) -> AppKeys:
        check_id("app_id", app_id)
        bucket = self.bucket_of(partition_key, app_id)
        tag = self.bucket_tag(bucket)
        base = f"{tag}:{encode_id(partition_of(partition_key))}:{encode_id(app_id)}"
        return AppKeys(
            meta=f"{base}:meta",
            snaps=f"{base}:snaps",
            lease=f"{base}:lease",
            index=self.partition_index(partition_key, bucket),
            job=f"{base}:job",
            counts=f"{tag}:counts",
            bucket=bucket,
            track=f"{base}:track",
            stream=f"{base}:stream",
        )

    def counts(self, bucket: int) -> str:
        return f"{self.bucket_tag(bucket)}:counts"

    def epoch(self, bucket: int = 0) -> str:
        return f"{self.bucket_tag(bucket)}:epoch"

    @staticmethod
    def member(partition_key: str | None, app_id: str) -> str:
        """Queue member naming an app: injective, parseable back with :meth:`parse_member`."""
        return f"{encode_id(partition_of(partition_key))}:{encode_id(check_id('app_id', app_id))}"

    @staticmethod
    def parse_member(member: str) -> tuple[str, str]:
        pk, app = member.split(":")
        return decode_id(pk), decode_id(app)

    # -- queues --------------------------------------------------------------------------
    def shard_of(self, member: str) -> int:
        return zlib.crc32(member.encode()) % self.queue_shards

    def queue_shard(self, name: str, shard: int) -> QueueKeys:
        check_id("queue", name)
        tag = f"{self.prefix}:{{{spread_tags(self.queue_shards, 'q')[shard]}}}:q:{encode_id(name)}"
        return QueueKeys(
            ready=f"{tag}:ready", active=f"{tag}:active", scheduled=f"{tag}:sched", vt=f"{tag}:vt"
        )

    def queue_for(self, name: str, member: str) -> QueueKeys:
        """The shard of queue ``name`` that lists ``member``."""
        return self.queue_shard(name, self.shard_of(member))

    def queue_shards_of(self, name: str) -> list[QueueKeys]:
        return [self.queue_shard(name, s) for s in range(self.queue_shards)]

    # -- fleet ---------------------------------------------------------------------------
    def workers(self) -> str:
        return f"{self.prefix}:{{fleet}}:workers"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:{{fleet}}:worker:{encode_id(check_id('worker_id', worker_id))}"

    def queues(self) -> str:
        return f"{self.prefix}:{{fleet}}:queues"

    def bell(self, queue: str) -> str:
        """A list idle workers block on (BLPOP); enqueues push to it so they start at once."""
        return f"{self.prefix}:{{fleet}}:bell:{encode_id(check_id('queue', queue))}"

    def graph(self, digest: str) -> str:
        """Where the tracking graph with this digest (32 hex digits, tracking.py) is kept."""
        if not _DIGEST.fullmatch(digest):
            raise ConfigurationError(f"graph digest must be 32 hex digits, got {digest!r}", digest=digest)
        return f"{self.prefix}:{{fleet}}:graph:{digest}"

    def job_pattern(self, partition_key: str | None = None) -> str:
        """SCAN MATCH pattern for job records, of one partition when given (braces are not glob
        characters, and encoded ids contain none of ``*?[]\\``)."""
        if partition_key is None:
            return f"{self.prefix}:{{*}}:*:*:job"
        return f"{self.prefix}:{{*}}:{encode_id(partition_key)}:*:job"

    def scan_pattern(self) -> str:
        """A SCAN MATCH pattern for everything under the prefix (the prefix has no glob chars)."""
        return f"{self.prefix}:*"
