"""Fitting a conversation into a small model's context window.

Small local models have 2k to 8k tokens of context. The model receives the
newest part of the conversation that fits a token budget, always with the
system instructions and everything from the newest user message on; older
turns are dropped, never the newest. Tokens are estimated (no tokenizer is
shared by every backend): one token per three characters over-counts for
English and code, so the estimate errs on the side of fitting.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agents import TResponseInputItem
from agents.run_config import CallModelData, ModelInputData
from chatkit.types import AssistantMessageItem, Attachment, ThreadItem, UserMessageItem

__all__ = [
    "ATTACHMENT_TOKENS",
    "EarlierTurns",
    "CHARS_PER_TOKEN",
    "HISTORY_CACHE_SIZE",
    "IMAGE_TOKENS",
    "MESSAGE_OVERHEAD_TOKENS",
    "HistoryCache",
    "HistoryEntry",
    "estimate_item_tokens",
    "estimate_tokens",
    "fit_history",
    "fit_turns",
    "is_user_message",
]

CHARS_PER_TOKEN = 3.0
# Role markers and separators that chat templates wrap around each message.
MESSAGE_OVERHEAD_TOKENS = 4
# What one image costs a vision model, roughly (a 1024 x 1024 image at
# OpenAI's high detail is 765 tokens; local vision models use 256 to 1500).
IMAGE_TOKENS = 1000
# The most an attachment counts when history is loaded, before its content is read.
ATTACHMENT_TOKENS = IMAGE_TOKENS
HISTORY_CACHE_SIZE = 4096
"""Stored items a :class:`HistoryCache` keeps decoded and converted (a few MB)."""


def estimate_tokens(text: str) -> int:
    """An upper-leaning estimate of the tokens in ``text``."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_item_tokens(item: ThreadItem) -> int:
    """Estimated tokens of a stored item once sent to the model.

    Used to stop loading history early: items past the budget would be
    dropped anyway, and loading and converting them costs per item.
    """
    if isinstance(item, (UserMessageItem, AssistantMessageItem)):
        chars = sum(len(getattr(part, "text", "")) for part in item.content)
        tokens = math.ceil(chars / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS
        if isinstance(item, UserMessageItem):
            # An attachment's content is read only when converted. Counted by
            # its size (an image's worth at most), loading stops before it
            # reads a thread's every attachment (megabytes each) for a budget
            # that a few of them fill.
            tokens += sum(map(_attachment_tokens, item.attachments))
        return tokens
    return estimate_tokens(item.model_dump_json()) + MESSAGE_OVERHEAD_TOKENS


def _attachment_tokens(attachment: Attachment) -> int:
    size = (attachment.metadata or {}).get("size")
    if not isinstance(size, int) or size < 0:
        return ATTACHMENT_TOKENS
    return min(ATTACHMENT_TOKENS, math.ceil(size / CHARS_PER_TOKEN))


def _item_tokens(item: TResponseInputItem) -> int:
    raw: Any = item
    content = raw.get("content") if isinstance(raw, dict) else None
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        return sum(map(_part_tokens, content)) + MESSAGE_OVERHEAD_TOKENS
    text = content if isinstance(content, str) else json.dumps(raw, ensure_ascii=False)
    return estimate_tokens(text) + MESSAGE_OVERHEAD_TOKENS


def _part_tokens(part: dict[str, Any]) -> int:
    # An image's data: URL is megabytes of base64, but the model sees the
    # image as a fixed number of tokens; counting its characters would drop
    # the whole history for one photo.
    if part.get("type") == "input_image":
        return IMAGE_TOKENS
    text = part.get("text")
    if isinstance(text, str):
        return estimate_tokens(text)
    return estimate_tokens(json.dumps(part, ensure_ascii=False))


def is_user_message(item: TResponseInputItem) -> bool:
    """Whether a model input item is a user message (where a new turn starts)."""
    raw: Any = item
    return (
        isinstance(raw, dict)
        and raw.get("role") == "user"
        and raw.get("type", "message") == "message"
    )


def _last_user_message(items: Sequence[TResponseInputItem]) -> int:
    """The index of the last user message in ``items`` (0 without one)."""
    return max((i for i, item in enumerate(items) if is_user_message(item)), default=0)


def fit_history(
    items: Sequence[TResponseInputItem], *, budget: int, instructions: str | None
) -> list[TResponseInputItem]:
    """The newest items that fit ``budget`` tokens together with the instructions.

    Everything from the last user message on is always kept, even over the
    budget (the backend then says the message is too long). The kept part
    starts with a user message, so no answer or tool result loses the
    question it belongs to.
    """
    earlier, current = fit_turns(items, budget=budget, instructions=instructions)
    return [*earlier, *current]


def fit_turns(
    items: Sequence[TResponseInputItem], *, budget: int, instructions: str | None
) -> tuple[list[TResponseInputItem], list[TResponseInputItem]]:
    """:func:`fit_history`, as the earlier turns and the current one.

    The current turn runs from the last user message on (without one, it
    is everything kept): a run is given it, and the earlier turns go in
    front of each model call (:class:`EarlierTurns`).
    """
    if not items:
        return [], []
    last_user = _last_user_message(items)
    used = estimate_tokens(instructions or "") + MESSAGE_OVERHEAD_TOKENS
    used += sum(_item_tokens(item) for item in items[last_user:])
    start = last_user
    for index in range(last_user - 1, -1, -1):
        used += _item_tokens(items[index])
        if used > budget:
            break
        start = index
    while start < last_user and not is_user_message(items[start]):
        start += 1
    return list(items[start:last_user]), list(items[last_user:])


@dataclass(frozen=True)
class EarlierTurns:
    """A run's ``call_model_input_filter``: the earlier turns before every model call's input.

    A run is given only the current turn, and the earlier turns are put in
    front of the input of each of its model calls (every tool round, and
    every agent after a handoff). Given the whole history instead, the
    Agents SDK copies and re-checks all of it several times before its
    first model call: with 50 turns, a run took twice as long to ask its
    model (measured by timing ``Runner.run_streamed`` up to the request,
    both ways). The items are the history cache's shared entries (see
    :class:`HistoryEntry`), which nothing on the way to the backend may
    change; ``tests/workflows/test_handoffs.py`` holds the SDK to that.
    """

    items: Sequence[TResponseInputItem]

    def __call__(self, data: CallModelData[Any]) -> ModelInputData:
        """The model call's input with the earlier turns first."""
        model_data = data.model_data
        return ModelInputData(
            input=[*self.items, *model_data.input], instructions=model_data.instructions
        )


@dataclass(eq=False)
class HistoryEntry:
    """One stored item as the history needs it, shared by every request that reads it.

    Nothing may change these objects: they are what the item's stored JSON
    says, for every turn that reads them.

    Attributes:
        item: The decoded item.
        tokens: :func:`estimate_item_tokens` of it.
        model_input: Its model input when it is not the newest item
            (filled in by the converter on first use).
    """

    item: ThreadItem
    tokens: int
    model_input: list[TResponseInputItem] | None = None


class HistoryCache:
    """Decoded items and their model input, by stored JSON, across requests.

    The server's one read cache. Every turn of a conversation sends the whole
    history again, so each turn would decode and convert every earlier item
    anew. An item stored with the same JSON is the same item, so the work is
    kept, for the :data:`HISTORY_CACHE_SIZE` most recently used items; being
    keyed by what is stored, it can never be stale and needs no invalidation,
    whichever process wrote the rows. Measured with ``bench/bench_streaming.py
    --only ttft`` (50 turns on one thread): the first text delta came 8.4 ms
    after the backend's first chunk with it, 10.2 ms without.

    Args:
        decode: Builds an item from its type and stored JSON.
        size: How many items to keep.
    """

    def __init__(self, decode: Callable[[str, str], ThreadItem], size: int = HISTORY_CACHE_SIZE):
        self._decode = decode
        self._size = size
        self._entries: OrderedDict[str, HistoryEntry] = OrderedDict()

    def entry(self, kind: str, data: str) -> HistoryEntry:
        """The entry of an item stored as ``data`` with type ``kind``."""
        entry = self._entries.get(data)
        if entry is not None:
            self._entries.move_to_end(data)
            return entry
        item = self._decode(kind, data)
        entry = HistoryEntry(item=item, tokens=estimate_item_tokens(item))
        self._entries[data] = entry
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return entry
