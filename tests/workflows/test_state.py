"""Workflow state variables in instructions and tools."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from agents import Agent, RunContextWrapper

from chatkit_server.context import RequestContext
from chatkit_server.tools import state_variables
from chatkit_server.workflows.state import has_placeholders, instructions_for, render


def test_render_fills_known_variables_and_empties_unknown_ones() -> None:
    text = "Hi {{ state.name }}, {{state.count}} left, admin={{ state.admin }}, {{ state.x }}."
    assert render(text, {"name": "Zed", "count": 3, "admin": False}) == (
        "Hi Zed, 3 left, admin=false, ."
    )


def test_other_braces_are_left_alone() -> None:
    text = "JSON like {{ not_state }} or {state.name} stays"
    assert not has_placeholders(text)
    assert instructions_for(text) == text


def _wrapper(context: Any) -> RunContextWrapper[Any]:
    return RunContextWrapper(context=context)


def test_instructions_read_the_runs_session() -> None:
    instructions = instructions_for("Plan: {{ state.plan }}")
    assert callable(instructions)
    run = SimpleNamespace(request_context=RequestContext(state_variables={"plan": "pro"}))
    agent: Agent[Any] = Agent(name="a")
    assert instructions(_wrapper(run), agent) == "Plan: pro"
    # Outside a ChatKit run (no request context) the placeholders are empty.
    assert instructions(_wrapper(None), agent) == "Plan: "


def test_tools_read_state_variables_from_their_context() -> None:
    run = SimpleNamespace(request_context=RequestContext(state_variables={"tier": 2}))
    assert state_variables(_wrapper(run)) == {"tier": 2}
    assert state_variables(_wrapper(object())) == {}
