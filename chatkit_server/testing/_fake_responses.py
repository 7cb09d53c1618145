"""Wire format of the fake backend's ``POST /v1/responses``: hand-written stream shapes.

Private to :mod:`chatkit_server.testing.fake_backend`. None of these bytes were recorded
from a real server; each shape is written by hand after the server it names:

* ``responses_shape="openai"`` (default): every field the ``openai`` types declare, as
  OpenAI and vLLM send them (each event validates strictly against
  ``ResponseStreamEvent``). Reasoning is either

  - ``responses_reasoning="summary"``, OpenAI's reasoning models: a reasoning item with
    ``response.reasoning_summary_part.added``, ``response.reasoning_summary_text.delta``
    ..., ``response.reasoning_summary_text.done`` and ``response.reasoning_summary_part.done``;
  - ``responses_reasoning="text"``, vLLM's ``--reasoning-parser``: a reasoning item with a
    ``reasoning_text`` content part, ``response.reasoning_text.delta`` ... and
    ``response.reasoning_text.done``.

* ``responses_shape="llama_server"``: llama.cpp's ``llama-server``, after
  ``to_json_oaicompat_resp`` and ``to_json_oaicompat_resp_stream`` in its
  ``tools/server/server-task.cpp``: events carry no ``sequence_number``, ``output_index``
  or ``content_index``; text deltas have no ``logprobs``; the added content part has no
  ``annotations``; ``response.created`` has only ``id``, ``object`` and ``status``; the
  final response has no ``tools``, ``tool_choice`` or ``parallel_tool_calls``; reasoning is
  always ``response.reasoning_text.delta`` (no ``.done``, no content part) and every
  ``.done`` event comes at the end. ``finish_reason`` is ignored, as llama-server always
  ends with ``response.completed``.

Function calls (``Reply.tool_calls``, ``"openai"`` shape only) follow the message, or
stand alone, as ``function_call`` items: see ``_fake_tools``.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chatkit_server.testing._fake_tools import fragments, function_call_item, name_calls
from chatkit_server.testing._fake_wire import SSE_HEADERS, Plan, _j, _usage, json_plan

if TYPE_CHECKING:
    from chatkit_server.testing.fake_backend import Reply

Events = Callable[[], list[bytes]]


def responses_plan(reply: Reply, model: str, body: dict[str, Any]) -> Plan:
    """The plan for one ``POST /v1/responses``, in the reply's ``responses_shape``."""
    shape = (_LlamaServer if reply.responses_shape == "llama_server" else _OpenAI)(
        reply, model, body
    )
    plan = shape.plan()
    ids = [shape.rsid] if shape.reasoning else []
    ids += [shape.mid] if shape.has_message else []
    plan.item_ids = (*ids, *(named.item_id for named in shape.calls))
    return plan


class _Shape:
    """What both shapes share: ids, usage and the paced layout of a stream."""

    def __init__(self, reply: Reply, model: str, body: dict[str, Any]) -> None:
        self.reply, self.model, self.body = reply, model, body
        self.prompt, self.completion = _usage(reply, body)
        hex_ = uuid.uuid4().hex
        self.rid, self.mid, self.rsid = f"resp_{hex_}", f"msg_{hex_}", f"rs_{hex_}"
        self.created = int(time.time())
        self.reasoning = () if reply.empty else tuple(reply.reasoning or ())
        self.thought = "".join(self.reasoning)
        self.tokens = () if reply.empty else tuple(reply.tokens)
        self.calls = name_calls(reply.tool_calls, "responses")
        # A reply that only calls tools has no message item, as in OpenAI's and vLLM's.
        self.has_message = bool(self.tokens) or not self.calls

    def plan(self) -> Plan:
        """The whole response, streamed or not, as the body asked."""
        raise NotImplementedError

    def layout(
        self,
        head: Events,
        reasoning_open: Events,
        reasoning_delta: Callable[[str], bytes],
        reasoning_close: Events,
        message_open: Events,
        text_delta: Callable[[str], bytes],
        close: Events,
    ) -> Plan:
        """Pace reasoning deltas, then content tokens; structural events ride along.

        Every argument is called once, in sending order, so sequence numbers ascend.
        """
        reply = self.reply
        plan = Plan(200, SSE_HEADERS, wait_first=reply.first_byte_delay, stream=True)
        # Events that are not deltas are glued to the next paced chunk, so a reply
        # without reasoning keeps the pacing of a plain one (one chunk per token).
        if self.reasoning:
            plan.head, carry = b"".join(head()), b"".join(reasoning_open())
            for text in self.reasoning:
                plan.paced.append((carry + reasoning_delta(text), False))
                carry = b""
            carry = b"".join(reasoning_close() + message_open())
        else:
            plan.head, carry = b"".join(head() + message_open()), b""
        tokens = self.tokens
        if reply.drop_after is not None:
            tokens, plan.drop = tokens[: reply.drop_after], True
        for text in tokens:
            plan.paced.append((carry + text_delta(text), True))
            carry = b""
        plan.tail = carry if plan.drop else carry + b"".join(close())
        return plan


