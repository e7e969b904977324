"""The app of the UI test (tests/test_ui.py): ``memo`` drafts, waits for a review (its claim ends,
so the review may run on another worker), then publishes. ``draft`` opens a span and logs an
attribute, as an app traced with Burr's ``__tracer`` does."""

from __future__ import annotations

from burr.core import ApplicationBuilder, State, action
from burr.visibility import TracerFactory

from burr_dist import Registry
from burr_dist.fleet.registry import AppContext

registry = Registry()


@action(reads=["topic"], writes=["draft"])
def draft(state: State, __tracer: TracerFactory) -> State:
    with __tracer("outline") as span:
        span.log_attributes(words=3)
    return state.update(draft=f"about {state['topic']}")


@action(reads=["draft"], writes=["approved"])
def review(state: State, approved: bool) -> State:
    return state.update(approved=approved)


@action(reads=["draft", "approved"], writes=["published"])
def publish(state: State) -> State:
    return state.update(published=state["approved"])


@registry.app("memo", entrypoint="draft", default_state={"topic": "q3"}, halt_before=["review"])
def memo(ctx: AppContext) -> ApplicationBuilder:
    return (
        ApplicationBuilder()
        .with_actions(draft=draft, review=review, publish=publish)
        .with_transitions(("draft", "review"), ("review", "publish"))
    )
