"""``chatkit-server record`` and ``replay``: clear errors for bad input."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from chatkit_server.cli import main

FIXTURES = (
    Path(__file__).resolve().parent.parent
    / "fixtures"
    / "hand-written"
    / "reasoning-chat-reasoning"
)


def test_replay_names_a_missing_fixture_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", "--fixtures", str(tmp_path / "nope")]) == 1
    assert f"{tmp_path / 'nope'}: fixture directory not found" in capsys.readouterr().err


def test_replay_names_a_corrupt_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "0001-responses").mkdir()
    (tmp_path / "0001-responses" / "request.json").write_text("{")
    assert main(["replay", "--fixtures", str(tmp_path)]) == 1
    assert "0001-responses/request.json: not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["record", "replay"])
def test_a_port_in_use_is_named(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = (
            ["record", "--upstream", "http://127.0.0.1:9/v1", "--out", "unused"]
            if command == "record"
            else ["replay", "--fixtures", str(FIXTURES)]
        )
        assert main([*args, "--port", str(port)]) == 1
    assert f"port {port} on 127.0.0.1 is already in use" in capsys.readouterr().err


def test_help_explains_matching(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    out = capsys.readouterr().out
    assert "--speed" in out
    assert "409" in out
