"""The rate limit and one answer per thread hold across processes on one PostgreSQL.

Two servers on one database, one of them with two worker processes: every
request alternates between them, so counts and leases can only agree
through the database.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jwt
import pytest

from chatkit_server.store.migrate import upgrade
from chatkit_server.testing.client import ChatKitClient, ChatKitHTTPError, user_input
from chatkit_server.testing.fake_backend import FakeBackend, Reply
from chatkit_server.testing.live import ServerThread
from tests.conftest import outside_minute_end
from tests.ports import free_port
from tests.test_cli import _wait_healthy

pytestmark = pytest.mark.postgres

SECRET = "p" * 32
LIMIT = 6


def _token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


@contextmanager
def _servers(env: dict[str, str], *argvs: list[str]) -> Iterator[list[int]]:
    """Servers started side by side (their start-ups overlap), stopped on exit."""
    ports = [free_port() for _ in argvs]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "chatkit_server.cli", "serve", "--port", str(port), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for port, args in zip(ports, argvs, strict=True)
    ]
    try:
        for port in ports:
            _wait_healthy(port)
        yield ports
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        outputs = [process.communicate(timeout=60)[0] for process in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode in (0, -signal.SIGTERM), output


@pytest.fixture
def servers(tmp_path: Path, postgres_database_url: str) -> Iterator[tuple[int, int]]:
    backend = FakeBackend(default=Reply.count(60, delay=0.02))
    with ServerThread(backend.app) as backend_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATKIT_")}
        env.update(
            CHATKIT_DATA_DIR=str(tmp_path / "data"),
            CHATKIT_DATABASE_URL=postgres_database_url,
            CHATKIT_LLM_BASE_URL=f"{backend_url}/v1",
            CHATKIT_TITLES="0",
            CHATKIT_JWT_SECRET=SECRET,
            CHATKIT_RATE_LIMIT=str(LIMIT),
        )
        # Here, not by a third process: importing the whole server takes seconds of CPU.
        upgrade(postgres_database_url)
        with _servers(env, ["--no-migrate", "--workers", "2"], ["--no-migrate"]) as ports:
            yield ports[0], ports[1]


async def test_one_limit_and_one_answer_per_thread_across_processes(
    servers: tuple[int, int],
) -> None:
    # A new connection per request: the two workers of the first server share
    # its socket, and each connection may land on either of them.
    headers = {"authorization": f"Bearer {_token('alice')}", "connection": "close"}
    clients = [ChatKitClient(f"http://127.0.0.1:{port}", headers=headers) for port in servers]
    a, b = clients
    try:
        await outside_minute_end()
        # One answer per thread: an answer streaming through one server makes
        # the other refuse a second message on the same thread.
        async with a.open_stream("threads.create", input=user_input("hi")) as events:
            thread_id = None
            async for event in events:
                if event.type == "thread.created":
                    thread_id = event.thread.id
                    break
            assert thread_id is not None
            with pytest.raises(ChatKitHTTPError) as busy:
                await b.add_message(thread_id, "second")
            async for _ in events:
                pass
        assert busy.value.status_code == 409
        assert (await b.add_message(thread_id, "after")).errors == []

        # The rate limit: 3 writes so far (create, refused message, message).
        results = await asyncio.gather(
            *(
                clients[n % 2].post_raw(
                    f'{{"type":"threads.update","params":{{"thread_id":"{thread_id}",'
                    f'"title":"t{n}"}}}}'
                )
                for n in range(10)
            )
        )
        statuses = sorted(response.status_code for response in results)
        assert statuses == [200] * (LIMIT - 3) + [429] * (10 - (LIMIT - 3))
    finally:
        for client in clients:
            await client.aclose()
