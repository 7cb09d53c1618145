"""Golden files of ChatKit streams: save a conversation's events, compare later runs to it.

A golden file is the SSE a browser received for each streamed request of a
:class:`~chatkit_server.testing.client.ChatKitClient`, one ``data:`` line per event,
with ids and timestamps replaced by placeholders so that two runs of the same
conversation give the same text:

.. code-block:: text

    : threads.create
    data: {"thread": {"created_at": "<timestamp>", "id": "<id-1>", ...}, "type": "thread.created"}

Ids become ``<id-N>`` numbered by first appearance, so "the same id twice" is still
visible; any key named ``id`` or ending in ``_id`` counts as an id, and ``created_at``,
``updated_at`` and ISO date-time strings count as timestamps. Keys are sorted.

.. code-block:: python

    assert_golden(client.transcript, Path("tests/golden/hello.sse"))

How an answer is cut into deltas depends on timing: the server merges the text
deltas it receives from the backend in one read. So neighbouring text deltas of one
content part are written and compared as one, and a thought's task updates that
follow each other as the last of them; a file written per token still matches.

Set ``CHATKIT_UPDATE_GOLDEN=1`` (or pass ``update=True``) to write the file instead of
comparing; a missing file is an error otherwise, so a typo cannot pass silently.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["UPDATE_ENV", "GoldenMismatch", "assert_golden", "render_transcript"]

UPDATE_ENV = "CHATKIT_UPDATE_GOLDEN"
_TIMESTAMP_KEYS = {"created_at", "updated_at", "timestamp"}
_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}")


class GoldenMismatch(AssertionError):
    """A transcript differs from its golden file; the message is a unified diff."""


class _Normalizer:
    def __init__(self) -> None:
        self.ids: dict[str, str] = {}

    def id(self, value: Any) -> Any:
        if not isinstance(value, str) or not value:
            return value
        return self.ids.setdefault(value, f"<id-{len(self.ids) + 1}>")

    def __call__(self, value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: self(v, k) for k, v in sorted(value.items())}
        if isinstance(value, list):
            return [self(v, key) for v in value]
        if key in _TIMESTAMP_KEYS or (isinstance(value, str) and _ISO_DATETIME.match(value)):
            return "<timestamp>" if value is not None else None
        if key == "id" or key.endswith("_id"):
            return self.id(value)
        return value


_TEXT_DELTA = "assistant_message.content_part.text_delta"
_TASK_CHANGES = ("workflow.task.added", "workflow.task.updated")


def _update(event: dict[str, Any]) -> dict[str, Any] | None:
    if event.get("type") != "thread.item.updated":
        return None
    update = event.get("update")
    return update if isinstance(update, dict) else None


def _join(previous: dict[str, Any], event: dict[str, Any]) -> dict[str, Any] | None:
    """``previous`` and ``event`` as one event, or None when they stay apart."""
    before, after = _update(previous), _update(event)
    if before is None or after is None or previous.get("item_id") != event.get("item_id"):
        return None
    if before.get("type") == after.get("type") == _TEXT_DELTA:
        if before.get("content_index") != after.get("content_index"):
            return None
        delta = str(before.get("delta", "")) + str(after.get("delta", ""))
        return {**previous, "update": {**before, "delta": delta}}
    if before.get("type") in _TASK_CHANGES and after.get("type") == "workflow.task.updated":
        if before.get("task_index") != after.get("task_index"):
            return None
        # An update carries the whole task, so the later one holds everything.
        return {**previous, "update": {**before, "task": after.get("task")}}
    return None


def _joined(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for event in events:
        joined = _join(out[-1], event) if out else None
        if joined is None:
            out.append(event)
        else:
            out[-1] = joined
    return out


def _render(blocks: Sequence[tuple[str, list[dict[str, Any]]]]) -> str:
    lines: list[str] = []
    for request_type, events in blocks:
        lines.append(f": {request_type}")
        for event in _joined(events):
            lines.append("data: " + json.dumps(event, ensure_ascii=False, sort_keys=True))
        lines.append("")
    return "\n".join(lines)


def render_transcript(transcript: Sequence[tuple[str, Sequence[str]]]) -> str:
    """The golden-file text of a client's transcript (``ChatKitClient.transcript``)."""
    normalize = _Normalizer()
    return _render(
        [
            (request_type, [normalize(json.loads(data)) for data in events])
            for request_type, events in transcript
        ]
    )


def _canonical(text: str) -> str:
    """A golden file's text with its deltas joined as :func:`render_transcript` does.

    A file that is not in the golden format is returned as it is (and then differs).
    """
    blocks: list[tuple[str, list[dict[str, Any]]]] = []
    try:
        for line in text.splitlines():
            if line.startswith(": "):
                blocks.append((line[2:], []))
            elif line.startswith("data: ") and blocks:
                blocks[-1][1].append(json.loads(line[6:]))
            elif line:
                return text
    except ValueError:
        return text
    return _render(blocks)


def assert_golden(
    transcript: Sequence[tuple[str, Sequence[str]]],
    path: Path | str,
    *,
    update: bool | None = None,
) -> None:
    """Compare a transcript with the golden file at ``path``, or write it in update mode.

    Args:
        transcript: ``ChatKitClient.transcript`` (request type, raw event data).
        path: The golden file.
        update: Write the file instead of comparing; None: when ``CHATKIT_UPDATE_GOLDEN=1``.

    Raises:
        GoldenMismatch: They differ (the message holds a unified diff), or the file is
            missing outside update mode.
    """
    golden = Path(path)
    text = render_transcript(transcript)
    if update is None:
        update = os.environ.get(UPDATE_ENV) == "1"
    if update:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
        return
    if not golden.is_file():
        raise GoldenMismatch(f"{golden}: no golden file; run with {UPDATE_ENV}=1 to write it")
    expected = _canonical(golden.read_text(encoding="utf-8"))
    if expected == text:
        return
    diff = difflib.unified_diff(
        expected.splitlines(), text.splitlines(), str(golden), "this run", lineterm=""
    )
    raise GoldenMismatch(
        f"the ChatKit stream differs from {golden} (set {UPDATE_ENV}=1 to accept):\n"
        + "\n".join(diff)
    )
