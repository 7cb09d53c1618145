"""An answer's caps over real HTTP: characters, wall time, ``max_tokens``."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
from chatkit.types import AssistantMessageItem, NoticeEvent

from chatkit_server.settings import Settings
from chatkit_server.store import SQLStore
from chatkit_server.testing.fake_backend import Reply
from tests.live import LOCAL, FakeLLM, LiveFactory


async def _stored_answer(store: SQLStore, thread_id: str) -> str:
    page = await store.load_thread_items(thread_id, None, 50, "asc", LOCAL)
    return "".join(
        part.text
        for item in page.data
        if isinstance(item, AssistantMessageItem)
        for part in item.content
    )


async def test_an_answer_past_the_character_cap_is_cut_there_and_saved(
    start_live: LiveFactory,
    live_settings: Settings,
    fake_llm: FakeLLM,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)
    fake_llm.backend.script(Reply.count(5_000))
    async with start_live(live_settings.with_changes(answer_max_chars=50)) as live:
        turn = await live.client.create_thread("go on forever")

        notices = [event for event in turn.events if isinstance(event, NoticeEvent)]
        assert len(notices) == 1
        assert "50 characters" in notices[0].message
        assert turn.errors == []
        expected = "".join(f"tok{i} " for i in range(20))[:50]
        assert turn.assistant_text == expected
        assert await _stored_answer(live.store, turn.thread_id) == expected
        # The backend was told to stop, not read to the end.
        record = await fake_llm.backend.wait_for_stream_end()
        assert record.disconnected

        # The thread goes on.
        fake_llm.backend.script(Reply.text("Short."))
        again = await live.client.add_message(turn.thread_id, "thanks")
        assert again.assistant_text == "Short."
        assert not any(isinstance(event, NoticeEvent) for event in again.events)

    # The run ended as runs end: nothing of it was left pending (asyncio
    # reports such a task when it is collected).
    gc.collect()
    await asyncio.sleep(0)
    assert [record.getMessage() for record in caplog.records] == []


async def test_an_answer_past_the_time_cap_ends_with_a_notice(
    start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply.count(200, delay=0.02))
    async with start_live(live_settings.with_changes(answer_max_seconds=0.5)) as live:
        turn = await live.client.create_thread("take your time")

        notices = [event for event in turn.events if isinstance(event, NoticeEvent)]
        assert len(notices) == 1
        assert "0.5 seconds" in notices[0].message
        assert turn.assistant_text.startswith("tok0 tok1 ")
        assert len(turn.assistant_text) < len("".join(f"tok{i} " for i in range(200)))
        assert await _stored_answer(live.store, turn.thread_id) == turn.assistant_text
        record = await fake_llm.backend.wait_for_stream_end()
        assert record.disconnected


async def test_max_tokens_goes_with_every_model_request(
    start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply.count(100))
    async with start_live(live_settings.with_changes(answer_max_tokens=7)) as live:
        turn = await live.client.create_thread("hi")

    assert fake_llm.backend.requests[-1].body["max_tokens"] == 7
    # The fake backend ends at the limit as a real server does.
    assert turn.assistant_text == "".join(f"tok{i} " for i in range(7))


async def test_no_caps_by_default_for_an_ordinary_answer(
    start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply.count(300))
    async with start_live(live_settings) as live:
        turn = await live.client.create_thread("hi")

    assert "max_tokens" not in fake_llm.backend.requests[-1].body
    assert turn.assistant_text == "".join(f"tok{i} " for i in range(300))
    assert not any(isinstance(event, NoticeEvent) for event in turn.events)
