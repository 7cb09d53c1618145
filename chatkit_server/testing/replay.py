"""An OpenAI-compatible server that answers from recorded fixtures.

.. code-block:: python

    replay = ReplayBackend("tests/fixtures/llama-server/chat-two-turns")
    async with serve_app(replay.app) as url:
        ...  # point the client (or chatkit-server) at f"{url}/v1"
    replay.assert_all_used()
    assert replay.received[0].body["messages"][-1]["content"] == "Hello"

Matching (``match=``):

``"sequence"`` (default)
    Request *n* is answered by fixture *n*, in directory order. It must look like the
    request recorded there (see :func:`request_view`), else it gets a 409.
``"key"``
    A request is answered by the first unused fixture with the same :func:`request_key`,
    whatever the order: for clients that send requests concurrently.

Two requests "look alike" when :func:`request_view` gives the same result: method, path,
``model``, ``stream``, the tool names and the ``messages`` (Chat Completions) or ``input``
(Responses), with every ``id`` field and every null dropped, since ids differ between runs.
``request_key`` is the first 16 hex digits of the SHA-256 of that view as canonical JSON.

A request with no matching fixture gets ``409`` and an OpenAI-style error whose message
holds a unified diff of the expected request (the next unused fixture) against the one
received. Every request lands in :attr:`ReplayBackend.received`, mismatches included.

Speed (``speed=``): ``"fast"`` sends the recorded chunks as quickly as possible, keeping
their boundaries; ``"realtime"`` waits for each chunk's recorded time. A truncated
fixture cuts the connection after its last chunk, as the upstream did.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
from anyio.lowlevel import checkpoint
from starlette.types import Receive, Scope, Send

from chatkit_server.testing._fake_wire import _ConnectionDrop, install_log_filter
from chatkit_server.testing.fixtures import Exchange, dump_json, load_exchanges
from chatkit_server.testing.recorder import _json_or_none, _lifespan, _read_body, _watch_client

__all__ = ["MatchMode", "ReceivedRequest", "ReplayBackend", "Speed", "request_key", "request_view"]

MatchMode = Literal["sequence", "key"]
Speed = Literal["realtime", "fast"]
MISMATCH_STATUS = 409
_IGNORED_KEYS = {"id"}


@dataclass
class ReceivedRequest:
    """A request the replay server received.

    Attributes:
        method: HTTP method.
        path: URL path.
        headers: Headers, names in lower case.
        body: Parsed JSON body (the raw text if not JSON; None if empty).
        fixture: Name of the fixture that answered, or None on a mismatch.
        error: Why no fixture answered (the message sent with the 409), or None.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    fixture: str | None = None
    error: str | None = None


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in _IGNORED_KEYS and v is not None}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def request_view(method: str, path: str, body: Any) -> dict[str, Any]:
    """The parts of a request that matching compares (see the module docstring)."""
    view: dict[str, Any] = {"method": method.upper(), "path": path}
    if isinstance(body, dict):
        view["model"] = body.get("model")
        view["stream"] = bool(body.get("stream", False))
        tools = body.get("tools") or []
        view["tools"] = sorted(
            str(t.get("name") or (t.get("function") or {}).get("name"))
            for t in tools
            if isinstance(t, dict)
        )
        for field in ("messages", "input"):
            if field in body:
                view[field] = _strip(body[field])
    elif body is not None:
        view["body"] = body
    return view


