"""Structured input end to end: real uvicorn, SQLite, the fake backend, a restart.

A tool asks (``ask_user``), the answer stops at the pending question, the server
restarts, ``threads.add_structured_input`` brings the answers, and the model answers
with them in its input; a reload shows the question answered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agents import RunContextWrapper
from chatkit.types import (
    AssistantMessageItem,
    StructuredInputItem,
    ThreadItemDoneEvent,
    ThreadItemReplacedEvent,
)

from chatkit_server.settings import Settings
from chatkit_server.testing.client import ChatKitHTTPError
from chatkit_server.testing.fake_backend import Reply
from chatkit_server.workflows.file import load_workflow_file
from chatkit_server.workflows.structured_input import QuestionAsked, ask_user, choice, free_text
from tests.live import LOCAL, FakeLLM, Live, LiveFactory

WORKFLOWS = """
[backends.fake]
base_url = "{url}"

[workflows.ask]
backend = "fake"
model = "fake-model"
tools = [
  "chatkit_server.tools:ask_user_to_choose",
  "tests.workflows.test_structured_input:plan_trip",
  "tests.workflows.test_structured_input:ask_again",
]
"""


async def plan_trip(ctx: RunContextWrapper[Any]) -> str:
    """Ask where and when the user travels."""
    return await ask_user(
        ctx,
        [
            choice("where", "Where to?", ["Lisbon", "Oslo", "Kyoto"], multiple=True),
            free_text("when", "When do you leave?", description="A date is enough."),
        ],
    )


async def ask_again(ctx: RunContextWrapper[Any]) -> str:
    """Show the thread's question again, as it was first asked (pending, same id)."""
    agent_context = ctx.context
    page = await agent_context.store.load_thread_items(
        agent_context.thread.id, None, 50, "asc", agent_context.request_context
    )
    [question] = [item for item in page.data if isinstance(item, StructuredInputItem)]
    inputs = [q.model_copy(update={"answer": None}) for q in question.inputs]
    again = question.model_copy(update={"status": "pending", "inputs": inputs})
    await agent_context.stream(ThreadItemDoneEvent(item=again))
    return "shown again"


@pytest.fixture
def ask_settings(tmp_path: Path, live_settings: Settings, fake_llm: FakeLLM) -> Settings:
    path = tmp_path / "workflows.toml"
    path.write_text(WORKFLOWS.format(url=fake_llm.v1))
    return live_settings.with_changes(
        workflows_path=path, workflows_file=load_workflow_file(path, {})
    )


async def _asked(live: Live, fake_llm: FakeLLM, tool: str, arguments: Any) -> StructuredInputItem:
    fake_llm.backend.script(Reply.tool_call(tool, arguments))
    before = len(fake_llm.backend.requests)
    turn = await live.client.create_thread("Help me decide")
    assert not turn.errors
    [question] = [item for item in turn.done_items if isinstance(item, StructuredInputItem)]
    assert question.status == "pending"
    # The run stopped at the question: the model was not asked to go on.
    assert len(fake_llm.backend.requests) == before + 1
    assert not [item for item in turn.done_items if isinstance(item, AssistantMessageItem)]
    return question


async def _answer(live: Live, question: StructuredInputItem, **submission: Any) -> Any:
    return await live.client.stream(
        "threads.add_structured_input",
        thread_id=question.thread_id,
        item_id=question.id,
        input=submission,
    )


async def test_a_question_waits_across_a_restart_and_the_answer_resumes_the_run(
    start_live: LiveFactory, ask_settings: Settings, fake_llm: FakeLLM
) -> None:
    async with start_live(ask_settings) as live:
        question = await _asked(
            live,
            fake_llm,
            "ask_user_to_choose",
            {"question": "Tea or coffee?", "options": ["Tea", "Coffee"]},
        )

    async with start_live(ask_settings) as live:
        stored = await live.store.load_item(question.thread_id, question.id, LOCAL)
        assert stored == question  # still pending after the restart
        fake_llm.backend.script(Reply.text("Tea it is."))

        turn = await _answer(live, question, answers={"choice": {"values": ["Tea", "Coffee"]}})

        assert not turn.errors
        [replaced] = [e.item for e in turn.events if isinstance(e, ThreadItemReplacedEvent)]
        assert isinstance(replaced, StructuredInputItem)
        assert replaced.status == "answered"
        # One choice only (multiple = false): the SDK keeps the first value.
        assert replaced.inputs[0].answer is not None
        assert replaced.inputs[0].answer.values == ["Tea"]
        assert turn.assistant_text == "Tea it is."
        sent = fake_llm.backend.requests[-1].body["messages"]
        assert "- Tea or coffee?: Tea" in sent[-1]["content"]
        assert "status: answered" in sent[-1]["content"]

        page = await live.client.call(
            "items.list", thread_id=question.thread_id, limit=50, order="asc"
        )
        kinds = [(item["type"], item.get("status")) for item in page["data"]]
        assert ("structured_input", "answered") in kinds
        assert kinds[-1][0] == "assistant_message"

        # Answered once: a second answer is refused before any stream.
        with pytest.raises(ChatKitHTTPError) as again:
            await _answer(live, question, answers={"choice": {"values": ["Coffee"]}})
        assert again.value.status_code == 409


