"""History budget: the newest turns that fit, never without the new message."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    FileAttachment,
    InferenceOptions,
    ThreadMetadata,
    UserMessageItem,
    UserMessageTextContent,
)

from chatkit_server.settings import Settings
from chatkit_server.testing.fake_backend import Reply
from chatkit_server.workflows.history import (
    ATTACHMENT_TOKENS,
    MESSAGE_OVERHEAD_TOKENS,
    estimate_item_tokens,
    estimate_tokens,
    fit_history,
    fit_turns,
)
from tests.live import LOCAL, FakeLLM, Live, LiveFactory


def _msg(role: str, text: str) -> Any:
    return {"role": role, "content": text, "type": "message"}


CONVERSATION = [
    _msg("user", "a" * 300),
    _msg("assistant", "b" * 300),
    _msg("user", "c" * 300),
    _msg("assistant", "d" * 300),
    _msg("user", "newest question"),
]


def test_everything_fits_a_large_budget() -> None:
    assert fit_history(CONVERSATION, budget=10_000, instructions="Be nice.") == CONVERSATION


def test_oldest_turns_are_dropped_first() -> None:
    per_long = estimate_tokens("x" * 300) + MESSAGE_OVERHEAD_TOKENS
    budget = 2 * per_long + 40  # room for the newest pair, not for more
    kept = fit_history(CONVERSATION, budget=budget, instructions="Be nice.")
    assert kept == CONVERSATION[2:]


def test_kept_part_never_starts_with_an_answer() -> None:
    per_long = estimate_tokens("x" * 300) + MESSAGE_OVERHEAD_TOKENS
    kept = fit_history(CONVERSATION, budget=per_long + 40, instructions=None)
    # The assistant turn would fit, but without its question it is dropped.
    assert kept == CONVERSATION[-1:]


def test_new_message_is_kept_even_over_budget() -> None:
    huge = [*CONVERSATION[:-1], _msg("user", "z" * 10_000)]
    assert fit_history(huge, budget=100, instructions="long " * 50) == huge[-1:]


def test_everything_after_the_last_user_message_is_kept() -> None:
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "c1", "output": "x" * 900}
    items = [*CONVERSATION, call, output]
    kept = fit_history(items, budget=50, instructions=None)
    assert kept == [CONVERSATION[-1], call, output]


async def test_model_receives_instructions_and_newest_turns(
    start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM
) -> None:
    settings = live_settings.with_changes(history_tokens=400)
    async with start_live(settings) as live:
        fake_llm.backend.script(*(Reply.text("y" * 300) for _ in range(4)))
        turn = await live.client.create_thread("first " + "q" * 300)
        for n in range(3):
            await live.client.add_message(turn.thread_id, f"turn {n} " + "q" * 300)

    sent = fake_llm.backend.requests[-1].body["messages"]
    assert sent[0]["role"] == "system"
    assert sent[1]["role"] == "user"
    assert sent[-1]["content"].startswith("turn 2 ")
    assert not any(str(m["content"]).startswith("first ") for m in sent)
    assert sum(len(str(m["content"])) for m in sent) / 3 <= 400


async def test_history_loading_stops_once_the_budget_is_covered(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    thread = ThreadMetadata(id="thr_long", created_at=datetime(2026, 1, 1))
    await live.store.save_thread(thread, LOCAL)
    for n in range(200):
        item: Any
        if n % 2 == 0:
            item = UserMessageItem(
                id=f"msg_u{n:03}",
                thread_id=thread.id,
                created_at=datetime(2026, 1, 1),
                content=[UserMessageTextContent(text=f"question {n} " + "q" * 600)],
                inference_options=InferenceOptions(),
            )
        else:
            item = AssistantMessageItem(
                id=f"msg_a{n:03}",
                thread_id=thread.id,
                created_at=datetime(2026, 1, 1),
                content=[AssistantMessageContent(text=f"answer {n} " + "a" * 600)],
            )
        await live.store.add_thread_item(thread.id, item, LOCAL)
    decoded = _count_decodes(live, monkeypatch)
    entries = await live.state.server.answers.history(thread, 1000, LOCAL)
    items = [entry.item for entry in entries]

    # About 200 tokens per item: only the items within reach of the budget
    # are decoded, not the whole page of rows.
    assert len(decoded) < 10
    assert items[-1].id == "msg_a199"
    assert isinstance(items[0], UserMessageItem)
    # Nothing the model would have been sent is missing.
    everything = (await live.store.load_thread_items(thread.id, None, 200, "asc", LOCAL)).data
    converter = live.state.server.answers.converter
    assert fit_history(
        await converter.history_input(entries), budget=1000, instructions=None
    ) == fit_history(await converter.to_agent_input(everything), budget=1000, instructions=None)


def _count_decodes(live: Live, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    cache = live.state.server.answers.history_cache
    decoded: list[str] = []
    original = cache._decode

    def spy(kind: str, data: str) -> Any:
        decoded.append(kind)
        return original(kind, data)

    monkeypatch.setattr(cache, "_decode", spy)
    return decoded


async def test_later_turns_reuse_the_decoded_and_converted_history(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    thread = ThreadMetadata(id="thr_turns", created_at=datetime(2026, 1, 1))
    await live.store.save_thread(thread, LOCAL)

    def user(n: int, quoted: str | None = None) -> UserMessageItem:
        return UserMessageItem(
            id=f"msg_u{n}",
            thread_id=thread.id,
            created_at=datetime(2026, 1, 1),
            content=[UserMessageTextContent(text=f"question {n}")],
            inference_options=InferenceOptions(),
            quoted_text=quoted,
        )

    for n in range(3):
        await live.store.add_thread_item(thread.id, user(n, quoted=f"quote {n}"), LOCAL)
    decoded = _count_decodes(live, monkeypatch)
    converter = live.state.server.answers.converter
    first = await live.state.server.answers.history(thread, 10_000, LOCAL)
    first_input = await converter.history_input(first)
    await live.store.add_thread_item(thread.id, user(3), LOCAL)

    second = await live.state.server.answers.history(thread, 10_000, LOCAL)
    second_input = await converter.history_input(second)

    # Only the new item is decoded on the next turn; the rest are the same entries.
    assert decoded == ["user_message"] * 4
    assert [entry.item for entry in second[:3]] == [entry.item for entry in first]
    assert second[0] is first[0]
    # The same input as converting everything afresh: only the newest item
    # carries its quoted text, also when an item stops being the newest.
    for entries, model_input in ((first, first_input), (second, second_input)):
        assert model_input == await converter.to_agent_input([e.item for e in entries])
    assert "quote 2" in str(first_input[-1])
    assert "quote 2" not in str(second_input[2])


def test_the_current_turn_starts_at_the_last_user_message() -> None:
    tool_round = [
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
    ]
    items = [*CONVERSATION, *tool_round]

    earlier, current = fit_turns(items, budget=10_000, instructions=None)

    assert earlier == CONVERSATION[:-1]
    assert current == [CONVERSATION[-1], *tool_round]
    assert fit_turns(tool_round, budget=10_000, instructions=None) == ([], tool_round)
    assert fit_turns([], budget=10_000, instructions=None) == ([], [])


def test_the_earlier_turns_are_cut_as_the_budget_says() -> None:
    # fit_history is fit_turns joined, so this states the cut itself: the
    # oldest whole turns go first, and the current turn always stays.
    per_long = estimate_tokens("x" * 300) + MESSAGE_OVERHEAD_TOKENS
    first_kept = {10: 4, per_long + 40: 4, 2 * per_long + 40: 2, 10_000: 0}
    for budget, start in first_kept.items():
        earlier, current = fit_turns(CONVERSATION, budget=budget, instructions="Be nice.")
        assert earlier == CONVERSATION[start:-1], budget
        assert current == CONVERSATION[-1:], budget


def test_attachments_count_by_their_size_an_images_worth_at_most() -> None:
    def message(*sizes: int | None) -> UserMessageItem:
        return UserMessageItem(
            id="msg_1",
            thread_id="thr_1",
            created_at=datetime(2026, 1, 1),
            content=[UserMessageTextContent(text="see")],
            attachments=[
                FileAttachment(
                    id=f"atc_{index}",
                    name="f",
                    mime_type="text/plain",
                    metadata=None if size is None else {"size": size},
                )
                for index, size in enumerate(sizes)
            ],
            inference_options=InferenceOptions(),
        )

    bare = estimate_item_tokens(message())
    assert estimate_item_tokens(message(30)) == bare + 10
    # A photo of megabytes: an image's worth, so loading history stops soon.
    assert estimate_item_tokens(message(5_000_000, None)) == bare + 2 * ATTACHMENT_TOKENS
