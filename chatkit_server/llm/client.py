"""The ``AsyncOpenAI`` client the Agents SDK's models are given.

Requests go through the ``openai`` client itself (its headers, timeouts,
retries and error types), over its aiohttp transport. Two things differ, both
through the client's public API:

* **The body is sent as built.** The client walks every request body
  through a type-directed transform before sending it, message by message:
  for a long conversation, tens of milliseconds before the first byte
  leaves, and even for a short one the largest part of building the
  request. The Agents SDK builds plain JSON already, so every body field
  (``messages`` or ``input`` among them) travels in ``extra_body``, which
  the client sends untouched; only ``stream`` is given as itself, since it
  tells the client how to read the answer.
* **Streamed answers are parsed here** (``with_streaming_response``, then
  :mod:`chatkit_server.llm.wire`): each chunk is validated instead of built by
  the client's lenient, pure-Python constructor. The stream behaves as the client's own
  ``AsyncStream``: it ends at ``[DONE]``, an ``error`` payload raises
  :class:`openai.APIError`, and a timeout or a dropped connection raises
  :class:`openai.APITimeoutError` or :class:`openai.APIConnectionError`.

A request whose connection is reset before any byte of the answer arrived (a
kept-alive connection the backend had just closed) is sent once more, on
another connection: nothing of it was seen, so nothing is repeated. Once the
answer's headers are in, a failure is the answer's and is never retried.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from functools import cached_property
from typing import Any, cast

import aiohttp
import httpx2
import openai
import pydantic
from openai import AsyncOpenAI
from openai.resources.chat import AsyncChat
from openai.resources.chat.completions import AsyncCompletions
from openai.resources.responses import AsyncResponses
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response

from chatkit_server.errors import causes
from chatkit_server.llm.wire import (
    ServerSentEvent,
    SSEDecoder,
    build_model,
    merge_chat_text,
    merge_response_text,
    response_event_class,
)
from chatkit_server.pace import PACE_ARGUMENT, Pace

__all__ = ["DRAIN_LIMIT", "BackendClient", "ChunkStream", "reset_before_answer"]

logger = logging.getLogger(__name__)

_ERROR_MESSAGE = "An error occurred during streaming"
DRAIN_LIMIT = 64 * 1024
"""Bytes after ``[DONE]`` read to keep the connection for the next request."""


_REQUEST_OPTIONS = frozenset({"extra_headers", "extra_query", "extra_body", "timeout", "stream"})
"""Arguments of ``create`` that are not body fields (``stream`` is both)."""


def _untransformed(kwargs: dict[str, Any], field: str) -> dict[str, Any]:
    """``kwargs`` with every body field moved into ``extra_body`` (sent as it is).

    Fields left out (``omit``) stay out, as the transform would leave them.
    Where given, ``field`` (``messages`` or ``input``) stays as an empty list
    and ``model`` as ``omit``: Chat Completions' ``create`` wants both named;
    the values sent are those in ``extra_body``, which take precedence. A
    field the caller also put in ``extra_body`` keeps the ``extra_body``
    value, as the client would send it.
    """
    options = {name: value for name, value in kwargs.items() if name in _REQUEST_OPTIONS}
    body = {
        name: value
        for name, value in kwargs.items()
        if name not in _REQUEST_OPTIONS and not isinstance(value, (openai.Omit, openai.NotGiven))
    }
    body.update(kwargs.get("extra_body") or {})
    placeholders: dict[str, Any] = {field: [], "model": openai.omit}
    given = {name: value for name, value in placeholders.items() if name in kwargs}
    return {**options, **given, "extra_body": body}


def _chat_chunk(data: dict[str, Any]) -> pydantic.BaseModel:
    return build_model(ChatCompletionChunk, data)


def _response_event(data: dict[str, Any]) -> pydantic.BaseModel:
    cls = response_event_class(data.get("type")) or openai.BaseModel
    return build_model(cls, data)


class ChunkStream:
    """A streamed answer as typed chunks; what ``create(stream=True)`` returns.

    Args:
        response: The open streaming response (``with_streaming_response``).
        build: Makes one chunk from one decoded event.
        merge: Makes the text of the events of one read fewer events
            (:func:`chatkit_server.llm.wire.merge_chat_text`); by default
            each event is a chunk.
        close: Ends the request (exits the response's context).
        pace: When given, each read of the backend waits until the consumer
            took what the last one gave (see :mod:`chatkit_server.pace`).
    """

    def __init__(
        self,
        response: openai.AsyncAPIResponse[Any],
        build: Callable[[dict[str, Any]], pydantic.BaseModel],
        close: Callable[[], Any],
        pace: Pace | None = None,
        merge: Callable[[list[Any]], list[Any]] | None = None,
    ) -> None:
        self.response = response.http_response
        self._pace = pace
        self._api_response = response
        self._build = build
        self._merge = merge
        self._close = close
        self._closed = False
        self._iterator = self._chunks()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterator

    async def __anext__(self) -> Any:
        return await anext(self._iterator)

    async def _reads(self) -> AsyncIterator[bytes]:
        request = self.response.request
        try:
            async for chunk in self._api_response.iter_bytes():
                yield chunk
        except httpx2.TimeoutException as exc:
            raise openai.APITimeoutError(request=request) from exc
        except httpx2.RequestError as exc:
            raise openai.APIConnectionError(request=request) from exc

    async def _chunks(self) -> AsyncIterator[Any]:
        decoder = SSEDecoder()
        reads = self._reads()
        pace, merge = self._pace, self._merge
        try:
            while True:
                if pace is not None:
                    # While this waits, what the backend sends stays in the
                    # socket (and past its buffers the backend is held back by
                    # its connection's flow control); the next read takes it
                    # all at once.
                    await pace.before_read()
                chunk = await anext(reads, None)
                if chunk is None:
                    break
                values, done = _values(decoder.feed(chunk))
                if merge is not None:
                    values = merge(values)
                for value in values:
                    yield self._chunk(value)
                if done:
                    # The rest of the body (normally nothing) is read, so the
                    # connection goes back to the pool instead of being closed.
                    await _drain(reads)
                    return
            values, _done = _values(decoder.finish())
            for value in values:
                yield self._chunk(value)
        finally:
            await self.aclose()

    def _chunk(self, value: Any) -> pydantic.BaseModel:
        if not isinstance(value, dict):
            raise openai.APIError(
                message="The model backend sent an event that is not a JSON object.",
                request=self.response.request,
                body=value,
            )
        error = value.get("error")
        if error:
            message = error.get("message") if isinstance(error, dict) else None
            raise openai.APIError(
                message=message if isinstance(message, str) and message else _ERROR_MESSAGE,
                request=self.response.request,
                body=error,
            )
        return self._build(value)

    async def aclose(self) -> None:
        """Close the response and release its connection (again: nothing happens)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await self._close()

    close = aclose


async def _drain(reads: AsyncIterator[bytes], limit: int = DRAIN_LIMIT) -> None:
    """Read what follows ``[DONE]``, up to ``limit`` bytes (more: the connection is dropped)."""
    seen = 0
    with contextlib.suppress(openai.APIError):
        async for chunk in reads:
            seen += len(chunk)
            if seen > limit:
                return


def reset_before_answer(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection reset or closed by the peer, not a timeout or refusal.

    The openai client's aiohttp transport reports these as connection (or
    even connect-timeout) errors; the socket error underneath tells them
    apart from a backend that is down or slow.
    """
    resets = (ConnectionResetError, BrokenPipeError, aiohttp.ServerDisconnectedError)
    return any(isinstance(cause, resets) for cause in causes(exc))


def _values(events: list[ServerSentEvent]) -> tuple[list[Any], bool]:
    """The decoded events up to ``[DONE]``, and whether it came.

    An event whose data is not JSON is kept as its text.
    """
    values: list[Any] = []
    for event in events:
        if event.data.startswith("[DONE]"):
            return values, True
        try:
            values.append(json.loads(event.data))
        except ValueError:
            values.append(event.data)
    return values, False


async def _open_stream(
    opener: Any,
    build: Callable[[dict[str, Any]], pydantic.BaseModel],
    merge: Callable[[list[Any]], list[Any]],
    pace: Pace | None,
) -> ChunkStream:
    """Send the request of ``opener`` (a ``with_streaming_response`` call) and stream it."""
    response = await opener.__aenter__()

    async def close() -> None:
        await opener.__aexit__(None, None, None)

    return ChunkStream(response, build, close, pace, merge)


class _Endpoint:
    """``chat.completions`` or ``responses``, with ``create`` as described in the module notes.

    Only ``create`` is offered: for the Responses API the Agents SDK then
    streams through it too (and reports no request id for streamed calls).

    Args:
        resource: The client's own resource, which sends the requests.
        field: The body field the Agents SDK builds as plain JSON.
        chunk: Builds one streamed chunk.
        merge: Merges the text of the chunks of one read (see :mod:`chatkit_server.llm.wire`).
        whole: The type of a whole (not streamed) answer.
    """

    def __init__(
        self,
        resource: AsyncCompletions | AsyncResponses,
        field: str,
        chunk: Callable[[dict[str, Any]], pydantic.BaseModel],
        merge: Callable[[list[Any]], list[Any]],
        whole: type[pydantic.BaseModel],
    ) -> None:
        self._resource = resource
        self._field = field
        self._chunk = chunk
        self._merge = merge
        self._whole = whole

    async def create(self, **kwargs: Any) -> Any:
        # The answer's pace travels with the call, not to the backend.
        pace = kwargs.pop(PACE_ARGUMENT, None)
        kwargs = _untransformed(kwargs, self._field)
        if pace is not None:
            # Whoever waits for this runs once this task waits for the
            # backend: after the request was written, or while connecting.
            pace.asking()
        try:
            return await self._send(kwargs, pace)
        except openai.APIConnectionError as exc:
            if not reset_before_answer(exc):
                raise
            logger.info("the model backend reset a connection before answering: sending again")
        return await self._send(kwargs, pace)

    async def _send(self, kwargs: dict[str, Any], pace: Pace | None) -> Any:
        if kwargs.get("stream"):
            opener = self._resource.with_streaming_response.create(**kwargs)
            return await _open_stream(opener, self._chunk, self._merge, pace)
        raw = await self._resource.with_raw_response.create(**kwargs)
        return build_model(self._whole, raw.http_response.json())


class _Chat:
    def __init__(self, client: AsyncOpenAI) -> None:
        self.completions = _Endpoint(
            AsyncCompletions(client), "messages", _chat_chunk, merge_chat_text, ChatCompletion
        )


class BackendClient(AsyncOpenAI):
    """``AsyncOpenAI`` for one backend, with the request and stream handling above."""

    @cached_property
    def chat(self) -> AsyncChat:
        """Chat Completions: ``messages`` sent as built, streams parsed here."""
        return cast(AsyncChat, _Chat(self))

    @cached_property
    def responses(self) -> AsyncResponses:
        """The Responses API: ``input`` sent as built, streams parsed here."""
        return cast(
            AsyncResponses,
            _Endpoint(
                AsyncResponses(self), "input", _response_event, merge_response_text, Response
            ),
        )
