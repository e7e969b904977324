"""What Redis holds after every step equals the whole state as Burr's ``State.serialize()`` gives it,
whatever the action did to the objects in state: edits in place (with and without growth, then an
update with a copy, a slice, ``[*l, x]``, ``extend`` or a new value), values equal under ``==`` but
of another JSON type, deletes and wipes, across keyframes and deltas, sync and async. Burr's own
``SQLitePersister`` runs beside ours on the same app as the reference. Also: a second save of a
stored step is never dropped without a word, and a dict that uses Burr's serde marker as a key is
refused at save, naming the field."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from burr.core import ApplicationBuilder, State, action
from burr.core.persistence import PersisterHook, SQLitePersister
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from burr_dist import SequenceConflict, SerializationError
from burr_dist.keys import KeySchema
from burr_dist.store import codec
from burr_dist.store.deltas import tail_of
from tests.support.apps import Driver
from tests.support.targets import Target

pytestmark = pytest.mark.topologies(default=("cluster",))
PK = "tenant-1"
KEYS = KeySchema("burr")
FIELDS = ["a", "b", "h", "d"]
_ids = itertools.count()


@pytest.fixture(params=["sync", "async"])
def d(request: pytest.FixtureRequest, target: Target) -> Iterator[Driver]:
    drv = Driver(target.url, request.param == "async")
    yield drv
    drv.close()


@pytest.fixture
def client(target: Target) -> Iterator[redis.Redis]:
    c = target.client()
    yield c
    c.close()


def edit_app(
    d: Driver, persister: Any, app_id: str, default: dict[str, Any], hooks: tuple[Any, ...] = (),
    sequence_id: int | None = None,
) -> Any:  # fmt: skip
    """One action that applies the callable it is given as input, to the app's whole state."""
    if d.is_async:

        @action(reads=[], writes=[])
        async def edit(state: State, fn: Callable[[State], State]) -> State:
            return fn(state)

    else:

        @action(reads=[], writes=[])
        def edit(state: State, fn: Callable[[State], State]) -> State:  # type: ignore[misc]
            return fn(state)

    builder = (
        ApplicationBuilder()
        .with_actions(edit=edit)
        .with_transitions(("edit", "edit"))
        .initialize_from(
            persister, resume_at_next_action=True, default_state=default, default_entrypoint="edit"
        )
        .with_state_persister(persister)
        .with_identifiers(app_id=app_id, partition_key=PK, sequence_id=sequence_id)
    )
    if hooks:
        builder = builder.with_hooks(*hooks)
    return d.build(builder)


def step(d: Driver, app: Any, fn: Callable[[State], State]) -> None:
    d.run(app.astep(inputs={"fn": fn})) if d.is_async else app.step(inputs={"fn": fn})


def stored(d: Driver, app_id: str, sequence_id: int | None = None) -> dict[str, Any]:
    """What a fresh process loads, serialized the way Burr serializes it."""
    loaded = d.call(d.persister().load, PK, app_id, sequence_id)
    assert loaded is not None
    return loaded["state"].serialize()


def chat(n: int) -> list[str]:
    return [f"message {i} " + "x" * 60 for i in range(n)]  # 40 of them: well past a keyframe's size


def edit_last_and_append(s: State) -> State:
    s["h"][-1] = "EDITED " + s["h"][-1]  # Burr's streaming chatbot example does exactly this
    return s.append(h=f"reply {len(s['h'])}")


def edit_first_no_growth(s: State) -> State:
    s["h"][0] = 0
    return s


def edit_then(make: Callable[[list[Any]], list[Any]]) -> Callable[[State], State]:
    def fn(s: State) -> State:
        s["h"][1] = "EDITED"
        s["d"]["inner"]["x"] += 1
        return s.update(h=make(s["h"]))

    return fn


def extend_in_place(s: State) -> State:
    s["h"][2] = "EDITED"
    s["h"].extend(["more", "and more"])
    return s.update(h=s["h"])


