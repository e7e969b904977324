"""The Redis ACL rules a burr_dist client needs: a user limited to the key prefix, without the
dangerous commands except the two read-only ones the library uses (INFO, CONFIG GET).

``+@all`` already grants CLUSTER SLOTS/SHARDS/NODES, WAIT, SCRIPT LOAD and EVALSHA (none of them
is in ``@dangerous``); they are not listed again. Apply with
``ACL SETUSER <name> reset on ><password> <rules...>`` on every node: ACLs are not replicated.
"""

from __future__ import annotations

from burr_dist.keys import DEFAULT_PREFIX


def acl_rules(prefix: str = DEFAULT_PREFIX) -> tuple[str, ...]:
    """ACL SETUSER rules (after ``reset on >password``) for a client of keys under ``prefix``."""
    return (
        f"~{prefix}:*",
        "resetchannels",
        "+@all",
        "-@dangerous",
        "+info",  # server facts (persistence, replication) for checks and diagnostics
        "+config|get",  # the safety check reads maxmemory-policy
    )


ACL_RULES: tuple[str, ...] = acl_rules()
