"""Chat Completions requests sent straight over aiohttp, answered with the openai types.

The openai client spends about a millisecond of CPU on every request before
the first byte leaves (options models, a type-directed walk of the body,
httpx request and header objects, then the aiohttp transport underneath),
against about a quarter of that for the same request sent with aiohttp
directly (measured on the loopback fake backend). With hundreds of
conversations starting at once that millisecond, twice per new thread (the
answer and its title), was most of what delayed the last one's first token.

:class:`DirectChat` sends ``chat.completions.create`` calls itself and hands
back what the client would: a :class:`~openai.types.chat.ChatCompletion`, or
a stream of :class:`~openai.types.chat.ChatCompletionChunk` parsed by the
client's own decoder and validator. Failures are the client's exception types
(:class:`openai.APIConnectionError`, :class:`openai.APITimeoutError`,
:class:`openai.APIStatusError` and its subclasses, :class:`openai.APIError`
for an error event mid-stream), retried as the client retries them (same
statuses, same back-off, the client's ``max_retries``), so callers see no
difference. A call it cannot send as given (query parameters, a per-call
timeout, a body that is not plain JSON) returns :data:`NOT_SENT` and goes
through the client as usual.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import aiohttp
import httpx2
import openai
from agents import OpenAIChatCompletionsModel, TResponseInputItem
from aiohttp.helpers import get_env_proxy_for_url
from openai import Timeout
from openai._models import FinalRequestOptions
from openai._types import NotGiven, Omit
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from yarl import URL

from .coalesce import ParsedEvent
from .history import is_user_message

if TYPE_CHECKING:
    from .backends import LeanAsyncOpenAI

__all__ = ["NOT_SENT", "ConvertedTurns", "DirectChat", "DirectStream"]

logger = logging.getLogger(__name__)

NOT_SENT: Final = object()
"""Returned by :meth:`DirectChat.create` for a call the openai client must send."""

# Keyword arguments of ``create`` that are not part of the JSON body.
_EXTRAS: Final = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})
# The connection pool: as many connections as the openai client's own pool.
_MAX_CONNECTIONS: Final = 1000
_KEEPALIVE_SECONDS: Final = 5.0


class DirectChat:
    """Sends one backend's Chat Completions requests over one aiohttp session.

    Owned by the backend; the session is opened on first use (it belongs to
    the running event loop) and closed by :meth:`aclose`.

    Args:
        path: The endpoint under the client's base URL.
    """

    def __init__(self, path: str = "chat/completions") -> None:
        self._path = path
        # Earlier turns converted to chat messages (backends.with_earlier_turns).
        self.earlier_turns = ConvertedTurns()
        self._session: aiohttp.ClientSession | None = None
        # URL, headers, timeouts and proxy by what they are made from: the
        # same for every copy of a client (one per run, see
        # backends.LeanAsyncOpenAI.for_run), and looking up the proxy in the
        # environment alone cost about 0.2 ms.
        self._prepared: dict[tuple[Any, ...], _Prepared] = {}

    async def aclose(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=_MAX_CONNECTIONS, keepalive_timeout=_KEEPALIVE_SECONDS
                ),
                # No cookies between requests (the openai client keeps none).
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    def _prepare(self, client: LeanAsyncOpenAI) -> _Prepared:
        key = (
            client.base_url,
            client.api_key,
            repr(client.timeout),
            tuple(client._custom_headers.items()),
        )
        prepared = self._prepared.get(key)
        if prepared is None:
            url = str(client.base_url).rstrip("/") + "/" + self._path
            merged: dict[str, object] = {**client.auth_headers, **client.default_headers}
            headers = {k: v for k, v in merged.items() if isinstance(v, str)}
            timeout = client.timeout
            if isinstance(timeout, Timeout):
                client_timeout = aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.connect,
                    sock_connect=timeout.connect,
                    sock_read=timeout.read,
                )
                if timeout.read is not None:
                    headers["x-stainless-read-timeout"] = str(timeout.read)
            else:
                client_timeout = aiohttp.ClientTimeout(
                    total=None, sock_read=float(timeout) if timeout is not None else None
                )
            try:
                # The environment's proxy, as the openai client honours it;
                # looked up once (aiohttp's trust_env looks it up, and netrc,
                # in a thread on every request).
                proxy, proxy_auth = get_env_proxy_for_url(URL(url))
            except LookupError:
                proxy, proxy_auth = None, None
            prepared = _Prepared(url, headers, client_timeout, proxy, proxy_auth)
            self._prepared[key] = prepared
        return prepared

    async def create(self, client: LeanAsyncOpenAI, kwargs: Mapping[str, Any]) -> Any:
        """``client.chat.completions.create(**kwargs)``, or :data:`NOT_SENT`.

        Raises:
            openai.APIError: As the client would raise it.
        """
        encoded = _encode(client, kwargs)
        if encoded is None:
            return NOT_SENT
        data, stream = encoded
        prepared = self._prepare(client)
        headers = dict(prepared.headers)
        for name, value in (kwargs.get("extra_headers") or {}).items():
            if isinstance(value, str):
                headers[name] = value
            else:  # Omit(): the caller removes a default header
                headers.pop(name, None)
        response = await self._send(client, prepared, headers, data)
        if stream:
            return DirectStream(client, response)
        return await _whole_completion(client, response)

    async def _send(
        self,
        client: LeanAsyncOpenAI,
        prepared: _Prepared,
        headers: dict[str, str],
        data: bytes,
    ) -> aiohttp.ClientResponse:
        """POST the body, retrying as the client does; a response with status < 400."""
        url = prepared.url
        session = self._session_now()
        retries = client.max_retries
        for attempt in range(retries + 1):
            headers["x-stainless-retry-count"] = str(attempt)
            failure: openai.APIError
            cause: BaseException | None = None
            response_headers: httpx2.Headers | None = None
            try:
                response = await session.post(
                    url,
                    data=data,
                    headers=headers,
                    timeout=prepared.timeout,
                    proxy=prepared.proxy,
                    proxy_auth=prepared.proxy_auth,
                )
            except (aiohttp.ClientError, OSError) as exc:
                failure = _transport_failure(url, exc)
                cause = exc
            else:
                if response.status < 400:
                    return response
                status_response = await _status_response(url, response)
                failure = client._make_status_error_from_response(status_response)
                if attempt == retries or not client._should_retry(status_response):
                    raise failure
                response_headers = status_response.headers
            if attempt == retries:
                raise failure from cause
            pause = client._calculate_retry_timeout(retries - attempt, _OPTIONS, response_headers)
            logger.info("retrying %s in %.2f seconds", self._path, pause)
            await asyncio.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover


class _Prepared(NamedTuple):
    """What every request of one client sends the same way."""

    url: str
    headers: dict[str, str]
    timeout: aiohttp.ClientTimeout
    proxy: URL | None
    proxy_auth: aiohttp.BasicAuth | None


# What the client's retry delay reads from a request: only its retry count.
_OPTIONS: Final = FinalRequestOptions.construct(method="post", url="/chat/completions")


def _encode(client: LeanAsyncOpenAI, kwargs: Mapping[str, Any]) -> tuple[bytes, bool] | None:
    """The JSON body the client would send and whether it streams; ``None``: the client sends it."""
    if kwargs.get("extra_query") or client._custom_query:
        return None
    if not isinstance(kwargs.get("timeout", NotGiven()), NotGiven):
        return None
    if client._strict_response_validation or getattr(client, "_provider_runtime", None):
        # Strict validation, or credentials a provider signs each request with.
        return None
    body = {
        name: value
        for name, value in kwargs.items()
        if name not in _EXTRAS and not isinstance(value, (Omit, NotGiven))
    }
    extra = kwargs.get("extra_body")
    if extra:
        body.update(extra)
    try:
        # Only plain JSON goes this way; anything else (a model, a file) gets
        # the client's own conversion.
        data = json.dumps(body, separators=(",", ":")).encode()
    except (TypeError, ValueError):
        return None
    return data, body.get("stream") is True


def _request(url: str) -> httpx2.Request:
    """The request an openai exception names (only its method and URL are read)."""
    return httpx2.Request("POST", url)


def _transport_failure(url: str, exc: BaseException) -> openai.APIConnectionError:
    """The client's exception for an exchange that failed: timed out, or otherwise cut.

    ``TimeoutError`` (aiohttp's own timeouts among them) is an ``OSError``, so
    callers catch ``(aiohttp.ClientError, OSError)`` and this tells them apart.
    """
    if isinstance(exc, TimeoutError):
        return openai.APITimeoutError(request=_request(url))
    return openai.APIConnectionError(request=_request(url))


async def _status_response(url: str, response: aiohttp.ClientResponse) -> httpx2.Response:
    """An error response as the client sees one, body read, connection released."""
    try:
        content = await response.read()
    except (aiohttp.ClientError, OSError, TimeoutError):
        content = b""
    finally:
        response.release()
    return httpx2.Response(
        response.status,
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers],
        content=content,
        request=_request(url),
    )


async def _whole_completion(
    client: LeanAsyncOpenAI, response: aiohttp.ClientResponse
) -> ChatCompletion:
    url = str(response.url)
    try:
        content = await response.read()
    except (aiohttp.ClientError, OSError) as exc:
        raise _transport_failure(url, exc) from exc
    finally:
        response.release()
    try:
        data = json.loads(content)
    except ValueError as exc:
        raise openai.APIResponseValidationError(
            response=await _status_response(url, response), body=content.decode(errors="replace")
        ) from exc
    completion: ChatCompletion = client._process_response_data(
        data=data, cast_to=ChatCompletion, response=response
    )
    return completion


class DirectStream:
    """A streamed completion: an async iterator of ``ChatCompletionChunk``.

    What the Agents SDK reads of the client's ``AsyncStream``: iteration,
    ``close()``/``aclose()`` (which drops the connection, so the backend stops
    generating) and ``response.headers`` (for the request id).
    """

    def __init__(self, client: LeanAsyncOpenAI, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self._client = client
        self._iterator: AsyncGenerator[ChatCompletionChunk] = self._chunks()

    def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        return self._iterator

    async def __anext__(self) -> ChatCompletionChunk:
        return await self._iterator.__anext__()

    async def close(self) -> None:
        """Stop reading and close the connection."""
        await self._iterator.aclose()
        self.response.close()

    async def aclose(self) -> None:
        """Alias of :meth:`close`."""
        await self.close()

    async def _chunks(self) -> AsyncGenerator[ChatCompletionChunk]:
        response, client = self.response, self._client
        url = str(response.url)
        process = client._process_response_data
        done = False
        try:
            async for sse in client._make_sse_decoder().aiter_bytes(self._reads(url)):
                if isinstance(sse, ParsedEvent):
                    # Decoded JSON (a merged one has no text until asked for).
                    data = sse.json()
                elif sse.data.startswith("[DONE]"):
                    done = True
                    break
                else:
                    data = sse.json()
                if isinstance(data, dict) and data.get("error"):
                    error = data["error"]
                    message = error.get("message") if isinstance(error, dict) else None
                    if not message or not isinstance(message, str):
                        message = "An error occurred during streaming"
                    raise openai.APIError(message=message, request=_request(url), body=error)
                yield process(data=data, cast_to=ChatCompletionChunk, response=response)
        finally:
            if done:
                # The rest of the body (the chunked encoding's end) lets the
                # connection be reused.
                try:
                    await response.read()
                except (aiohttp.ClientError, OSError, TimeoutError):
                    response.close()
            response.release()

    async def _reads(self, url: str) -> AsyncIterator[bytes]:
        try:
            async for data in self.response.content.iter_any():
                yield data
        except (aiohttp.ClientError, OSError) as exc:
            raise _transport_failure(url, exc) from exc


class ConvertedTurns:
    """The chat messages of recent conversations' turns, each turn converted once.

    A conversation's next request repeats most of its earlier turns (a
    window that grows at one end and may lose turns at the other), and the
    input items of those turns are the very objects kept by the history
    cache (``history.HistoryEntry.model_input``). So each turn (a user
    message and what follows it) is converted on its own and kept by its
    items' identity; a request converts only the turns not seen before. A
    user message starts the converter afresh, so converting turn by turn
    gives the same messages as converting everything at once.

    Args:
        size: How many turns to keep (least recently used go first).
    """

    def __init__(self, size: int = 8192) -> None:
        self._size = size
        # Keyed by the turn's first item's identity; the items are kept with
        # their messages, so no other object can take that identity meanwhile.
        self._kept: OrderedDict[
            tuple[int, Any], tuple[list[TResponseInputItem], list[dict[str, Any]]]
        ] = OrderedDict()

    def convert(
        self,
        model: OpenAIChatCompletionsModel,
        items: Sequence[TResponseInputItem],
        convert: Callable[[Sequence[TResponseInputItem]], list[dict[str, Any]]],
    ) -> list[dict[str, Any]]:
        """``convert(items)``, turn by turn, reusing turns converted before."""
        messages: list[dict[str, Any]] = []
        count = len(items)
        starts = [0, *(i for i in range(1, count) if is_user_message(items[i])), count]
        for start, end in zip(starts, starts[1:], strict=False):
            turn = items[start:end]
            key = (id(turn[0]), model.model)
            kept = self._kept.get(key)
            if (
                kept is not None
                and len(kept[0]) == len(turn)
                and all(a is b for a, b in zip(kept[0], turn, strict=True))
            ):
                self._kept.move_to_end(key)
                messages.extend(kept[1])
            else:
                part = convert(turn)
                self._kept[key] = (list(turn), part)
                if len(self._kept) > self._size:
                    self._kept.popitem(last=False)
                messages.extend(part)
        return messages
