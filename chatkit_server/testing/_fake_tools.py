"""Tool calls in the fake backend's answers: hand-written after vLLM, Ollama and OpenAI.

Private to :mod:`chatkit_server.testing.fake_backend`, which re-exports :class:`ToolCall`.
None of these bytes were recorded from a real server; each shape imitates the server it
names, after its source:

* ``tool_call_shape="vllm"`` (Chat Completions): vLLM's tool parsers
  (``vllm/entrypoints/openai/serving_chat.py``) stream a call over many chunks: first
  ``{"tool_calls":[{"index":0,"id":"chatcmpl-tool-…","type":"function",
  "function":{"name":"…","arguments":""}}]}``, then one chunk per argument fragment
  carrying only ``index`` and ``function.arguments``; the last chunk has an empty delta
  and ``finish_reason: "tool_calls"``.
* ``tool_call_shape="ollama"`` (Chat Completions): Ollama's ``/v1`` (``openai/openai.go``)
  parses the whole call before it sends anything, so one chunk carries every call with
  its complete arguments (ids ``call_`` + 8 characters, ``role`` and empty ``content``
  beside them) *and* ``finish_reason: "tool_calls"``.
* Responses API (OpenAI's and vLLM's shape): per call a ``function_call`` output item:
  ``response.output_item.added`` (empty arguments, ``in_progress``),
  ``response.function_call_arguments.delta`` per fragment,
  ``response.function_call_arguments.done`` and ``response.output_item.done``.
"""

from __future__ import annotations

import secrets
import string
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

ToolCallShape = Literal["vllm", "ollama"]

# vLLM's parsers hand out the arguments a few tokens at a time.
ARGUMENT_FRAGMENT = 8


@dataclass(frozen=True)
class ToolCall:
    """One function call in a scripted reply.

    Attributes:
        name: The function the model calls.
        arguments: Its arguments as JSON text, exactly as the model writes them.
        call_id: The call's id; None: a fresh one in the style of the imitated server.
    """

    name: str
    arguments: str = "{}"
    call_id: str | None = None


@dataclass(frozen=True)
class NamedCall:
    """A call with the ids it is sent under."""

    call: ToolCall
    call_id: str
    item_id: str


def name_calls(
    calls: Sequence[ToolCall], style: ToolCallShape | Literal["responses"]
) -> list[NamedCall]:
    """Give each call the ids the imitated server would."""
    named = []
    for call in calls:
        hex_ = uuid.uuid4().hex
        if call.call_id is not None:
            call_id = call.call_id
        elif style == "ollama":
            alphabet = string.ascii_lowercase + string.digits
            call_id = "call_" + "".join(secrets.choice(alphabet) for _ in range(8))
        elif style == "vllm":
            call_id = f"chatcmpl-tool-{hex_}"
        else:
            call_id = f"call_{hex_[:24]}"
        named.append(NamedCall(call, call_id, f"fc_{hex_}"))
    return named


def fragments(arguments: str) -> list[str]:
    """The argument text in the pieces a token-by-token parser streams."""
    if not arguments:
        return [""]
    return [
        arguments[i : i + ARGUMENT_FRAGMENT] for i in range(0, len(arguments), ARGUMENT_FRAGMENT)
    ]


def chat_deltas(calls: Sequence[NamedCall], shape: ToolCallShape) -> list[dict[str, Any]]:
    """The Chat Completions ``delta`` objects that carry the calls, in sending order."""
    if shape == "ollama":
        whole = [
            {
                "id": named.call_id,
                "index": index,
                "type": "function",
                "function": {"name": named.call.name, "arguments": named.call.arguments},
            }
            for index, named in enumerate(calls)
        ]
        return [{"role": "assistant", "content": "", "tool_calls": whole}]
    deltas: list[dict[str, Any]] = []
    for index, named in enumerate(calls):
        deltas.append(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": named.call_id,
                        "type": "function",
                        "function": {"name": named.call.name, "arguments": ""},
                    }
                ]
            }
        )
        deltas += [
            {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
            for piece in fragments(named.call.arguments)
            if piece
        ]
    return deltas


def chat_message_calls(calls: Sequence[NamedCall]) -> list[dict[str, Any]]:
    """The ``tool_calls`` of a non-streamed Chat Completions message."""
    return [
        {
            "id": named.call_id,
            "type": "function",
            "function": {"name": named.call.name, "arguments": named.call.arguments},
        }
        for named in calls
    ]


def function_call_item(named: NamedCall, *, done: bool) -> dict[str, Any]:
    """A Responses ``function_call`` output item, as added (empty arguments) or done."""
    return {
        "id": named.item_id,
        "type": "function_call",
        "status": "completed" if done else "in_progress",
        "arguments": named.call.arguments if done else "",
        "call_id": named.call_id,
        "name": named.call.name,
    }
