"""Thread history to model input, in a shape every OpenAI-compatible server accepts.

ChatKit's default converter sends earlier assistant turns as ``output_text``
content parts. The Agents SDK's Chat Completions converter rejects those
(``UserError: Unknown content``), so every second turn on a Chat Completions
backend fails; and some servers answer list-shaped user content with an empty
200. Plain string content works on both APIs, so text-only messages are sent
as strings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

from agents import TResponseInputItem
from chatkit.agents import ThreadItemConverter
from chatkit.types import Attachment, ThreadItem, UserMessageTagContent
from openai.types.responses import ResponseInputContentParam, ResponseInputTextParam

__all__ = ["HistoryConverter"]

_TEXT_PART_TYPES = frozenset({"input_text", "output_text"})


class HistoryConverter(ThreadItemConverter):
    """Converts stored thread items to model input with plain-text content."""

    async def attachment_to_message_content(
        self, attachment: Attachment
    ) -> ResponseInputContentParam:
        """Describe an attachment in words until attachment bytes reach the model."""
        return ResponseInputTextParam(
            type="input_text",
            text=f"[The user attached a file: {attachment.name} ({attachment.mime_type})]",
        )

    async def tag_to_message_content(self, tag: UserMessageTagContent) -> ResponseInputContentParam:
        """Give the model an @-mention's text and its data."""
        data = json.dumps(tag.data, ensure_ascii=False, sort_keys=True)
        return ResponseInputTextParam(type="input_text", text=f"@{tag.text}: {data}")

    async def to_agent_input(
        self, thread_items: Sequence[ThreadItem] | ThreadItem
    ) -> list[TResponseInputItem]:
        """Convert items, then flatten text-only messages to string content."""
        items = await super().to_agent_input(thread_items)
        return [_flatten_text_message(item) for item in items]


def _flatten_text_message(item: TResponseInputItem) -> TResponseInputItem:
    raw = cast(dict[str, Any], item)
    if raw.get("type", "message") != "message" or "role" not in raw:
        return item
    content = raw.get("content")
    if not isinstance(content, list) or not content:
        return item
    if not all(isinstance(part, dict) and part.get("type") in _TEXT_PART_TYPES for part in content):
        return item
    text = "\n\n".join(str(part.get("text", "")) for part in content)
    return cast(TResponseInputItem, {"role": raw["role"], "content": text, "type": "message"})
