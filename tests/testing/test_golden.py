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


def _delta(item: str, text: str, index: int = 0) -> str:
    update = {"type": "assistant_message.content_part.text_delta", "content_index": index}
    return json.dumps(
        {"type": "thread.item.updated", "item_id": item, "update": {**update, "delta": text}}
    )


def _task(item: str, kind: str, content: str) -> str:
    update = {"type": kind, "task_index": 0, "task": {"type": "thought", "content": content}}
    return json.dumps({"type": "thread.item.updated", "item_id": item, "update": update})


def test_deltas_cut_differently_match_the_same_file(tmp_path: Path) -> None:
    golden = tmp_path / "cut.sse"
    # Ids as a golden file holds them, so the hand-written file below is one.
    wf, msg = "<id-1>", "<id-2>"
    per_token = [
        _task(wf, "workflow.task.added", "I"),
        _task(wf, "workflow.task.updated", "I think"),
        _delta(msg, "Hel"),
        _delta(msg, "lo "),
        _delta(msg, "there"),
        _delta(msg, "!", index=1),
    ]
    merged = [
        _task(wf, "workflow.task.added", "I think"),
        _delta(msg, "Hello "),
        _delta(msg, "there"),
        _delta(msg, "!", index=1),
    ]
    # Written from per-token events (as an older file is), then from merged ones.
    golden.write_text(
        "\n".join([": threads.create", *(f"data: {e}" for e in per_token), ""]), encoding="utf-8"
    )
    assert_golden([("threads.create", merged)], golden)
    assert_golden([("threads.create", per_token)], golden, update=True)
    assert golden.read_text().count("text_delta") == 2
    assert_golden([("threads.create", merged)], golden)
    # A delta of another part or item is still a difference.
    with pytest.raises(GoldenMismatch):
        assert_golden([("threads.create", [*merged[:2], _delta(msg, "there!")])], golden)
