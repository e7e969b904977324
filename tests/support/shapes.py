"""Apps in the shapes of Burr's examples, with their builders as the examples write them
(``with_entrypoint``, ``with_state``, ``with_identifiers``), for tests/test_burr_shapes.py and
tests/test_poison.py. ``local(name, ...)`` builds the same app for a plain local Burr run.

The "LLM" is a stub (``fake_llm``): deterministic text from its prompt, no network.
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any

from burr.core import Application, ApplicationBuilder, State, action, expr
from burr.core.action import streaming_action
from burr.core.graph import GraphBuilder
from burr.core.parallelism import MapStates, RunnableGraph
from burr.integrations.pydantic import PydanticTypingSystem
from pydantic import BaseModel, Field

from burr_dist import Registry, RetryPolicy
from burr_dist.fleet.registry import AppContext

registry = Registry()
FACTORIES: dict[str, Callable[[AppContext], ApplicationBuilder[Any]]] = {}


def fake_llm(prompt: str) -> str:
    return f"echo({prompt[-40:]})"


def _shape(name: str, **kw: Any) -> Callable[[Callable[[AppContext], ApplicationBuilder[Any]]], Any]:
    def register(factory: Callable[[AppContext], ApplicationBuilder[Any]]) -> Any:
        FACTORIES[name] = factory
        return registry.app(name, **kw)(factory)

    return register


# -- counter: Burr's hello-world counter, builder as written ---------------------------------------
@action(reads=["counter"], writes=["counter"])
def count(state: State) -> State:
    return state.update(counter=state["counter"] + 1)


@action(reads=["counter"], writes=["done"])
def count_done(state: State) -> State:
    return state.update(done=f"counted to {state['counter']}")


@_shape("shape_counter")
def counter(ctx: AppContext) -> ApplicationBuilder[Any]:
    return (
        ApplicationBuilder()
        .with_actions(counter=count, done=count_done)
        .with_transitions(("counter", "counter", expr("counter < 5")), ("counter", "done"))
        .with_state(counter=0)
        .with_entrypoint("counter")
        .with_identifiers(app_id=str(uuid.uuid4()), partition_key="someone-else")
    )


# -- human in the loop: a chatbot that waits for the user (halt_before) ----------------------------
@action(reads=[], writes=["chat_history", "prompt"])
def user_input(state: State, prompt: str) -> State:
    return state.update(prompt=prompt).append(chat_history={"role": "user", "content": prompt})


@action(reads=["chat_history", "prompt"], writes=["chat_history", "response"])
def respond(state: State) -> State:
    reply = fake_llm(state["prompt"])
    return state.update(response=reply).append(chat_history={"role": "assistant", "content": reply})


@action(reads=["chat_history"], writes=["turns"])
def count_turns(state: State) -> State:
    return state.update(turns=len(state["chat_history"]) // 2)


def _chatbot() -> ApplicationBuilder[Any]:
    return (
        ApplicationBuilder()
        .with_actions(user_input=user_input, respond=respond, count_turns=count_turns)
        .with_transitions(
            ("user_input", "respond"), ("respond", "count_turns"), ("count_turns", "user_input")
        )
        .with_state(chat_history=[])
        .with_entrypoint("user_input")
    )


@_shape("shape_hitl", halt_before=["user_input"])
def hitl(ctx: AppContext) -> ApplicationBuilder[Any]:
    return _chatbot()


# -- halt_after: the same bot, parked after each answer (Burr's run(halt_after=["respond"])) -------
@_shape("shape_halt_after", halt_after=["count_turns"])
def halt_after(ctx: AppContext) -> ApplicationBuilder[Any]:
    return _chatbot()


# -- mixed: async actions and sync ones in one app --------------------------------------------------
@action(reads=["query"], writes=["query"])
def normalize(state: State) -> State:
    return state.update(query=state["query"].strip().lower())


@action(reads=["query"], writes=["docs"])
async def retrieve(state: State) -> State:
    await asyncio.sleep(0.01)
    return state.update(docs=[f"{state['query']}-{i}" for i in range(3)])


@action(reads=["docs"], writes=["answer"])
def summarize(state: State, style: str = "plain") -> State:
    return state.update(answer=f"{style}: " + fake_llm(" ".join(state["docs"])))


@action(reads=["answer"], writes=["checked"])
async def check(state: State) -> State:
    await asyncio.sleep(0)
    return state.update(checked=state["answer"].startswith(("plain", "terse")))


@_shape("shape_mixed")
def mixed(ctx: AppContext) -> ApplicationBuilder[Any]:
    return (
        ApplicationBuilder()
        .with_actions(normalize=normalize, retrieve=retrieve, summarize=summarize, check=check)
        .with_transitions(("normalize", "retrieve"), ("retrieve", "summarize"), ("summarize", "check"))
        .with_state(query="  What Is Burr  ")
        .with_entrypoint("normalize")
    )


# -- streaming: an async streaming action (tokens, then the state) ----------------------------------
@action(reads=[], writes=["prompt"])
def ask(state: State, prompt: str) -> State:
    return state.update(prompt=prompt)


@streaming_action(reads=["prompt"], writes=["response", "tokens"])
async def stream_answer(state: State) -> AsyncGenerator[tuple[dict[str, Any], State | None], None]:
    words = fake_llm(state["prompt"]).split("(")
    for w in words:
        await asyncio.sleep(0)
        yield {"delta": w}, None
    text = "(".join(words)
    yield {"response": text}, state.update(response=text, tokens=len(words))


@_shape("shape_streaming", halt_before=["ask"])
def streaming(ctx: AppContext) -> ApplicationBuilder[Any]:
    return (
        ApplicationBuilder()
        .with_actions(ask=ask, stream_answer=stream_answer)
        .with_transitions(("ask", "stream_answer"), ("stream_answer", "ask"))
        .with_state(response="")
        .with_entrypoint("ask")
    )


# -- a sync streaming action in a sync app ---------------------------------------------------------
@streaming_action(reads=["n"], writes=["n", "seen"])
def stream_count(state: State) -> Generator[tuple[dict[str, Any], State | None], None, None]:
    for i in range(3):
        yield {"i": i}, None
    yield {"n": state["n"] + 1}, state.update(n=state["n"] + 1).append(seen=state["n"])


@_shape("shape_sync_stream")
def sync_stream(ctx: AppContext) -> ApplicationBuilder[Any]:
    return (
        ApplicationBuilder()
        .with_actions(stream_count=stream_count, done=count_done)
        .with_transitions(("stream_count", "stream_count", expr("n < 4")), ("stream_count", "done"))
        .with_state(n=0, seen=[], counter=-1)
        .with_entrypoint("stream_count")
    )


# -- typed state: Burr's PydanticTypingSystem, nested models and a datetime ------------------------
class Task(BaseModel):
    title: str
    due: datetime.datetime


class Plan(BaseModel):
    goal: str = ""
    tasks: list[Task] = Field(default_factory=list)
    notes: dict[str, int] = Field(default_factory=dict)


@action.pydantic(reads=["goal", "tasks"], writes=["tasks", "notes"])
def plan_step(state: Plan) -> Plan:
    n = len(state.tasks)
    due = datetime.datetime(2026, 1, 1, 9, tzinfo=datetime.timezone.utc) + datetime.timedelta(days=n)
    state.tasks.append(Task(title=fake_llm(f"{state.goal} #{n}"), due=due))
    state.notes = {**state.notes, f"step{n}": n}
    return state


@action.pydantic(reads=["tasks", "notes"], writes=["notes"])
def plan_summary(state: Plan) -> Plan:
    state.notes = {**state.notes, "total": len(state.tasks)}
    return state


@_shape("shape_typed")
def typed(ctx: AppContext) -> ApplicationBuilder[Any]:
    return (
        ApplicationBuilder()
        .with_typing(PydanticTypingSystem(Plan))
        .with_actions(plan=plan_step, summary=plan_summary)
        .with_transitions(("plan", "plan", expr("len(tasks) < 4")), ("plan", "summary"))
        .with_state(Plan(goal="launch"))
        .with_entrypoint("plan")
    )


# -- parallelism: Burr's MapStates over four prompts, run in process (sub-applications) -------------
@action(reads=["prompt"], writes=["answer"])
def ask_one(state: State) -> State:
    return state.update(answer=fake_llm(state["prompt"]))


class AskAll(MapStates):
    def action(self, state: State, inputs: dict[str, Any]) -> Any:
        return ask_one

    def states(self, state: State, context: Any, inputs: dict[str, Any]) -> Generator[State, None, None]:
        for p in state["prompts"]:
            yield state.update(prompt=p)

    def reduce(self, state: State, states: Any) -> State:
        return state.update(answers=[s["answer"] for s in states])

    @property
    def reads(self) -> list[str]:
        return ["prompts"]

    @property
    def writes(self) -> list[str]:
        return ["answers"]


@action(reads=["prompt"], writes=["answer"])
async def aask_one(state: State) -> State:
    await asyncio.sleep(0)
    return state.update(answer=fake_llm(state["prompt"]))


class AskAllAsync(AskAll):
    """The same map with async sub-actions: Burr gathers the sub-applications."""

    def action(self, state: State, inputs: dict[str, Any]) -> Any:
        return aask_one

    def is_async(self) -> bool:
        return True

    async def reduce(self, state: State, states: Any) -> State:  # type: ignore[override]
        return state.update(answers=[s["answer"] async for s in states])


@action(reads=["answers"], writes=["summary"])
def join_answers(state: State) -> State:
    return state.update(summary=" | ".join(state["answers"]))


# -- a recursive map: each sub-application runs a two-action graph (RunnableGraph) -------------------
@action(reads=["prompt"], writes=["draft"])
def draft_one(state: State) -> State:
    return state.update(draft=fake_llm(state["prompt"]))


@action(reads=["draft"], writes=["answer"])
def polish_one(state: State) -> State:
    return state.update(answer=state["draft"].upper())


SUBGRAPH = (
    GraphBuilder()
    .with_actions(draft=draft_one, polish=polish_one)
    .with_transitions(("draft", "polish"))
    .build()
)


class AskAllTwice(AskAll):
    def action(self, state: State, inputs: dict[str, Any]) -> Any:
        return RunnableGraph(graph=SUBGRAPH, entrypoint="draft", halt_after=["polish"])


@_shape("shape_graph_map")
def graph_mapped(ctx: AppContext) -> ApplicationBuilder[Any]:
    """Built from a Graph (with_graph), as Burr's GraphBuilder examples do; the map's
    sub-applications run a graph of their own."""
    graph = (
        GraphBuilder()
        .with_actions(ask_all=AskAllTwice(), summarize=join_answers)
        .with_transitions(("ask_all", "summarize"))
        .build()
    )
    return (
        ApplicationBuilder()
        .with_graph(graph)
        .with_state(prompts=[f"question {i}" for i in range(3)])
        .with_entrypoint("ask_all")
    )


@_shape("shape_amap")
def amapped(ctx: AppContext) -> ApplicationBuilder[Any]:
    return (
        ApplicationBuilder()
        .with_actions(ask_all=AskAllAsync(), summarize=join_answers)
        .with_transitions(("ask_all", "summarize"))
        .with_state(prompts=[f"question {i}" for i in range(4)])
        .with_entrypoint("ask_all")
    )


@_shape("shape_map")
def mapped(ctx: AppContext) -> ApplicationBuilder[Any]:
    return (
        ApplicationBuilder()
        .with_actions(ask_all=AskAll(), summarize=join_answers)
        .with_transitions(("ask_all", "summarize"))
        .with_state(prompts=[f"question {i}" for i in range(4)])
        .with_entrypoint("ask_all")
    )


# -- poison pills (tests/test_poison.py) -----------------------------------------------------------
class Opaque:
    """No serde knows it: the store must refuse it, naming the field."""

    def __repr__(self) -> str:
        return "Opaque()"


POISON_POLICY = RetryPolicy(max_attempts=3, initial_delay=0.1, max_delay=0.3)


@action(reads=["n"], writes=["n"])
def fine(state: State) -> State:
    return state.update(n=state["n"] + 1)


@action(reads=["n"], writes=["handle"])
def grab_handle(state: State) -> State:
    return state.update(handle=Opaque())


@registry.app("poison_state", entrypoint="fine", default_state={"n": 0}, retry=POISON_POLICY)
def poison_state(ctx: AppContext) -> ApplicationBuilder[Any]:
    return ApplicationBuilder().with_actions(fine=fine, grab=grab_handle).with_transitions(("fine", "grab"))


@registry.app("poison_factory", entrypoint="fine", retry=POISON_POLICY)
def poison_factory(ctx: AppContext) -> ApplicationBuilder[Any]:
    raise RuntimeError(f"factory cannot build {ctx.app_id}: missing API key (simulated)")


@action(reads=["n"], writes=["n"])
async def afine(state: State) -> State:
    return state.update(n=state["n"] + 1)


@registry.app("poison_entrypoint", entrypoint="nowhere", default_state={"n": 0}, retry=POISON_POLICY)
def poison_entrypoint(ctx: AppContext) -> ApplicationBuilder[Any]:
    """Burr's build refuses an entrypoint that is not an action: a build error, every time."""
    return ApplicationBuilder().with_actions(fine=fine, afine=afine).with_transitions(("fine", "afine"))


def local(name: str) -> Application[Any]:
    """The app ``name`` as a plain Burr user runs it on a laptop (its factory's builder, built)."""
    builder = FACTORIES[name](AppContext(name, "local", None))
    if any(a.is_async() for a in builder.graph_builder.actions):
        raise TypeError("use alocal() for an async app")
    return builder.build()


async def alocal(name: str) -> Application[Any]:
    return await FACTORIES[name](AppContext(name, "local", None)).abuild()
