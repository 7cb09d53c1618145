"""The private names in chatkit_server.compat still do what the library's public API does.

Each test compares with the public route the compat function stands in for,
so a library upgrade that changes either fails here.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from chatkit.server import ChatKitServer, NonStreamingResult, StreamingResult
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    ThreadItemDoneEvent,
    ThreadMetadata,
    ThreadStreamEvent,
    UserMessageItem,
)

from chatkit_server.compat import process_parsed
from chatkit_server.context import RequestContext
from chatkit_server.protocol.checks import parse_request
from chatkit_server.store import Database, SQLStore
from chatkit_server.testing.client import user_input
from chatkit_server.testing.fake_backend import Reply
from tests.live import FakeLLM, Live

CONTEXT = RequestContext()


class EchoServer(ChatKitServer[RequestContext]):
    """Answers every message with its own text."""

    async def respond(
        self,
        thread: ThreadMetadata,
        input_user_message: UserMessageItem | None,
        context: RequestContext,
    ) -> AsyncIterator[ThreadStreamEvent]:
        assert input_user_message is not None
        text = input_user_message.content[0].text  # type: ignore[union-attr]
        yield ThreadItemDoneEvent(
            item=AssistantMessageItem(
                id=self.store.generate_item_id("message", thread, context),
                thread_id=thread.id,
                created_at=input_user_message.created_at,
                content=[AssistantMessageContent(text=f"echo: {text}")],
            )
        )


def _create(text: str) -> bytes:
    return json.dumps(
        {
            "type": "threads.create",
            "params": {
                "input": {
                    "content": [{"type": "input_text", "text": text}],
                    "attachments": [],
                    "inference_options": {},
                }
            },
        }
    ).encode()


async def _events(result: StreamingResult | NonStreamingResult) -> list[dict[str, Any]]:
    assert isinstance(result, StreamingResult)
    frames = b"".join([frame async for frame in result])
    return [json.loads(line[6:]) for line in frames.split(b"\n\n") if line.startswith(b"data: ")]


def _shape(events: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """Each event's type, and the text of a finished item."""
    shape = []
    for event in events:
        item = event.get("item") or {}
        content = item.get("content") or [{}]
        shape.append((event["type"], content[0].get("text")))
    return shape


async def test_process_parsed_streams_what_process_streams(
    sqlite_database: Database,
) -> None:
    server = EchoServer(store=SQLStore(sqlite_database))

    public = await _events(await server.process(_create("one"), CONTEXT))
    ours = await _events(await process_parsed(server, parse_request(_create("one")), CONTEXT))

    assert _shape(ours) == _shape(public)
    assert ("thread.item.done", "echo: one") in _shape(ours)


async def test_process_parsed_answers_what_process_answers(sqlite_database: Database) -> None:
    server = EchoServer(store=SQLStore(sqlite_database))
    await _events(await server.process(_create("one"), CONTEXT))
    body = json.dumps({"type": "threads.list", "params": {"limit": 10}}).encode()

    public = await server.process(body, CONTEXT)
    ours = await process_parsed(server, parse_request(body), CONTEXT)

    assert isinstance(public, NonStreamingResult)
    assert isinstance(ours, NonStreamingResult)
    assert ours.json == public.json
    assert json.loads(ours.json)["data"][0]["id"].startswith("thr_")


async def test_a_stopped_answer_leaves_chatkits_merge_task_which_is_not_reported(
    live: Live, fake_llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    # ChatKit's stream_agent_response still leaves its wait for agent events
    # pending when an answer is stopped (the debug line says it was seen): if
    # this fails on an upgrade, ChatKit cleans up and the compat code can go.
    # (The last call sets the capture's own level too: keep DEBUG last.)
    caplog.set_level(logging.ERROR, logger="asyncio")
    caplog.set_level(logging.DEBUG, logger="chatkit_server.app")
    fake_llm.backend.script(Reply.count(200, delay=0.02))
    body = json.dumps({"type": "threads.create", "params": {"input": user_input("hi")}})
    async with (
        httpx.AsyncClient() as client,
        client.stream(
            "POST",
            f"{live.url}/chatkit",
            content=body,
            headers={"content-type": "application/json"},
        ) as response,
    ):
        seen = 0
        async for chunk in response.aiter_bytes():
            seen += chunk.count(b"text_delta")
            if seen > 5:
                break  # the user presses stop mid-answer
    await fake_llm.backend.wait_for_stream_end()
    await asyncio.sleep(0.5)  # the stopped answer is saved meanwhile
    for _ in range(50):
        gc.collect()
        if any("wait for agent events" in record.getMessage() for record in caplog.records):
            break
        await asyncio.sleep(0.05)

    messages = [record.getMessage() for record in caplog.records]
    assert any("wait for agent events was collected" in message for message in messages)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
