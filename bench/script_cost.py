"""Server CPU of each Lua script in one app's life, measured by replaying the real calls.

A worker runs one app of ``bench/apps.py`` (``--kind``) on an embedded server while MONITOR
records every ``EVALSHA`` it sends. The recorded calls of that app (enqueue, ready, acquire,
commit(s), ack; not the claim, which serves a batch) are then replayed on a fresh server for
``--apps`` new app ids, one script at a time in pipelines, and ``INFO commandstats`` gives the
server's time per call: the script's total (``evalsha``) and the part spent inside the commands
it runs. Each row is the fastest of ``--rounds`` replays (this machine's figures move with its
neighbours). The baseline, in the same run: an ``EVALSHA`` of ``return 1`` with the same keys
and arguments (what any script costs before its first line).

Last line: ``script_us_per_app=... floor_us_per_app=... ratio=...`` (acquire + commits + ack).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SKIP = {"heartbeat", "epoch", "sweep", "touch", "renew", "claim"}  # fleet upkeep, or shared


def monitor_words(line: str) -> list[bytes]:
    """The words of one MONITOR line after its ``[db addr]`` part (quoted, escaped)."""
    text = line.split("] ", 1)[1]
    words, i = [], 0
    while i < len(text):
        if text[i] == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            words.append(ast.literal_eval('b"' + text[i + 1 : j] + '"'))
            i = j + 1
        else:
            i += 1
    return words


def record(kind: str, track: bool) -> list[tuple[str, list[bytes]]]:
    """The script calls a worker sends for one app of ``kind``: (script name, command words)."""
    from bench.apps import registry
    from burr_dist.fleet.client import FleetClient
    from burr_dist.fleet.core import EnqueueRequest
    from burr_dist.scripts import known_scripts
    from burr_dist.testing.embedded import EmbeddedServer
    from burr_dist.worker.process import Worker

    names = {s.sha: s.name for s in known_scripts()}
    lines: list[str] = []
    with EmbeddedServer() as server:
        client = server.client()
        conn = client.connection_pool.get_connection()
        conn.send_command("MONITOR")
        conn.read_response()

        def listen() -> None:
            while True:
                try:
                    line = conn.read_response()
                except Exception:
                    return
                lines.append(line.decode() if isinstance(line, bytes) else str(line))

        threading.Thread(target=listen, daemon=True).start()
        done = threading.Event()
        registry.on("completed")(lambda event: done.set())
        FleetClient.from_url(server.url, prefix="p").enqueue_many([EnqueueRequest(kind, app_id="a0")])
        worker = Worker(registry, url=server.url, prefix="p", concurrency=1, track=track)
        runner = threading.Thread(target=lambda: asyncio.run(worker.run()), daemon=True)
        runner.start()
        if not done.wait(30):
            raise RuntimeError("the recorded app did not complete in 30 s")
        time.sleep(0.3)  # the ack rides on the worker's next round trip (its outbox)
        worker.request_stop()
        runner.join(10)
    calls: list[tuple[str, list[bytes]]] = []
    for line in lines:
        if "] " not in line:
            continue
        words = monitor_words(line)
        if not words or words[0].upper() != b"EVALSHA":
            continue
        name = names.get(words[1].decode(), "?")
        if name in SKIP or (calls and calls[-1][1] == words):
            continue
        calls.append((name, words))
    return calls


def for_app(words: list[bytes], i: int) -> list[bytes]:
    """The same call for app ``a<i>`` (keys, queue member and index member of ``a0``)."""
    new = f"a{i}".encode()
    out = []
    for w in words:
        if w == b"a0":  # the partition index member
            out.append(new)
        elif w.endswith(b":a0"):  # the queue member "P:a0"
            out.append(w[:-2] + new)
        else:  # the app's keys
            out.append(w.replace(b":a0:", b":" + new + b":"))
    return out


def replay(
    calls: list[tuple[str, list[bytes]]], apps: int, rounds: int
) -> list[tuple[str, float, float, float, float]]:
    """Per call of the app: (name, us per call, us in its commands, commands per call, floor us)."""
    from burr_dist.scripts import known_scripts
    from burr_dist.testing.embedded import EmbeddedServer

    best: dict[int, tuple[str, float, float, float, float]] = {}
    with EmbeddedServer() as server:
        r = server.client()
        for s in known_scripts():
            r.script_load(s.source)
        floor_sha = r.script_load("#!lua\nreturn 1")

        def timed(words_of: Any, first: int) -> tuple[float, float, float]:
            r.config_resetstat()
            pipe = r.pipeline(transaction=False)
            for i in range(first, first + apps):
                pipe.execute_command(*words_of(i))
                if i % 200 == 199:
                    pipe.execute()
            pipe.execute()
            stats = r.info("commandstats")
            inner = [v for k, v in stats.items() if k not in ("cmdstat_evalsha", "cmdstat_config|resetstat")]
            return (
                float(stats["cmdstat_evalsha"]["usec_per_call"]),
                sum(v["usec"] for v in inner) / apps,
                sum(v["calls"] for v in inner) / apps,
            )

        for rnd in range(rounds):
            first = rnd * apps
            for step, (name, words) in enumerate(calls):
                us, inner, cmds = timed(lambda i, w=words: for_app(w, i), first)
                floor, _, _ = timed(lambda i, w=words: [w[0], floor_sha, *for_app(w, i)[2:]], first)
                if step not in best or us < best[step][1]:
                    best[step] = (name, us, inner, cmds, floor)
    return [best[k] for k in sorted(best)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="one", choices=("one", "ten", "one_async", "ten_async"))
    ap.add_argument("--apps", type=int, default=2000, help="fresh apps each replay")
    ap.add_argument("--rounds", type=int, default=5, help="replays; the fastest of each call is kept")
    ap.add_argument("--no-track", action="store_true", help="a worker without Burr UI tracking records")
    args = ap.parse_args()
    calls = record(args.kind, track=not args.no_track)
    rows = replay(calls, args.apps, args.rounds)
    print(
        f"kind={args.kind} tracking={'off' if args.no_track else 'on'} apps={args.apps} rounds={args.rounds}"
    )
    print(f"{'script':10s} {'us/call':>8s} {'in cmds':>8s} {'cmds':>5s} {'floor':>6s}")
    for name, us, inner, cmds, floor in rows:
        print(f"{name:10s} {us:8.2f} {inner:8.2f} {cmds:5.1f} {floor:6.2f}")
    run = [r for r in rows if r[0] in ("acquire", "commit", "settle", "ack")]
    total, floor_total = sum(r[1] for r in run), sum(r[4] for r in run)
    print(f"script_us_per_app={total:.1f} floor_us_per_app={floor_total:.1f} ratio={total / floor_total:.2f}")


if __name__ == "__main__":
    main()
