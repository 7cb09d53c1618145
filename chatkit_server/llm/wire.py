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

from collections.abc import Callable
from typing import Any, Final, TypeVar, get_args

import pydantic
from openai.types.responses import ResponseStreamEvent

__all__ = [
    "PROVIDER_DELTA_FIELDS",
    "SSEDecoder",
    "ServerSentEvent",
    "build_model",
    "merge_chat_text",
    "merge_response_text",
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


# Merging text read together -------------------------------------------------------------
#
# A backend streams one event per token. When the server falls behind (hundreds
# of streams on one process) several of a stream's events wait in its socket
# and arrive in one read. Made one before they are built, they cost one
# validation, one pass through the Agents SDK's stream handler and one ChatKit
# delta instead of one per token. This is the one place text deltas are merged
# for speed (bench/bench_streaming.py --only cpu, 8 unpaced streams: the
# server's CPU per streamed token fell from 46 to 15-17 us). The reader reads
# again only once everything it handed on was taken (chatkit_server.pace), so
# under load what waits is in the socket, and is merged here. Nothing waits for
# an event that has not arrived: while the server keeps up, every read holds
# one event and nothing changes.

# Where a mergeable event's text goes: the run it belongs to, then the dict
# and the key that hold its text.
_Slot = tuple[tuple[Any, ...], dict[str, Any], str]

_CHAT_TEXT_FIELDS: Final = ("content", "reasoning_content", "reasoning", "refusal")
_CHAT_CHUNK_KEYS: Final = frozenset(
    {"id", "object", "created", "model", "choices", "system_fingerprint", "service_tier"}
    | {"obfuscation", "usage", "moderation"}
)
_CHOICE_KEYS: Final = frozenset({"index", "delta", "finish_reason", "logprobs"})


def _chat_text(value: Any) -> _Slot | None:
    """Where a chunk made only of one choice's text goes, else ``None``."""
    if (
        not isinstance(value, dict)
        or not value.keys() <= _CHAT_CHUNK_KEYS
        or value.get("usage") is not None
        or value.get("moderation") is not None
    ):
        return None
    choices = value.get("choices")
    if not isinstance(choices, list) or len(choices) != 1:
        return None
    (choice,) = choices
    if (
        not isinstance(choice, dict)
        or not choice.keys() <= _CHOICE_KEYS
        or choice.get("finish_reason") is not None
        or choice.get("logprobs") is not None
    ):
        return None
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return None
    field = None
    for name, part in delta.items():
        if part is None or name == "role":
            continue
        if field is not None or name not in _CHAT_TEXT_FIELDS or not isinstance(part, str):
            return None
        field = name
    if field is None:
        return None
    run = (value.get("id"), value.get("model"), choice.get("index"), delta.get("role"), field)
    return run, delta, field


_RESPONSE_TEXT_EVENTS: Final = {
    "response.output_text.delta": "content_index",
    "response.refusal.delta": "content_index",
    "response.reasoning_text.delta": "content_index",
    "response.reasoning_summary_text.delta": "summary_index",
}


def _response_text(value: Any) -> _Slot | None:
    """Where a Responses text delta event goes, else ``None``."""
    if (
        not isinstance(value, dict)
        or value.get("logprobs")
        or not isinstance(value.get("delta"), str)
    ):
        return None
    kind = value.get("type")
    part = _RESPONSE_TEXT_EVENTS.get(kind) if isinstance(kind, str) else None
    if part is None:
        return None
    return (kind, value.get("item_id"), value.get("output_index"), value.get(part)), value, "delta"


def _merge_runs(values: list[Any], slot: Callable[[Any], _Slot | None]) -> list[Any]:
    """``values`` with each run of neighbouring events of one ``slot`` made its first.

    The first event of a run gets the run's joined text and its last
    ``sequence_number`` (Responses events have one), and loses its
    ``obfuscation`` padding, which was sized for one token's text.
    """
    if len(values) < 2:
        return values
    out: list[Any] = []
    run: list[tuple[dict[str, Any], dict[str, Any], str]] = []
    where: tuple[Any, ...] | None = None

    def close_run() -> None:
        if len(run) > 1:
            first, holder, key = run[0]
            holder[key] = "".join(text_holder[text_key] for _, text_holder, text_key in run)
            first.pop("obfuscation", None)
            last = run[-1][0]
            if "sequence_number" in last:
                first["sequence_number"] = last["sequence_number"]
        run.clear()

    for value in values:
        found = slot(value)
        if found is not None and found[0] == where:
            run.append((value, found[1], found[2]))
            continue
        close_run()
        out.append(value)
        where = None
        if found is not None:
            where = found[0]
            run.append((value, found[1], found[2]))
    close_run()
    return out


def merge_chat_text(values: list[Any]) -> list[Any]:
    """Chat Completions chunks read together, each run of one choice's text made one chunk.

    A run is consecutive chunks that carry nothing but text in the same delta
    field (``content``, a reasoning field or ``refusal``) of the same choice;
    the run's first chunk keeps the joined text. Anything else (a role
    change, tool calls, a finish reason, logprobs, usage) is left as it is.
    """
    return _merge_runs(values, _chat_text)


def merge_response_text(values: list[Any]) -> list[Any]:
    """Responses events read together, each run of text deltas of one part made one event.

    The merged event has the run's first event's fields, the joined text and
    the run's last ``sequence_number``.
    """
    return _merge_runs(values, _response_text)
