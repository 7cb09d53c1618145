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
    ThreadAddUserMessageParams,
    ThreadMetadata,
    ThreadsAddUserMessageReq,
    UserMessageInput,
    UserMessageItem,
    UserMessageTextContent,
)

from chatkit_server.protocol.answers import EARLY_HISTORY_ROWS
from tests.items import user_message
from tests.live import LOCAL, Live

WHEN = datetime(2026, 1, 1)


def _user(thread_id: str, n: int, text: str = "question") -> UserMessageItem:
    return user_message(thread_id, f"msg_u{n:03}", f"{text} {n}", at=WHEN)


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


def _add_message(thread_id: str, attachments: list[str] | None = None) -> ThreadsAddUserMessageReq:
    message = UserMessageInput(
        content=[UserMessageTextContent(text="newest")],
        attachments=attachments or [],
        inference_options=InferenceOptions(),
    )
    return ThreadsAddUserMessageReq(
        params=ThreadAddUserMessageParams(thread_id=thread_id, input=message)
    )


async def test_items_read_with_the_lease_give_the_history_the_store_would(live: Live) -> None:
    answers, gate = live.state.server.answers, live.state.server.gate
    thread = ThreadMetadata(id="thr_leased", created_at=WHEN)
    await live.store.save_thread(thread, LOCAL)
    stored = EARLY_HISTORY_ROWS + 30  # longer than what the lease reads
    for n in range(stored):
        await live.store.add_thread_item(thread.id, _user(thread.id, n), LOCAL)
    newest = _user(thread.id, 999, "newest")
    wanted = answers.history_read_early(_add_message(thread.id))
    assert answers.history_read_early(_add_message(thread.id, ["atc_1"])) == 0

    admission = await gate.admit(
        subject=None, limit=None, thread_id=thread.id, user_id="local", newest_items=wanted
    )
    assert admission.lease is not None
    leased = admission.lease.newest_items
    assert leased is not None
    assert len(leased) == EARLY_HISTORY_ROWS
    from_lease = await answers.history(thread, 100_000, LOCAL, newest, leased)
    await gate.release(admission.lease)
    read = await answers.history(thread, 100_000, LOCAL, newest)

    assert [entry.item.id for entry in from_lease] == [entry.item.id for entry in read]
    assert len(read) == stored + 1
    # A budget that cuts within what the lease read: the same cut.
    cut = await answers.history(thread, 200, LOCAL, newest, leased)
    assert [entry.item.id for entry in cut] == [
        entry.item.id for entry in await answers.history(thread, 200, LOCAL, newest)
    ]
