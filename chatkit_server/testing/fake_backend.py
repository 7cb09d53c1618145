"""A scripted OpenAI-compatible LLM server that streams like llama-server and vLLM.

Serve ``backend.app`` on a real uvicorn (see :mod:`chatkit_server.testing.live`) and point
any OpenAI client at ``base_url + "/v1"``:

.. code-block:: python

    backend = FakeBackend()
    backend.script(Reply.text("Hello there"), Reply(status=503), Reply.count(50, delay=0.05))
    async with serve_app(backend.app) as url:
        client = AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        ...
    record = await backend.wait_for_stream_end()  # tokens_sent, completed, disconnected

Each ``POST /v1/chat/completions`` or ``POST /v1/responses`` consumes the next scripted
:class:`Reply` (FIFO), or ``default`` when none is left. ``GET /v1/models`` lists the model.
Every request lands in ``backend.requests``; every completion in ``backend.streams``.

The streaming responder is pure ASGI: it listens for ``http.disconnect`` while it sends,
so a client that goes away stops generation promptly, as in a real server. Chunk bytes are
built from pre-encoded templates (no models, no validation) so hundreds of concurrent
streams stay cheap. Reasoning comes in the shape of the server a test imitates: the
``reasoning_content`` or ``reasoning`` delta field on Chat Completions, summary or
reasoning-text events on the Responses API, and ``responses_shape="llama_server"`` for
llama-server's Responses stream, which omits fields (see ``_fake_responses``). A reply
can call tools (:meth:`Reply.tool_call`), streamed as vLLM does (many chunks) or as
Ollama does (one chunk) on Chat Completions, and as ``function_call`` items on the
Responses API (see ``_fake_tools``). All of these shapes are hand-written after each
server's source, not recorded.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from chatkit_server.testing._fake_responses import responses_plan
from chatkit_server.testing._fake_tools import ToolCall, ToolCallShape
from chatkit_server.testing._fake_wire import (
    Plan,
    Responder,
    chat_plan,
    error_body,
    install_log_filter,
    json_plan,
)

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_REPLY_TEXT",
    "FakeBackend",
    "RecordedRequest",
    "Reply",
    "StreamRecord",
    "ToolCall",
]

DEFAULT_MODEL = "fake-model"
DEFAULT_REPLY_TEXT = "Hello from the fake backend."
_POLL_INTERVAL = 0.005
_WORD = re.compile(r"\s*\S+\s*|\s+")


@dataclass(frozen=True)
class Reply:
    """One scripted answer. Sequences are stored as tuples so a Reply is truly immutable.

    Attributes:
        tokens: Content deltas, one per chunk.
        delay: Seconds between streamed chunks, kept as a steady pace: a chunk sent late
            does not delay the next one's due time (0 still yields to the event loop).
        first_byte_delay: Seconds before the response headers are sent.
        status: Answer this HTTP status with an OpenAI-style JSON error instead.
        error_message: Message of that error (a default names the status).
        drop_after: Abort the connection after this many content tokens, with no finish
            chunk and no ``[DONE]`` (non-streaming: after half the JSON body).
        error_event: Chat Completions stream: after the content, an OpenAI-style
            ``{"error": ...}`` event with this message ends the stream instead of the
            finish chunk (as vLLM and LiteLLM report a failure mid-stream).
        stall_after: Stop sending for ``stall_seconds`` after this many content tokens.
        stall_seconds: Length of that stall.
        empty: Send the role chunk, then ``finish_reason`` with no content at all.
        reasoning: Reasoning deltas sent before the content.
        reasoning_field: Chat Completions delta field of reasoning: llama-server's and
            DeepSeek's ``reasoning_content`` or vLLM's and Ollama's ``reasoning``.
        responses_reasoning: Responses API reasoning events: ``"text"``
            (``response.reasoning_text.*``, as vLLM and llama-server send) or
            ``"summary"`` (``response.reasoning_summary_text.*``, as OpenAI sends).
        responses_shape: ``"openai"``: every field the openai types declare, as OpenAI
            and vLLM send; ``"llama_server"``: llama-server's stream, which omits
            ``sequence_number``, ``output_index``, ``content_index`` and more.
        finish_reason: Finish reason of the last chunk (``"length"`` makes a Responses
            stream end with ``response.incomplete``); None: ``"tool_calls"`` when the
            reply calls tools, else ``"stop"``.
        tool_calls: Function calls sent after the content (Chat Completions and the
            ``"openai"`` Responses shape; with ``"llama_server"`` a ValueError).
        tool_call_shape: How Chat Completions streams them: ``"vllm"`` (the name, then
            the arguments in fragments, over many chunks) or ``"ollama"`` (every call
            whole in one chunk that also carries the finish reason).
        usage: ``(prompt_tokens, completion_tokens)``; estimated from the request if None.
        burst: Send the whole stream in one write after ``delay``, as a stream looks to a
            reader that fell behind (not with ``stall_after``).

    A request's ``max_tokens`` (``max_completion_tokens``, ``max_output_tokens``) cuts the
    tokens as a real server does, ending with finish reason ``length``, unless the reply
    sets ``finish_reason`` or calls tools.
    """

    tokens: Sequence[str] = ()
    delay: float = 0.0
    first_byte_delay: float = 0.0
    status: int | None = None
    error_message: str | None = None
    drop_after: int | None = None
    error_event: str | None = None
    stall_after: int | None = None
    stall_seconds: float = 0.0
    empty: bool = False
    reasoning: Sequence[str] | None = None
    reasoning_field: Literal["reasoning_content", "reasoning"] = "reasoning_content"
    responses_reasoning: Literal["text", "summary"] = "text"
    responses_shape: Literal["openai", "llama_server"] = "openai"
    finish_reason: str | None = None
    tool_calls: Sequence[ToolCall] = ()
    tool_call_shape: ToolCallShape = "vllm"
    usage: tuple[int, int] | None = None
    burst: bool = False

    def __post_init__(self) -> None:
        if self.burst and self.stall_after is not None:
            raise ValueError("a burst reply is sent in one write and cannot stall")
        object.__setattr__(self, "tokens", tuple(self.tokens))
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
        if self.tool_calls and self.responses_shape == "llama_server":
            raise ValueError("tool calls are written for the 'openai' Responses shape only")
        if self.reasoning is not None:
            object.__setattr__(self, "reasoning", tuple(self.reasoning))

    @classmethod
    def text(cls, text: str, **options: Any) -> Reply:
        """A reply whose tokens are the words of ``text``, each with its whitespace.

        ``"Hello there friend"`` becomes ``["Hello ", "there ", "friend"]``.

        Args:
            text: The full answer; the tokens join back to exactly this string.
            **options: Any other :class:`Reply` field.
        """
        return cls(tokens=_WORD.findall(text), **options)

    @classmethod
    def count(cls, n: int, **options: Any) -> Reply:
        """A reply of ``n`` tokens ``"tok0 "``, ``"tok1 "`` ...

        Args:
            n: Number of tokens.
            **options: Any other :class:`Reply` field.
        """
        return cls(tokens=[f"tok{i} " for i in range(n)], **options)

    @classmethod
    def tool_call(
        cls,
        name: str,
        arguments: Mapping[str, Any] | str | None = None,
        *,
        call_id: str | None = None,
        **options: Any,
    ) -> Reply:
        """A reply that calls one function (and says nothing unless ``tokens`` are given).

        Args:
            name: The function to call.
            arguments: Its arguments, as a mapping or as JSON text sent verbatim.
            call_id: The call's id; None: one in the imitated server's style.
            **options: Any other :class:`Reply` field, e.g. ``tool_call_shape="ollama"``.
        """
        text = arguments if isinstance(arguments, str) else json.dumps(dict(arguments or {}))
        return cls(tool_calls=(ToolCall(name, text, call_id),), **options)

    @property
    def finish(self) -> str:
        """The finish reason sent: ``finish_reason``, or what the reply's content implies."""
        if self.finish_reason is not None:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"

    @property
    def content(self) -> str:
        """The answer text the tokens add up to (empty when ``empty`` is set)."""
        return "" if self.empty else "".join(self.tokens)