def request_key(method: str, path: str, body: Any) -> str:
    """The matching key of a request: a hash of :func:`request_view`."""
    canonical = json.dumps(request_view(method, path, body), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class ReplayBackend:
    """An ASGI app that answers OpenAI-compatible requests from fixtures.

    Attributes:
        app: The ASGI app to serve (the instance itself).
        exchanges: The loaded fixtures, in order.
        match: ``"sequence"`` or ``"key"``.
        speed: ``"fast"`` or ``"realtime"``.
        received: Every request received, in order.
    """

    def __init__(
        self,
        fixtures: Path | str | Sequence[Exchange],
        *,
        match: MatchMode = "sequence",
        speed: Speed = "fast",
    ) -> None:
        """Load the fixtures (errors surface here, naming the file).

        Args:
            fixtures: A fixture directory, or exchanges already loaded.
            match: How requests find their fixture (see the module docstring).
            speed: ``"fast"`` or ``"realtime"`` chunk timing.

        Raises:
            FixtureError: The directory is missing, empty or holds a malformed fixture.
            ValueError: Unknown ``match`` or ``speed``.
        """
        if match not in ("sequence", "key"):
            raise ValueError(f"match must be 'sequence' or 'key', not {match!r}")
        if speed not in ("realtime", "fast"):
            raise ValueError(f"speed must be 'realtime' or 'fast', not {speed!r}")
        install_log_filter()
        loaded = load_exchanges(fixtures) if isinstance(fixtures, (str, Path)) else fixtures
        self.exchanges: list[Exchange] = list(loaded)
        self.match: MatchMode = match
        self.speed: Speed = speed
        self.received: list[ReceivedRequest] = []
        self._used = [False] * len(self.exchanges)
        self._keys = [request_key(e.method, e.path, e.request_body) for e in self.exchanges]
        self.app = self

    @property
    def unused(self) -> list[str]:
        """Names of the fixtures no request has used yet."""
        return [e.name for e, used in zip(self.exchanges, self._used, strict=True) if not used]

    @property
    def mismatches(self) -> list[ReceivedRequest]:
        """The received requests that no fixture answered."""
        return [r for r in self.received if r.fixture is None]

    def assert_all_used(self) -> None:
        """Fail unless every fixture answered a request and no request was refused."""
        problems = [f"{r.method} {r.path}: {r.error}" for r in self.mismatches]
        if self.unused:
            problems.append(f"fixtures never requested: {', '.join(self.unused)}")
        if problems:
            raise AssertionError("replay did not go as recorded:\n" + "\n".join(problems))

    def _find(self, method: str, path: str, body: Any) -> tuple[int | None, str | None]:
        received_view = request_view(method, path, body)
        if self.match == "key":
            key = request_key(method, path, body)
            for i, (used, known) in enumerate(zip(self._used, self._keys, strict=True)):
                if not used and known == key:
                    return i, None
        else:
            index = next((i for i, used in enumerate(self._used) if not used), None)
            if index is not None and self._keys[index] == request_key(method, path, body):
                return index, None
        expected = next(
            (e for e, used in zip(self.exchanges, self._used, strict=True) if not used), None
        )
        if expected is None:
            return None, (
                f"no fixture left: all {len(self.exchanges)} were used; received:\n"
                + dump_json(received_view)
            )
        diff = difflib.unified_diff(
            dump_json(
                request_view(expected.method, expected.path, expected.request_body)
            ).splitlines(),
            dump_json(received_view).splitlines(),
            fromfile=f"expected ({expected.name})",
            tofile="received",
            lineterm="",
        )
        kind = "the next fixture" if self.match == "sequence" else "any unused fixture (by key)"
        return None, f"request does not match {kind}:\n" + "\n".join(diff)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one request from its fixture, or with a 409 (ASGI entry point)."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.monotonic()
        body = _json_or_none(await _read_body(receive))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method, path = scope["method"], scope["path"]
        index, error = self._find(method, path, body)
        record = ReceivedRequest(method, path, headers, body, error=error)
        self.received.append(record)
        if index is None:
            await _send_json(send, MISMATCH_STATUS, _error_body(error or "no fixture"))
            return
        self._used[index] = True
        exchange = self.exchanges[index]
        record.fixture = exchange.name
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_client, receive, tg.cancel_scope)
            await self._send(exchange, started, send)
            tg.cancel_scope.cancel()
        if exchange.truncated:
            raise _ConnectionDrop(f"fixture {exchange.name} is truncated")

    async def _send(self, exchange: Exchange, started: float, send: Send) -> None:
        headers = [
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in exchange.response_headers.items()
        ]
        await send({"type": "http.response.start", "status": exchange.status, "headers": headers})
        offset = 0
        for ms, size in exchange.chunks:
            if self.speed == "realtime":
                await anyio.sleep(max(0.0, started + ms / 1000 - time.monotonic()))
            else:
                # Keep chunk boundaries: let the server flush each one.
                await checkpoint()
            chunk = exchange.body[offset : offset + size]
            offset += size
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if not exchange.truncated:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _error_body(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "replay_mismatch", "param": None, "code": None}}


async def _send_json(send: Send, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
