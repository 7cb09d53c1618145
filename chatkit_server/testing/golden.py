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


def render_transcript(transcript: Sequence[tuple[str, Sequence[str]]]) -> str:
    """The golden-file text of a client's transcript (``ChatKitClient.transcript``)."""
    normalize = _Normalizer()
    lines: list[str] = []
    for request_type, events in transcript:
        lines.append(f": {request_type}")
        for data in events:
            event = normalize(json.loads(data))
            lines.append("data: " + json.dumps(event, ensure_ascii=False, sort_keys=True))
        lines.append("")
    return "\n".join(lines)


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
    expected = golden.read_text(encoding="utf-8")
    if expected == text:
        return
    diff = difflib.unified_diff(
        expected.splitlines(), text.splitlines(), str(golden), "this run", lineterm=""
    )
    raise GoldenMismatch(
        f"the ChatKit stream differs from {golden} (set {UPDATE_ENV}=1 to accept):\n"
        + "\n".join(diff)
    )