class _OpenAI(_Shape):
    def plan(self) -> Plan:
        reply = self.reply
        incomplete = reply.finish_reason == "length"
        status = "incomplete" if incomplete else "completed"
        out = 1 if self.reasoning else 0
        part = {"type": "output_text", "text": reply.content, "annotations": [], "logprobs": []}
        message = {
            "id": self.mid,
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": [part],
        }
        thought = self._reasoning_item("completed")
        first_call = out + (1 if self.has_message else 0)
        output = ([thought] if self.reasoning else []) + ([message] if self.has_message else [])
        output += [function_call_item(named, done=True) for named in self.calls]
        if not self.body.get("stream"):
            return json_plan(
                200,
                self._response(status, output, final=True),
                reply,
                drop=reply.drop_after is not None,
            )
        seq = itertools.count()

        def event(kind: str, **fields: Any) -> bytes:
            data = {"type": kind, "sequence_number": next(seq), **fields}
            return f"event: {kind}\ndata: {_j(data)}\n\n".encode()

        def delta(kind: str, at: str, text: str) -> bytes:
            # Formatted by hand: this runs once per token of hundreds of streams.
            return (
                f'event: {kind}\ndata: {{"type":"{kind}",{at},"sequence_number":{next(seq)},'
                f'"delta":{_j(text)}}}\n\n'
            ).encode()

        at = {"item_id": self.mid, "output_index": out, "content_index": 0}
        text_at = f'"item_id":"{self.mid}","output_index":{out},"content_index":0,"logprobs":[]'
        if reply.responses_reasoning == "summary":
            rs_part = {"type": "summary_text", "text": self.thought}
            rs_at = {"item_id": self.rsid, "output_index": 0, "summary_index": 0}
            rs_kind, rs_part_kind = "response.reasoning_summary_text", "reasoning_summary_part"
        else:
            rs_part = {"type": "reasoning_text", "text": self.thought}
            rs_at = {"item_id": self.rsid, "output_index": 0, "content_index": 0}
            rs_kind, rs_part_kind = "response.reasoning_text", "content_part"
        rs_delta_at = _j(rs_at)[1:-1]

        def reasoning_open() -> list[bytes]:
            return [
                event("response.output_item.added", output_index=0, item=self._reasoning_item()),
                event(f"response.{rs_part_kind}.added", part={**rs_part, "text": ""}, **rs_at),
            ]

        def reasoning_close() -> list[bytes]:
            return [
                event(f"{rs_kind}.done", text=self.thought, **rs_at),
                event(f"response.{rs_part_kind}.done", part=rs_part, **rs_at),
                event("response.output_item.done", output_index=0, item=thought),
            ]

        def message_open() -> list[bytes]:
            if not self.has_message:
                return []
            added = {**message, "status": "in_progress", "content": []}
            return [
                event("response.output_item.added", output_index=out, item=added),
                event("response.content_part.added", part={**part, "text": ""}, **at),
            ]

        def calls() -> list[bytes]:
            events = []
            for index, named in enumerate(self.calls, start=first_call):
                where = {"item_id": named.item_id, "output_index": index}
                events.append(
                    event(
                        "response.output_item.added",
                        output_index=index,
                        item=function_call_item(named, done=False),
                    )
                )
                events += [
                    event("response.function_call_arguments.delta", delta=piece, **where)
                    for piece in fragments(named.call.arguments)
                ]
                events += [
                    event(
                        "response.function_call_arguments.done",
                        arguments=named.call.arguments,
                        **where,
                    ),
                    event(
                        "response.output_item.done",
                        output_index=index,
                        item=function_call_item(named, done=True),
                    ),
                ]
            return events

        def close() -> list[bytes]:
            events = []
            if self.has_message:
                events = [
                    event("response.output_text.done", text=reply.content, logprobs=[], **at),
                    event("response.content_part.done", part=part, **at),
                    event("response.output_item.done", output_index=out, item=message),
                ]
            return [
                *events,
                *calls(),
                event(f"response.{status}", response=self._response(status, output, final=True)),
            ]

        def head() -> list[bytes]:
            in_progress = self._response("in_progress", [], final=False)
            return [
                event("response.created", response=in_progress),
                event("response.in_progress", response=in_progress),
            ]

        return self.layout(
            head=head,
            reasoning_open=reasoning_open,
            reasoning_delta=lambda text: delta(f"{rs_kind}.delta", rs_delta_at, text),
            reasoning_close=reasoning_close,
            message_open=message_open,
            text_delta=lambda text: delta("response.output_text.delta", text_at, text),
            close=close,
        )

    def _reasoning_item(self, status: str = "in_progress") -> dict[str, Any]:
        done = status == "completed"
        item: dict[str, Any] = {"id": self.rsid, "type": "reasoning", "status": status}
        if self.reply.responses_reasoning == "summary":
            # OpenAI never shows the raw chain of thought, only its summary.
            item["summary"] = [{"type": "summary_text", "text": self.thought}] if done else []
        else:
            item["summary"] = []
            item["content"] = [{"type": "reasoning_text", "text": self.thought}] if done else []
        return item

    def _response(self, status: str, output: list[Any], *, final: bool) -> dict[str, Any]:
        incomplete = status == "incomplete"
        usage = {
            "input_tokens": self.prompt,
            "output_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": len(self.reasoning)},
        }
        return {
            "id": self.rid,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "completed_at": int(time.time()) if final and not incomplete else None,
            "error": None,
            "model": self.model,
            "output": output,
            "instructions": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "metadata": {},
            "parallel_tool_calls": True,
            "temperature": 1.0,
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "usage": usage if final else None,
        }