_TOKEN_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def _capped(reply: Reply, body: Mapping[str, Any]) -> Reply:
    """``reply`` cut to the request's token limit, ending as a server ends it (``length``)."""
    limits = [body[name] for name in _TOKEN_LIMITS if isinstance(body.get(name), int)]
    if not limits or reply.finish_reason is not None or reply.status is not None:
        return reply
    limit = max(min(limits), 0)
    if len(reply.tokens) <= limit or reply.tool_calls:
        return reply
    return replace(reply, tokens=tuple(reply.tokens[:limit]), finish_reason="length")


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the backend received it.

    Attributes:
        method: HTTP method.
        path: URL path, e.g. ``"/v1/chat/completions"``.
        headers: Header names in lower case (the last value wins for repeats).
        body: The parsed JSON body, or None (no body, or not JSON).
        received_at: ``time.monotonic()`` when the body had been read.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float


@dataclass
class StreamRecord:
    """What the backend did for one completion request (streaming or not).

    Attributes:
        path: The endpoint that answered.
        reply: The scripted reply used.
        stream: Whether the client asked for a stream.
        started_at: ``time.monotonic()`` when the request was accepted.
        tokens_sent: Content tokens handed to the server so far.
        completed: The whole response (including ``[DONE]``) was sent.
        disconnected: The client went away before the end.
        dropped: The backend aborted the connection on purpose (``drop_after``).
        ended_at: ``time.monotonic()`` when the backend stopped sending, or None.
        item_ids: Ids of the output items the answer names (Responses API only).
    """

    path: str
    reply: Reply
    stream: bool
    started_at: float
    tokens_sent: int = 0
    completed: bool = False
    disconnected: bool = False
    dropped: bool = False
    ended_at: float | None = None
    item_ids: tuple[str, ...] = ()


