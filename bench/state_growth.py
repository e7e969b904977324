"""Growing state: Redis memory and step latency when the state grows, per snapshot format.

Two workloads, each run by three persisters in the same process against the same server:
burr_dist with delta snapshots (format 2, the default), burr_dist with a full snapshot per step
(``snapshot_format=1``, what 0.3 stored) and Burr's own ``RedisBasePersister``.

- ``append``: an agent conversation, one ~2 KB message appended per step (--steps, default 300).
- ``big``: a ~1 MB state of which one small field changes per step (--big-steps, default 100).

It reports, per workload and persister: Redis bytes for the app (MEMORY USAGE of its keys) over
the final serialized state, bytes the server received per commit (INFO total_net_input_bytes),
and step latency at the start (median of steps 5-14) and at the end (median of the last 10).
Then zstd against zlib on the final state's JSON (speed and ratio). The last line is the ratios.

    python bench/state_growth.py [--steps N] [--big-steps N] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import uuid
import zlib
from collections.abc import Callable
from typing import Any

import orjson
from burr.core import ApplicationBuilder, State, action
from burr.integrations.persisters.b_redis import RedisBasePersister

from burr_dist import RedisPersister, RedisStore, StoreConfig
from burr_dist.store import codec
from burr_dist.testing.embedded import EmbeddedServer
from burr_dist.transport.connect import connect

# About 200 words of support-chat English; messages draw from it at random (seeded), with some
# numbers and ids, so the text compresses about as well as model output (zstd 3x or so), not 100x.
WORDS = [
    "the",
    "a",
    "to",
    "of",
    "and",
    "in",
    "is",
    "for",
    "on",
    "that",
    "with",
    "as",
    "at",
    "by",
    "from",
    "this",
    "be",
    "are",
    "was",
    "it",
    "or",
    "an",
    "not",
    "your",
    "we",
    "you",
    "can",
    "will",
    "our",
    "if",
    "has",
    "have",
    "more",
    "about",
    "which",
    "when",
    "their",
    "there",
    "what",
    "all",
    "were",
    "one",
    "they",
    "so",
    "would",
    "order",
    "invoice",
    "account",
    "refund",
    "policy",
    "customer",
    "billing",
    "payment",
    "card",
    "shipping",
    "delivery",
    "warehouse",
    "stock",
    "status",
    "delayed",
    "approved",
    "pending",
    "manager",
    "escalation",
    "region",
    "tax",
    "rate",
    "amount",
    "balance",
    "credit",
    "renewal",
    "lease",
    "contract",
    "clause",
    "section",
    "paragraph",
    "date",
    "friday",
    "monday",
    "deadline",
    "cycle",
    "month",
    "year",
    "model",
    "retrieval",
    "corpus",
    "document",
    "search",
    "result",
    "relevant",
    "summary",
    "answer",
    "question",
    "user",
    "assistant",
    "tool",
    "call",
    "function",
    "argument",
    "error",
    "retry",
    "timeout",
    "request",
    "response",
    "service",
    "api",
    "endpoint",
    "database",
    "record",
    "field",
    "value",
    "update",
    "create",
    "delete",
    "list",
    "report",
    "chart",
    "table",
    "row",
    "column",
    "total",
    "average",
    "median",
    "please",
    "thanks",
    "sorry",
    "hello",
    "confirm",
    "check",
    "review",
    "resolve",
    "explain",
    "describe",
    "compare",
    "suggest",
    "decide",
    "because",
    "however",
    "therefore",
    "although",
    "unless",
    "while",
    "before",
    "after",
    "during",
    "between",
    "within",
    "without",
    "price",
    "discount",
    "coupon",
    "plan",
    "subscription",
    "trial",
    "upgrade",
    "downgrade",
    "cancel",
    "pause",
    "resume",
    "transfer",
    "address",
    "email",
    "phone",
    "name",
    "number",
    "code",
    "reference",
    "ticket",
    "case",
    "priority",
    "high",
    "low",
    "urgent",
    "normal",
    "first",
    "second",
    "third",
    "last",
    "next",
    "previous",
    "new",
    "old",
    "same",
    "different",
    "other",
    "each",
    "every",
    "some",
    "many",
    "few",
]


def text(rng: random.Random, size: int) -> str:
    out: list[str] = []
    n = 0
    while n < size:
        r = rng.random()
        w = (
            rng.choice(WORDS)
            if r < 0.9
            else (str(rng.randrange(10_000)) if r < 0.96 else f"#{rng.getrandbits(32):08x}")
        )
        out.append(w)
        n += len(w) + 1
    return " ".join(out)


def message(turn: int, size: int = 2048) -> dict[str, Any]:
    """A chat message of about ``size`` bytes."""
    rng = random.Random(turn)
    return {"role": "assistant" if turn % 2 else "user", "turn": turn, "content": text(rng, size)}


@action(reads=["messages", "turn"], writes=["messages", "turn"])
def chat(state: State) -> State:
    turn = state["turn"] + 1
    return state.update(turn=turn, messages=[*state["messages"], message(turn)])


@action(reads=["cursor"], writes=["cursor", "note"])
def touch(state: State) -> State:
    return state.update(cursor=state["cursor"] + 1, note=f"visited page {state['cursor'] + 1}")


def build(persister: Any | None, app_id: str, workload: str) -> Any:
    if workload == "append":
        actions, default = {"step": chat}, {"messages": [], "turn": 0}
    else:
        corpus = [text(random.Random(-p), 10_000) for p in range(100)]  # ~1 MB of documents
        actions, default = {"step": touch}, {"corpus": corpus, "cursor": 0, "note": ""}
    b = ApplicationBuilder().with_actions(**actions).with_transitions(("step", "step"))
    b = b.with_identifiers(app_id=app_id, partition_key="bench")
    if persister is None:  # Burr alone: what the step costs before anything is saved
        return b.with_state(**default).with_entrypoint("step").build()
    return (
        b.initialize_from(
            persister, resume_at_next_action=True, default_state=default, default_entrypoint="step"
        )
        .with_state_persister(persister)
        .build()
    )


def net_in(client: Any) -> int:
    return int(client.info("stats")["total_net_input_bytes"])


def memory_of(client: Any, keys: list[str]) -> int:
    return sum(int(client.memory_usage(k, samples=0) or 0) for k in keys)


def run(client: Any, name: str, persister: Any, keys_of: Callable[[str], list[str]], workload: str,
        steps: int) -> dict[str, float]:  # fmt: skip
    app_id = f"{workload}-{name}-{uuid.uuid4().hex[:6]}"
    app = build(persister, app_id, workload)
    saves: list[float] = []
    if persister is not None:
        save = persister.save

        def timed_save(*args: Any, **kwargs: Any) -> None:  # Burr's hook looks it up per call
            t0 = time.perf_counter()
            save(*args, **kwargs)
            saves.append(time.perf_counter() - t0)

        persister.save = timed_save
    lat = []
    before = net_in(client)
    for _ in range(steps):
        t0 = time.perf_counter()
        app.step()
        lat.append(time.perf_counter() - t0)
    sent = net_in(client) - before
    final = len(orjson.dumps(app.state.serialize()))
    mem = memory_of(client, keys_of(app_id)) if persister is not None else 0
    start, end = statistics.median(lat[5:15]), statistics.median(lat[-10:])
    s_start, s_end = (statistics.median(saves[5:15]), statistics.median(saves[-10:])) if saves else (0, 0)
    return {"memory_ratio": mem / final, "memory_mb": mem / 1e6, "final_kb": final / 1e3,
            "sent_kb_per_step": sent / steps / 1e3, "start_ms": start * 1e3, "end_ms": end * 1e3,
            "latency_ratio": end / start, "mean_ms": statistics.fmean(lat) * 1e3,
            "save_start_ms": s_start * 1e3, "save_end_ms": s_end * 1e3,
            "save_ratio": s_end / s_start if s_start else 0.0}  # fmt: skip


def compression(blob: bytes) -> None:
    import zstandard

    for label, comp, decomp in (
        ("zstd-3", zstandard.ZstdCompressor(level=3).compress, zstandard.ZstdDecompressor().decompress),
        ("zlib-6", lambda b: zlib.compress(b, 6), zlib.decompress),
    ):
        t0 = time.perf_counter()
        for _ in range(20):
            small = comp(blob)
        t1 = time.perf_counter()
        for _ in range(20):
            decomp(small)
        t2 = time.perf_counter()
        mb = len(blob) * 20 / 1e6
        print(f"  {label}: ratio {len(blob) / len(small):.2f}, compress {mb / (t1 - t0):.0f} MB/s, "
              f"decompress {mb / (t2 - t1):.0f} MB/s  ({len(blob) / 1e3:.0f} KB of state JSON)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--big-steps", type=int, default=100)
    ap.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    args = ap.parse_args()
    if args.steps < 20 or args.big_steps < 20:
        ap.error("--steps and --big-steps must be at least 20 (latency compares steps 5-14 with the last 10)")
    server = None
    url = args.redis_url
    if not url:
        server = EmbeddedServer().start()
        url = server.url
    try:
        client = connect(url)
        ns = f"bg{uuid.uuid4().hex[:6]}"
        v2 = RedisStore(connect(url), StoreConfig(prefix=f"{ns}a"))
        v1 = RedisStore(connect(url), StoreConfig(prefix=f"{ns}b", snapshot_format=1))

        def dist_keys(store: RedisStore) -> Callable[[str], list[str]]:
            return lambda app_id: [store.keys("bench", app_id).meta, store.keys("bench", app_id).snaps]

        def burr_keys(app_id: str) -> list[str]:
            # Burr's persister: one hash per step, under its namespace (this run's own).
            return [k.decode() for k in client.scan_iter(match=f"{ns}c:bench:{app_id}:*", count=1000)]

        persisters: dict[str, tuple[Callable[[], Any], Callable[[str], list[str]]]] = {
            "no_persister": (lambda: None, lambda app_id: []),
            "burr_dist_v2": (lambda: RedisPersister(v2), dist_keys(v2)),
            "burr_dist_v1": (lambda: RedisPersister(v1), dist_keys(v1)),
            "burr_redis": (lambda: RedisBasePersister(connect(url), namespace=f"{ns}c"), burr_keys),
        }
        print(f"server={url} (keep=100, the default retention; Burr's persister keeps every step)")
        results: dict[tuple[str, str], dict[str, float]] = {}
        for workload, steps in (("append", args.steps), ("big", args.big_steps)):
            print(f"\n{workload}: {steps} steps")
            for name, (make, keys_of) in persisters.items():
                r = results[(workload, name)] = run(client, name, make(), keys_of, workload, steps)
                print(f"  {name:13s} memory {r['memory_mb']:7.2f} MB = {r['memory_ratio']:6.2f}x the final "
                      f"state ({r['final_kb']:.0f} KB); sent {r['sent_kb_per_step']:7.1f} KB/step; step "
                      f"{r['start_ms']:.2f} -> {r['end_ms']:.2f} ms ({r['latency_ratio']:.2f}x), of which "
                      f"save {r['save_start_ms']:.2f} -> {r['save_end_ms']:.2f} ms "
                      f"({r['save_ratio']:.2f}x); mean step {r['mean_ms']:.2f} ms")  # fmt: skip
        final = orjson.dumps(State({"messages": [message(t) for t in range(1, args.steps + 1)]}).serialize())
        print("\ncompression of the append workload's final state:")
        compression(final)
        a2, a1, b2 = (
            results[("append", "burr_dist_v2")],
            results[("append", "burr_dist_v1")],
            results[("big", "burr_dist_v2")],
        )
        print(
            f"append_memory_ratio={a2['memory_ratio']:.2f} append_latency_ratio={a2['latency_ratio']:.2f} "
            f"append_memory_vs_v1={a1['memory_mb'] / a2['memory_mb']:.1f} "
            f"append_sent_vs_v1={a1['sent_kb_per_step'] / a2['sent_kb_per_step']:.1f} "
            f"big_memory_ratio={b2['memory_ratio']:.2f} big_latency_ratio={b2['latency_ratio']:.2f} "
            f"format={codec.FORMAT_VERSION}"
        )
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
