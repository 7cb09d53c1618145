"""The fixture format: shipped fixtures load, bad ones fail naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from chatkit_server.testing.fixtures import (
    FixtureError,
    exchange_dir_name,
    load_exchanges,
    parse_sse,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SHIPPED = sorted(p.parent for p in FIXTURES.glob("*/*/0001-*"))
GOOD = FIXTURES / "hand-written" / "reasoning-chat-reasoning"


@pytest.mark.parametrize("directory", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_fixture_loads_and_says_where_it_comes_from(directory: Path) -> None:
    exchanges = load_exchanges(directory)
    expected = "hand-written" if directory.parent.name == "hand-written" else "recorded"
    assert {e.source for e in exchanges} == {expected}
    assert all(e.meta["note"] for e in exchanges)


def test_the_shipped_fixtures_cover_the_issue_list() -> None:
    names = {f"{p.parent.name}/{p.name}" for p in SHIPPED}
    assert {
        "llama-server/chat-two-turns",
        "llama-server/responses-two-turns",
        "hand-written/chat-tool-call-vllm",
        "hand-written/chat-tool-call-ollama",
        "hand-written/reasoning-chat-reasoning",
        "hand-written/reasoning-chat-reasoning_content",
        "hand-written/reasoning-responses-summary",
        "hand-written/reasoning-responses-text",
        "hand-written/reasoning-responses-llama-server",
        "hand-written/chat-truncated",
        "hand-written/chat-error-503",
    } <= names
    # Usage chunks: chatkit-server asks for them, and the streams carry them.
    body = (GOOD / "0001-chat-completions" / "body.sse").read_bytes()
    assert any('"usage"' in data for _, data in parse_sse(body))


def _copy(tmp_path: Path) -> Path:
    target = tmp_path / "fixtures"
    shutil.copytree(GOOD, target)
    return target


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(FixtureError, match="nowhere: fixture directory not found"):
        load_exchanges(tmp_path / "nowhere")
    with pytest.raises(FixtureError, match="no fixtures"):
        load_exchanges(tmp_path)


@pytest.mark.parametrize("name", ["request.json", "response.json", "meta.json", "body.sse"])
def test_a_missing_file_is_named(tmp_path: Path, name: str) -> None:
    directory = _copy(tmp_path)
    shutil.rmtree(directory / "0002-chat-completions")
    (directory / "0001-chat-completions" / name).unlink()
    with pytest.raises(FixtureError, match=f"0001-chat-completions/{name}"):
        load_exchanges(directory)


def test_corrupt_json_is_named(tmp_path: Path) -> None:
    directory = _copy(tmp_path)
    (directory / "0001-chat-completions" / "response.json").write_text('{"status": 2')
    with pytest.raises(FixtureError, match=r"response.json: not valid JSON"):
        load_exchanges(directory)


def test_a_body_that_is_not_sse_is_named_with_its_line(tmp_path: Path) -> None:
    directory = _copy(tmp_path)
    body = directory / "0001-chat-completions" / "body.sse"
    body.write_text('data: {"ok": true}\n\nhello world\n\n')
    with pytest.raises(FixtureError, match=r"body.sse: not a valid event stream: line 3"):
        load_exchanges(directory)
    body.write_text("data: {not json\n\n")
    with pytest.raises(FixtureError, match="line 1: event data is not JSON"):
        load_exchanges(directory)


def test_an_unknown_source_is_refused(tmp_path: Path) -> None:
    directory = _copy(tmp_path)
    (directory / "0001-chat-completions" / "meta.json").write_text(json.dumps({"source": "?"}))
    with pytest.raises(FixtureError, match="meta.json: 'source'"):
        load_exchanges(directory)


def test_directory_names() -> None:
    assert exchange_dir_name(3, "/v1/chat/completions") == "0003-chat-completions"
    assert exchange_dir_name(12, "/v1/responses") == "0012-responses"
