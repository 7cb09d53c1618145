"""Upload figures: memory and speed of a large upload, and how fast an oversized one is cut.

Starts ``chatkit-server serve`` (this checkout, sign-in off, no model) on a
free loopback port with its data dir in a temporary directory, then:

- **memory**: the server's RSS while a 100 MB file is uploaded (``PUT``,
  two-phase, and ``POST`` multipart, direct), sampled every 5 ms: its rise
  over the RSS before the upload (target: under 20 MB);
- **speed**: each upload's time against copying the same bytes to a file on
  the same disk (write and fsync), as a ratio (1.0: as fast as a copy;
  target: at least 0.5). The copy is timed just before each upload, so
  both see the same load on a shared machine; the figure is the median of
  ``--runs`` pairs, after one warm-up upload of each kind. Each write
  finds the disk as the other left it: the copy's file is deleted before
  the upload, the upload before the next copy. (On a virtual disk mounted
  with ``discard``, 100 MB written where nothing was written lately took
  about five times as long as 100 MB written where a file was just
  deleted: kept files, or pauses between the two, would time one against
  the other's luck.);
- **cut**: an upload 5 times over the limit, streamed: the bytes the client
  had sent when the 413 arrived (target: within a few MB of the limit).

The uploading client is the standard library's ``http.client``, sending the
file with a ``Content-Length`` (as a browser's ``fetch`` of a ``File``
does) a megabyte per ``sendall``: it shares the cores with the server, and
a client that spent more CPU per byte (httpx, chunked) would make the
figure partly the client's.

Run: ``.venv/bin/python bench/bench_uploads.py [--mb 100] [--runs 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

CHUNK = 1024 * 1024
# The oversized upload's chunks: how closely the cut is seen.
CUT_CHUNK = 256 * 1024
REPO = Path(__file__).resolve().parent.parent
SPEED_TARGET = 0.5
RSS_TARGET_MB = 20


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
    # cwd too: ``-m`` puts the working directory before PYTHONPATH.
    process = subprocess.Popen(
        [sys.executable, "-m", "chatkit_server.cli", "serve", "--port", str(port)],
        env=env,
        cwd=REPO,
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


def _body(total: int) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        piece = _TEXT[: min(CHUNK, total - sent)]
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


def _send(
    url: str, method: str, headers: dict[str, str], head: bytes, total: int = 0, tail: bytes = b""
) -> tuple[int, bytes]:
    """One request whose body is ``head``, ``total`` bytes of text, ``tail``; its answer."""
    target = httpx.URL(url)
    connection = http.client.HTTPConnection(target.host, target.port, timeout=300)
    try:
        connection.putrequest(method, target.raw_path.decode())
        length = len(head) + total + len(tail)
        for name, value in {**headers, "Content-Length": str(length)}.items():
            connection.putheader(name, value)
        connection.endheaders(head)
        for piece in _body(total):
            connection.send(piece)
        connection.send(tail)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _call(url: str, request: dict[str, object]) -> dict[str, object]:
    """One ``/chatkit`` request with a JSON answer."""
    status, body = _send(
        f"{url}/chatkit", "POST", {"Content-Type": "application/json"}, json.dumps(request).encode()
    )
    assert status == 200, body[:300]
    answer: dict[str, object] = json.loads(body)
    return answer


def _upload(url: str, total: int, how: str) -> str:
    """Upload ``total`` bytes of text: ``PUT`` two-phase, or ``POST`` multipart direct; its id."""
    if how == "PUT":
        created = _call(
            url,
            {
                "type": "attachments.create",
                "params": {"name": "big.txt", "size": total, "mime_type": "text/plain"},
            },
        )
        descriptor = created["upload_descriptor"]
        assert isinstance(descriptor, dict)
        status, body = _send(descriptor["url"], "PUT", {}, b"", total)
    else:
        boundary = "benchboundary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="big.bin"\r\nContent-Type: text/plain\r\n\r\n'
        ).encode()
        status, body = _send(
            f"{url}/chatkit/attachments",
            "POST",
            {"Content-Type": f"multipart/form-data; boundary={boundary}"},
            head,
            total,
            f"\r\n--{boundary}--\r\n".encode(),
        )
    assert status == 200, body[:300]
    attachment_id: str = json.loads(body)["id"]
    return attachment_id


def _measured(url: str, process: psutil.Process, total: int, how: str) -> tuple[float, int]:
    """Seconds of one upload and the server's RSS rise during it; the upload is then deleted."""
    base = process.memory_info().rss
    with _Peak(process) as peak:
        start = time.perf_counter()
        attachment_id = _upload(url, total, how)
        seconds = time.perf_counter() - start
    _call(url, {"type": "attachments.delete", "params": {"attachment_id": attachment_id}})
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
    block = b"x" * CUT_CHUNK
    try:
        while sent < 5 * limit and not answer.done():
            writer.write(f"{CUT_CHUNK:x}\r\n".encode() + block + b"\r\n")
            await writer.drain()
            sent += CUT_CHUNK
            await asyncio.sleep(0)
    except ConnectionError:
        pass
    response = await asyncio.wait_for(answer, 30)
    writer.close()
    assert response.startswith(b"HTTP/1.1 413"), response[:100]
    return sent


def _speed(url: str, process: psutil.Process, directory: Path, total: int, runs: int) -> None:
    for how in ("PUT", "POST"):
        _upload(url, 1024 * 1024, how)  # warm-up: lazy imports, first connections
    figures: dict[str, list[tuple[float, float, int]]] = {"PUT": [], "POST": []}
    for _ in range(runs):
        for how, pairs in figures.items():
            copy = _copy_seconds(directory, total)
            seconds, rise = _measured(url, process, total, how)
            pairs.append((copy, seconds, rise))
            print(
                f"  {how} {total / 2**20:.0f} MB: {seconds:.3f} s, copy {copy:.3f} s, "
                f"ratio {copy / seconds:.2f}, RSS rise {rise / 2**20:.1f} MB"
            )
    for how, pairs in figures.items():
        ratio = statistics.median(copy / seconds for copy, seconds, _ in pairs)
        rise = max(rise for _, _, rise in pairs) / 2**20
        print(
            f"{how} {total / 2**20:.0f} MB, median of {runs}: "
            f"{statistics.median(seconds for _, seconds, _ in pairs):.3f} s, "
            f"copy {statistics.median(copy for copy, _, _ in pairs):.3f} s, "
            f"speed ratio {ratio:.2f} (target >= {SPEED_TARGET}: "
            f"{'PASS' if ratio >= SPEED_TARGET else 'MISS'}); "
            f"RSS rise at most {rise:.1f} MB (target < {RSS_TARGET_MB} MB: "
            f"{'PASS' if rise < RSS_TARGET_MB else 'MISS'})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the large upload in MB")
    parser.add_argument("--runs", type=int, default=5, help="uploads of each kind (median)")
    args = parser.parse_args()
    total = args.mb * 1024 * 1024
    with tempfile.TemporaryDirectory(dir=REPO) as scratch:
        data_dir = Path(scratch)
        with _server(data_dir, limit=total + 1024) as (url, process):
            _speed(url, process, data_dir, total, args.runs)
        limit = 20 * 1024 * 1024
        with _server(data_dir, limit=limit) as (url, _):
            sent = asyncio.run(_cut(url, limit))
            print(
                f"oversized upload: 413 after the client sent {sent / 2**20:.1f} MB "
                f"of {5 * limit / 2**20:.0f} MB (limit {limit / 2**20:.0f} MB)"
            )


if __name__ == "__main__":
    main()
