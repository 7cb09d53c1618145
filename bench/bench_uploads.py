"""Upload figures: memory and speed of a large upload, and how fast an oversized one is cut.

Starts ``chatkit-server serve`` (this checkout, sign-in off, no model) on a
free loopback port with its data dir in a temporary directory, then:

- **memory**: the server's RSS while a 100 MB file is uploaded (``PUT``,
  two-phase, and ``POST`` multipart, direct), sampled every 5 ms: its rise
  over the RSS before the upload;
- **speed**: each upload's time against copying the same bytes to a file on
  the same disk (write and fsync), as a ratio (1.0: as fast as a copy);
- **cut**: an upload 5 times over the limit, streamed: the bytes the client
  had sent when the 413 arrived.

Run: ``.venv/bin/python bench/bench_uploads.py [--mb 100]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

CHUNK = 256 * 1024
REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _server(data_dir: Path, limit: int) -> Iterator[tuple[str, psutil.Process]]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATKIT_")}
    env.update(
        CHATKIT_DATA_DIR=str(data_dir),
        CHATKIT_LOCAL_MODEL="off",
        CHATKIT_MAX_UPLOAD_BYTES=str(limit),
        CHATKIT_LOG_LEVEL="warning",
        PYTHONPATH=str(REPO),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "chatkit_server.cli", "serve", "--port", str(port)], env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield url, psutil.Process(process.pid)
    finally:
        process.terminate()
        process.wait(30)


# Text, so the upload is accepted and stored in full (written, fsynced, renamed).
_TEXT = (b"All work and no play makes a dull upload.\n" * (CHUNK // 42 + 1))[:CHUNK]


async def _body(total: int) -> AsyncIterator[bytes]:
    block = _TEXT
    sent = 0
    while sent < total:
        piece = block[: min(CHUNK, total - sent)]
        sent += len(piece)
        yield piece


class _Peak:
    """The highest RSS of a process, sampled in a thread."""

    def __init__(self, process: psutil.Process) -> None:
        self._process = process
        self.peak = process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> _Peak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _copy_seconds(directory: Path, total: int) -> float:
    block = _TEXT
    path = directory / "copy.bin"
    start = time.perf_counter()
    with path.open("wb") as out:
        written = 0
        while written < total:
            written += out.write(block[: min(CHUNK, total - written)])
        out.flush()
        os.fsync(out.fileno())
    seconds = time.perf_counter() - start
    path.unlink()
    return seconds


async def _upload(url: str, process: psutil.Process, total: int, how: str) -> tuple[float, int]:
    async with httpx.AsyncClient(timeout=300) as http:
        base = process.memory_info().rss
        with _Peak(process) as peak:
            start = time.perf_counter()
            if how == "PUT":
                created = (
                    await http.post(
                        f"{url}/chatkit",
                        json={
                            "type": "attachments.create",
                            "params": {"name": "big.txt", "size": total, "mime_type": "text/plain"},
                        },
                    )
                ).json()
                response = await http.put(created["upload_descriptor"]["url"], content=_body(total))
            else:
                boundary = "benchboundary"

                async def multipart() -> AsyncIterator[bytes]:
                    yield (
                        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                        'filename="big.bin"\r\nContent-Type: text/plain\r\n\r\n'
                    ).encode()
                    async for piece in _body(total):
                        yield piece
                    yield f"\r\n--{boundary}--\r\n".encode()

                response = await http.post(
                    f"{url}/chatkit/attachments",
                    content=multipart(),
                    headers={"content-type": f"multipart/form-data; boundary={boundary}"},
                )
            seconds = time.perf_counter() - start
    assert response.status_code == 200, response.text
    return seconds, peak.peak - base


async def _cut(url: str, limit: int) -> int:
    """Bytes sent of a 5x oversized chunked PUT when the 413 arrived."""
    async with httpx.AsyncClient() as http:
        created = (
            await http.post(
                f"{url}/chatkit",
                json={
                    "type": "attachments.create",
                    "params": {"name": "big.txt", "size": 1, "mime_type": "text/plain"},
                },
            )
        ).json()
    target = httpx.URL(created["upload_descriptor"]["url"])
    reader, writer = await asyncio.open_connection(target.host, target.port)
    writer.write(
        f"PUT {target.raw_path.decode()} HTTP/1.1\r\nHost: {target.host}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
    )
    answer = asyncio.ensure_future(reader.read(4096))
    sent = 0
    block = b"x" * CHUNK
    try:
        while sent < 5 * limit and not answer.done():
            writer.write(f"{CHUNK:x}\r\n".encode() + block + b"\r\n")
            await writer.drain()
            sent += CHUNK
            await asyncio.sleep(0)
    except ConnectionError:
        pass
    response = await asyncio.wait_for(answer, 30)
    writer.close()
    assert response.startswith(b"HTTP/1.1 413"), response[:100]
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the large upload in MB")
    args = parser.parse_args()
    total = args.mb * 1024 * 1024
    with tempfile.TemporaryDirectory(dir=REPO) as scratch:
        data_dir = Path(scratch)
        copy = _copy_seconds(data_dir, total)
        with _server(data_dir, limit=total + 1024) as (url, process):
            for how in ("PUT", "POST"):
                seconds, rise = asyncio.run(_upload(url, process, total, how))
                print(
                    f"{how} {args.mb} MB: {seconds:.2f} s (copy {copy:.2f} s, "
                    f"speed ratio {copy / seconds:.2f}), RSS rise {rise / 2**20:.1f} MB"
                )
        limit = 20 * 1024 * 1024
        with _server(data_dir, limit=limit) as (url, _):
            sent = asyncio.run(_cut(url, limit))
            print(
                f"oversized upload: 413 after the client sent {sent / 2**20:.1f} MB "
                f"of {5 * limit / 2**20:.0f} MB (limit {limit / 2**20:.0f} MB)"
            )


if __name__ == "__main__":
    main()
