"""The README's walk-throughs, run as printed.

Record/replay: the recording is made the way the README says (its ``serve``
line's settings, in front of a recording proxy), with a fake model server
standing in for llama-server; then the README's Python block runs under
pytest against it. REST API: its shell lines, Python script and ``curl``
lines run in a scratch directory, on a free port instead of 8000.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from chatkit_server.testing.fake_backend import FakeBackend, Reply
from chatkit_server.testing.live import ServerThread
from chatkit_server.testing.recorder import Recorder
from tests.live import Live
from tests.ports import free_port

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
# What the README's example says was recorded.
RECORDED_MESSAGE = "Hello!"


def _section(title: str) -> str:
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def _serve_line_env() -> dict[str, str]:
    """The variables the README's recording ``serve`` line sets."""
    [commands] = _blocks(_section("Testing with recorded backends"), "sh")
    [serve] = [
        line for line in commands.splitlines() if line.endswith(".venv/bin/chatkit-server serve")
    ]
    *assignments, _, _ = shlex.split(serve)
    return dict(assignment.split("=", 1) for assignment in assignments)


def _record(fixtures: Path, data_dir: Path) -> None:
    """Record one "Hello!" through ``serve``, as the README's steps 1 and 2 do."""
    backend = FakeBackend()
    backend.script(Reply.text("Hi! How can I help?"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATKIT_")}
    env.update(_serve_line_env(), CHATKIT_DATA_DIR=str(data_dir))
    with (
        ServerThread(backend.app, log_config=None) as model_server,
        ServerThread(Recorder(f"{model_server}/v1", fixtures), log_config=None) as proxy,
    ):
        env["CHATKIT_LLM_BASE_URL"] = f"{proxy}/v1"  # the README's port, here a free one
        port = free_port()
        serve = subprocess.Popen(
            [sys.executable, "-m", "chatkit_server.cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            _chat_once(f"http://127.0.0.1:{port}")
        finally:
            serve.send_signal(signal.SIGINT)  # "then Ctrl+C"
            output, _ = serve.communicate(timeout=30)
    assert serve.returncode in (0, 130), output


def _wait_until_ready(url: str) -> None:
    for _ in range(300):
        try:
            httpx.get(f"{url}/healthz", timeout=1).raise_for_status()
            return
        except httpx.HTTPError:
            import time

            time.sleep(0.1)


def _chat_once(url: str, headers: dict[str, str] | None = None) -> None:
    _wait_until_ready(url)
    body = {
        "type": "threads.create",
        "params": {
            "input": {
                "content": [{"type": "input_text", "text": RECORDED_MESSAGE}],
                "attachments": [],
                "inference_options": {},
            }
        },
    }
    with httpx.stream("POST", f"{url}/chatkit", json=body, headers=headers, timeout=30) as response:
        events = "".join(response.iter_text())
    assert "thread.item.done" in events
    assert '"type":"error"' not in events.replace(" ", ""), events


def _pytest(directory: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CHATKIT_")}
    # The package under test first, as an installed one would be.
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), environ.get("PYTHONPATH", "")])
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(directory)],
        cwd=directory,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_readme_pytest_example_passes_on_a_recording_made_as_the_readme_says(
    tmp_path: Path,
) -> None:
    project = tmp_path / "project"
    tests = project / "tests"
    tests.mkdir(parents=True)
    _record(tests / "fixtures" / "hello", tmp_path / "data")
    [example] = _blocks(_section("Testing with recorded backends"), "python")
    assert f'create_thread("{RECORDED_MESSAGE}")' in example
    (tests / "test_hello.py").write_text(example)
    # What the README asks of the project: pytest-asyncio with asyncio_mode = "auto".
    (project / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n")

    first = _pytest(project, CHATKIT_UPDATE_GOLDEN="1")  # "run once with ... to write it"
    assert first.returncode == 0, first.stdout + first.stderr
    assert (tests / "golden" / "hello.sse").is_file()
    again = _pytest(project)
    assert again.returncode == 0, again.stdout + again.stderr


def test_the_readme_rest_api_walkthrough_runs(tmp_path: Path) -> None:
    section = _section("REST API")
    [setup, curls] = _blocks(section, "sh")
    [script] = _blocks(section, "python")
    make_key, serve_line = [line for line in setup.splitlines() if not line.startswith("#")]
    project = tmp_path / "project"
    (project / ".venv" / "bin").mkdir(parents=True)
    # The README's .venv/bin/chatkit-server, running this checkout's package.
    launcher = project / ".venv" / "bin" / "chatkit-server"
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} -m chatkit_server.cli "$@"\n')
    launcher.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATKIT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["CHATKIT_DATA_DIR"] = str(tmp_path / "data")
    subprocess.run(["bash", "-c", make_key], cwd=project, env=env, check=True, timeout=30)
    assert len((project / ".chatkit-admin-key").read_text().strip()) >= 32

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    backend = FakeBackend()
    with ServerThread(backend.app, log_config=None) as model_server:
        env["CHATKIT_LLM_BASE_URL"] = f"{model_server}/v1"
        serve = subprocess.Popen(
            ["bash", "-c", f"{serve_line} --port {port}"],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # Ctrl+C reaches the server, not only bash
        )
        try:
            _wait_until_ready(url)
            minted = subprocess.run(
                [sys.executable, "-c", script.replace("http://127.0.0.1:8000", url)],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert minted.returncode == 0, minted.stderr
            secret = minted.stdout.strip()
            _chat_once(url, headers={"authorization": f"Bearer {secret}"})
            answers = [
                json.loads(
                    subprocess.run(
                        ["bash", "-c", line.replace("http://127.0.0.1:8000", url)],
                        cwd=project,
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=30,
                        check=True,
                    ).stdout
                )
                for line in curls.splitlines()
            ]
        finally:
            os.killpg(serve.pid, signal.SIGINT)  # "then Ctrl+C"
            output, _ = serve.communicate(timeout=30)
    assert serve.returncode in (0, 130), output
    assert secret.startswith("cks_")
    threads, usage = answers
    assert [thread["user"] for thread in threads["data"]] == ["alice"]
    assert [(row["user"], row["answers"]) for row in usage["data"]] == [("alice", 1)]


async def test_the_readme_attachment_commands_run(tmp_path: Path, live: Live) -> None:
    [commands] = _blocks(_section("Attachments"), "sh")
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        commands.replace("http://127.0.0.1:8000", live.url),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    direct, two_phase = json.loads("[" + stdout.decode().replace("}{", "},{") + "]")
    for attachment in (direct, two_phase):
        assert attachment["name"] == "notes.txt"
        assert "upload_descriptor" not in attachment
        assert await live.state.files.read(attachment["id"]) == b"Ship the release on Friday.\n"
