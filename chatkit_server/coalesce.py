"""Merge text deltas that arrive together from a backend into one.

A backend streams one SSE event per token. While the server keeps up, each
socket read holds one event and nothing changes. When it falls behind (many
streams on one process), a read holds several events of the same stream, and
each would still cost a full trip through the openai client, the Agents SDK,
ChatKit and an SSE write: about 200 µs per token on two cores with 500
streams, which made the server's falling behind worse. Text deltas already
received together are merged here into one, so that work is done once per
read instead of once per token. Nothing waits for more data: a merge only
joins events that are already in hand, so no delta is delayed.

Only plain text deltas merge (Chat Completions ``content``, reasoning and
refusal text, Responses ``output_text``, reasoning and refusal deltas), and
only with neighbours of the same choice, item and part. Tool calls, finish
reasons, usage, logprobs and anything unknown pass through as they came.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

from openai._streaming import ServerSentEvent, SSEDecoder

__all__ = ["CoalescingSSEDecoder", "ParsedEvent", "merge_text_deltas"]

# Delta fields of a Chat Completions chunk that carry streamed text.
_CHAT_TEXT_FIELDS: Final = frozenset({"content", "reasoning_content", "reasoning", "refusal"})

# Responses text delta events and the fields that say where the text goes.
_RESPONSE_TEXT_EVENTS: Final = {
    "response.output_text.delta": ("item_id", "output_index", "content_index"),
    "response.refusal.delta": ("item_id", "output_index", "content_index"),
    "response.reasoning_text.delta": ("item_id", "output_index", "content_index"),
    "response.reasoning_summary_text.delta": ("item_id", "output_index", "summary_index"),
}


class ParsedEvent(ServerSentEvent):
    """An event whose JSON is already decoded (or was built by a merge).

    A reader should take :meth:`json` and not look at ``data`` first: a
    merged event's ``data`` is only encoded when asked for.
    """

    def __init__(self, like: ServerSentEvent, value: dict[str, Any], data: str | None) -> None:
        super().__init__(event=like.event, data=data, id=like.id, retry=like.retry)
        self._value = value
        self._encoded = data is not None

    @property
    def data(self) -> str:
        """The event's JSON text, encoded on first use for a merged event."""
        # A merged event's text is only needed if someone reads it (a log):
        # the client itself only checks it for "[DONE]" and then calls json().
        if not self._encoded:
            self._data = json.dumps(self._value)
            self._encoded = True
        return self._data

    def json(self) -> Any:
        """The decoded JSON (no decoding happens here)."""
        return self._value


def _chat_key(value: dict[str, Any]) -> tuple[Any, ...] | None:
    """Where a Chat Completions chunk's text goes, or None when it is not plain text."""
    if value.get("object") != "chat.completion.chunk" or value.get("usage") is not None:
        return None
    choices = value.get("choices")
    if not isinstance(choices, list) or len(choices) != 1:
        return None
    choice = choices[0]
    if not isinstance(choice, dict):
        return None
    if choice.get("finish_reason") is not None or choice.get("logprobs") is not None:
        return None
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return None
    text_field = None
    for name, field_value in delta.items():
        if field_value is None or name == "role":
            continue
        if text_field is None and name in _CHAT_TEXT_FIELDS and isinstance(field_value, str):
            text_field = name
            continue
        return None
    if text_field is None:
        return None
    return (
        "chat",
        value.get("id"),
        value.get("model"),
        choice.get("index"),
        delta.get("role"),
        text_field,
    )


def _response_key(value: dict[str, Any]) -> tuple[Any, ...] | None:
    """Where a Responses text delta event goes, or None for any other event."""
    kind = value.get("type")
    where = _RESPONSE_TEXT_EVENTS.get(kind) if isinstance(kind, str) else None
    if where is None or not isinstance(value.get("delta"), str) or value.get("logprobs"):
        return None
    return (kind, *(value.get(name) for name in where))


def _chat_text(value: dict[str, Any], key: tuple[Any, ...]) -> str:
    return value["choices"][0]["delta"][key[-1]]  # type: ignore[no-any-return]


def _merge(run: list[dict[str, Any]], key: tuple[Any, ...]) -> dict[str, Any]:
    """One event carrying the text of every event of ``run``, in order."""
    first = run[0]
    if key[0] == "chat":
        text = "".join(_chat_text(value, key) for value in run)
        choice = dict(first["choices"][0])
        choice["delta"] = {**choice["delta"], key[-1]: text}
        return {**first, "choices": [choice]}
    # Responses: the text of all, numbered as the last one so later events
    # still follow in sequence.
    merged = {**first, "delta": "".join(value["delta"] for value in run)}
    if "sequence_number" in run[-1]:
        merged["sequence_number"] = run[-1]["sequence_number"]
    return merged


