"""Wire format of the fake backend: pre-encoded Chat Completions bytes and shared helpers.

Private to :mod:`chatkit_server.testing.fake_backend`; the Responses API shapes live in
:mod:`chatkit_server.testing._fake_responses`. Each builder turns a scripted
``Reply`` into a :class:`Plan`: the bytes to send before, during and after the paced
tokens. Per-stream constants (id, model, envelope) are encoded once and each token costs
one ``json.dumps`` of its text plus a byte format, so hundreds of concurrent fake streams
stay cheap.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatkit_server.testing.fake_backend import Reply

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
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reasoning:
            message[reply.reasoning_field] = "".join(reasoning)
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": reply.finish_reason,
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
    tail = (
        prefix
        + b"{}"
        + b',"logprobs":null,"finish_reason":%s}]}\n\n' % (_j(reply.finish_reason).encode())
    )
    if (body.get("stream_options") or {}).get("include_usage"):
        tail += f'{envelope}"model":{_j(model)},"choices":[],"usage":{_j(usage)}}}\n\n'.encode()
    plan.tail = tail + b"data: [DONE]\n\n"
    return plan
