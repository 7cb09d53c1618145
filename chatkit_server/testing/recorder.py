"""A recording proxy for OpenAI-compatible servers.

Point any OpenAI client (or chatkit-server's ``CHATKIT_LLM_BASE_URL``) at
``http://<proxy>/v1``; every request is forwarded to ``upstream`` and its response,
streamed or not, is passed back chunk by chunk while it is written, byte for byte and
with the time of each chunk, as a fixture (see :mod:`chatkit_server.testing.fixtures`):

.. code-block:: python

    recorder = Recorder("http://127.0.0.1:8080/v1", "tests/fixtures/my-model")
    async with serve_app(recorder.app) as url:
        client = AsyncOpenAI(base_url=f"{url}/v1", api_key="x")

Paths are forwarded relative to ``/v1``: ``/v1/chat/completions`` on the proxy becomes
``<upstream>/chat/completions``. The proxy is pure ASGI so chunks reach the client as
soon as the upstream sends them; an upstream that cuts its stream is recorded as
``truncated`` and the client's connection is cut the same way.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
from starlette.types import Message, Receive, Scope, Send

from chatkit_server.testing._fake_wire import _ConnectionDrop, install_log_filter
from chatkit_server.testing.fixtures import (
    KEPT_REQUEST_HEADERS,
    KEPT_RESPONSE_HEADERS,
    Exchange,
    exchange_dir_name,
    next_index,
    write_exchange,
)

__all__ = ["Recorder"]

# Hop-by-hop headers and those httpx sets itself; forwarding them would corrupt the body.
_NOT_FORWARDED = {"host", "content-length", "connection", "accept-encoding", "transfer-encoding"}
_DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)


class Recorder:
    """An ASGI app that forwards to ``upstream`` and writes one fixture per request.

    Attributes:
        app: The ASGI app to serve (the instance itself).
        upstream: Base URL of the real server, as given to an OpenAI client (``.../v1``).
        out: The fixture directory; numbering continues after what it already holds.
        meta: Extra ``meta.json`` fields written with every fixture.
        written: Directories written so far, in order.
    """

    def __init__(
        self,
        upstream: str,
        out: Path | str,
        *,
        source: str = "recorded",
        note: str = "",
        meta: dict[str, Any] | None = None,
        timeout: httpx.Timeout = _DEFAULT_TIMEOUT,
    ) -> None:
        """Prepare the proxy; nothing is written until a request arrives.

        Args:
            upstream: Base URL of the server to record, e.g. ``http://127.0.0.1:8080/v1``.
            out: Directory for the fixtures (created when needed).
            source: ``"recorded"``, or ``"hand-written"`` when the upstream is itself a
                hand-written imitation (such as ``FakeBackend``).
            note: Free text for ``meta.json``: what was recorded and why.
            meta: More ``meta.json`` fields.
            timeout: Timeouts of the upstream requests.
        """
        install_log_filter()
        self.upstream = upstream.rstrip("/")
        self.out = Path(out)
        self.meta = {"source": source, "note": note, **(meta or {})}
        self.written: list[Path] = []
        self._timeout = timeout
        self._next = next_index(self.out)
        self.app = self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward one request and record it (ASGI entry point)."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        index, self._next = self._next, self._next + 1
        body = await _read_body(receive)
        path: str = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        url = self.upstream + path.removeprefix("/v1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        forwarded = {k: v for k, v in headers.items() if k not in _NOT_FORWARDED}
        # Identity encoding: the fixture must hold the bytes a client reads, not gzip.
        forwarded["accept-encoding"] = "identity"
        exchange = Exchange(
            name=exchange_dir_name(index, path),
            method=scope["method"],
            path=path,
            request_headers={k: v for k, v in headers.items() if k in KEPT_REQUEST_HEADERS},
            request_body=_json_or_none(body),
            status=0,
            response_headers={},
            streamed=False,
            body=b"",
            meta={**self.meta, "upstream": self.upstream},
        )
        started = time.monotonic()
        parts: list[bytes] = []
        gone: list[bool] = []
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            try:
                upstream = client.stream(scope["method"], url, content=body, headers=forwarded)
                async with upstream as response:
                    exchange.status = response.status_code
                    exchange.response_headers = {
                        k: v for k, v in response.headers.items() if k in KEPT_RESPONSE_HEADERS
                    }
                    exchange.streamed = response.headers.get("content-type", "").startswith(
                        "text/event-stream"
                    )
                    await send(_start(response))
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(_watch_client, receive, tg.cancel_scope, gone)
                        await _pump(response, exchange, parts, send, started)
                        tg.cancel_scope.cancel()
            except httpx.TransportError as exc:
                if exchange.status:
                    raise
                await _send_error(send, 502, f"recording proxy: upstream {url}: {exc!r}")
                return
        exchange.body = b"".join(parts)
        if gone:
            # The client pressed stop; leaving the upstream request closed it, so the
            # upstream stops generating too. A replay cuts the stream at the same point.
            exchange.truncated = True
            exchange.meta["client_disconnected"] = True
        self.written.append(write_exchange(self.out, exchange))
        if gone:
            return
        if exchange.truncated:
            # Cut the client's connection as the upstream cut ours.
            raise _ConnectionDrop("upstream cut its response; cut the client's too")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _pump(
    response: httpx.Response, exchange: Exchange, parts: list[bytes], send: Send, started: float
) -> None:
    try:
        async for chunk in response.aiter_raw():
            exchange.chunks.append(((time.monotonic() - started) * 1000, len(chunk)))
            parts.append(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except httpx.TransportError:
        exchange.truncated = True


async def _watch_client(
    receive: Receive, scope: anyio.CancelScope, gone: list[bool] | None = None
) -> None:
    # uvicorn's send() is silent once the client is gone; only receive() tells.
    while (await receive())["type"] != "http.disconnect":
        pass
    if gone is not None:
        gone.append(True)
    scope.cancel()


def _start(response: httpx.Response) -> Message:
    headers = [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in response.headers.items()
        if k.lower() not in {"content-length", "transfer-encoding", "connection"}
    ]
    return {"type": "http.response.start", "status": response.status_code, "headers": headers}


async def _send_error(send: Send, status: int, message: str) -> None:
    data = json.dumps({"error": {"message": message, "type": "proxy_error"}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", "replace")


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