def merge_text_deltas(events: list[ServerSentEvent]) -> list[ServerSentEvent]:
    """``events`` with each run of neighbouring, mergeable text deltas made one.

    Events that are not JSON objects, ``[DONE]`` and every event that is not a
    plain text delta are kept as they are and end a run.
    """
    if len(events) < 2:
        return events
    out: list[ServerSentEvent] = []
    run: list[tuple[ServerSentEvent, dict[str, Any]]] = []
    run_key: tuple[Any, ...] | None = None

    def flush() -> None:
        if len(run) == 1:
            sse, value = run[0]
            out.append(ParsedEvent(sse, value, sse.data))
        elif run:
            assert run_key is not None
            merged = _merge([value for _, value in run], run_key)
            out.append(ParsedEvent(run[0][0], merged, None))
        run.clear()

    for sse in events:
        key = None
        value: dict[str, Any] | None = None
        if sse.data.startswith("{"):
            try:
                decoded = json.loads(sse.data)
            except ValueError:
                decoded = None
            if isinstance(decoded, dict):
                value = decoded
                key = _chat_key(value) or _response_key(value)
        if key is None or value is None:
            flush()
            run_key = None
            out.append(sse if value is None else ParsedEvent(sse, value, sse.data))
            continue
        if key != run_key or sse.event != run[0][0].event:
            flush()
            run_key = key
        run.append((sse, value))
    flush()
    return out


class CoalescingSSEDecoder(SSEDecoder):
    """The openai client's SSE decoder, merging the text deltas of each read.

    Events are decoded exactly as the client's own decoder does; the events
    decoded from one network read are then passed through
    :func:`merge_text_deltas` before the client sees them.
    """

    async def aiter_bytes(self, iterator: AsyncIterator[bytes]) -> AsyncIterator[ServerSentEvent]:
        """Decode ``iterator``'s bytes, one batch of events per read."""
        lines = _LineSplitter()
        try:
            async for chunk in iterator:
                events = self._plain_events(chunk, lines)
                if events is None:
                    events = [sse for line in lines.feed(chunk) if (sse := self._line(line))]
                for sse in merge_text_deltas(events):
                    yield sse
            for line in lines.finish():
                if sse := self._line(line):
                    yield sse
        finally:
            self._reset()

    def _line(self, line: bytes) -> ServerSentEvent | None:
        return self.decode(line.decode("utf-8"))

    def _plain_events(self, chunk: bytes, lines: _LineSplitter) -> list[ServerSentEvent] | None:
        """The events of a read made only of whole ``data: ...`` events, else ``None``.

        That is how every OpenAI-compatible server streams Chat Completions,
        one event per token; decoding them line by line through the generic
        decoder was a fifth of the server's CPU with 500 streams (measured by
        bench/). Anything else (CR line ends, comments, other fields,
        several data lines, an event split across reads, an id to carry on)
        takes the generic path, which then decodes the whole read.
        """
        if (
            lines.pending
            or self._data
            or self._event is not None
            or self._last_event_id is not None
            or self._retry is not None
            or not chunk.endswith(b"\n\n")
            or b"\r" in chunk
        ):
            return None
        events = []
        for part in chunk[:-2].split(b"\n\n"):
            if not part.startswith(b"data: ") or b"\n" in part:
                return None
            events.append(ServerSentEvent(data=part[6:].decode("utf-8")))
        return events


class _LineSplitter:
    """Split a byte stream into lines ended by CR, LF or CRLF, across reads."""

    def __init__(self) -> None:
        self._pending = b""

    @property
    def pending(self) -> bool:
        """Whether part of a line is waiting for the next read."""
        return bool(self._pending)

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        data = self._pending + chunk if self._pending else chunk
        lines = data.splitlines(keepends=True)
        # An unfinished last line waits for the next read; so does a final
        # CR, whose LF may be the next read's first byte (one CRLF, not two
        # line ends: an extra empty line would end an event early).
        if lines and (not lines[-1].endswith((b"\n", b"\r")) or lines[-1].endswith(b"\r")):
            self._pending = lines.pop()
        else:
            self._pending = b""
        for line in lines:
            yield line.rstrip(b"\r\n")

    def finish(self) -> Iterator[bytes]:
        pending, self._pending = self._pending, b""
        if pending:
            yield pending.rstrip(b"\r\n")
