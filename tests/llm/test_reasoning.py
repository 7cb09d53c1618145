"""Reasoning and Responses-stream shapes end to end: real uvicorn, SQLite, fake backends.

Each backend shape (see ``chatkit_server.testing._fake_responses`` and ``Reply``) must
show its reasoning as a ChatKit reasoning workflow with a non-empty thought, followed by
the answer, with no error, consistent storage and a working second turn.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from chatkit.types import (
    AssistantMessageItem,
    ThoughtTask,
    ThreadItemUpdatedEvent,
    UserMessageItem,
    WorkflowItem,
    WorkflowTaskAdded,
    WorkflowTaskUpdated,
)

from chatkit_server.settings import Settings
from chatkit_server.store import SQLStore
from chatkit_server.testing.client import Turn
from chatkit_server.testing.fake_backend import Reply
from chatkit_server.testing.stack import ReplayFactory
from tests.live import LOCAL, FakeLLM, LiveFactory

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hand-written"

SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    # llama-server and DeepSeek on Chat Completions.
    "chat-reasoning_content": ("chat_completions", {"reasoning_field": "reasoning_content"}),
    # vLLM (since late 2025) and Ollama's /v1 on Chat Completions.
    "chat-reasoning": ("chat_completions", {"reasoning_field": "reasoning"}),
    # OpenAI's reasoning models on the Responses API.
    "responses-summary": ("responses", {"responses_reasoning": "summary"}),
    # vLLM on the Responses API.
    "responses-text": ("responses", {"responses_reasoning": "text"}),
    # llama-server on the Responses API: fields left out.
    "responses-llama-server": ("responses", {"responses_shape": "llama_server"}),
}


@pytest.fixture(params=list(SHAPES))
def shape(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def _reply(shape: str, text: str, reasoning: list[str]) -> Reply:
    return Reply.text(text, reasoning=reasoning, **SHAPES[shape][1])


def _settings(live_settings: Settings, shape: str) -> Settings:
    return live_settings.with_changes(llm_api=SHAPES[shape][0])


def _workflows(turn: Turn) -> list[WorkflowItem]:
    return [item for item in turn.done_items if isinstance(item, WorkflowItem)]


def _thought(workflow: WorkflowItem) -> str:
    assert workflow.workflow.type == "reasoning"
    tasks = workflow.workflow.tasks
    assert len(tasks) == 1
    assert isinstance(tasks[0], ThoughtTask)
    return tasks[0].content


def _check_turn(turn: Turn, thought: str, answer: str) -> tuple[WorkflowItem, str]:
    assert turn.errors == []
    [workflow] = _workflows(turn)
    assert _thought(workflow) == thought
    assert turn.assistant_text == answer
    [message] = turn.assistant_messages
    # The thought comes before the answer, as the user should see it.
    order = [item.id for item in turn.done_items if item.id in (workflow.id, message.id)]
    assert order == [workflow.id, message.id]
    return workflow, message.id


async def test_reasoning_shows_as_a_thought_in_every_backend_shape(
    chatkit_replay: ReplayFactory, shape: str
) -> None:
    # Replayed from tests/fixtures/hand-written/reasoning-<shape> (scripts/record-fixtures),
    # which also checks that both requests are still what they were when recorded.
    fixtures = FIXTURES / f"reasoning-{shape}"
    async with chatkit_replay(fixtures, llm_api=SHAPES[shape][0]) as stack:
        first = await stack.client.create_thread("Question one?")
        first_flow, first_id = _check_turn(first, "Let me think about it.", "The answer.")
        second = await stack.client.add_message(first.thread_id, "Question two?")
        second_flow, second_id = _check_turn(second, "Again thinking.", "Second answer.")

        # Backend ids (msg_... on the Responses API, __fake_id__ on Chat
        # Completions) are replaced by store ids.
        assert stack.replay is not None
        bodies = b"".join(exchange.body for exchange in stack.replay.exchanges).decode()
        sent_ids = set(re.findall(r'"id":"([^"]+)"', bodies))
        assert {first_id, second_id}.isdisjoint(sent_ids | {"__fake_id__"})
        assert first_id != second_id

        store: SQLStore = stack.app.state.chatkit.store
        page = await store.load_thread_items(first.thread_id, None, 50, "asc", LOCAL)
        sent = str(stack.replay.received[-1].body)
    stored = page.data
    assert [type(item) for item in stored] == [
        UserMessageItem,
        WorkflowItem,
        AssistantMessageItem,
        UserMessageItem,
        WorkflowItem,
        AssistantMessageItem,
    ]
    assert [item.id for item in stored][1:3] + [item.id for item in stored][4:] == [
        first_flow.id,
        first_id,
        second_flow.id,
        second_id,
    ]
    assert isinstance(stored[1], WorkflowItem)
    assert _thought(stored[1]) == "Let me think about it."
    assert isinstance(stored[5], AssistantMessageItem)
    assert stored[5].content[0].text == "Second answer."
    # The second request carried the first answer, and no thought.
    assert "The answer." in sent
    assert "Let me think" not in sent


def _serialized_bytes(turn: Turn) -> int:
    return sum(len(event.model_dump_json().encode()) for event in turn.events)


@pytest.mark.parametrize("shape_name", ["chat-reasoning", "responses-summary"])
async def test_long_reasoning_costs_linear_bytes(
    start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM, shape_name: str
) -> None:
    # 2000 deltas: re-sending the whole thought with each would cost about
    # 2000 * 10 kB / 2 = 10 MB; kept linear it is a few times the thought.
    deltas = [f"w{i:03d} " for i in range(2000)]
    thought = "".join(deltas)
    fake_llm.backend.script(_reply(shape_name, "Done.", deltas))
    async with start_live(_settings(live_settings, shape_name)) as live:
        turn = await live.client.create_thread("Think long.")

    [workflow] = _workflows(turn)
    assert _thought(workflow) == thought
    assert turn.assistant_text == "Done."
    assert _serialized_bytes(turn) < 10 * len(thought) + 20_000
    updates = [
        event
        for event in turn.events
        if isinstance(event, ThreadItemUpdatedEvent)
        and isinstance(event.update, (WorkflowTaskAdded, WorkflowTaskUpdated))
    ]
    # Still streamed as it grows, not only once at the end.
    assert 5 < len(updates) < 100
