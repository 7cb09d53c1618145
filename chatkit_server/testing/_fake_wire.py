"""Wire format of the fake backend: pre-encoded Chat Completions bytes and shared helpers.

Private to :mod:`chatkit_server.testing.fake_backend`; the Responses API shapes live in
:mod:`chatkit_server.testing._fake_responses`. Each builder turns a scripted
``Reply`` into a :class:`Plan`: the bytes to send before, during and after the paced
tokens. Per-stream constants (id, model, envelope) are encoded once and each token costs
one ``json.dumps`` of its text plus a byte format, so hundreds of concurrent fake streams
stay cheap. :class:`Responder` sends a plan while watching for the client going away.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from starlette.types import Receive, Send

from chatkit_server.testing._fake_tools import chat_deltas, chat_message_calls, name_calls

if TYPE_CHECKING:
    from chatkit_server.testing.fake_backend import Reply, StreamRecord

SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def _j(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass
class Plan:
    """Pre-encoded bytes of one response; ``paced`` holds (chunk, is_content_token)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    head: bytes = b""
    paced: list[tuple[bytes, bool]] = field(default_factory=list)
    tail: bytes = b""
    drop: bool = False
    wait_first: float = 0.0
    tail_tokens: int = 0
    stream: bool = False
    item_ids: tuple[str, ...] = ()


def json_plan(status: int, body: Any, reply: Reply, drop: bool = False) -> Plan:
    data = _j(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    # A non-streaming server answers after generating everything, stalls included.
    wait = reply.first_byte_delay
    if status == 200:
        wait += reply.delay * len(reply.tokens) + (reply.stall_seconds if reply.stall_after else 0)
    tokens = 0 if status != 200 or drop or reply.empty else len(reply.tokens)
    tail = data[: len(data) // 2] if drop else data
    return Plan(status, headers, tail=tail, drop=drop, wait_first=wait, tail_tokens=tokens)


def error_body(status: int, message: str | None) -> dict[str, Any]:
    kinds = {
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
    }
    kind = kinds.get(status, "server_error" if status >= 500 else "invalid_request_error")
    text = message or f"fake backend error {status}"
    return {"error": {"code": status, "message": text, "type": kind, "param": None}}


def _usage(reply: Reply, body: Any) -> tuple[int, int]:
    if reply.usage is not None:
        return reply.usage
    prompt = body.get("messages", body.get("input")) if isinstance(body, dict) else None
    words = sum(len(s.split()) for s in _strings(prompt))
    return max(words, 1), len(reply.tokens) + len(reply.reasoning or ())


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def chat_plan(reply: Reply, model: str, body: dict[str, Any]) -> Plan:
    prompt, completion = _usage(reply, body)
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    reasoning = () if reply.empty else tuple(reply.reasoning or ())
    calls = name_calls(reply.tool_calls, reply.tool_call_shape)
    if not body.get("stream"):
        content = reply.content if reply.content or not calls else None
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning:
            message[reply.reasoning_field] = "".join(reasoning)
        if calls:
            message["tool_calls"] = chat_message_calls(calls)
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": reply.finish,
        }
        return json_plan(
            200,
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": usage,
            },
            reply,
            drop=reply.drop_after is not None,
        )
    envelope = f'data: {{"id":"{cid}","object":"chat.completion.chunk","created":{created},'
    prefix = f'{envelope}"model":{_j(model)},"choices":[{{"index":0,"delta":'.encode()
    open_end = b',"logprobs":null,"finish_reason":null}]}\n\n'

    def deltas(field_name: str, texts: tuple[str, ...], is_token: bool) -> list[tuple[bytes, bool]]:
        start = b"%s{%s:" % (prefix, _j(field_name).encode())
        return [(b"%s%s}%s" % (start, _j(t).encode(), open_end), is_token) for t in texts]

    role = prefix + b'{"role":"assistant","content":""}' + open_end
    plan = Plan(200, SSE_HEADERS, head=role, wait_first=reply.first_byte_delay, stream=True)
    tokens = () if reply.empty else tuple(reply.tokens)
    if reply.drop_after is not None:
        tokens, plan.drop = tokens[: reply.drop_after], True
    plan.paced = deltas(reply.reasoning_field, reasoning, False) + deltas("content", tokens, True)
    if plan.drop:
        return plan
    if reply.error_event is not None:
        error = {"message": reply.error_event, "type": "server_error", "code": None}
        plan.tail = b"data: %s\n\n" % _j({"error": error}).encode()
        return plan
    finish_end = b',"logprobs":null,"finish_reason":%s}]}\n\n' % _j(reply.finish).encode()
    tool_deltas = [_j(delta).encode() for delta in chat_deltas(calls, reply.tool_call_shape)]
    if tool_deltas and reply.tool_call_shape == "ollama":
        # Ollama's one tool-call chunk is also its last: it carries the finish reason.
        tail = b"".join(prefix + delta + open_end for delta in tool_deltas[:-1])
        tail += prefix + tool_deltas[-1] + finish_end
    else:
        plan.paced += [(prefix + delta + open_end, False) for delta in tool_deltas]
        tail = prefix + b"{}" + finish_end
    if (body.get("stream_options") or {}).get("include_usage"):
        tail += f'{envelope}"model":{_j(model)},"choices":[],"usage":{_j(usage)}}}\n\n'.encode()
    plan.tail = tail + b"data: [DONE]\n\n"
    return plan


