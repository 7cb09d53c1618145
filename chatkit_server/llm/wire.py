"""Reading a backend's streamed answer: server-sent events to typed chunks.

Every OpenAI-compatible server streams an answer as server-sent events, one
JSON object per token. This module turns the bytes of such a body into the
``openai`` package's own types (:class:`~openai.types.chat.ChatCompletionChunk`
or a Responses stream event), which is what the Agents SDK reads.

Chunks are built with pydantic's validator, which is an order of magnitude
cheaper than the lenient constructor the ``openai`` client uses for every
streamed chunk (``bench/bench_streaming.py`` measures the server's CPU per
token). A chunk that does not validate (llama-server's Responses stream
leaves out fields the types require) is built leniently with the types' own
``construct``, as the client would, and repaired later by the stream fix-ups.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar, get_args

import pydantic
from openai.types.responses import ResponseStreamEvent

__all__ = [
    "PROVIDER_DELTA_FIELDS",
    "SSEDecoder",
    "ServerSentEvent",
    "build_model",
    "response_event_class",
]

_M = TypeVar("_M", bound=pydantic.BaseModel)

PROVIDER_DELTA_FIELDS: Final = (
    "audio",
    "annotations",
    "reasoning",
    "reasoning_content",
    "thinking_blocks",
)
"""Delta fields only some servers send, which the Agents SDK probes on every chunk.

A probe of an attribute a pydantic model does not have raises (and catches)
two exceptions inside pydantic; present as ``None``, which is what the SDK
assumes when they are absent, a probe is a dictionary lookup.
"""


class ServerSentEvent:
    """One event of an SSE stream (the fields this server reads).

    Attributes:
        event: The ``event:`` field, or ``None``.
        data: The ``data:`` lines, joined by newlines.
    """

    __slots__ = ("data", "event")

    def __init__(self, data: str, event: str | None = None) -> None:
        self.data = data
        self.event = event

    def __repr__(self) -> str:
        return f"ServerSentEvent(event={self.event!r}, data={self.data!r})"


class SSEDecoder:
    """Decodes an SSE byte stream read by read, as the WHATWG specification says.

    Lines end with CR, LF or CRLF, even when a read splits them; ``:`` starts
    a comment; an empty line ends an event; an event without data is
    dropped. ``id`` and ``retry`` are accepted and ignored (a model stream is
    never resumed). One difference: a last event that the body ends without
    its empty line is still passed on (:meth:`finish`), not dropped, so an
    answer cut off in the middle of an event is reported as broken rather
    than ending quietly.
    """

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[str] = []
        self._event: str | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events that ``chunk`` completes, in order."""
        if not self._pending and not self._data and self._event is None:
            plain = _plain_events(chunk)
            if plain is not None:
                return plain
        data = self._pending + chunk if self._pending else chunk
        lines = data.splitlines(keepends=True)
        # An unfinished last line waits for the next read; so does a final
        # CR, whose LF may be the next read's first byte (one CRLF, not two
        # line ends, which would end an event early).
        if lines and (not lines[-1].endswith((b"\n", b"\r")) or lines[-1].endswith(b"\r")):
            self._pending = lines.pop()
        else:
            self._pending = b""
        return [event for line in lines if (event := self._line(line.rstrip(b"\r\n")))]

    def finish(self) -> list[ServerSentEvent]:
        """The last event, when the stream ended without its empty line."""
        pending, self._pending = self._pending, b""
        events = []
        if pending and (event := self._line(pending.rstrip(b"\r\n"))):
            events.append(event)
        if event := self._line(b""):
            events.append(event)
        return events

    def _line(self, raw: bytes) -> ServerSentEvent | None:
        line = raw.decode("utf-8")
        if not line:
            if not self._data:
                self._event = None
                return None
            event = ServerSentEvent("\n".join(self._data), self._event)
            self._data, self._event = [], None
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None


def _plain_events(chunk: bytes) -> list[ServerSentEvent] | None:
    """The events of a read made only of whole ``data: ...`` events, else ``None``.

    That is how OpenAI-compatible servers stream, one event per token, and
    it needs no line-by-line decoding. Anything else (CR line ends,
    comments, other fields, several data lines, an event split across
    reads) takes the general path.
    """
    if not chunk.endswith(b"\n\n") or b"\r" in chunk:
        return None
    events = []
    for part in chunk[:-2].split(b"\n\n"):
        if not part.startswith(b"data: ") or b"\n" in part:
            return None
        events.append(ServerSentEvent(part[6:].decode("utf-8")))
    return events


def build_model(cls: type[_M], data: dict[str, Any]) -> _M:
    """``cls`` built from ``data``: validated, or leniently as the ``openai`` client does.

    For a Chat Completions chunk, each choice's delta gets the
    :data:`PROVIDER_DELTA_FIELDS` it lacks, as ``None``.
    """
    for choice in data.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict):
            for name in PROVIDER_DELTA_FIELDS:
                delta.setdefault(name, None)
    try:
        return cls.model_validate(data)
    except pydantic.ValidationError:
        # The openai types' own lenient constructor: what the client itself
        # builds from a body that does not match the type.
        construct = getattr(cls, "construct", None)
        if construct is None:  # pragma: no cover - every openai model has it
            raise
        built: _M = construct(**data)
        return built


def _stream_event_classes() -> dict[str, type[pydantic.BaseModel]]:
    """Each Responses stream event class by the value of its ``type`` field."""
    (union, *_annotations) = get_args(ResponseStreamEvent)
    classes: dict[str, type[pydantic.BaseModel]] = {}
    for cls in get_args(union):
        for tag in get_args(cls.model_fields["type"].annotation):
            classes[tag] = cls
    return classes


_RESPONSE_EVENTS: Final = _stream_event_classes()


def response_event_class(kind: object) -> type[pydantic.BaseModel] | None:
    """The Responses stream event class whose ``type`` is ``kind``, if any."""
    return _RESPONSE_EVENTS.get(kind) if isinstance(kind, str) else None