SHAPES: dict[str, Callable[[State], State]] = {
    "edit the last item, then append": edit_last_and_append,
    "edit an item, no growth": edit_first_no_growth,
    "edit, then update with a copy": edit_then(list),
    "edit, then update with a slice": edit_then(lambda h: h[:]),
    "edit, then update with [*l, x]": edit_then(lambda h: [*h, "new"]),
    "edit, then extend in place": extend_in_place,
    "edit, then a new value": edit_then(lambda h: ["fresh", *h[3:]]),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_an_edit_in_place_is_stored(d: Driver, shape: str) -> None:
    app_id = f"edit-{next(_ids)}"
    app = edit_app(d, d.persister(), app_id, {"h": chat(40), "d": {"inner": {"x": 0}}, "a": 1})
    for _ in range(4):
        step(d, app, SHAPES[shape])
        assert stored(d, app_id) == app.state.serialize(), shape


def test_the_issue_reproduction_keeps_every_edit(d: Driver) -> None:
    app_id = f"chat-{next(_ids)}"
    app = edit_app(d, d.persister(), app_id, {"h": ["x", *chat(39)]})

    def edit_and_append(word: str) -> Callable[[State], State]:
        def fn(s: State) -> State:
            s["h"][-1] = "EDITED " + s["h"][-1]
            return s.append(h=word)

        return fn

    for word in ("one", "two", "three"):
        step(d, app, edit_and_append(word))
    assert stored(d, app_id)["h"][-4:] == app.state["h"][-4:]
    assert app.state["h"][-4:-1] == [
        "EDITED " + app.state["h"][-4].removeprefix("EDITED "),
        "EDITED one",
        "EDITED two",
    ]


@pytest.mark.parametrize(
    ("before", "after"),
    [([-1], [-1.0]), ([-1.0], [-1]), (0.0, -0.0), (1, 1.0), (True, 1), ([1, 2], [1, 2.0])],
    ids=["int to float", "float to int", "zero sign", "scalar int to float", "bool to int", "an item"],
)
def test_a_value_equal_under_eq_but_of_another_json_type_is_stored(
    d: Driver, before: Any, after: Any
) -> None:
    app_id = f"types-{next(_ids)}"
    app = edit_app(d, d.persister(), app_id, {"h": chat(40), "a": before})
    step(d, app, lambda s: s.update(a=copy.deepcopy(before)))
    step(d, app, lambda s: s.update(a=copy.deepcopy(after)))  # a delta: the state is past a keyframe
    got = orjson.loads(orjson.dumps(stored(d, app_id)["a"]))
    assert orjson.dumps(got) == orjson.dumps(after)


def test_a_dict_with_burrs_serde_marker_key_is_refused_naming_the_field(
    d: Driver, client: redis.Redis
) -> None:
    app_id = f"marker-{next(_ids)}"
    p = d.persister()
    d.call(p.save_and_settle, PK, app_id, 0, "a", State({"h": chat(40)}), "completed")
    k = KEYS.app(PK, app_id)
    before = client.hgetall(k.snaps)
    bad = State({"h": chat(40), "doc": {"meta": {"__burr_serde__": "pydantic"}}})
    with pytest.raises(SerializationError, match=r"'doc\.meta'.*__burr_serde__"):
        d.call(p.save_and_settle, PK, app_id, 1, "a", bad, "completed")
    assert client.hgetall(k.snaps) == before


def test_a_second_save_of_a_stored_step_is_refused_not_dropped(d: Driver) -> None:
    """An app rebuilt at an earlier sequence and stepped again on the same persister object: its
    save of a stored sequence with another state goes to Redis, which refuses it."""
    p = d.persister()
    app_id = f"resave-{next(_ids)}"
    app = edit_app(d, p, app_id, {"n": 0})
    for _ in range(3):
        step(d, app, lambda s: s.update(n=s["n"] + 1))  # sequences 0, 1, 2: n = 3
    rebuilt = edit_app(d, p, app_id, {"n": 0}, sequence_id=1)
    with pytest.raises(SequenceConflict):
        step(d, rebuilt, lambda s: s.update(n=s["n"] + 100))  # sequence 2 again, another state
    head = d.call(d.persister().load, PK, app_id)
    assert head["sequence_id"] == 2 and head["state"]["n"] == 3


def test_the_same_save_twice_is_one_commit(d: Driver, client: redis.Redis) -> None:
    """The hook duplication of Burr's docs: one object as persister and as a hook of its own."""
    p = d.persister()
    app_id = f"dup-{next(_ids)}"
    app = d.app(p, app_id, PK, hooks=(d.hook_for(p),))
    d.steps(app, 3)
    assert stored(d, app_id)["n"] == 3
    assert sorted(int(f) for f in client.hkeys(KEYS.app(PK, app_id).snaps) if f.isdigit()) == [0, 1, 2]


# -- property: random apps against Burr's SQLitePersister ------------------------------------------

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)
field = st.sampled_from(FIELDS)
op = st.one_of(
    st.tuples(st.just("set"), field, json_value),
    st.tuples(st.just("append"), field, json_value),
    st.tuples(st.just("edit"), field, json_value),  # the deepest container found, edited in place
    st.tuples(st.just("edit+append"), field, json_value),
    st.tuples(st.just("delete"), field, st.none()),
    st.tuples(st.just("wipe"), st.just(""), st.none()),
    st.tuples(st.just("resume"), st.just(""), st.none()),  # a fresh process continues the app
)


