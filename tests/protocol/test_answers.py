"""The history an answer starts from, with a message not stored yet.

Early asking (the model asked before the ChatKit server stores the message)
and the ChatKit server's own order must give the model the same input; the
early and busy paths end to end are in ``tests/protocol/test_server.py``.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    InferenceOptions,
    ThreadMetadata,
    UserMessageItem,
    UserMessageTextContent,
)

from tests.live import LOCAL, Live

WHEN = datetime(2026, 1, 1)


def _user(thread_id: str, n: int, text: str = "question") -> UserMessageItem:
    return UserMessageItem(
        id=f"msg_u{n:03}",
        thread_id=thread_id,
        created_at=WHEN,
        content=[UserMessageTextContent(text=f"{text} {n}")],
        inference_options=InferenceOptions(),
    )


async def test_a_message_not_stored_yet_comes_last_as_if_it_were(live: Live) -> None:
    answers = live.state.server.answers
    thread = ThreadMetadata(id="thr_early", created_at=WHEN)
    await live.store.save_thread(thread, LOCAL)
    for n in range(3):
        await live.store.add_thread_item(thread.id, _user(thread.id, 2 * n), LOCAL)
        answer = AssistantMessageItem(
            id=f"msg_a{2 * n + 1:03}",
            thread_id=thread.id,
            created_at=WHEN,
            content=[AssistantMessageContent(text=f"answer {n}")],
        )
        await live.store.add_thread_item(thread.id, answer, LOCAL)
    newest = _user(thread.id, 6, "newest")

    early = await answers.history(thread, 1000, LOCAL, newest)
    await live.store.add_thread_item(thread.id, newest, LOCAL)
    stored = await answers.history(thread, 1000, LOCAL)

    assert [entry.item.id for entry in early] == [entry.item.id for entry in stored]
    assert early[-1].item is newest


async def test_a_new_threads_history_is_its_message_only(live: Live) -> None:
    answers = live.state.server.answers
    context = replace(LOCAL, new_thread_id="thr_new")
    thread = ThreadMetadata(id="thr_new", created_at=WHEN)  # not saved: nothing is read
    newest = _user(thread.id, 0)

    entries = await answers.history(thread, 1000, context, newest)

    assert [entry.item for entry in entries] == [newest]


async def test_a_newest_message_over_the_budget_is_all_there_is(live: Live) -> None:
    answers = live.state.server.answers
    thread = ThreadMetadata(id="thr_long", created_at=WHEN)
    await live.store.save_thread(thread, LOCAL)
    await live.store.add_thread_item(thread.id, _user(thread.id, 0), LOCAL)
    newest = _user(thread.id, 1, "x" * 3000)

    entries = await answers.history(thread, 100, LOCAL, newest)

    assert [entry.item for entry in entries] == [newest]
