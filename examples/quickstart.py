"""A plain Burr app, leased, run, released, and continued by another process.

    python examples/quickstart.py            # embedded server, two processes take turns
    REDIS_URL=redis://127.0.0.1:6379/0 python examples/quickstart.py

Each process: lease the app (one round trip that also loads its head), build it from the store
(new or resumed), run 3 steps (each committed with a fenced compare-and-set), release.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

from burr.core import ApplicationBuilder, State, action

from burr_dist import RedisPersister, RedisStore, run_app
from burr_dist.testing.embedded import EmbeddedServer


@action(reads=["count"], writes=["count"])
def increment(state: State) -> State:
    return state.update(count=state["count"] + 1)


@action(reads=["count"], writes=["log"])
def report(state: State) -> State:
    return state.update(log=[*state.get("log", []), f"count is {state['count']}"])


def build(persister: RedisPersister, app_id: str, partition_key: str | None) -> ApplicationBuilder:
    return (
        ApplicationBuilder()
        .with_actions(increment=increment, report=report)
        .with_transitions(("increment", "report"), ("report", "increment"))
        .initialize_from(
            persister, resume_at_next_action=True, default_state={"count": 0}, default_entrypoint="increment"
        )
        .with_state_persister(persister)
        .with_identifiers(app_id=app_id, partition_key=partition_key)
    )


def one_turn(url: str, who: str) -> None:
    store = RedisStore.from_url(url)
    # The persister run_app hands the factory is bound to the lease: every save is fenced.
    out = run_app(store, build, app_id="quickstart", partition_key="user-1", max_steps=3)
    print(f"{who}: ran {out.steps} steps, now at sequence {out.sequence_id}, count={out.state['count']}, "
          f"next action: {out.next_action}")  # fmt: skip


def main() -> int:
    url = os.environ.get("REDIS_URL")
    server = None if url else EmbeddedServer().start()
    url = url or server.url  # type: ignore[union-attr]
    try:
        for who in ("process A", "process B"):
            p = multiprocessing.get_context("spawn").Process(target=one_turn, args=(url, who))
            p.start()
            p.join()
            if p.exitcode != 0:
                return 1
        store = RedisStore.from_url(url)
        keys = store.keys("user-1", "quickstart")
        head = store.head_sequence("quickstart", partition_key="user-1")
        print("stored head:", head, "keys:", keys.meta, keys.snaps)
        return 0
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