def deepest(value: Any) -> Any:
    while True:
        inner = [
            v for v in (value.values() if isinstance(value, dict) else value) if isinstance(v, (list, dict))
        ]
        if not inner:
            return value
        value = inner[-1]


def apply(kind: str, name: str, value: Any) -> Callable[[State], State]:
    def fn(s: State) -> State:
        have = s.get(name, None)
        if kind == "set":
            return s.update(**{name: copy.deepcopy(value)})
        if kind in ("append", "edit+append") and isinstance(have, list):
            if kind == "edit+append" and have:
                have[-1] = copy.deepcopy(value)
            return s.append(**{name: copy.deepcopy(value)})
        if kind == "edit" and isinstance(have, (list, dict)):
            target = deepest(have)
            if isinstance(target, list):
                target.append(copy.deepcopy(value))
            else:
                target["k"] = copy.deepcopy(value)
            return s
        if kind == "delete" and name in s and name != "h":
            return s.wipe(delete=[name])
        if kind == "wipe":
            return s.wipe(keep=["h"])
        return s.update(**{name: [copy.deepcopy(value)]})

    return fn


def sqlite_reference(tmp: Path) -> SQLitePersister:
    p = SQLitePersister(db_path=str(tmp / f"ref-{next(_ids)}.db"), table_name="burr_state")
    p.initialize()
    return p


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=1, max_size=14))
def test_random_apps_store_what_burr_serializes(d: Driver, tmp_path: Path, ops: list[Any]) -> None:
    app_id = f"prop-{next(_ids)}"
    ref = sqlite_reference(tmp_path)
    hooks = (PersisterHook(ref),)  # Burr runs a sync hook in an async app too
    default = {"h": chat(30), "a": {"x": [1]}}
    app = edit_app(d, d.persister(), app_id, default, hooks)
    steps = 0
    for kind, name, value in ops:
        if kind == "resume":
            app = edit_app(d, d.persister(), app_id, default, hooks)
            continue
        step(d, app, apply(kind, name, value))
        steps += 1
        want = app.state.serialize()
        assert stored(d, app_id) == want, (kind, name)
        assert ref.load(PK, app_id)["state"].serialize() == want
    for seq in range(steps):  # every retained step, not only the head
        assert stored(d, app_id, seq) == ref.load(PK, app_id, seq)["state"].serialize()
    ref.cleanup()


def test_an_encoded_tail_appends_exactly() -> None:
    """The byte rule the delta encoder relies on, over values that look alike as text."""
    cases = [
        ([1], [12]),
        ([1], [1, 2]),
        (["a,"], ["a,", "b"]),
        (["a"], ["a,b"]),
        ([], [[]]),
        ([[1]], [[1, 2]]),
    ]
    for old, new in cases:
        o, n = orjson.dumps(old), orjson.dumps(new)
        tail = tail_of(o, n)
        if tail is None:
            continue
        assert old + orjson.loads(tail) == new, (old, new)
    for old_s, new_s in [("a\\", 'a\\"'), ("", "x"), ("é", "éé"), ('"', '""'), ("ab", "abc")]:
        tail = tail_of(orjson.dumps(old_s), orjson.dumps(new_s))
        assert tail is not None and old_s + orjson.loads(tail) == new_s
    assert codec.encode_fields({"x": [-1.0]}) != codec.encode_fields({"x": [-1]})
