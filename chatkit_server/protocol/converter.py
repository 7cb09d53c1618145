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
from chatkit.types import Attachment, ThreadItem, UserMessageItem, UserMessageTagContent
from openai.types.responses import ResponseInputContentParam, ResponseInputTextParam

from chatkit_server.files import FileStorage
from chatkit_server.protocol.attachments import attachment_content
from chatkit_server.workflows.history import CHARS_PER_TOKEN, HistoryEntry

__all__ = ["HistoryConverter"]

_TEXT_PART_TYPES = frozenset({"input_text", "output_text"})


# Share of the history budget the attachments of one message may take: the
# rest is for the instructions, the message itself and earlier turns.
ATTACHMENT_BUDGET_SHARE = 0.5


class HistoryConverter(ThreadItemConverter):
    """Converts stored thread items to model input with plain-text content.

    Args:
        files: Where attachment bytes are read from (none: attachments are named only).
        vision: Whether the model is sent images.
        budget: The history's token budget; one message's attachments take
            half of it at most (their text is cut, with a note, beyond).
    """

    def __init__(
        self, *, files: FileStorage | None = None, vision: bool = False, budget: int = 3000
    ) -> None:
        self.files = files
        self.vision = vision
        self.budget = budget
        self._max_chars = int(budget * CHARS_PER_TOKEN * ATTACHMENT_BUDGET_SHARE)

    def for_workflow(self, *, vision: bool, budget: int) -> HistoryConverter:
        """A converter for one answer of a workflow (its vision and history budget).

        A new one each time: it keeps the attachment budget of the message
        it converts, so two answers must not share one.
        """
        return HistoryConverter(files=self.files, vision=vision, budget=budget)

    async def user_message_to_input(
        self, item: UserMessageItem, is_last_message: bool = True
    ) -> TResponseInputItem | list[TResponseInputItem] | None:
        """The SDK's conversion; the message's attachments share its attachment budget."""
        self._max_chars = int(
            self.budget * CHARS_PER_TOKEN * ATTACHMENT_BUDGET_SHARE / max(1, len(item.attachments))
        )
        return await super().user_message_to_input(item, is_last_message)

    async def attachment_to_message_content(
        self, attachment: Attachment
    ) -> ResponseInputContentParam:
        """The attachment's content for the model (see :mod:`.attachments`)."""
        return await attachment_content(
            attachment, self.files, vision=self.vision, max_chars=self._max_chars
        )

    async def tag_to_message_content(self, tag: UserMessageTagContent) -> ResponseInputContentParam:
        """Give the model an @-mention's text, what it is, and its data.

        The id and group let a tool be called with the very entity the user
        picked; the data (the front end's ``onTagSearch`` result) is what the
        model can tell about it without one.
        """
        about = f"id {tag.id}" + (f", group {tag.group}" if tag.group else "")
        text = f"@{tag.text} ({about})"
        if tag.data:
            text += ": " + json.dumps(tag.data, ensure_ascii=False, sort_keys=True)
        return ResponseInputTextParam(type="input_text", text=text)

    async def to_agent_input(
        self, thread_items: Sequence[ThreadItem] | ThreadItem
    ) -> list[TResponseInputItem]:
        """Convert items, then flatten text-only messages to string content."""
        items = await super().to_agent_input(thread_items)
        return [_flatten_text_message(item) for item in items]

    async def history_input(self, entries: Sequence[HistoryEntry]) -> list[TResponseInputItem]:
        """:meth:`to_agent_input` of the entries' items, reusing earlier conversions.

        Only the newest item converts differently from the others (ChatKit
        quotes the quoted text of the newest user message), so every other
        item's input is kept on its entry.
        """
        output: list[TResponseInputItem] = []
        for index, entry in enumerate(entries):
            if index == len(entries) - 1:
                output.extend(await self._converted(entry.item, is_last=True))
                continue
            if _has_attachments(entry.item):
                # Not kept on the entry: it is shared by every workflow's
                # answers (vision differs), and an image is megabytes.
                output.extend(await self._converted(entry.item, is_last=False))
                continue
            if entry.model_input is None:
                entry.model_input = await self._converted(entry.item, is_last=False)
            output.extend(entry.model_input)
        return output

    async def _converted(self, item: ThreadItem, *, is_last: bool) -> list[TResponseInputItem]:
        if isinstance(item, UserMessageItem) and not is_last:
            # to_agent_input treats its last item as the newest message.
            out = await self.user_message_to_input(item, is_last_message=False) or []
            items = out if isinstance(out, list) else [out]
        else:
            items = await super().to_agent_input(item)
        return [_flatten_text_message(converted) for converted in items]


def _has_attachments(item: ThreadItem) -> bool:
    return isinstance(item, UserMessageItem) and bool(item.attachments)


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
