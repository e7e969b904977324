"""Apps in the shapes of Burr's examples (tests/support/shapes.py), their builders as the examples
write them, on two real ``burr-dist worker`` processes with ``--max-steps-per-claim 2`` (so runs
hop between workers mid-way), resumed with the same inputs as a local Burr run, and compared field
by field with that run's final state, ``__SEQUENCE_ID`` and ``__PRIOR_STEP`` included."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Iterator
from typing import Any

import pytest
from burr.core import Application, expr

from burr_dist import FleetClient
from burr_dist.errors import ConfigurationError, InputsRefused
from burr_dist.keys import partition_of
from tests.conftest import KINDS, TARGETS
from tests.support import shapes
from tests.support.cli_workers import CliWorker, cli, cli_json, cli_workers
from tests.support.fleet import wait_until


class Shapes:
    def __init__(self, url: str, workers: list[CliWorker]) -> None:
        self.url, self.workers = url, workers
        self.fc = FleetClient.from_url(url)

    def wait(self, app_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
        def settled() -> dict[str, Any] | None:
            for w in self.workers:
                assert w.alive(), w.log()[-3000:]
            job = self.fc.show(app_id)
            return job if job["status"] in statuses and job["lease_holder"] is None else None

        job: dict[str, Any] = wait_until(settled, timeout, f"{app_id} {statuses}", interval=0.05)
        return job

    def state(self, app_id: str) -> dict[str, Any]:
        loaded = self.fc.load(partition_of(None), app_id)
        assert loaded is not None
        return loaded["state"].get_all()

    def run(
        self, name: str, app_id: str, resumes: list[dict[str, Any]], *, first_inputs: bool = False
    ) -> dict[str, Any]:
        """Enqueue (with the first inputs when ``first_inputs``), then resume with each of
        ``resumes`` once the app parked; the final state once it parked or completed for good."""
        todo = list(resumes)
        self.fc.enqueue(name, app_id, inputs=todo.pop(0) if first_inputs else None)
        job = self.wait(app_id, "waiting", "completed", "failed")
        for inputs in todo:
            assert job["status"] == "waiting", job
            assert self.fc.resume(app_id, inputs) == "queued"
            job = self.wait(app_id, "waiting", "completed", "failed")
        assert job["status"] != "failed", job
        return self.state(app_id)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shapes]:
    target = TARGETS.get(f"single-{KINDS[0]}")
    target.flush()
    logs = tmp_path_factory.mktemp("shapes")
    with cli_workers(target.url, logs, "tests.support.shapes", 2, "--max-steps-per-claim", "2",
                     "--lease-ttl", "3") as workers:  # fmt: skip
        f = Shapes(target.url, workers)
        yield f
        f.fc.client.close()


def local_run(app: Application[Any], name: str, resumes: list[dict[str, Any] | None]) -> dict[str, Any]:
    spec = shapes.registry.get(name)
    for inputs in resumes:
        app.run(halt_before=list(spec.halt_before), halt_after=list(spec.halt_after), inputs=inputs)
    return app.state.get_all()


async def alocal_run(name: str, resumes: list[dict[str, Any] | None]) -> dict[str, Any]:
    app = await shapes.alocal(name)
    spec = shapes.registry.get(name)
    for inputs in resumes:
        await app.arun(halt_before=list(spec.halt_before), halt_after=list(spec.halt_after), inputs=inputs)
    return app.state.get_all()


def assert_same(fleet_state: dict[str, Any], local_state: dict[str, Any]) -> None:
    assert sorted(fleet_state) == sorted(local_state)
    for key in local_state:
        assert fleet_state[key] == local_state[key], key
    assert fleet_state["__SEQUENCE_ID"] == local_state["__SEQUENCE_ID"]


def test_counter_with_its_builder_as_written(fleet: Shapes) -> None:
    """with_state, with_entrypoint and with_identifiers (another app id and partition) as Burr's
    counter example has them: it runs, under the fleet's ids, with one warning per worker."""
    for i in range(3):
        fleet.fc.enqueue("shape_counter", f"counter-{i}")
    for i in range(3):
        assert fleet.wait(f"counter-{i}", "completed")["status"] == "completed"
    expected = local_run(shapes.local("shape_counter"), "shape_counter", [None])
    for i in range(3):
        assert_same(fleet.state(f"counter-{i}"), expected)
    assert expected["counter"] == 5 and expected["__SEQUENCE_ID"] == 5
    warned = [w.log().count("with_identifiers(") for w in fleet.workers]
    assert sum(warned) >= 1 and max(warned) == 1, warned  # once per app name and worker
    assert fleet.fc.list_app_ids("someone-else") == []


