"""History conversion: every turn must be accepted by the Chat Completions converter."""

from __future__ import annotations

from datetime import datetime

import pytest
from agents.exceptions import UserError
from agents.models.chatcmpl_converter import Converter as ChatCompletionsConverter
from chatkit.agents import ThreadItemConverter
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    FileAttachment,
    InferenceOptions,
    UserMessageItem,
    UserMessageTagContent,
    UserMessageTextContent,
)

from chatkit_server.protocol.converter import HistoryConverter
from tests.live import LOCAL, FakeLLM, Live

NOW = datetime(2026, 1, 2, 3, 4, 5)


def _user(text: str, item_id: str = "msg_u", **extra: object) -> UserMessageItem:
    return UserMessageItem(
        id=item_id,
        thread_id="thr_1",
        created_at=NOW,
        content=[UserMessageTextContent(text=text)],
        inference_options=InferenceOptions(),
        **extra,  # type: ignore[arg-type]
    )


def _assistant(text: str) -> AssistantMessageItem:
    return AssistantMessageItem(
        id="msg_a", thread_id="thr_1", created_at=NOW, content=[AssistantMessageContent(text=text)]
    )


HISTORY = [_user("Hi"), _assistant("Hello!"), _user("How are you?", "msg_u2")]


async def test_sdk_default_converter_breaks_second_turn_on_chat_completions() -> None:
    # Guards the reason this module exists: if this stops raising, the
    # workaround may be dropped.
    items = await ThreadItemConverter().to_agent_input(HISTORY)
    with pytest.raises(UserError):
        ChatCompletionsConverter.items_to_messages(items)


async def test_history_converter_output_is_accepted_with_string_content() -> None:
    items = await HistoryConverter().to_agent_input(HISTORY)

    messages = ChatCompletionsConverter.items_to_messages(items)

    assert [(m["role"], m.get("content")) for m in messages] == [
        ("user", "Hi"),
        ("assistant", "Hello!"),
        ("user", "How are you?"),
    ]


async def test_attachments_and_tags_become_text() -> None:
    attachment = FileAttachment(id="atc_1", name="report.pdf", mime_type="application/pdf")
    item = _user("See", attachments=[attachment])
    item.content.append(
        UserMessageTagContent(id="t1", text="Alice", data={"team": "blue"}, interactive=False)
    )

    items = await HistoryConverter().to_agent_input([item])
    messages = ChatCompletionsConverter.items_to_messages(items)

    texts = [str(m.get("content")) for m in messages]
    assert "report.pdf (application/pdf)" in texts[0]
    assert any('@Alice (id t1): {"team": "blue"}' in text for text in texts)


async def test_mentions_reach_the_model_with_their_data(live: Live, fake_llm: FakeLLM) -> None:
    tag = {
        "type": "input_tag",
        "id": "ent_42",
        "text": "Ada Lovelace",
        "group": "People",
        "data": {"role": "mathematician", "born": 1815},
        "interactive": True,
    }
    content = [
        {"type": "input_text", "text": "What did "},
        tag,
        {"type": "input_text", "text": " write?"},
    ]

    turn = await live.client.stream(
        "threads.create",
        input={"content": content, "attachments": [], "inference_options": {}},
    )

    assert not turn.errors
    messages = fake_llm.backend.requests[-1].body["messages"]
    users = [m["content"] for m in messages if m["role"] == "user"]
    assert users[0] == "What did @Ada Lovelace write?"
    assert (
        '@Ada Lovelace (id ent_42, group People): {"born": 1815, "role": "mathematician"}'
        in users[1]
    )
    # Stored as sent, so a reload and later turns still carry the entity.
    [item] = [i for i in turn.done_items if isinstance(i, UserMessageItem)]
    stored = await live.store.load_item(item.thread_id, item.id, LOCAL)
    assert stored == item
