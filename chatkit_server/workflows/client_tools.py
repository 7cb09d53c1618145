"""Client tools: functions the model calls and the browser runs.

A workflow declares them in its ``client_tools`` (see :mod:`chatkit_server.workflows.file`).
When the model calls one, the run stops and the answer ends with a pending
``ClientToolCallItem``; the ChatKit front end runs the tool (its ``onClientTool``
handler) and sends ``threads.add_client_tool_output``, which completes the stored call
and lets the model answer with the call and its output in its input. Because the
pending call lives in the store, it survives a server restart.

This is ChatKit's own pattern (the tool sets ``AgentContext.client_tool_call``), with
two corrections: the run stops only when a call was actually accepted, so a call with
malformed arguments goes back to the model instead of ending the turn with nothing to
run; and the call keeps its own ``call_id`` even when the model called other tools in
the same turn (``stream_agent_response`` takes the id of the last call it saw).
"""

from __future__ import annotations

import json
from typing import Any

from agents import FunctionTool, FunctionToolResult, RunContextWrapper, ToolsToFinalOutputResult
from agents.tool_context import ToolContext
from chatkit.agents import AgentContext, ClientToolCall

__all__ = ["PendingClientToolCall", "client_tool", "stop_at_client_tools"]


class PendingClientToolCall(ClientToolCall):
    """A client tool call waiting for the browser, with the model's id for it."""

    call_id: str


def client_tool(name: str, description: str, parameters: dict[str, Any]) -> FunctionTool:
    """A function tool that hands its call to the browser instead of running.

    Use it in an agent whose ``tool_use_behavior`` is :func:`stop_at_client_tools`.

    Args:
        name: The tool's name, as the model and the front end's ``onClientTool`` see it.
        description: What the tool does, for the model.
        parameters: The JSON schema of its arguments, sent to the model as written.
    """

    async def hand_to_browser(ctx: ToolContext[Any], arguments: str) -> str:
        agent_context = ctx.context
        if not isinstance(agent_context, AgentContext):
            return f"The tool {name!r} runs in the user's browser, which is not connected."
        if agent_context.client_tool_call is not None:
            # ChatKit holds one pending call per turn; the model hears about the rest
            # when the first one's output comes back.
            return f"The tool {name!r} was not called: one browser tool runs at a time."
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            return f"The tool {name!r} was not called: its arguments must be a JSON object."
        agent_context.client_tool_call = PendingClientToolCall(
            name=name, arguments=parsed, call_id=ctx.tool_call_id
        )
        return f"The tool {name!r} was sent to the user's browser."

    return FunctionTool(
        name=name,
        description=description,
        params_json_schema=parameters,
        on_invoke_tool=hand_to_browser,
        # The operator's schema goes to the model verbatim: strict mode would rewrite it
        # (every property required) and some local servers reject the strict flag.
        strict_json_schema=False,
    )


def stop_at_client_tools(
    context: RunContextWrapper[Any], results: list[FunctionToolResult]
) -> ToolsToFinalOutputResult:
    """``tool_use_behavior`` that ends the run once a client tool call is pending.

    Unlike ``StopAtTools``, a client tool that refused its call (malformed arguments)
    does not end the run: the model reads why and tries again.
    """
    pending = getattr(context.context, "client_tool_call", None)
    if not isinstance(pending, ClientToolCall):
        return ToolsToFinalOutputResult(is_final_output=False)
    output = next((r.output for r in results if r.tool.name == pending.name), None)
    return ToolsToFinalOutputResult(is_final_output=True, final_output=output)
