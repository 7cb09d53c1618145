"""One answer per thread and the rate limit, on a real server."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jwt
import pytest

from chatkit_server.settings import Settings
from chatkit_server.testing.client import ChatKitClient, ChatKitHTTPError, user_input
from chatkit_server.testing.fake_backend import Reply
from tests.conftest import outside_minute_end
from tests.live import FakeLLM, Live, LiveFactory

SECRET = "s" * 32


def _token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


async def _first_event(events: Any) -> None:
    async for _ in events:
        return


async def _first_text(events: Any) -> None:
    """Wait for the answer's first text: the backend has taken the scripted reply."""
    async for event in events:
        if event.type == "thread.item.updated" and event.update.type.endswith("text_delta"):
            return


async def test_a_second_answer_on_an_answering_thread_is_409(live: Live, fake_llm: FakeLLM) -> None:
    thread_id = (await live.client.create_thread("hi")).thread_id
    fake_llm.backend.script(Reply.count(40, delay=0.02))

    async with live.client.open_stream(
        "threads.add_user_message", thread_id=thread_id, input=user_input("slow")
    ) as events:
        await _first_event(events)
        with pytest.raises(ChatKitHTTPError) as refused:
            await live.client.add_message(thread_id, "impatient")
        async for _ in events:  # the first answer goes on to its end
            pass

    assert refused.value.status_code == 409
    assert refused.value.body["error"]["code"] == "thread_busy"
    # Once the answer ended, the thread takes the next message.
    after = await live.client.add_message(thread_id, "now")
    assert after.errors == []
    items = await live.client.call("items.list", thread_id=thread_id, limit=50, order="asc")
    texts = [
        part["text"]
        for item in items["data"]
        if item["type"] == "user_message"
        for part in item["content"]
    ]
    assert texts == ["hi", "slow", "now"]  # the refused message was not stored


async def test_a_new_thread_is_leased_from_its_first_event(live: Live, fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.count(40, delay=0.02))
    async with live.client.open_stream("threads.create", input=user_input("hi")) as events:
        thread_id = None
        async for event in events:
            if event.type == "thread.created":
                thread_id = event.thread.id
                break
        assert thread_id is not None
        with pytest.raises(ChatKitHTTPError) as refused:
            await live.client.add_message(thread_id, "again")
        async for _ in events:
            pass
    assert refused.value.status_code == 409


async def test_stop_frees_the_thread(live: Live, fake_llm: FakeLLM) -> None:
    thread_id = (await live.client.create_thread("hi")).thread_id
    fake_llm.backend.script(Reply.count(500, delay=0.02))
    async with live.client.open_stream(
        "threads.add_user_message", thread_id=thread_id, input=user_input("long")
    ) as events:
        await _first_text(events)
    # Leaving the block closed the stream (the user pressed stop).

    fake_llm.backend.script(Reply.text("next answer"))
    after = await live.client.add_message(thread_id, "next")

    assert after.assistant_text == "next answer"


async def test_a_failed_answer_frees_the_thread(live: Live, fake_llm: FakeLLM) -> None:
    thread_id = (await live.client.create_thread("hi")).thread_id
    fake_llm.backend.script(Reply(status=503))
    failed = await live.client.add_message(thread_id, "boom")
    assert failed.errors

    assert (await live.client.add_message(thread_id, "again")).errors == []


async def test_a_refused_request_after_admission_frees_the_thread(live: Live) -> None:
    thread_id = (await live.client.create_thread("hi")).thread_id
    with pytest.raises(ChatKitHTTPError) as refused:  # admitted, then refused by the checks
        await live.client.stream(
            "threads.add_client_tool_output", thread_id=thread_id, result={"x": 1}
        )
    assert refused.value.status_code == 409

    assert (await live.client.add_message(thread_id, "fine")).errors == []