class _LlamaServer(_Shape):
    def plan(self) -> Plan:
        content = self.reply.content
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": content}
        message = {
            "type": "message",
            "status": "completed",
            "id": self.mid,
            "content": [part],
            "role": "assistant",
        }
        thought = {
            "id": self.rsid,
            "summary": [],
            "type": "reasoning",
            "content": [{"text": self.thought, "type": "reasoning_text"}],
            "encrypted_content": "",
        }
        output = ([thought] if self.reasoning else []) + ([message] if content else [])
        usage = {
            "input_tokens": self.prompt,
            "output_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "input_tokens_details": {"cached_tokens": 0},
        }
        final = {
            "id": self.rid,
            "object": "response",
            "created_at": self.created,
            "status": "completed",
            "model": self.model,
            "output": output,
            "usage": usage,
        }
        if not self.body.get("stream"):
            final["completed_at"] = self.created
            return json_plan(200, final, self.reply, drop=self.reply.drop_after is not None)

        def event(kind: str, **fields: Any) -> bytes:
            return f"event: {kind}\ndata: {_j({'type': kind, **fields})}\n\n".encode()

        def delta(kind: str, item_id: str, text: str) -> bytes:
            data = f'{{"type":"{kind}","delta":{_j(text)},"item_id":"{item_id}"}}'
            return f"event: {kind}\ndata: {data}\n\n".encode()

        def close() -> list[bytes]:
            events = []
            if self.reasoning:
                events.append(event("response.output_item.done", item=thought))
            if content:
                events += [
                    event("response.output_text.done", item_id=self.mid, text=content),
                    event("response.content_part.done", item_id=self.mid, part=part),
                    event("response.output_item.done", item=message),
                ]
            return [*events, event("response.completed", response=final)]

        stub = {"id": self.rid, "object": "response", "status": "in_progress"}
        opening = {**message, "status": "in_progress", "content": []}
        return self.layout(
            head=lambda: [
                event("response.created", response=stub),
                event("response.in_progress", response=stub),
            ],
            reasoning_open=lambda: [
                event(
                    "response.output_item.added",
                    item={**thought, "content": [], "status": "in_progress"},
                )
            ],
            reasoning_delta=lambda text: delta("response.reasoning_text.delta", self.rsid, text),
            # llama-server closes every item only when generation ends.
            reasoning_close=list,
            message_open=lambda: (
                [
                    event("response.output_item.added", item=opening),
                    event(
                        "response.content_part.added",
                        item_id=self.mid,
                        part={"type": "output_text", "text": ""},
                    ),
                ]
                if self.tokens
                else []
            ),
            text_delta=lambda text: delta("response.output_text.delta", self.mid, text),
            close=close,
        )
