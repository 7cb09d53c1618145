"""How stored items load, and which adds would undo a settled state (no database needed)."""

from __future__ import annotations

from datetime import datetime

import pytest
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    ClientToolCallItem,
    CustomTask,
    DurationSummary,
    StructuredInputFreeform,
    StructuredInputItem,
    ThreadItem,
    WidgetItem,
    Workflow,
    WorkflowItem,
)
from chatkit.widgets import Card, DynamicWidgetRoot, Text

from chatkit_server.store.items import SETTLING_KINDS, decode_item, undoes_settled

BASE = {"thread_id": "thr_1", "created_at": datetime(2026, 1, 2, 3, 4, 5)}


def test_a_named_widget_loads_as_its_class_and_a_dynamic_one_keeps_its_fields() -> None:
    named = WidgetItem(id="m1", widget=Card(children=[Text(value="hi")]), **BASE)
    dynamic = WidgetItem(
        id="m2",
        widget=DynamicWidgetRoot.model_validate(
            {"type": "Card", "custom": [1], "children": [{"type": "Text", "value": "hi"}]}
        ),
        **BASE,
    )

    loaded_named = decode_item("widget", named.model_dump_json())
    loaded_dynamic = decode_item("widget", dynamic.model_dump_json())

    assert isinstance(loaded_named, WidgetItem)
    assert type(loaded_named.widget) is Card
    assert loaded_named == named
    assert isinstance(loaded_dynamic, WidgetItem)
    assert type(loaded_dynamic.widget) is DynamicWidgetRoot
    assert loaded_dynamic == dynamic


def _question(status: str) -> StructuredInputItem:
    return StructuredInputItem(
        id="q", inputs=[StructuredInputFreeform(id="a", question="?")], status=status, **BASE
    )


def _workflow(finished: bool) -> WorkflowItem:
    summary = DurationSummary(duration=1) if finished else None
    workflow = Workflow(type="custom", tasks=[CustomTask(title="t")], summary=summary)
    return WorkflowItem(id="w", workflow=workflow, **BASE)


def _call(status: str) -> ClientToolCallItem:
    return ClientToolCallItem(id="c", call_id="c", name="f", arguments={}, status=status, **BASE)


@pytest.mark.parametrize(
    ("stored", "new", "undoes"),
    [
        (_question("answered"), _question("pending"), True),
        (_question("skipped"), _question("pending"), True),
        (_question("pending"), _question("answered"), False),
        (_question("answered"), _question("skipped"), False),
        (_workflow(True), _workflow(False), True),
        (_workflow(False), _workflow(True), False),
        (_call("completed"), _call("pending"), True),
        (_call("pending"), _call("completed"), False),
    ],
)
def test_only_a_settled_item_taken_back_is_undone(
    stored: ThreadItem, new: ThreadItem, undoes: bool
) -> None:
    assert stored.type in SETTLING_KINDS
    assert undoes_settled(stored, new) is undoes


def test_other_kinds_never_settle() -> None:
    message = AssistantMessageItem(id="m", content=[AssistantMessageContent(text="a")], **BASE)
    assert message.type not in SETTLING_KINDS
    assert not undoes_settled(message, message)
