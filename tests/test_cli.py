"""The ``chatkit-server`` command: help, settings errors, migrate, serve.

Commands that end by themselves run ``main`` in this process (the ``run``
fixture); a fresh process is started only where one matters: a server that
runs until SIGTERM (with workers, or as the example workflows file says), and
the installed console script, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from chatkit_server.cli import build_parser, main
from chatkit_server.testing.fake_backend import FakeBackend, Reply
from chatkit_server.testing.live import ServerThread
from tests.conftest import POSTGRES_URL, REQUIRE_POSTGRES
from tests.ports import free_port


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATKIT_")}
    env["CHATKIT_DATA_DIR"] = str(tmp_path / "data")
    env.update(extra)
    return env


@dataclass(frozen=True)
class Ran:
    """What one ``chatkit-server`` command did: the exit status and its output."""

    returncode: int
    stdout: str
    stderr: str


Run = Callable[..., Ran]


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``chatkit-server ARGS`` in this process, as a fresh process would.

    The environment is ``_env``'s (``extra`` added); stdout and stderr are what
    it printed, log lines included: the root logger starts without handlers, so
    the CLI's own logging set-up writes to stderr as in a real process. What
    ``main`` changes in the process (logging, gc, signal handlers, the event
    loop policy) is put back after each call, and it must leave no thread behind
    (a server still running).
    """

    def run_in_process(*args: str, **extra: str) -> Ran:
        for name in list(os.environ):
            if name.startswith("CHATKIT_"):
                monkeypatch.delenv(name)
        for name, value in _env(tmp_path, **extra).items():
            if name.startswith("CHATKIT_"):
                monkeypatch.setenv(name, value)
        capsys.readouterr()  # only this command's output
        threads = set(threading.enumerate())
        with _process_state_restored():
            try:
                returncode = main(list(args))
            except SystemExit as exc:  # argparse, or uvicorn's failed start
                returncode = exc.code if isinstance(exc.code, int) else 1
        left = [t for t in threading.enumerate() if t not in threads and t.is_alive()]
        for thread in left:
            # A closed aiosqlite connection's thread ends on its own a moment
            # later; a server still running would not.
            thread.join(timeout=5)
        left = [t for t in left if t.is_alive()]
        assert not left, f"chatkit-server {' '.join(args)} left threads running: {left}"
        out, err = capsys.readouterr()
        return Ran(returncode, out, err)

    return run_in_process


