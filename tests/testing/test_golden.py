"""Golden ChatKit transcripts: ids and timestamps normalized, readable diffs, update mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chatkit_server.testing.golden import GoldenMismatch, assert_golden, render_transcript


def _event(thread: str, item: str, text: str, when: str) -> str:
    return json.dumps(
        {
            "type": "thread.item.done",
            "item": {"id": item, "thread_id": thread, "created_at": when, "text": text},
        }
    )


def _transcript(text: str, *, thread: str = "thr_a1", item: str = "msg_b2") -> list[Any]:
    when = "2026-11-26T12:00:00.123456"
    return [
        ("threads.create", [_event(thread, item, text, when), _event(thread, item, text, when)])
    ]


def test_ids_and_timestamps_are_normalized_consistently() -> None:
    rendered = render_transcript(_transcript("Hi", thread="thr_x", item="msg_y"))
    assert rendered == render_transcript(_transcript("Hi", thread="thr_z", item="msg_w"))
    # Numbered by first appearance, keys sorted: the item's own id comes first.
    assert '"id": "<id-1>"' in rendered
    assert '"thread_id": "<id-2>"' in rendered
    assert "<timestamp>" in rendered
    assert rendered.startswith(": threads.create\ndata: ")


def test_a_difference_is_a_readable_diff(tmp_path: Path) -> None:
    golden = tmp_path / "golden" / "hello.sse"
    assert_golden(_transcript("Hi"), golden, update=True)
    assert_golden(_transcript("Hi", thread="thr_other"), golden)
    with pytest.raises(GoldenMismatch) as caught:
        assert_golden(_transcript("Bye"), golden)
    message = str(caught.value)
    assert "CHATKIT_UPDATE_GOLDEN=1" in message
    assert '-data: {"item": {"created_at": "<timestamp>", "id": "<id-1>", "text": "Hi"' in message
    assert '+data: {"item": {"created_at": "<timestamp>", "id": "<id-1>", "text": "Bye"' in message


def test_a_missing_golden_file_fails_unless_updating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    golden = tmp_path / "missing.sse"
    with pytest.raises(GoldenMismatch, match="no golden file"):
        assert_golden(_transcript("Hi"), golden)
    monkeypatch.setenv("CHATKIT_UPDATE_GOLDEN", "1")
    assert_golden(_transcript("Hi"), golden)
    assert golden.read_text().startswith(": threads.create")
