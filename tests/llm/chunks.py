"""Chat Completions chunks as a backend sends them, for the tests of llm/."""

from __future__ import annotations

from typing import Any


def chat_chunk(content: str | None = None, **delta: Any) -> dict[str, Any]:
    """One decoded ``chat.completion.chunk`` with ``delta`` (and ``content``, if given)."""
    if content is not None:
        delta["content"] = content
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
    }
