"""Whole-stack tests on recorded backend streams, through the record/replay kit's plugin.

Each test replays a fixture directory from tests/fixtures (real llama-server recordings
and hand-written shapes of servers that cannot run here) behind a real chatkit-server,
and talks to it as the browser does. Sequence matching also checks that chatkit-server
still sends the model exactly what it sent when the fixtures were recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chatkit_server.testing.stack import ReplayFactory

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LLAMA = FIXTURES / "llama-server"
HAND = FIXTURES / "hand-written"


@pytest.mark.parametrize(
    ("fixture", "api"),
    [("chat-two-turns", "chat_completions"), ("responses-two-turns", "responses")],
)
async def test_two_turns_on_real_llama_server_streams(
    chatkit_replay: ReplayFactory, fixture: str, api: str
) -> None:
    async with chatkit_replay(LLAMA / fixture, llm_api=api) as stack:
        first = await stack.client.create_thread("Hello! Who are you?")
        second = await stack.client.add_message(first.thread_id, "Tell me one fact about cats.")
        assert stack.replay is not None
        sent = stack.replay.received[1].body
    for turn in (first, second):
        assert turn.errors == []
        [message] = turn.assistant_messages
        assert message.content[0].text.strip()
    # Two replies, two ids (trap 1), and the first answer went back as history (trap 2).
    assert first.assistant_messages[0].id != second.assistant_messages[0].id
    assert first.assistant_text in str(sent)


@pytest.mark.parametrize(
    ("fixture", "text"), [("chat-truncated", "Say something."), ("chat-error-503", "Hello?")]
)
async def test_a_cut_stream_or_an_error_status_is_an_error_event(
    chatkit_replay: ReplayFactory, fixture: str, text: str
) -> None:
    async with chatkit_replay(HAND / fixture) as stack:
        turn = await stack.client.create_thread(text)
    [error] = turn.errors
    # A readable message, not the backend's internals.
    assert error.message


async def test_a_request_the_fixtures_do_not_expect_shows_the_diff(
    chatkit_replay: ReplayFactory,
) -> None:
    async with chatkit_replay(HAND / "reasoning-chat-reasoning", check=False) as stack:
        turn = await stack.client.create_thread("A different question")
        assert stack.replay is not None
        [refused] = stack.replay.mismatches
    assert len(turn.errors) == 1
    assert refused.error is not None
    assert '+      "content": "A different question"' in refused.error
    assert '-      "content": "Question one?"' in refused.error


async def test_the_chatkit_stream_matches_its_golden_file(
    chatkit_replay: ReplayFactory, chatkit_golden: Any
) -> None:
    async with chatkit_replay(LLAMA / "chat-two-turns") as stack:
        first = await stack.client.create_thread("Hello! Who are you?")
        await stack.client.add_message(first.thread_id, "Tell me one fact about cats.")
        chatkit_golden(stack.client, "llama-server-chat-two-turns")