class _Asgi:
    # Starlette treats plain functions and methods as request handlers; an instance is
    # mounted as a raw ASGI app, which streaming and disconnect detection need.
    def __init__(self, handler: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


class FakeBackend:
    """An OpenAI-compatible server whose answers are scripted per request.

    Attributes:
        app: The ASGI app to serve.
        model: Model name reported by ``/v1/models`` and used when a request names none.
        default: Reply used when the script is empty.
        requests: Every request received, in order.
        streams: One record per completion request, in order.
    """

    def __init__(self, *, default: Reply | None = None, model: str = DEFAULT_MODEL) -> None:
        """Create the backend; serve ``backend.app`` to use it.

        Args:
            default: Reply for requests beyond the script; ``Reply.text(DEFAULT_REPLY_TEXT)``
                if None.
            model: Model name reported by ``GET /v1/models``.
        """
        install_log_filter()
        self.model = model
        self.default = default if default is not None else Reply.text(DEFAULT_REPLY_TEXT)
        self.requests: list[RecordedRequest] = []
        self.streams: list[StreamRecord] = []
        self._script: deque[Reply] = deque()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", _Asgi(self._chat_completions), methods=["POST"]),
                Route("/v1/responses", _Asgi(self._responses), methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next completion requests, first in first out."""
        self._script.extend(replies)

    @property
    def pending(self) -> int:
        """Number of scripted replies not yet consumed."""
        return len(self._script)

    def reset(self) -> None:
        """Forget the script, the recorded requests and the stream records."""
        self._script.clear()
        self.requests.clear()
        self.streams.clear()

    async def wait_for_stream_end(
        self,
        index: int = -1,
        timeout: float = 5.0,  # noqa: ASYNC109 - a deadline is this helper's whole point
    ) -> StreamRecord:
        """Wait until the backend stops sending response ``index`` and return its record.

        Polls, so it works from any event loop or thread, including with ``ServerThread``.

        Args:
            index: Position in :attr:`streams`; negative counts from the end, and waits
                until that many streams exist (``-1``: the first one, if none yet).
            timeout: Seconds to wait.

        Raises:
            TimeoutError: The stream did not start or end in time.
        """
        with anyio.move_on_after(timeout):
            while True:
                if len(self.streams) > (index if index >= 0 else -index - 1):
                    record = self.streams[index]
                    if record.ended_at is not None:
                        return record
                await anyio.sleep(_POLL_INTERVAL)
        raise TimeoutError(
            f"stream {index} did not end within {timeout} s ({len(self.streams)} streams seen)"
        )

    async def _models(self, request: Request) -> Response:
        await self._record(request)
        model = {"id": self.model, "object": "model", "created": 0, "owned_by": "fake-backend"}
        return JSONResponse({"object": "list", "data": [model]})

    async def _record(self, request: Request) -> Any:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.requests.append(
            RecordedRequest(
                request.method, request.url.path, dict(request.headers), body, time.monotonic()
            )
        )
        return body

    async def _chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._complete(scope, receive, send, chat_plan)

    async def _responses(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._complete(scope, receive, send, responses_plan)

    async def _complete(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        build: Callable[[Reply, str, dict[str, Any]], Plan],
    ) -> None:
        try:
            body = await self._record(Request(scope, receive))
        except ClientDisconnect:
            return
        if not isinstance(body, dict):
            bad = json_plan(400, error_body(400, "request body must be a JSON object"), Reply())
            await Responder(bad, Reply(), StreamRecord("", Reply(), False, time.monotonic()))(
                receive, send
            )
            return
        reply = _capped(self._script.popleft() if self._script else self.default, body)
        record = StreamRecord(scope["path"], reply, bool(body.get("stream")), time.monotonic())
        self.streams.append(record)
        if reply.status is not None:
            plan = json_plan(reply.status, error_body(reply.status, reply.error_message), reply)
        else:
            plan = build(reply, str(body.get("model") or self.model), body)
            record.item_ids = plan.item_ids
        await Responder(plan, reply, record)(receive, send)