async def test_threads_of_others_are_404_not_409(
    start_live: LiveFactory, live_settings: Settings
) -> None:
    settings = live_settings.with_changes(jwt_secret=SECRET)
    async with start_live(settings) as live:
        alice = ChatKitClient(live.url, headers={"authorization": f"Bearer {_token('alice')}"})
        mallory = ChatKitClient(live.url, headers={"authorization": f"Bearer {_token('mallory')}"})
        async with alice, mallory:
            thread_id = (await alice.create_thread("mine")).thread_id
            with pytest.raises(ChatKitHTTPError) as foreign:
                await mallory.add_message(thread_id, "yours?")
            with pytest.raises(ChatKitHTTPError) as missing:
                await mallory.add_message("thr_" + "0" * 32, "yours?")
    assert foreign.value.status_code == missing.value.status_code == 404
    assert foreign.value.body == missing.value.body


async def test_rate_limit_counts_writes_per_user(
    start_live: LiveFactory, live_settings: Settings
) -> None:
    settings = live_settings.with_changes(jwt_secret=SECRET, user_rate_limit=3)
    async with start_live(settings) as live:
        alice = ChatKitClient(live.url, headers={"authorization": f"Bearer {_token('alice')}"})
        bob = ChatKitClient(live.url, headers={"authorization": f"Bearer {_token('bob')}"})
        async with alice, bob:
            await outside_minute_end()
            thread_id = (await alice.create_thread("one")).thread_id
            await alice.add_message(thread_id, "two")
            for _ in range(5):  # reads are not counted
                await alice.call("threads.list", limit=5)
            await alice.call("threads.update", thread_id=thread_id, title="three")
            with pytest.raises(ChatKitHTTPError) as limited:
                await alice.add_message(thread_id, "four")
            response = await alice.post_raw(
                f'{{"type":"threads.update","params":{{"thread_id":"{thread_id}","title":"x"}}}}'
            )
            # Another user has a count of their own.
            assert (await bob.create_thread("hello")).errors == []

    assert limited.value.status_code == 429
    assert limited.value.body["error"]["code"] == "rate_limit_exceeded"
    assert response.status_code == 429
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert response.headers["content-type"] == "application/json"


async def test_concurrent_messages_on_one_thread_answer_once(live: Live, fake_llm: FakeLLM) -> None:
    thread_id = (await live.client.create_thread("hi")).thread_id
    fake_llm.backend.script(*(Reply.count(20, delay=0.01) for _ in range(8)))

    async def send(n: int) -> int:
        try:
            await live.client.add_message(thread_id, f"m{n}")
        except ChatKitHTTPError as exc:
            return exc.status_code
        return 200

    statuses = await asyncio.gather(*(send(n) for n in range(8)))

    assert statuses.count(200) >= 1
    assert set(statuses) <= {200, 409}
    items = await live.client.call("items.list", thread_id=thread_id, limit=100, order="asc")
    kinds = [item["type"] for item in items["data"]]
    # Each accepted message is followed by its own answer: never two user
    # messages in a row, never interleaved answers.
    assert kinds.count("user_message") == 1 + statuses.count(200)
    for first, second in zip(kinds, kinds[1:], strict=False):
        assert not (first == "user_message" and second == "user_message")


@pytest.mark.parametrize(
    "params",
    [
        {"type": "threads.add_user_message", "input": user_input("hi")},
        {
            "type": "threads.custom_action",
            "item_id": None,
            "action": {"type": "noop", "payload": {}},
        },
    ],
    ids=["add_user_message", "custom_action"],
)
async def test_an_overlong_thread_id_is_an_unknown_thread(
    start_live: LiveFactory,
    live_settings: Settings,
    server_database_url: str,
    params: dict[str, Any],
) -> None:
    settings = live_settings.with_changes(database_url=server_database_url)
    async with start_live(settings) as live:
        thread_id = (await live.client.create_thread("hi")).thread_id
        overlong = "thr_" + "x" * 4000
        fields = dict(params)
        request_type = fields.pop("type")
        body = {"type": request_type, "params": {"thread_id": overlong, **fields}}
        response = await live.client.post_raw(json.dumps(body))
        # The server is unharmed: the real thread still answers.
        after = await live.client.add_message(thread_id, "still here")

    # PostgreSQL refused the id in the lease row: that was a 503.
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert after.errors == []
