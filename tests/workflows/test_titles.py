"""Thread titles: written alongside the first answer, saved, sent as thread.updated."""

from __future__ import annotations

from collections.abc import Sequence

from agents.testing import ScriptedModel, assistant_message
from chatkit.types import (
    AssistantMessageContentPartTextDelta,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
    ThreadUpdatedEvent,
)

from chatkit_server.context import THREAD_WORKFLOW_KEY
from chatkit_server.settings import Settings
from chatkit_server.testing.fake_backend import Reply
from chatkit_server.workflows.titles import (
    MAX_TITLE_CHARS,
    TITLE_INSTRUCTIONS,
    clean_title,
    fallback_title,
    make_title,
)
from tests.live import LOCAL, FakeLLM, LiveFactory


def test_clean_title_keeps_the_first_line_without_decoration() -> None:
    assert clean_title('  "Trip to Lisbon."\nSure! Here is why...') == "Trip to Lisbon"
    assert clean_title("Title: **Budget review**") == "Budget review"
    assert clean_title("\n\n") == ""
    assert len(clean_title("word " * 40)) <= MAX_TITLE_CHARS


def test_fallback_title_is_the_start_of_the_message() -> None:
    assert fallback_title("  how do   I bake bread?  ") == "how do I bake bread?"
    long = fallback_title("please " * 30)
    assert long.endswith("…")
    assert len(long) <= MAX_TITLE_CHARS
    assert fallback_title("   ") == "New conversation"


async def test_make_title_uses_the_model_and_falls_back_when_it_fails() -> None:
    good = ScriptedModel([[assistant_message('"Bread baking basics"')]])
    assert await make_title(good, "How do I bake bread?", tracing=False) == "Bread baking basics"
    assert good.calls[0].system_instructions == TITLE_INSTRUCTIONS

    broken = ScriptedModel([RuntimeError("backend down")])
    assert await make_title(broken, "How do I bake bread?", tracing=False) == (
        "How do I bake bread?"
    )
    empty = ScriptedModel([[assistant_message("   ")]])
    assert await make_title(empty, "Sourdough?", tracing=False) == "Sourdough?"


async def test_a_traced_title_runs_through_the_runner_with_the_same_result() -> None:
    traced = ScriptedModel([[assistant_message("Bread baking basics.")]])
    assert await make_title(traced, "How do I bake bread?", tracing=True) == "Bread baking basics"
    assert traced.calls[0].system_instructions == TITLE_INSTRUCTIONS


def _title_requests(fake_llm: FakeLLM) -> int:
    return sum(
        1
        for request in fake_llm.backend.requests
        if request.body["messages"][0]["content"] == TITLE_INSTRUCTIONS
    )


async def test_first_answer_names_the_thread_once(
    start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.default = Reply.text("Bread baking basics")
    async with start_live(live_settings.with_changes(titles=True)) as live:
        first = await live.client.create_thread("How do I bake bread?")
        second = await live.client.add_message(first.thread_id, "And sourdough?")
        stored = await live.store.load_thread(first.thread_id, LOCAL)

    updates = [e for e in first.events if isinstance(e, ThreadUpdatedEvent)]
    assert updates[-1].thread.title == "Bread baking basics"
    # The answer's text came before the title: it was not held back for it.
    assert _first_delta(first.events) < _titled(first.events)
    assert stored.title == "Bread baking basics"
    assert not any(
        isinstance(e, ThreadUpdatedEvent) and e.thread.title != stored.title for e in second.events
    )
    assert _title_requests(fake_llm) == 1


def _first_delta(events: Sequence[ThreadStreamEvent]) -> int:
    """Where the answer's first text delta is among ``events``."""
    return next(
        i
        for i, e in enumerate(events)
        if isinstance(e, ThreadItemUpdatedEvent)
        and isinstance(e.update, AssistantMessageContentPartTextDelta)
    )


def _titled(events: Sequence[ThreadStreamEvent]) -> int:
    return next(
        i for i, e in enumerate(events) if isinstance(e, ThreadUpdatedEvent) and e.thread.title
    )


def _answered(events: Sequence[ThreadStreamEvent]) -> int:
    return max(i for i, e in enumerate(events) if isinstance(e, ThreadItemDoneEvent))


async def test_a_title_written_mid_answer_is_shown_mid_answer(
    start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply.count(40, delay=0.05))  # the answer: two seconds
    fake_llm.backend.default = Reply.text("Bread baking basics")  # the title: at once
    async with start_live(live_settings.with_changes(titles=True)) as live:
        turn = await live.client.create_thread("How do I bake bread?")
        stored = await live.store.load_thread(turn.thread_id, LOCAL)

    assert turn.errors == []
    assert _first_delta(turn.events) < _titled(turn.events) < _answered(turn.events)
    assert stored.title == "Bread baking basics"
    # Saving the title keeps the workflow the thread was stored with.
    assert stored.metadata[THREAD_WORKFLOW_KEY] == "default"


async def test_titles_can_be_turned_off(
    live_settings: Settings, start_live: LiveFactory, fake_llm: FakeLLM
) -> None:
    async with start_live(live_settings) as live:
        turn = await live.client.create_thread("hello")
        stored = await live.store.load_thread(turn.thread_id, LOCAL)
    assert stored.title is None
    assert _title_requests(fake_llm) == 0


async def test_the_title_is_asked_for_once_the_answer_is_under_way(
    start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM
) -> None:
    # The title's request must not compete with the answer's for its first token.
    fake_llm.backend.script(Reply.text("Bread is easy.", first_byte_delay=0.3))
    fake_llm.backend.default = Reply.text("Bread baking basics")
    async with start_live(live_settings.with_changes(titles=True)) as live:
        await live.client.create_thread("How do I bake bread?")

    answer, title = fake_llm.backend.requests[-2:]
    assert title.body["messages"][0]["content"] == TITLE_INSTRUCTIONS
    assert title.received_at - answer.received_at >= 0.3


async def test_a_first_answer_without_content_still_names_the_thread(
    start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply(empty=True))
    fake_llm.backend.default = Reply.text("Bread baking basics")
    async with start_live(live_settings.with_changes(titles=True)) as live:
        turn = await live.client.create_thread("How do I bake bread?")
        stored = await live.store.load_thread(turn.thread_id, LOCAL)

    assert turn.errors
    assert stored.title == "Bread baking basics"
