"""The on-disk format of recorded backend exchanges, shared by the recorder and the replayer.

A fixture directory holds one sub-directory per request, numbered in the order the
requests arrived, e.g. ``0001-chat-completions/``:

``request.json``
    ``{"method", "path", "headers", "body"}``: the request as the client sent it. Only
    harmless headers are kept (never ``authorization``); ``body`` is the parsed JSON.
``response.json``
    ``{"status", "headers", "streamed", "truncated", "chunks"}``: ``chunks`` lists
    ``[ms_since_request, n_bytes]`` per chunk as the upstream sent it, so a replay can
    reproduce both the chunk boundaries and their timing; ``truncated`` is true when the
    upstream cut the connection before the end of its body.
``body.sse`` or ``body.json``
    The response body, byte for byte: ``body.sse`` for an event stream, else ``body.json``.
``meta.json``
    ``{"source": "recorded" | "hand-written", "note", ...}``: where the bytes come from.
    Hand-written fixtures imitate servers that cannot run here; say which and why.

Everything is plain text so a fixture can be read, diffed and (carefully) edited by hand.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from chatkit_server.errors import ChatKitServerError

__all__ = [
    "Exchange",
    "FixtureError",
    "dump_json",
    "exchange_dir_name",
    "load_exchanges",
    "next_index",
    "parse_sse",
    "write_exchange",
]

Source = Literal["recorded", "hand-written"]
SOURCES = ("recorded", "hand-written")
# Recorded request headers: enough to replay faithfully, never credentials.
KEPT_REQUEST_HEADERS = ("content-type", "accept", "openai-beta")
KEPT_RESPONSE_HEADERS = ("content-type",)
_DIR_NAME = re.compile(r"^(\d{4,})-[a-z0-9-]+$")


class FixtureError(ChatKitServerError):
    """A fixture directory or file is missing or malformed; the message names the file."""


@dataclass
class Exchange:
    """One request and the response it got.

    Attributes:
        name: Directory name, e.g. ``"0001-chat-completions"``.
        method: HTTP method.
        path: Request path, e.g. ``"/v1/chat/completions"``.
        request_headers: The kept request headers (lower-case names).
        request_body: Parsed JSON request body, or None.
        status: Response status.
        response_headers: The kept response headers.
        streamed: The body is an event stream.
        body: The response body bytes.
        chunks: ``(ms_since_request, n_bytes)`` per chunk; sizes add up to ``len(body)``.
        truncated: The upstream cut the connection before the end of the body.
        meta: ``meta.json``: ``source``, ``note`` and anything else the author kept.
    """

    name: str
    method: str
    path: str
    request_headers: dict[str, str]
    request_body: Any
    status: int
    response_headers: dict[str, str]
    streamed: bool
    body: bytes
    chunks: list[tuple[float, int]] = field(default_factory=list)
    truncated: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        """``"recorded"`` or ``"hand-written"``."""
        return str(self.meta.get("source", "recorded"))

    @property
    def body_file(self) -> str:
        """Name of the body file: ``body.sse`` or ``body.json``."""
        return "body.sse" if self.streamed else "body.json"


def dump_json(value: Any) -> str:
    """JSON as fixtures store it: indented, keys in their order, non-ASCII kept readable."""
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def exchange_dir_name(index: int, path: str) -> str:
    """``0003-chat-completions`` for request 3 to ``/v1/chat/completions``."""
    slug = re.sub(r"[^a-z0-9]+", "-", path.lower().removeprefix("/v1")).strip("-") or "root"
    return f"{index:04d}-{slug}"


def next_index(directory: Path) -> int:
    """The number the next exchange gets: one past the highest already in ``directory``."""
    if not directory.is_dir():
        return 1
    numbers = [int(m.group(1)) for p in directory.iterdir() if (m := _DIR_NAME.match(p.name))]
    return max(numbers, default=0) + 1


def write_exchange(directory: Path, exchange: Exchange) -> Path:
    """Write ``exchange`` as ``directory/exchange.name/``; returns that directory."""
    target = directory / exchange.name
    target.mkdir(parents=True, exist_ok=True)
    request = {
        "method": exchange.method,
        "path": exchange.path,
        "headers": exchange.request_headers,
        "body": exchange.request_body,
    }
    response = {
        "status": exchange.status,
        "headers": exchange.response_headers,
        "streamed": exchange.streamed,
        "truncated": exchange.truncated,
    }
    # One chunk per line: a long stream stays short to read and to diff.
    chunks = ",\n".join(f"    [{round(ms, 1)}, {size}]" for ms, size in exchange.chunks)
    response_text = dump_json(response)[: -len("\n}\n")] + f',\n  "chunks": [\n{chunks}\n  ]\n}}\n'
    (target / "request.json").write_text(dump_json(request), encoding="utf-8")
    (target / exchange.body_file).write_bytes(exchange.body)
    (target / "response.json").write_text(response_text, encoding="utf-8")
    (target / "meta.json").write_text(dump_json(exchange.meta), encoding="utf-8")
    return target


def load_exchanges(directory: Path | str) -> list[Exchange]:
    """Load and check every exchange of a fixture directory, in order.

    Raises:
        FixtureError: The directory is missing or empty, or a file is missing, is not
            valid JSON, or (``body.sse``) is not a valid event stream; the message names it.
    """
    root = Path(directory)
    if not root.is_dir():
        raise FixtureError(f"{root}: fixture directory not found")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and _DIR_NAME.match(p.name))
    if not subdirs:
        raise FixtureError(f"{root}: no fixtures (expected sub-directories like 0001-responses/)")
    return [_load_one(p) for p in subdirs]


def _load_one(path: Path) -> Exchange:
    request = _read_json(path / "request.json")
    response = _read_json(path / "response.json")
    meta = _read_json(path / "meta.json")
    try:
        streamed = bool(response["streamed"])
        status = int(response["status"])
        chunks = [(float(ms), int(size)) for ms, size in response.get("chunks", [])]
        method, req_path = str(request["method"]), str(request["path"])
    except (KeyError, TypeError, ValueError) as exc:
        raise FixtureError(f"{path}: request.json/response.json lack a field: {exc!r}") from exc
    if meta.get("source") not in SOURCES:
        raise FixtureError(f"{path / 'meta.json'}: 'source' must be one of {SOURCES}")
    exchange = Exchange(
        name=path.name,
        method=method,
        path=req_path,
        request_headers=dict(request.get("headers") or {}),
        request_body=request.get("body"),
        status=status,
        response_headers=dict(response.get("headers") or {}),
        streamed=streamed,
        body=b"",
        chunks=chunks,
        truncated=bool(response.get("truncated", False)),
        meta=meta,
    )
    body_path = path / exchange.body_file
    try:
        exchange.body = body_path.read_bytes()
    except OSError as exc:
        raise FixtureError(f"{body_path}: cannot read: {exc.strerror}") from exc
    if sum(size for _, size in chunks) != len(exchange.body):
        # An edited body whose chunk list no longer fits: replay it as one chunk.
        exchange.chunks = [(chunks[0][0] if chunks else 0.0, len(exchange.body))]
    if streamed:
        try:
            parse_sse(exchange.body, allow_partial=exchange.truncated)
        except ValueError as exc:
            raise FixtureError(f"{body_path}: not a valid event stream: {exc}") from exc
    elif not exchange.truncated and exchange.body:
        try:
            json.loads(exchange.body)
        except ValueError as exc:
            raise FixtureError(f"{body_path}: not valid JSON: {exc}") from exc
    return exchange


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FixtureError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FixtureError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise FixtureError(f"{path}: must hold a JSON object")
    return value


def parse_sse(body: bytes, *, allow_partial: bool = False) -> list[tuple[str | None, str]]:
    """Split an event stream into ``(event_name, data)`` pairs, checking every data is JSON.

    ``[DONE]`` (the OpenAI end marker) is accepted as data. With ``allow_partial`` the
    text after the last blank line (a stream cut mid-event) is ignored.

    Raises:
        ValueError: A line is not SSE, or an event's data is not JSON; names the line.
    """
    text = body.decode("utf-8").replace("\r\n", "\n")
    events: list[tuple[str | None, str]] = []
    name: str | None = None
    data: list[str] = []
    start = 1
    lines = text.split("\n")
    complete = len(lines) - 1 if allow_partial else len(lines)
    for number, line in enumerate(lines[:complete], start=1):
        if line == "":
            if data:
                payload = "\n".join(data)
                if payload != "[DONE]":
                    try:
                        json.loads(payload)
                    except ValueError as exc:
                        raise ValueError(f"line {start}: event data is not JSON ({exc})") from exc
                events.append((name, payload))
            name, data, start = None, [], number + 1
        elif line.startswith(":"):
            continue
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith(("id:", "retry:")):
            continue
        else:
            raise ValueError(f"line {number}: not an SSE field: {line[:60]!r}")
    if data and not allow_partial:
        raise ValueError(f"line {start}: the last event does not end with a blank line")
    return events