@pytest.mark.parametrize(
    ("submission", "status", "where", "when"),
    [
        # Partial: a question without values counts as skipped.
        (
            {"answers": {"where": {"values": ["Oslo", "Kyoto"]}}},
            "answered",
            ["Oslo", "Kyoto"],
            None,
        ),
        (
            {"answers": {"where": {"skipped": True}, "when": {"values": ["May"]}}},
            "answered",
            None,
            ["May"],
        ),
        # Skipping the form skips every question, whatever values came along.
        ({"status": "skipped", "answers": {"when": {"values": ["May"]}}}, "skipped", None, None),
    ],
)
async def test_partial_and_skipped_answers_read_as_the_sdk_defines(
    start_live: LiveFactory,
    ask_settings: Settings,
    fake_llm: FakeLLM,
    submission: dict[str, Any],
    status: str,
    where: list[str] | None,
    when: list[str] | None,
) -> None:
    async with start_live(ask_settings) as live:
        question = await _asked(live, fake_llm, "plan_trip", {})
        fake_llm.backend.script(Reply.text("Noted."))

        turn = await _answer(live, question, **submission)

        assert not turn.errors
        stored = await live.store.load_item(question.thread_id, question.id, LOCAL)
        assert isinstance(stored, StructuredInputItem)
        assert stored.status == status
        answers = {q.id: q.answer for q in stored.inputs}
        for question_id, values in (("where", where), ("when", when)):
            answer = answers[question_id]
            assert answer is not None
            assert (answer.values or None, answer.skipped) == (values, values is None)
        text = fake_llm.backend.requests[-1].body["messages"][-1]["content"]
        assert f"status: {status}" in text
        assert ("- When do you leave?: skipped" in text) == (when is None)


async def test_ask_user_refuses_duplicate_ids_and_runs_without_chatkit() -> None:
    wrapper = RunContextWrapper(context=None)
    with pytest.raises(ValueError, match="own id"):
        await ask_user(wrapper, [free_text("a", "A?"), free_text("a", "B?")])
    answer = await ask_user(wrapper, [free_text("a", "A?")])
    assert not isinstance(answer, QuestionAsked)
    assert "cannot be asked" in answer


async def test_a_resumed_run_that_emits_the_question_again_keeps_the_answer(
    start_live: LiveFactory, ask_settings: Settings, fake_llm: FakeLLM
) -> None:
    async with start_live(ask_settings) as live:
        question = await _asked(
            live, fake_llm, "ask_user_to_choose", {"question": "Tea?", "options": ["Yes", "No"]}
        )
        fake_llm.backend.script(Reply.tool_call("ask_again", {}), Reply.text("Yes it is."))

        turn = await _answer(live, question, answers={"choice": {"values": ["Yes"]}})

        assert not turn.errors
        # The resumed run sent the item again, pending: the stored answer stands.
        resent = [
            e.item
            for e in turn.events
            if isinstance(e, ThreadItemDoneEvent) and e.item.id == question.id
        ]
        assert [item.status for item in resent] == ["pending"]  # type: ignore[union-attr]
        stored = await live.store.load_item(question.thread_id, question.id, LOCAL)
        assert isinstance(stored, StructuredInputItem)
        assert stored.status == "answered"
        assert stored.inputs[0].answer is not None
        assert stored.inputs[0].answer.values == ["Yes"]
        thread = await live.client.call("threads.get_by_id", thread_id=question.thread_id)
        [shown] = [item for item in thread["items"]["data"] if item["id"] == question.id]
        assert shown["status"] == "answered"