def test_human_in_the_loop_resumed_with_inputs(fleet: Shapes) -> None:
    turns = [{"prompt": "hello"}, {"prompt": "what is burr?"}, {"prompt": "thanks"}]
    got = fleet.run("shape_hitl", "hitl-1", turns)
    assert_same(got, local_run(shapes.local("shape_hitl"), "shape_hitl", turns))
    assert got["turns"] == 3 and fleet.fc.job("hitl-1")["waiting_for"] == "user_input"


def test_halt_after_parks_after_the_action(fleet: Shapes) -> None:
    turns = [{"prompt": "one"}, {"prompt": "two"}]
    got = fleet.run("shape_halt_after", "ha-1", turns, first_inputs=True)
    assert_same(got, local_run(shapes.local("shape_halt_after"), "shape_halt_after", turns))
    assert got["__PRIOR_STEP"] == "count_turns" and got["turns"] == 2


def test_mixed_sync_and_async_actions_with_inputs_for_a_later_step(fleet: Shapes) -> None:
    """abuild() app with sync actions, stepped with astep; the enqueue's inputs reach
    summarize, its third step, which runs after a hand-off to a claim of its own."""
    got = fleet.run("shape_mixed", "mixed-1", [{"style": "terse"}], first_inputs=True)
    expected = asyncio.run(alocal_run("shape_mixed", [{"style": "terse"}]))
    assert_same(got, expected)
    assert got["answer"].startswith("terse: ") and got["checked"] is True
    assert fleet.fc.job("mixed-1")["claims"] >= 2  # 4 steps, 2 per claim: summarize ran after a hand-off


def test_async_streaming_action_completes_with_the_right_state(fleet: Shapes) -> None:
    asks = [{"prompt": "stream me"}, {"prompt": "again"}]
    got = fleet.run("shape_streaming", "stream-1", asks)
    assert_same(got, asyncio.run(alocal_run("shape_streaming", asks)))
    assert got["response"] == shapes.fake_llm("again")


def test_typed_state_with_nested_models_and_datetimes(fleet: Shapes) -> None:
    got = fleet.run("shape_typed", "typed-1", [])
    want = local_run(shapes.local("shape_typed"), "shape_typed", [None])
    assert_same(got, want)
    assert [type(t).__name__ for t in got["tasks"]] == ["Task"] * 4
    assert got["tasks"][3].due == datetime.datetime(2026, 1, 4, 9, tzinfo=datetime.timezone.utc)


def test_map_states_runs_its_sub_applications_in_process(fleet: Shapes) -> None:
    got = fleet.run("shape_map", "map-1", [])
    assert_same(got, local_run(shapes.local("shape_map"), "shape_map", [None]))
    assert got["answers"] == [f"echo(question {i})" for i in range(4)]


def test_a_graph_builder_app_whose_map_runs_sub_graphs(fleet: Shapes) -> None:
    got = fleet.run("shape_graph_map", "gmap-1", [])
    assert_same(got, local_run(shapes.local("shape_graph_map"), "shape_graph_map", [None]))
    assert got["answers"] == [f"ECHO(QUESTION {i})" for i in range(3)]


def test_async_map_states_gathers_its_sub_applications(fleet: Shapes) -> None:
    got = fleet.run("shape_amap", "amap-1", [])
    assert_same(got, asyncio.run(alocal_run("shape_amap", [None])))
    assert got["answers"] == [f"echo(question {i})" for i in range(4)]


def test_sync_streaming_action_in_a_sync_app(fleet: Shapes) -> None:
    got = fleet.run("shape_sync_stream", "sstream-1", [])
    assert_same(got, local_run(shapes.local("shape_sync_stream"), "shape_sync_stream", [None]))
    assert got["seen"] == [0, 1, 2, 3]


def test_resume_with_an_input_no_action_declares_is_refused_at_once(fleet: Shapes) -> None:
    fleet.fc.enqueue("shape_hitl", "typo-1")
    fleet.wait("typo-1", "waiting")
    job, history = fleet.fc.job("typo-1"), fleet.fc.history("typo-1")
    with pytest.raises(InputsRefused, match=r"inputs \['promtp'\] are declared by no action") as e:
        fleet.fc.resume("typo-1", {"promtp": "hi"})
    assert e.value.unknown == ["promtp"] and "prompt" in e.value.accepted
    done = cli(fleet.url, "resume", "typo-1", "--inputs", '{"promtp": "hi", "prompt": "x"}')
    assert done.returncode == 6 and b"promtp" in done.stdout + done.stderr, done
    assert b"Traceback" not in done.stdout + done.stderr
    assert fleet.fc.job("typo-1") == job and fleet.fc.history("typo-1") == history  # nothing stored
    fleet.fc.resume("typo-1", {"prompt": "hi"})  # the right name: it runs
    job = fleet.wait("typo-1", "waiting")
    assert fleet.state("typo-1")["turns"] == 1 and job.get("inputs") is None


