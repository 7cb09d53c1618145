"""A ChatKit protocol client that speaks like the browser component.

It sends the same bodies and headers as ChatKit's web client, parses the SSE
answer incrementally and validates every event with the SDK's own types, so
a test sees exactly what a browser would, and can stop mid-stream.

Example::

    async with ChatKitClient("http://127.0.0.1:8000") as client:
        turn = await client.create_thread("Hello")
        assert turn.assistant_text
        again = await client.add_message(turn.thread_id, "And again?")
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
from chatkit.types import (
    AssistantMessageItem,
    ErrorEvent,
    ThreadCreatedEvent,
    ThreadItemDoneEvent,
    ThreadStreamEvent,
)
from pydantic import TypeAdapter

__all__ = ["ChatKitClient", "ChatKitHTTPError", "Turn", "user_input"]

_EVENT_ADAPTER: TypeAdapter[ThreadStreamEvent] = TypeAdapter(ThreadStreamEvent)
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class ChatKitHTTPError(Exception):
    """The server answered a non-2xx status."""

    def __init__(self, status_code: int, body: Any) -> None:
        super().__init__(f"HTTP {status_code}: {body}")
        self.status_code = status_code
        self.body = body


def user_input(text: str, *, attachments: list[str] | None = None) -> dict[str, Any]:
    """The ``input`` of a user message as the browser sends it."""
    return {
        "content": [{"type": "input_text", "text": text}],
        "attachments": attachments or [],
        "quoted_text": None,
        "inference_options": {},
    }


@dataclass
class Turn:
    """All events of one streamed request, with conveniences for assertions."""

    events: list[ThreadStreamEvent] = field(default_factory=list)

    @property
    def thread_id(self) -> str:
        """The thread created by this turn (``threads.create`` only)."""
        for event in self.events:
            if isinstance(event, ThreadCreatedEvent):
                return event.thread.id
        raise AssertionError("no thread.created event in this turn")

    @property
    def done_items(self) -> list[Any]:
        """Items of every ``thread.item.done`` event, in order."""
        return [event.item for event in self.events if isinstance(event, ThreadItemDoneEvent)]

    @property
    def assistant_messages(self) -> list[AssistantMessageItem]:
        """Completed assistant messages of this turn."""
        return [item for item in self.done_items if isinstance(item, AssistantMessageItem)]

    @property
    def assistant_text(self) -> str:
        """Text of the completed assistant messages, joined."""
        return "".join(part.text for message in self.assistant_messages for part in message.content)

    @property
    def errors(self) -> list[ErrorEvent]:
        """The ``error`` events of this turn."""
        return [event for event in self.events if isinstance(event, ErrorEvent)]


class ChatKitClient:
    """Talks to a chatkit-server's ``/chatkit`` route.

    Args:
        base_url: The server's origin, e.g. ``http://127.0.0.1:8000``.
        path: The ChatKit route.
        headers: Extra headers sent with every request (e.g. authorization).
    """

    def __init__(
        self,
        base_url: str,
        *,
        path: str = "/chatkit",
        headers: dict[str, str] | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self.url = base_url.rstrip("/") + path
        # Raw event data of every streamed request, in order: a golden-file transcript.
        self.transcript: list[tuple[str, list[str]]] = []
        self._http = httpx.AsyncClient(timeout=timeout)
        # The web component identifies its frame on every request.
        self.headers = {
            "content-type": "application/json",
            "chatkit-frame-instance-id": uuid.uuid4().hex,
            **(headers or {}),
        }

    async def __aenter__(self) -> ChatKitClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the underlying connections."""
        await self._http.aclose()

    async def post_raw(
        self, body: bytes | str, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """POST an arbitrary body and return the whole response (for error-path tests)."""
        content = body.encode() if isinstance(body, str) else body
        return await self._http.post(
            self.url, content=content, headers={**self.headers, **(headers or {})}
        )

    async def call(
        self, request_type: str, *, metadata: dict[str, Any] | None = None, **params: Any
    ) -> Any:
        """Send a non-streaming request and return its decoded JSON answer.

        Raises:
            ChatKitHTTPError: The server answered a non-2xx status.
        """
        response = await self.post_raw(_body(request_type, params, metadata))
        body = response.json() if response.content else None
        if response.status_code >= 300:
            raise ChatKitHTTPError(response.status_code, body)
        return body

    @asynccontextmanager
    async def open_stream(
        self, request_type: str, *, metadata: dict[str, Any] | None = None, **params: Any
    ) -> AsyncIterator[AsyncIterator[ThreadStreamEvent]]:
        """Start a streaming request; leaving the block closes it (like pressing stop).

        Raises:
            ChatKitHTTPError: The server refused the request before streaming.
        """
        body = _body(request_type, params, metadata)
        async with self._http.stream("POST", self.url, content=body, headers=self.headers) as resp:
            if resp.status_code >= 300:
                await resp.aread()
                raise ChatKitHTTPError(resp.status_code, resp.json() if resp.content else None)
            raw: list[str] = []
            self.transcript.append((request_type, raw))
            yield _parse_sse(resp, raw)

    async def stream(
        self, request_type: str, *, metadata: dict[str, Any] | None = None, **params: Any
    ) -> Turn:
        """Send a streaming request and collect every event until the end."""
        turn = Turn()
        async with self.open_stream(request_type, metadata=metadata, **params) as events:
            async for event in events:
                turn.events.append(event)
        return turn

    async def create_thread(self, text: str, **input_options: Any) -> Turn:
        """``threads.create`` with a text message."""
        return await self.stream("threads.create", input={**user_input(text), **input_options})

    async def add_message(self, thread_id: str, text: str, **input_options: Any) -> Turn:
        """``threads.add_user_message`` with a text message."""
        return await self.stream(
            "threads.add_user_message",
            thread_id=thread_id,
            input={**user_input(text), **input_options},
        )


def _body(request_type: str, params: dict[str, Any], metadata: dict[str, Any] | None) -> str:
    body: dict[str, Any] = {"type": request_type, "params": params}
    if metadata is not None:
        body["metadata"] = metadata
    return json.dumps(body)


async def _parse_sse(response: httpx.Response, raw: list[str]) -> AsyncIterator[ThreadStreamEvent]:
    data_lines: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data_lines.append(line[5:].lstrip())
        elif line == "" and data_lines:
            raw.append("\n".join(data_lines))
            yield _EVENT_ADAPTER.validate_json(raw[-1])
            data_lines = []
    if data_lines:
        raw.append("\n".join(data_lines))
        yield _EVENT_ADAPTER.validate_json(raw[-1])
