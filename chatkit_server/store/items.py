"""Stored items: how they load, and which of their states an add must not undo.

Both are part of the store's contract (see :mod:`chatkit_server.store.sql_store`):
an item loads as the class it was saved as, and adding an item that exists never
takes a settled one (an answered question, a finished workflow, a completed client
tool call) back to an unsettled state.
"""

from __future__ import annotations

import json
from typing import Final

from chatkit.types import (
    ClientToolCallItem,
    StructuredInputItem,
    ThreadItem,
    WidgetItem,
    WorkflowItem,
)
from chatkit.widgets import DynamicWidgetRoot
from pydantic import TypeAdapter

__all__ = ["SETTLING_KINDS", "decode_item", "undoes_settled"]

# Building a TypeAdapter for this union costs milliseconds; do it once.
_ITEM: Final[TypeAdapter[ThreadItem]] = TypeAdapter(ThreadItem)


def decode_item(kind: str, data: str) -> ThreadItem:
    """The item stored as ``data`` (JSON) with type ``kind``, as the class it was saved as."""
    item = _ITEM.validate_json(data)
    if kind != "widget" or not isinstance(item, WidgetItem):
        return item
    # The ThreadItem union makes {"type": "Card", ...} the named class Card,
    # which is what a widget built from the named classes was (handlers test
    # isinstance(widget, Card)). A template-built DynamicWidgetRoot may carry
    # fields Card does not model, which the union would drop: a saved named
    # widget dumps back to exactly its stored JSON, anything else was dynamic.
    raw = json.loads(data)
    if item.widget.model_dump(mode="json") == raw["widget"]:
        return item
    raw["widget"] = DynamicWidgetRoot.model_validate(raw["widget"])
    return WidgetItem.model_validate(raw)


SETTLING_KINDS: Final = frozenset({"structured_input", "workflow", "client_tool_call"})
"""The item types that settle (see :func:`undoes_settled`)."""


def _settled(item: ThreadItem) -> bool:
    """Answered or skipped; finished (has a summary); completed."""
    if isinstance(item, StructuredInputItem):
        return item.status != "pending"
    if isinstance(item, WorkflowItem):
        return item.workflow.summary is not None
    if isinstance(item, ClientToolCallItem):
        return item.status == "completed"
    return False


def undoes_settled(stored: ThreadItem, new: ThreadItem) -> bool:
    """Whether writing ``new`` over ``stored`` would take a settled item back."""
    return stored.type == new.type and _settled(stored) and not _settled(new)