class _ConnectionDrop(Exception):
    """Raised after a partial body so uvicorn closes the connection mid-response."""


class _QuietDrops(logging.Filter):
    # uvicorn logs every exception escaping an app as an error with a traceback; a
    # drop the script asked for is not one.
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _ConnectionDrop))


def install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrops) for f in logger.filters):
        logger.addFilter(_QuietDrops())


class Responder:
    """Sends a plan while watching for the client going away."""

    def __init__(self, plan: Plan, reply: Reply, record: StreamRecord) -> None:
        self.plan, self.reply, self.record = plan, reply, record

    async def __call__(self, receive: Receive, send: Send) -> None:
        dropped = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch, receive, tg.cancel_scope)
            try:
                dropped = await self._send(send)
            except OSError:
                # ASGI 2.4 servers report a vanished client by raising from send().
                self.record.disconnected = True
            finally:
                self.record.ended_at = time.monotonic()
                tg.cancel_scope.cancel()
        if dropped:
            # Raised outside the task group so it is not wrapped in an ExceptionGroup:
            # uvicorn then closes the socket without the terminating chunk.
            self.record.dropped = True
            raise _ConnectionDrop("connection dropped as scripted")

    async def _watch(self, receive: Receive, scope: anyio.CancelScope) -> None:
        # uvicorn's send() returns silently once the peer is gone, so http.disconnect
        # from receive() is the only signal; it also arrives after a complete response.
        while (await receive())["type"] != "http.disconnect":
            pass
        if not self.record.completed:
            self.record.disconnected = True
        scope.cancel()

    async def _send(self, send: Send) -> bool:
        plan, reply, record = self.plan, self.reply, self.record
        await anyio.sleep(plan.wait_first)
        await send({"type": "http.response.start", "status": plan.status, "headers": plan.headers})
        if reply.burst:
            return await self._send_at_once(send)
        if plan.head:
            await send({"type": "http.response.body", "body": plan.head, "more_body": True})
        stalled = False
        # Each chunk is due ``delay`` after the previous one was due, not after it
        # was sent: a model generating at a steady rate keeps that rate on a busy
        # machine, where sleeping after each send falls further behind with every
        # chunk (beside a loaded server, 200 chunks at 50 ms took 10.4 s, not 10 s).
        due = anyio.current_time()
        for chunk, is_token in plan.paced:
            if is_token and record.tokens_sent == reply.stall_after:
                stalled = True
                due += reply.stall_seconds
            due += reply.delay
            await anyio.sleep(max(0.0, due - anyio.current_time()))
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            record.tokens_sent += is_token
        if (
            plan.stream
            and not stalled
            and not plan.drop
            and record.tokens_sent == reply.stall_after
        ):
            await anyio.sleep(reply.stall_seconds)
        if plan.drop:
            if plan.tail:
                await send({"type": "http.response.body", "body": plan.tail, "more_body": True})
            return True
        await send({"type": "http.response.body", "body": plan.tail, "more_body": False})
        record.tokens_sent += plan.tail_tokens
        record.completed = True
        return False

    async def _send_at_once(self, send: Send) -> bool:
        """The whole body in one write (``Reply.burst``)."""
        plan, record = self.plan, self.record
        await anyio.sleep(self.reply.delay)
        body = plan.head + b"".join(chunk for chunk, _ in plan.paced) + plan.tail
        await send({"type": "http.response.body", "body": body, "more_body": plan.drop})
        record.tokens_sent += sum(is_token for _, is_token in plan.paced)
        if plan.drop:
            return True
        record.tokens_sent += plan.tail_tokens
        record.completed = True
        return False
