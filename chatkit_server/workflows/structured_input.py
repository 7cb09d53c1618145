"""Structured input: a tool asks the user a question and the answer waits for them.

A function tool (``module:function`` in the workflows file) that takes the run
context first calls :func:`ask_user` and returns what it returns::

    async def ask_size(ctx: RunContextWrapper[Any]) -> str:
        '''Ask which size the user wants.'''
        return await ask_user(ctx, [choice("size", "Which size?", ["S", "M", "L"])])

The user sees ChatKit's question form (a ``structured_input`` item, stored
``pending``) and the run ends there, like a client tool call: nothing
answers for the user. ``threads.add_structured_input`` records the answers
(the ChatKit SDK decides how a skipped or partial submission reads: every
question without values is marked skipped) and the workflow answers again,
with the question and the user's answers in its history. Because the pending
question lives in the store, it can be answered after a restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from agents import FunctionToolResult, RunContextWrapper, ToolsToFinalOutputResult
from chatkit.agents import AgentContext
from chatkit.types import (
    StructuredInput,
    StructuredInputFreeform,
    StructuredInputItem,
    StructuredInputMultipleChoice,
    StructuredInputMultipleChoiceOption,
    ThreadItemDoneEvent,
)

from chatkit_server.workflows.client_tools import stop_at_client_tools

__all__ = ["QuestionAsked", "ask_user", "choice", "free_text", "stop_when_waiting"]


class QuestionAsked(str):
    """A tool result that ends the run: the user has a question to answer first."""

    __slots__ = ()


def choice(
    question_id: str, question: str, options: Sequence[str], *, multiple: bool = False
) -> StructuredInputMultipleChoice:
    """A multiple-choice question (the user may also type an answer of their own)."""
    return StructuredInputMultipleChoice(
        id=question_id,
        question=question,
        options=[StructuredInputMultipleChoiceOption(value=option) for option in options],
        multiple=multiple,
    )


def free_text(
    question_id: str, question: str, description: str | None = None
) -> StructuredInputFreeform:
    """A question answered with free text."""
    return StructuredInputFreeform(id=question_id, question=question, description=description)


async def ask_user(ctx: RunContextWrapper[Any], inputs: Sequence[StructuredInput]) -> str:
    """Show the user a question form; return the tool's result, which ends the run.

    Args:
        ctx: The tool's run context (its ``context`` is ChatKit's ``AgentContext``).
        inputs: The questions, e.g. from :func:`choice` and :func:`free_text`;
            their ids must differ.

    Returns:
        A :class:`QuestionAsked` for the model, or, outside a ChatKit thread (no
        one to ask), a plain message saying so, and the run goes on.

    Raises:
        ValueError: No questions, or two with the same id.
    """
    ids = [question.id for question in inputs]
    if not ids or len(set(ids)) != len(ids):
        raise ValueError("ask_user needs at least one question, each with its own id")
    agent_context = ctx.context
    if not isinstance(agent_context, AgentContext):
        return "The user cannot be asked: this run has no ChatKit thread."
    item = StructuredInputItem(
        id=agent_context.generate_id("message"),
        thread_id=agent_context.thread.id,
        # Naive local time, as the ChatKit SDK stamps every item it makes.
        created_at=datetime.now(),  # noqa: DTZ005
        inputs=list(inputs),
    )
    await agent_context.stream(ThreadItemDoneEvent(item=item))
    return QuestionAsked(
        "The question was shown to the user. Their answers come in the next turn; "
        "do not answer for them."
    )


def stop_when_waiting(
    context: RunContextWrapper[Any], results: list[FunctionToolResult]
) -> ToolsToFinalOutputResult:
    """``tool_use_behavior`` that ends the run while the user has something to do.

    A question from :func:`ask_user`, or a pending client tool call (see
    :func:`~chatkit_server.workflows.client_tools.stop_at_client_tools`);
    otherwise the model goes on with the tools' results.
    """
    asked = next((r.output for r in results if isinstance(r.output, QuestionAsked)), None)
    if asked is not None:
        return ToolsToFinalOutputResult(is_final_output=True, final_output=asked)
    return stop_at_client_tools(context, results)
