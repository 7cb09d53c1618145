"""Stream fix-ups: id remapping, empty turns and backend failures, without a network."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterable
from datetime import datetime

import httpx2 as httpx
import openai
from agents.models.fake_id import FAKE_RESPONSES_ID
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    ClientToolCallItem,
    ErrorEvent,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemRemovedEvent,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
)

from chatkit_server.protocol.events import EMPTY_ANSWER_MESSAGE, StreamFixer, backend_error_message

NOW = datetime(2026, 1, 1)


def _message(text: str, item_id: str = FAKE_RESPONSES_ID) -> AssistantMessageItem:
    return AssistantMessageItem(
        id=item_id,
        thread_id="thr_1",
        created_at=NOW,
        content=[AssistantMessageContent(text=text)] if text else [],
    )


def _reply(text: str) -> list[ThreadStreamEvent]:
    return [
        ThreadItemAddedEvent(item=_message("")),
        ThreadItemUpdatedEvent(
            item_id=FAKE_RESPONSES_ID,
            update=AssistantMessageContentPartTextDelta(content_index=0, delta=text),
        ),
        ThreadItemDoneEvent(item=_message(text)),
    ]


async def _events(
    events: Iterable[ThreadStreamEvent], error: Exception | None = None
) -> AsyncIterator[ThreadStreamEvent]:
    for event in events:
        yield event
    if error is not None:
        raise error


def _fixer() -> StreamFixer:
    counter = itertools.count()
    return StreamFixer(lambda kind: f"{'msg' if kind == 'message' else 'tc'}_{next(counter)}")


async def _run(
    fixer: StreamFixer, source: AsyncIterator[ThreadStreamEvent]
) -> list[ThreadStreamEvent]:
    return [event async for event in fixer.fix(source)]


async def test_each_reply_gets_its_own_stable_id() -> None:
    out = await _run(_fixer(), _events(_reply("one") + _reply("two")))

    ids = [e.item.id if hasattr(e, "item") else e.item_id for e in out]  # type: ignore[union-attr]
    assert ids == ["msg_0", "msg_0", "msg_0", "msg_1", "msg_1", "msg_1"]


async def test_fake_id_on_a_client_tool_call_is_replaced() -> None:
    call = ClientToolCallItem(
        id=FAKE_RESPONSES_ID,
        thread_id="thr_1",
        created_at=NOW,
        call_id="c1",
        name="f",
        arguments={},
    )
    out = await _run(_fixer(), _events([ThreadItemDoneEvent(item=call)]))
    assert isinstance(out[0], ThreadItemDoneEvent)
    assert out[0].item.id == "tc_0"
    assert len(out) == 1


async def test_empty_turn_becomes_an_error() -> None:
    out = await _run(_fixer(), _events([]))
    assert isinstance(out[-1], ErrorEvent)
    assert out[-1].message == EMPTY_ANSWER_MESSAGE


async def test_empty_message_is_removed_and_reported() -> None:
    out = await _run(
        _fixer(),
        _events([ThreadItemAddedEvent(item=_message("")), ThreadItemDoneEvent(item=_message(""))]),
    )
    assert isinstance(out[1], ThreadItemRemovedEvent)
    assert out[1].item_id == "msg_0"
    assert isinstance(out[2], ErrorEvent)


async def test_failure_mid_answer_completes_the_partial_message_then_errors() -> None:
    events = _reply("whole") + _reply("part")[:2]
    failure = openai.APIConnectionError(request=httpx.Request("POST", "http://x"))
    out = await _run(_fixer(), _events(events, failure))

    assert isinstance(out[-2], ThreadItemDoneEvent)
    assert out[-2].item.id == "msg_1"
    assert isinstance(out[-2].item, AssistantMessageItem)
    assert out[-2].item.content[0].text == "part"
    assert isinstance(out[-1], ErrorEvent)
    assert out[-1].allow_retry


def test_error_messages_do_not_leak_exception_text() -> None:
    request = httpx.Request("POST", "http://secret-host/v1")
    response = httpx.Response(500, request=request, text="stack trace with secrets")
    status = openai.InternalServerError("secret detail", response=response, body=None)
    assert backend_error_message(status) == ("The model backend answered with an error (HTTP 500).")
    assert "secret" not in backend_error_message(RuntimeError("secret"))
    assert "in time" in backend_error_message(openai.APITimeoutError(request=request))


def test_a_refused_connection_reported_as_a_timeout_says_unreachable() -> None:
    # The aiohttp transport maps a refused connection to a connect timeout; the
    # socket error it wraps is what happened.
    request = httpx.Request("POST", "http://127.0.0.1:9/v1")
    refused = openai.APITimeoutError(request=request)
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as exc:
            raise httpx.ConnectTimeout("Cannot connect") from exc
    except httpx.ConnectTimeout as exc:
        refused.__cause__ = exc
    slow = openai.APITimeoutError(request=request)
    slow.__cause__ = httpx.ReadTimeout("read")
    slow.__cause__.__context__ = TimeoutError()

    assert "could not be reached" in backend_error_message(refused)
    assert "in time" in backend_error_message(slow)


async def test_responses_message_ids_are_replaced_too() -> None:
    # A Responses backend names its messages itself (msg_...), each once; they are
    # still the backend's ids, not the store's, so they are replaced as well.
    events: list[ThreadStreamEvent] = []
    for backend_id, text in [("msg_backend_a", "one"), ("msg_backend_b", "two")]:
        events += [
            ThreadItemAddedEvent(item=_message("", backend_id)),
            ThreadItemUpdatedEvent(
                item_id=backend_id,
                update=AssistantMessageContentPartTextDelta(content_index=0, delta=text),
            ),
            ThreadItemDoneEvent(item=_message(text, backend_id)),
        ]
    out = await _run(_fixer(), _events(events))

    ids = [e.item.id if hasattr(e, "item") else e.item_id for e in out]  # type: ignore[union-attr]
    assert ids == ["msg_0", "msg_0", "msg_0", "msg_1", "msg_1", "msg_1"]
    assert not [e for e in out if isinstance(e, ErrorEvent)]


async def test_responses_id_on_a_client_tool_call_is_replaced_too() -> None:
    # On the Responses API the SDK passes the backend's function_call id through;
    # backends may reuse them, and the item needs an id of the store's own.
    call = ClientToolCallItem(
        id="fc_from_backend",
        thread_id="thr_1",
        created_at=NOW,
        call_id="call_1",
        name="f",
        arguments={},
    )
    out = await _run(_fixer(), _events([ThreadItemDoneEvent(item=call)]))
    assert isinstance(out[0], ThreadItemDoneEvent)
    assert (out[0].item.id, out[0].item.call_id) == ("tc_0", "call_1")  # type: ignore[union-attr]
