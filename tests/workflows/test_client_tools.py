"""Client tools on a ScriptedModel: the run stops at an accepted call, with its own id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, RunConfig, RunContextWrapper, Runner, function_tool
from agents.testing import ScriptedModel, assistant_message, function_call
from chatkit.agents import AgentContext
from chatkit.types import ClientToolCallItem, ThreadItemDoneEvent, ThreadStreamEvent

from chatkit_server.context import RequestContext
from chatkit_server.workflows.client_tools import (
    PendingClientToolCall,
    client_tool,
    stop_at_client_tools,
)
from chatkit_server.workflows.tool_tasks import show_progress
from tests.scripted import chatkit_context, chatkit_events

SCHEMA = {"type": "object", "properties": {"hint": {"type": "string"}}}


@function_tool
def order_status(order_id: str) -> str:
    """Where an order is.

    Args:
        order_id: The order number.
    """
    return f"Order {order_id}: shipped"


@pytest.fixture
async def context(tmp_path: Path) -> AsyncIterator[AgentContext[RequestContext]]:
    async with chatkit_context(tmp_path) as agent_context:
        yield agent_context


def _agent(model: ScriptedModel) -> Agent[Any]:
    return Agent(
        name="test",
        model=model,
        tools=[show_progress(order_status), client_tool("pick_color", "Pick a color.", SCHEMA)],
        tool_use_behavior=stop_at_client_tools,
    )


def _client_calls(events: list[ThreadStreamEvent]) -> list[ClientToolCallItem]:
    return [
        e.item
        for e in events
        if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, ClientToolCallItem)
    ]


async def test_a_client_call_stops_the_run_and_is_pending(
    context: AgentContext[RequestContext],
) -> None:
    model = ScriptedModel([[function_call("pick_color", {"hint": "warm"}, call_id="call_7")]])
    events = await chatkit_events(_agent(model), context)

    [call] = _client_calls(events)
    assert (call.status, call.name, call.arguments, call.call_id) == (
        "pending",
        "pick_color",
        {"hint": "warm"},
        "call_7",
    )
    assert len(model.calls) == 1
    model.assert_complete()


async def test_malformed_arguments_go_back_to_the_model(
    context: AgentContext[RequestContext],
) -> None:
    model = ScriptedModel(
        [
            [function_call("pick_color", "[1, 2]", call_id="c1")],
            [function_call("pick_color", {"hint": "again"}, call_id="c2")],
        ]
    )
    events = await chatkit_events(_agent(model), context)

    [call] = _client_calls(events)
    assert (call.call_id, call.arguments) == ("c2", {"hint": "again"})
    outputs = [i for i in model.calls[1].input if i.get("type") == "function_call_output"]
    assert "must be a JSON object" in str(outputs[0]["output"])


async def test_the_call_keeps_its_own_id_beside_a_server_tool_call(
    context: AgentContext[RequestContext],
) -> None:
    # stream_agent_response names the client call after the last call it saw.
    model = ScriptedModel(
        [
            [
                function_call("pick_color", {"hint": "x"}, call_id="c_client"),
                function_call("order_status", {"order_id": "1"}, call_id="c_server"),
            ]
        ]
    )
    events = await chatkit_events(_agent(model), context)

    [call] = _client_calls(events)
    assert call.call_id == "c_client"


async def test_one_client_call_per_turn(context: AgentContext[RequestContext]) -> None:
    model = ScriptedModel(
        [
            [
                function_call("pick_color", {"hint": "first"}, call_id="c1"),
                function_call("pick_color", {"hint": "second"}, call_id="c2"),
            ]
        ]
    )
    events = await chatkit_events(_agent(model), context)

    [call] = _client_calls(events)
    assert (call.call_id, call.arguments) == ("c1", {"hint": "first"})


async def test_server_tools_alone_do_not_stop_the_run(
    context: AgentContext[RequestContext],
) -> None:
    model = ScriptedModel(
        [
            [function_call("order_status", {"order_id": "5"}, call_id="c1")],
            [assistant_message("Shipped.")],
        ]
    )
    events = await chatkit_events(_agent(model), context)

    assert _client_calls(events) == []
    model.assert_complete()


async def test_without_a_browser_the_model_is_told() -> None:
    model = ScriptedModel(
        [[function_call("pick_color", {"hint": "x"}, call_id="c1")], [assistant_message("ok")]]
    )
    result = await Runner.run(_agent(model), "hi", run_config=RunConfig(tracing_disabled=True))

    assert result.final_output == "ok"
    outputs = [i for i in model.calls[1].input if i.get("type") == "function_call_output"]
    assert "browser, which is not connected" in str(outputs[0]["output"])


def test_the_schema_is_sent_as_written() -> None:
    tool = client_tool("pick_color", "Pick a color.", dict(SCHEMA))
    assert tool.params_json_schema == SCHEMA
    assert tool.strict_json_schema is False


def test_stop_decision_follows_the_pending_call() -> None:
    class Holder:
        client_tool_call: PendingClientToolCall | None = None

    holder = Holder()
    wrapper = RunContextWrapper(context=holder)
    assert stop_at_client_tools(wrapper, []).is_final_output is False  # type: ignore[arg-type]
    holder.client_tool_call = PendingClientToolCall(name="pick_color", arguments={}, call_id="c")
    assert stop_at_client_tools(wrapper, []).is_final_output is True  # type: ignore[arg-type]
