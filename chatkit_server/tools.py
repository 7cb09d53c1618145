"""Built-in function tools and widget action handlers that workflows can list by import path.

Example, in a workflows file::

    [workflows.assistant]
    tools = ["chatkit_server.tools:current_time", "chatkit_server.tools:show_counter"]

    [workflows.assistant.actions]
    "counter.add" = "chatkit_server.tools:add_to_counter"
    "counter.reset" = "chatkit_server.tools:reset_counter"

A tool of your own that needs the session's workflow state variables takes
the run context first and reads them with :func:`state_variables`.

:func:`show_counter` is the example of a tool that shows a widget: it takes the
run context first (``RunContextWrapper[AgentContext]``) and streams the widget
with the ChatKit SDK's ``AgentContext.stream_widget``. Its buttons send actions
that :func:`add_to_counter` (a streamed action) and :func:`reset_counter` (a
synchronous one) answer by replacing the widget, which is how the new count is
kept and still shows after a reload.

:func:`ask_user_to_choose` is the example of a tool that asks the user a question
(ChatKit's structured input): the answer stops there until the user answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agents import RunContextWrapper
from chatkit.agents import AgentContext
from chatkit.types import ThreadStreamEvent
from chatkit.widgets import DynamicWidgetRoot

from chatkit_server.workflows.actions import ActionContext
from chatkit_server.workflows.state import state_variables
from chatkit_server.workflows.structured_input import ask_user, choice

__all__ = [
    "ActionContext",
    "add_to_counter",
    "ask_user_to_choose",
    "counter_widget",
    "current_time",
    "reset_counter",
    "show_counter",
    "state_variables",
]


def current_time(timezone: str = "UTC") -> str:
    """Return the current date and time in an IANA time zone.

    Models do not know the time; this tells them.

    Args:
        timezone: An IANA time zone name such as "Europe/Paris" or "UTC".
    """
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return f"Unknown time zone {timezone!r}; use an IANA name such as 'Europe/Paris'."
    return datetime.now(zone).strftime("%A %d %B %Y, %H:%M:%S %Z")


def counter_widget(label: str, count: int) -> DynamicWidgetRoot:
    """The example counter card: a title, the count and two buttons.

    Built from a plain description, as a ``.widget`` template would build it;
    the action payloads carry the state, so the handlers need no storage.
    """
    state = {"label": label, "count": count}
    return DynamicWidgetRoot.model_validate(
        {
            "type": "Card",
            "size": "sm",
            "children": [
                {"type": "Title", "value": label, "size": "sm"},
                {"type": "Text", "id": "count", "value": f"Count: {count}"},
                {
                    "type": "Row",
                    "gap": 2,
                    "children": [
                        {
                            "type": "Button",
                            "label": "Add one",
                            "onClickAction": {"type": "counter.add", "payload": state},
                        },
                        {
                            "type": "Button",
                            "label": "Reset",
                            "variant": "outline",
                            # Sent as threads.sync_custom_action: answered in one JSON reply.
                            "onClickAction": {
                                "type": "counter.reset",
                                "payload": state,
                                "streaming": False,
                            },
                        },
                    ],
                },
            ],
        }
    )


async def show_counter(ctx: RunContextWrapper[AgentContext[Any]], label: str) -> str:
    """Show the user a counter with buttons to count up and to reset it.

    Args:
        ctx: The run's context, which holds the ChatKit stream (the model never sees it).
        label: What is being counted, shown as the counter's title.
    """
    await ctx.context.stream_widget(counter_widget(label, 0), copy_text=f"{label}: 0")
    return f"A counter titled {label!r} is shown to the user, at 0."


async def add_to_counter(action: ActionContext) -> AsyncIterator[ThreadStreamEvent]:
    """Action ``counter.add``: count one up, in place."""
    label, count = _counter_state(action)
    yield action.progress("Counting…")
    yield action.replace_widget(counter_widget(label, count + 1), copy_text=f"{label}: {count + 1}")


async def reset_counter(action: ActionContext) -> list[ThreadStreamEvent]:
    """Action ``counter.reset`` (synchronous): back to zero."""
    label, _ = _counter_state(action)
    return [action.replace_widget(counter_widget(label, 0), copy_text=f"{label}: 0")]


def _counter_state(action: ActionContext) -> tuple[str, int]:
    payload = action.action.payload if isinstance(action.action.payload, dict) else {}
    label = str(payload.get("label") or "Counter")
    count = payload.get("count")
    return label, count if isinstance(count, int) else 0


async def ask_user_to_choose(
    ctx: RunContextWrapper[AgentContext[Any]],
    question: str,
    options: list[str],
    multiple: bool = False,
) -> str:
    """Ask the user a multiple-choice question and wait for the answer.

    Use it when the user must decide between options before you can go on.

    Args:
        ctx: The run's context, which holds the ChatKit stream (the model never sees it).
        question: The question, as the user will read it.
        options: The choices offered (the user may also type another answer).
        multiple: Whether the user may pick more than one option.
    """
    return await ask_user(ctx, [choice("choice", question, options, multiple=multiple)])