@contextlib.contextmanager
def _process_state_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    levels = {
        name: logger.level
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    gc_threshold, gc_frozen = gc.get_threshold(), gc.get_freeze_count()
    signals = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    policy = asyncio.get_event_loop_policy()
    root.handlers = []  # so that logging.basicConfig writes to (captured) stderr
    try:
        yield
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers, root.level = handlers, root_level
        for name, logger in logging.Logger.manager.loggerDict.items():
            if isinstance(logger, logging.Logger):
                logger.setLevel(levels.get(name, logging.NOTSET))
        if gc.get_freeze_count() > gc_frozen:
            gc.unfreeze()
        gc.set_threshold(*gc_threshold)
        for number, handler in signals.items():
            signal.signal(number, handler)
        asyncio.set_event_loop_policy(policy)


def test_commands_that_run_no_workflow_do_not_load_the_agents_sdk(tmp_path: Path) -> None:
    # It takes over a second to import: --help, migrate, a settings mistake
    # and the supervisor of --workers would each wait for it for nothing.
    script = (
        "import sys\n"
        "from chatkit_server.cli import build_parser\n"
        "from chatkit_server.settings import Settings\n"
        "build_parser()\n"
        "Settings.from_env()\n"
        "print(sorted(name for name in ('agents', 'openai') if name in sys.modules))\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert ran.stdout.strip() == "[]"


def test_help_explains_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["serve", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in (
        "--no-migrate",
        "--port",
        "--allow-anonymous",
        "CHATKIT_LLM_BASE_URL",
        "CHATKIT_DATABASE_URL",
    ):
        assert name in out


def test_invalid_setting_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHATKIT_LLM_API", "grpc")
    assert main(["migrate"]) == 2
    assert "CHATKIT_LLM_API" in capsys.readouterr().err


def test_migrate_creates_and_removes_the_schema(tmp_path: Path, run: Run) -> None:
    result = run("migrate")
    assert result.returncode == 0, result.stderr
    database = tmp_path / "data" / "chatkit.db"
    tables = _tables(database)
    assert {"threads", "thread_items", "attachments", "feedback"} <= tables

    result = run("migrate", "--downgrade", "base")
    assert result.returncode == 0, result.stderr
    # sqlite_sequence is SQLite's own bookkeeping for AUTOINCREMENT.
    assert _tables(database) <= {"alembic_version", "sqlite_sequence"}


def _tables(database: Path) -> set[str]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {row[0] for row in rows}


def test_serve_migrates_answers_health_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "chatkit_server.cli", "serve", "--port", str(port)],
        # The no-backend path, even where the bundled local model is installed.
        env=_env(tmp_path, CHATKIT_LOCAL_MODEL="off"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and status != 200:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code
            except httpx.TransportError:
                time.sleep(0.1)
        assert status == 200
        response = httpx.post(
            f"http://127.0.0.1:{port}/chatkit",
            json={"type": "threads.list", "params": {}},
            timeout=5,
        )
        assert response.json() == {"data": [], "has_more": False}
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    # uvicorn re-raises the signal it handled once shutdown is complete.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert "CHATKIT_LLM_BASE_URL" in output  # the warning that no backend is set
    assert (tmp_path / "data" / "chatkit.db").exists()


def _wait_healthy(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the server on port {port} did not become healthy")


def _answer(port: int, text: str) -> str:
    body = {"type": "threads.create", "params": {"input": _message(text)}}
    with httpx.stream(
        "POST", f"http://127.0.0.1:{port}/chatkit", json=body, timeout=30
    ) as response:
        events = [
            json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")
        ]
    done = [e["item"] for e in events if e["type"] == "thread.item.done"]
    return "".join(
        part["text"]
        for item in done
        if item["type"] == "assistant_message"
        for part in item["content"]
    )


def _message(text: str) -> dict[str, object]:
    return {
        "content": [{"type": "input_text", "text": text}],
        "attachments": [],
        "inference_options": {},
    }


def test_serve_with_workers_answers_and_stops_every_process(tmp_path: Path) -> None:
    port = free_port()
    backend = FakeBackend(default=Reply.text("Hello from a worker"))
    with ServerThread(backend.app) as backend_url:
        process = subprocess.Popen(
            [sys.executable, "-m", "chatkit_server.cli", "serve", "--port", str(port)]
            + ["--workers", "2"],
            env=_env(tmp_path, CHATKIT_LLM_BASE_URL=f"{backend_url}/v1", CHATKIT_TITLES="0"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            _wait_healthy(port)
            workers = [
                child
                for child in psutil.Process(process.pid).children()
                if "spawn_main" in " ".join(child.cmdline())
            ]
            assert len(workers) == 2
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda n: _answer(port, f"question {n}"), range(8)))
            assert answers == ["Hello from a worker"] * 8
            listed = httpx.post(
                f"http://127.0.0.1:{port}/chatkit",
                json={"type": "threads.list", "params": {"limit": 50}},
                timeout=5,
            ).json()
            assert len(listed["data"]) == 8
        finally:
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=60)
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "with 2 worker processes" in output
    assert output.count("Application shutdown complete") == 2
    assert not any(worker.is_running() for worker in workers)


def test_serve_refuses_zero_workers(run: Run) -> None:
    result = run("serve", "--workers", "0")
    assert result.returncode == 2
    assert "--workers" in result.stderr


@pytest.mark.parametrize(
    "workers",
    [
        "1",
        # uvicorn's Config.bind_socket exits without closing the socket it failed
        # to bind; a real process ends right after, this one sees it collected.
        pytest.param(
            "2",
            marks=pytest.mark.filterwarnings(
                "ignore:Exception ignored in. <socket.socket"
                ":pytest.PytestUnraisableExceptionWarning"
            ),
        ),
    ],
)
def test_serve_reports_a_port_in_use(run: Run, workers: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        # Without the bundled local model: nothing is started before the bind fails.
        result = run("serve", "--port", str(port), "--workers", workers, CHATKIT_LOCAL_MODEL="off")
    assert result.returncode != 0
    # uvicorn's error line (the port alone would also match "serving ChatKit on ...").
    assert "address already in use" in result.stderr.lower(), result.stderr


def test_usage_command_prints_per_thread_totals(tmp_path: Path, run: Run) -> None:
    from datetime import datetime

    from chatkit.types import ThreadMetadata

    from chatkit_server.context import RequestContext
    from chatkit_server.store import Database, SQLStore, UsageRecord, UsageStore

    assert run("migrate").returncode == 0

    async def seed() -> None:
        database = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'chatkit.db'}")
        context = RequestContext()
        await SQLStore(database).save_thread(
            ThreadMetadata(id="thr_x", created_at=datetime(2026, 1, 1)), context
        )
        record = UsageRecord(
            item_id="msg_1",
            workflow="default",
            model="m",
            requests=1,
            input_tokens=12,
            output_tokens=30,
        )
        await UsageStore(database).record("thr_x", record, context)
        await database.dispose()

    asyncio.run(seed())
    table = run("usage")
    as_json = run("usage", "--json")

    assert table.returncode == 0, table.stderr
    assert "thr_x" in table.stdout
    assert "42" in table.stdout
    assert '"total_tokens": 42' in as_json.stdout


def test_the_server_process_collects_garbage_cheaply() -> None:
    import gc

    from chatkit_server.cli import GC_THRESHOLDS, tune_garbage_collector

    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0  # the start-up heap is no longer walked
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


# An operator's mistake is one line on stderr and exit status 2, never a traceback.
_BAD_WORKFLOW_FILES = {
    "toml syntax": ("x = [\n", "not valid TOML"),
    "missing backend": (
        '[workflows.a]\nbackend = "gpu"\nmodel = "m"\n',
        "workflows.a.backend: no backend 'gpu'",
    ),
    "tool that does not import": (
        '[workflows.a]\nmodel = "m"\ntools = ["no_such_module.tools:fn"]\n',
        "workflows.a.tools[0]: cannot import 'no_such_module.tools'",
    ),
    "tool that is not a function": (
        '[workflows.a]\nmodel = "m"\ntools = ["json.decoder:nope"]\n',
        "workflows.a.tools[0]: 'json.decoder:nope' is not a function",
    ),
}


def _assert_one_line(result: Ran | subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("chatkit-server: "), lines[0]
    for text in expected:
        assert text in lines[0]


@pytest.mark.parametrize("case", sorted(_BAD_WORKFLOW_FILES))
@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_a_workflows_file_mistake_is_one_line(
    tmp_path: Path, run: Run, case: str, command: str
) -> None:
    text, expected = _BAD_WORKFLOW_FILES[case]
    path = tmp_path / "workflows.toml"
    path.write_text(text)
    result = run(command, CHATKIT_WORKFLOWS=str(path), CHATKIT_LOCAL_MODEL="off")
    _assert_one_line(result, f"{path}: ", expected)


def test_a_tool_module_that_raises_on_import_is_one_line(
    tmp_path: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_tools.py").write_text("raise RuntimeError('missing API token')\n")
    path = tmp_path / "workflows.toml"
    path.write_text('[workflows.a]\nmodel = "m"\ntools = ["broken_tools:lookup"]\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    result = run("migrate", CHATKIT_WORKFLOWS=str(path))
    _assert_one_line(
        result, "tools[0]: cannot import 'broken_tools': RuntimeError: missing API token"
    )


def test_an_unknown_downgrade_revision_is_one_line(run: Run) -> None:
    result = run("migrate", "--downgrade", "nonsense")
    _assert_one_line(result, "--downgrade nonsense: ", "'nonsense'", "known: ", "base")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", [["migrate"], ["serve"], ["serve", "--no-migrate"], ["usage"]])
def test_a_refused_database_connection_is_one_line(run: Run, command: list[str]) -> None:
    url = f"postgresql+asyncpg://postgres:secret@127.0.0.1:{_closed_port()}/test"
    result = run(*command, CHATKIT_DATABASE_URL=url, CHATKIT_LOCAL_MODEL="off")
    _assert_one_line(result, "CHATKIT_DATABASE_URL: ", "connection refused")
    assert "secret" not in result.stderr


def test_the_installed_command_reports_a_mistake_in_one_line(tmp_path: Path) -> None:
    """The console script in a fresh interpreter: the other tests call main() in-process.

    Nothing set up by pytest (captured logging, warnings filters, imports done
    already) stands between the mistake and the operator here.
    """
    command = Path(sys.executable).with_name("chatkit-server")
    assert command.is_file(), f"{command} is not installed (pip install -e .)"
    url = f"postgresql+asyncpg://postgres:secret@127.0.0.1:{_closed_port()}/test"
    result = subprocess.run(
        [str(command), "serve"],
        env=_env(tmp_path, CHATKIT_DATABASE_URL=url, CHATKIT_LOCAL_MODEL="off"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    _assert_one_line(result, "CHATKIT_DATABASE_URL: ", "connection refused")
    assert "secret" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("command", [["migrate"], ["serve"], ["serve", "--no-migrate"]])
def test_a_missing_postgres_database_is_one_line(run: Run, command: list[str]) -> None:
    if not _postgres_reachable() and not REQUIRE_POSTGRES:
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}")
    url = POSTGRES_URL.rsplit("/", 1)[0] + "/chatkit_does_not_exist"
    result = run(*command, CHATKIT_DATABASE_URL=url, CHATKIT_LOCAL_MODEL="off")
    _assert_one_line(
        result, "CHATKIT_DATABASE_URL: ", 'database "chatkit_does_not_exist" does not exist'
    )


def _postgres_reachable() -> bool:
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES_URL)
    try:
        socket.create_connection((url.host or "127.0.0.1", url.port or 5432), timeout=1).close()
    except OSError:
        return False
    return True


def test_serve_without_migrating_refuses_an_empty_database(run: Run) -> None:
    result = run("serve", "--no-migrate", CHATKIT_LOCAL_MODEL="off")
    _assert_one_line(result, "CHATKIT_DATA_DIR: ", "no schema yet", "chatkit-server migrate")


_REPO = Path(__file__).resolve().parent.parent


def test_the_example_workflows_file_starts_as_its_header_says(tmp_path: Path) -> None:
    import shlex

    example = _REPO / "examples" / "workflows.toml"
    commands = [
        line.lstrip("#").strip()
        for line in example.read_text().splitlines()
        if line.startswith("#") and "chatkit-server serve" in line
    ]
    assert len(commands) == 1, commands
    *assignments, program, command = shlex.split(commands[0])
    assert (program, command) == (".venv/bin/chatkit-server", "serve")
    header_env = dict(assignment.split("=", 1) for assignment in assignments)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "chatkit_server.cli", "serve", "--port", str(port)],
        env=_env(tmp_path, **header_env),
        cwd=_REPO,  # "from the repository's root"
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        try:
            _wait_healthy(port, timeout=30)
        except AssertionError:
            process.kill()
            raise AssertionError(process.communicate()[0]) from None
        workflows = httpx.get(f"http://127.0.0.1:{port}/chatkit/workflows", timeout=5).json()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    listed = json.dumps(workflows)
    assert '"assistant"' in listed
    assert '"analyst"' in listed


_SIGN_IN_VARIABLES = (
    "CHATKIT_ADMIN_KEY",
    "CHATKIT_JWT_SECRET",
    "CHATKIT_JWT_PUBLIC_KEY",
    "CHATKIT_JWT_AUDIENCE",
    "CHATKIT_JWT_ISSUER",
    "CHATKIT_TRUSTED_USER_HEADER",
    "CHATKIT_TRUSTED_PROXIES",
    "CHATKIT_RATE_LIMIT",
)


def _help(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*args, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("command", "listed", "not_listed"),
    [
        (["serve"], ["CHATKIT_LLM_BASE_URL", "CHATKIT_DATABASE_URL", *_SIGN_IN_VARIABLES], []),
        (
            ["migrate"],
            ["CHATKIT_DATABASE_URL", "CHATKIT_DATA_DIR"],
            ["CHATKIT_LLM_BASE_URL", *_SIGN_IN_VARIABLES],
        ),
        (["usage"], ["CHATKIT_DATABASE_URL"], ["CHATKIT_WORKFLOWS", "CHATKIT_TITLES"]),
        (["record"], [], ["CHATKIT_DATABASE_URL", "CHATKIT_LLM_API_KEY"]),
        (["replay"], [], ["CHATKIT_DATA_DIR", "CHATKIT_LLM_MODEL"]),
    ],
)
def test_each_command_lists_only_the_environment_it_uses(
    capsys: pytest.CaptureFixture[str], command: list[str], listed: list[str], not_listed: list[str]
) -> None:
    out = _help(capsys, *command)
    for name in listed:
        assert f"  {name} " in out
    for name in not_listed:
        assert name not in out


_JWT_SECRET = "a-jwt-secret-of-at-least-32-bytes-for-tests"


_PROXY = {"CHATKIT_TRUSTED_USER_HEADER": "X-Forwarded-User", "CHATKIT_TRUSTED_PROXIES": "::1"}


@pytest.mark.parametrize(
    ("env", "variable", "fragment"),
    [
        ({"CHATKIT_ADMIN_KEY": "short"}, "CHATKIT_ADMIN_KEY", "at least 32 characters"),
        ({"CHATKIT_JWT_SECRET": "short"}, "CHATKIT_JWT_SECRET", "at least 32 bytes"),
        (
            {"CHATKIT_JWT_PUBLIC_KEY": "/nonexistent/key.pem"},
            "CHATKIT_JWT_PUBLIC_KEY",
            "cannot read",
        ),
        ({"CHATKIT_JWT_AUDIENCE": "chat"}, "CHATKIT_JWT_AUDIENCE", "CHATKIT_JWT_SECRET"),
        ({"CHATKIT_TRUSTED_USER_HEADER": "X-User"}, "CHATKIT_TRUSTED_PROXIES", "HEADER is set"),
        ({**_PROXY, "CHATKIT_TRUSTED_PROXIES": "nginx"}, "CHATKIT_TRUSTED_PROXIES", "not an IP"),
        (
            {**_PROXY, "CHATKIT_TRUSTED_USER_HEADER": "X User"},
            "CHATKIT_TRUSTED_USER_HEADER",
            "not an HTTP header name",
        ),
        ({"CHATKIT_RATE_LIMIT": "-5"}, "CHATKIT_RATE_LIMIT", "at least 0"),
    ],
)
def test_a_sign_in_setting_mistake_is_one_line(
    run: Run, env: dict[str, str], variable: str, fragment: str
) -> None:
    result = run("serve", CHATKIT_LOCAL_MODEL="off", **env)
    _assert_one_line(result, f"chatkit-server: {variable}: ", fragment)


def _listening(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family)
    sock.bind((host, 0))
    sock.listen()
    return sock


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "chat.example.com"])
def test_serve_refuses_a_public_address_without_sign_in(
    tmp_path: Path, run: Run, host: str
) -> None:
    # Were it not refused, it would fail on the taken port instead of serving on
    # (a socket on :: takes the port on every IPv4 and IPv6 address here).
    with _listening("::") as sock:
        port = str(sock.getsockname()[1])
        result = run("serve", "--host", host, "--port", port, CHATKIT_LOCAL_MODEL="off")

    _assert_one_line(result, f"--host {host}: ", "CHATKIT_JWT_SECRET", "--allow-anonymous")
    # Refused before anything was done: no database yet.
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("host", "bound", "args", "extra"),
    [
        pytest.param("127.0.0.1", "127.0.0.1", [], {}, id="127.0.0.1"),
        pytest.param("localhost", "127.0.0.1", [], {}, id="localhost"),
        pytest.param("::1", "::1", [], {}, id="::1"),
        pytest.param("0.0.0.0", "0.0.0.0", [], {"CHATKIT_JWT_SECRET": _JWT_SECRET}, id="JWT"),
        pytest.param(
            "0.0.0.0",
            "0.0.0.0",
            [],
            _PROXY,
            id="proxy",
        ),
        pytest.param("0.0.0.0", "0.0.0.0", ["--allow-anonymous"], {}, id="allow-anonymous"),
    ],
)
def test_serve_starts_on_loopback_with_sign_in_or_when_allowed(
    run: Run, host: str, bound: str, args: list[str], extra: dict[str, str]
) -> None:
    # The port is taken: serve gets as far as binding it, and no further.
    with _listening(bound) as sock:
        port = str(sock.getsockname()[1])
        result = run(
            "serve", "--host", host, "--port", port, *args, CHATKIT_LOCAL_MODEL="off", **extra
        )
    assert result.returncode != 0
    assert "address already in use" in result.stderr.lower(), result.stderr
    assert "--allow-anonymous" not in result.stderr.replace("(--allow-anonymous)", "")
    if args:
        assert "without sign-in (--allow-anonymous)" in result.stderr


def test_workers_stop_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "chatkit_server.cli", "serve", "--port", str(port)]
    env = _env(tmp_path, CHATKIT_LOCAL_MODEL="off")
    supervisor = subprocess.Popen(
        [*argv, "--workers", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_healthy(port)
        workers = [
            child
            for child in psutil.Process(supervisor.pid).children()
            if "spawn_main" in " ".join(child.cmdline())
        ]
        assert len(workers) == 2
        supervisor.kill()  # SIGKILL: it cannot stop its workers itself
        supervisor.wait(timeout=10)
        _gone, alive = psutil.wait_procs(workers, timeout=30)
        for orphan in alive:
            orphan.kill()
        assert not alive, f"workers still serving as orphans: {alive}"
        # The port is free again: a restart could listen on it. Bound as
        # uvicorn binds (SO_REUSEADDR), without the cost of starting a server.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
            probe.listen()
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