def test_a_park_that_recorded_no_accepted_names_is_checked_at_claim_time(fleet: Shapes) -> None:
    """An app parked by a worker that records no accepted names (an older version): the resume
    goes through, and the worker that claims it parks it again with the names in last_error."""
    fleet.fc.enqueue("shape_hitl", "typo-2")
    fleet.wait("typo-2", "waiting")
    fleet.fc.client.hdel(fleet.fc.keys(None, "typo-2").job, "accepts")
    before = fleet.fc.history("typo-2")
    assert fleet.fc.resume("typo-2", {"promtp": "hi"}) == "queued"
    job = fleet.wait("typo-2", "waiting")
    assert "['promtp']" in job["last_error"] and "'prompt'" in job["last_error"], job
    assert fleet.fc.history("typo-2") == before  # nothing ran
    shown = cli_json(fleet.url, "show", "typo-2")
    assert shown["status"] == "waiting" and "promtp" in shown["last_error"]


def test_local_runs_differ_from_each_other() -> None:
    """The comparisons above can fail: two different input sequences give different states."""
    a = local_run(shapes.local("shape_hitl"), "shape_hitl", [{"prompt": "a"}])
    b = local_run(shapes.local("shape_hitl"), "shape_hitl", [{"prompt": "b"}])
    assert a != b


# -- in process: the builder rule's other branches, and the worker's config -------------------------
async def _run_worker_until(worker: Any, done: Any, timeout: float = 10) -> None:
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(int(timeout / 0.02)):
            if done():
                return
            await asyncio.sleep(0.02)
        raise AssertionError("timed out")
    finally:
        worker.request_stop()
        await task


async def test_the_users_own_initialize_from_is_the_first_load(fleet_server: Any) -> None:
    """A factory with initialize_from(its own persister) and with_state_persister: a new app
    starts from what that persister holds (Burr's first load) and continues at the next
    sequence; once committed, the fleet's store is the truth (the persister is not asked again)."""
    from burr.core import ApplicationBuilder, State
    from burr.core.persistence import InMemoryPersister

    from burr_dist import Registry
    from burr_dist.worker.process import Worker

    theirs = InMemoryPersister()
    theirs.save("default", "migrated", 4, "counter", State({"counter": 40, "__SEQUENCE_ID": 4}), "completed")
    asked: list[tuple[Any, ...]] = []
    load = theirs.load
    theirs.load = lambda *a, **k: asked.append(a) or load(*a, **k)  # type: ignore[method-assign]
    reg = Registry()

    @reg.app("migrating")
    def migrating(ctx: Any) -> Any:
        return (
            ApplicationBuilder()
            .with_actions(counter=shapes.count, done=shapes.count_done)
            .with_transitions(("counter", "counter", expr("counter < 42")), ("counter", "done"))
            .initialize_from(theirs, resume_at_next_action=True, default_state={"counter": 0},
                             default_entrypoint="counter")
            .with_state_persister(theirs)
        )  # fmt: skip

    fc = FleetClient.from_url(fleet_server.url)
    fc.enqueue("migrating", "migrated")
    fc.enqueue("migrating", "fresh")
    w = Worker(reg, url=fleet_server.url, poll_interval=0.02, max_steps_per_claim=1)
    await _run_worker_until(w, lambda: {fc.job(a)["status"] for a in ("migrated", "fresh")} == {"completed"})
    got = fc.load("default", "migrated")
    assert got is not None and got["sequence_id"] == 7 and got["state"]["counter"] == 42
    assert [h["sequence_id"] for h in fc.history("migrated")] == [5, 6, 7]
    assert fc.load("default", "fresh")["state"]["counter"] == 42  # type: ignore[index]
    assert [a[1] for a in asked].count("migrated") == 1  # the first build only, not each claim
    assert theirs.load("default", "migrated")["sequence_id"] == 7  # type: ignore[index]
    fc.client.close()


def test_worker_config_and_keywords() -> None:
    from burr_dist.store.core import StoreConfig
    from burr_dist.worker.process import Worker, WorkerConfig

    reg = shapes.registry
    cfg = WorkerConfig(
        url="redis://127.0.0.1:1/0?wait_replicas=1", store=StoreConfig(snapshot_format=1, keep=5)
    )
    w = Worker(reg, cfg, concurrency=3, prefix="p2")
    assert (w.concurrency, w.config.snapshot_format, w.config.keep, w.config.prefix) == (3, 1, 5, "p2")
    assert w.config.wait_replicas == 1  # the URL's option fills a default
    assert Worker(reg, url="redis://127.0.0.1:1/0", wait_replicas=0, finished_ttl=5).config.finished_ttl == 5
    with pytest.raises(TypeError, match="concurency"):
        Worker(reg, concurency=3)
    with pytest.raises(ConfigurationError, match="lease_ttl"):
        WorkerConfig(lease_ttl=0.1)
