"""The Redis ACL rules a burr_dist client needs, and no more.

A burr_dist user may touch only keys under its prefix (``~<prefix>:*``; the fleet, bucket and
queue keys all start with it) and send only the commands burr_dist and redis-py send:

* the scripts (``EVALSHA``, ``SCRIPT LOAD`` after NOSCRIPT) and every command they call:
  ACL rules apply inside Lua scripts too (see the ``redis.call`` list of ``burr_dist/scripts``);
* the plain reads and writes of operator commands and the transport (``HGETALL``, ``ZRANGE``...,
  ``INCR`` + ``WAIT`` to confirm writes on replicas, ``TIME``), ``SCAN`` for ``ls``/``reconcile``;
* ``CONFIG GET`` (the worker checks maxmemory-policy; without it the worker starts with a warning);
* what redis-py sends on connecting (``HELLO``, ``CLIENT SETINFO``, ``SELECT`` for a database
  other than 0, ``PING``) and for Cluster discovery and redirects (``CLUSTER SLOTS``/``SHARDS``/
  ``NODES``, ``COMMAND`` for its key parser, ``READONLY``, ``ASKING``).

No ``@dangerous`` command is granted except ``CONFIG GET``. Apply the rules with
``ACL SETUSER <name> reset on ><password> <rules...>`` on every data node (ACLs are not
replicated, and a replica becomes the master after a failover). When the sentinels have ACLs of
their own, the user named by ``sentinel_username`` needs :data:`SENTINEL_ACL_RULES` on each sentinel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import redis

from burr_dist.keys import DEFAULT_PREFIX

# Commands called by the Lua scripts (redis.call), sorted.
SCRIPT_COMMANDS = (
    "del", "get", "hdel", "hget", "hincrby", "hmget", "hset", "hsetnx", "pexpire", "pttl", "set",
    "time", "zadd", "zpopmin", "zrange", "zrangebyscore", "zrem", "zremrangebyscore", "zscore",
)  # fmt: skip
# Commands sent from Python (transport, store, fleet client, worker, UI backend), sorted.
CLIENT_COMMANDS = (
    "config|get", "del", "evalsha", "get", "hget", "hgetall", "hmget", "incr", "pexpire", "ping", "pttl",
    "sadd", "scan", "script|load", "set", "smembers", "time", "wait", "zadd", "zcard", "zrange", "zrem",
    "zscore", "lpush", "ltrim", "blpop", "role", "unlink",
    "xadd", "xread", "xrevrange",
)  # fmt: skip
# What redis-py sends on its own: connection set-up, Cluster discovery and redirects.
DRIVER_COMMANDS = (
    "asking", "client|setinfo", "cluster|nodes", "cluster|shards", "cluster|slots", "command",
    "hello", "readonly", "select",
)  # fmt: skip


def acl_rules(*prefixes: str) -> tuple[str, ...]:
    """ACL SETUSER rules (after ``reset on >password``) for a client of keys under ``prefixes``
    (default: ``burr``)."""
    commands = sorted(set(SCRIPT_COMMANDS) | set(CLIENT_COMMANDS) | set(DRIVER_COMMANDS))
    keys = [f"~{p}:*" for p in (prefixes or (DEFAULT_PREFIX,))]
    return (*keys, "resetchannels", "-@all", *(f"+{c}" for c in commands))


ACL_RULES: tuple[str, ...] = acl_rules()

# For a sentinel user (``sentinel_username``/``sentinel_password`` URL options): redis-py asks
# the sentinels for the master (SENTINEL MASTERS) and, for replicas, SENTINEL REPLICAS/SLAVES.
SENTINEL_ACL_RULES: tuple[str, ...] = (
    "-@all",
    "+sentinel|masters",
    "+sentinel|master",
    "+sentinel|get-master-addr-by-name",
    "+sentinel|replicas",
    "+sentinel|slaves",
    "+sentinel|sentinels",
    "+ping",
    "+hello",
    "+client|setinfo",
)


def set_acl_user(client: Any, name: str, password: str, rules: Iterable[str] = ACL_RULES) -> list[str]:
    """``ACL SETUSER name reset on >password rules...`` on one node (a redis-py client of it).

    A rule naming a command the server does not know (``CLIENT SETINFO`` before Redis 7.2) is
    dropped: an old server cannot receive that command anyway. Returns the rules applied."""
    applied = list(rules)
    while True:
        try:
            client.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}", *applied)
            return applied
        except redis.ResponseError as e:
            m = re.search(r"modifier '([^']+)': Unknown command", str(e))
            if m is None or m.group(1) not in applied:
                raise
            applied.remove(m.group(1))
