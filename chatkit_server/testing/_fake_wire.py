"""Wire format of the fake backend: pre-encoded Chat Completions and Responses bytes.

Private to :mod:`chatkit_server.testing.fake_backend`. Each builder turns a scripted
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


def responses_plan(reply: Reply, model: str, body: dict[str, Any]) -> Plan:
    prompt, completion = _usage(reply, body)
    usage = {
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": prompt + completion,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": len(reply.reasoning or ())},
    }
    rid, mid, created = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}", int(time.time())
    incomplete = reply.finish_reason == "length"
    done_status = "incomplete" if incomplete else "completed"

    def response(status: str, output: list[Any], final: bool) -> dict[str, Any]:
        return {
            "id": rid,
            "object": "response",
            "created_at": created,
            "status": status,
            "completed_at": int(time.time()) if final and not incomplete else None,
            "error": None,
            "model": model,
            "output": output,
            "instructions": None,
            "incomplete_details": {"reason": "max_output_tokens"} if final and incomplete else None,
            "metadata": {},
            "parallel_tool_calls": True,
            "temperature": 1.0,
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "usage": usage if final else None,
        }

    part = {"type": "output_text", "text": reply.content, "annotations": [], "logprobs": []}
    item = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "status": done_status,
        "content": [part],
    }
    if not body.get("stream"):
        return json_plan(
            200, response(done_status, [item], True), reply, drop=reply.drop_after is not None
        )
    tokens = () if reply.empty else tuple(reply.tokens)
    seq = iter(range(len(tokens) + 10))

    def event(kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": next(seq), **fields}
        return f"event: {kind}\ndata: {_j(data)}\n\n".encode()

    at = {"item_id": mid, "output_index": 0, "content_index": 0}
    empty_part = {**part, "text": ""}
    plan = Plan(
        200,
        SSE_HEADERS,
        wait_first=reply.first_byte_delay,
        stream=True,
        head=b"".join(
            [
                event("response.created", response=response("in_progress", [], False)),
                event("response.in_progress", response=response("in_progress", [], False)),
                event(
                    "response.output_item.added",
                    output_index=0,
                    item={**item, "status": "in_progress", "content": []},
                ),
                event("response.content_part.added", part=empty_part, **at),
            ]
        ),
    )
    if reply.drop_after is not None:
        tokens, plan.drop = tokens[: reply.drop_after], True
    delta_prefix = (
        'event: response.output_text.delta\ndata: {"type":"response.output_text.'
        f'delta","item_id":"{mid}","output_index":0,"content_index":0,'
        '"logprobs":[],"sequence_number":'
    )
    plan.paced = [
        (f'{delta_prefix}{next(seq)},"delta":{_j(t)}}}\n\n'.encode(), True) for t in tokens
    ]
    if plan.drop:
        return plan
    plan.tail = b"".join(
        [
            event("response.output_text.done", text=reply.content, logprobs=[], **at),
            event("response.content_part.done", part=part, **at),
            event("response.output_item.done", output_index=0, item=item),
            event(f"response.{done_status}", response=response(done_status, [item], True)),
        ]
    )
    return plan
