"""OpenAI-compatible model backends: clients, timeouts and models.

A backend is one OpenAI-compatible server (llama-server, vLLM, Ollama, a
LiteLLM proxy or OpenAI itself) reached through one ``AsyncOpenAI`` client.
The client is created with explicit timeouts and retries because the
library's defaults (600 s read timeout, two retries) turn a stalled backend
into a ten-minute spinner. Requests go through the client's aiohttp transport
(``openai[aiohttp]``), which costs less CPU per streamed chunk.
"""

from __future__ import annotations

import asyncio
import copy as pycopy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final, Self, TypeVar, cast, get_args

import pydantic
from agents import Model, OpenAIChatCompletionsModel, OpenAIResponsesModel, TResponseInputItem
from agents.models.chatcmpl_converter import Converter
from agents.models.chatcmpl_helpers import ChatCmplHelpers
from openai import AsyncOpenAI, DefaultAioHttpClient, Timeout
from openai.resources.chat import AsyncChat
from openai.resources.chat.completions import AsyncCompletions
from openai.resources.responses import AsyncResponses
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import ResponseStreamEvent

from .coalesce import CoalescingSSEDecoder
from .direct import NOT_SENT, DirectChat
from .history import is_user_message
from .settings import LLMApi, Settings

__all__ = [
    "DEFAULT_BACKEND",
    "Backend",
    "BackendConfig",
    "BackendRegistry",
    "LeanAsyncOpenAI",
    "watch_requests",
    "with_earlier_turns",
]

DEFAULT_BACKEND = "default"


def _send_untransformed(kwargs: dict[str, Any], field: str, empty: Any) -> None:
    """Move ``kwargs[field]`` into ``extra_body`` so the client sends it as it is.

    The openai client walks every request body through a recursive,
    type-directed transform before sending it. For a conversation that costs
    about half a millisecond per message (measured: 41 ms for 80 messages,
    all of it before the first byte reaches the backend). The history the
    Agents SDK builds is already plain JSON, so it skips the walk; the
    client merges ``extra_body`` over the transformed body.
    """
    value = kwargs.get(field)
    if not isinstance(value, list):
        return
    extra = dict(kwargs.get("extra_body") or {})
    extra.setdefault(field, value)
    kwargs["extra_body"] = extra
    kwargs[field] = empty


def _with_earlier(earlier: list[dict[str, Any]], messages: Any) -> Any:
    """``messages`` with ``earlier`` put after the instructions (leading system messages)."""
    if not isinstance(messages, list):
        return messages
    start = 0
    while start < len(messages) and messages[start].get("role") in ("system", "developer"):
        start += 1
    return [*messages[:start], *earlier, *messages[start:]]


# The future of the run being started (see watch_requests); runs inherit it.
_REQUEST_WATCH: ContextVar[asyncio.Future[None] | None] = ContextVar(
    "chatkit_server_request_watch", default=None
)


@contextmanager
def watch_requests() -> Iterator[asyncio.Future[None]]:
    """A future that is done when a model request is sent by a task created in the block.

    Tasks copy the context they are created in, so a run started in the
    block (``Runner.run_streamed`` creates its task at once) marks the
    future when it first sends a request through one of our clients, by
    either API and either sender.
    """
    sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    token = _REQUEST_WATCH.set(sent)
    try:
        yield sent
    finally:
        _REQUEST_WATCH.reset(token)


def _request_sent() -> None:
    sent = _REQUEST_WATCH.get()
    if sent is not None and not sent.done():
        sent.set_result(None)


class _LeanCompletions(AsyncCompletions):
    async def create(self, *args: Any, **kwargs: Any) -> Any:
        _request_sent()
        client = self._client
        earlier = getattr(client, "earlier_messages", None)
        if earlier:
            kwargs["messages"] = _with_earlier(earlier, kwargs.get("messages"))
        direct = getattr(client, "direct", None)
        if direct is not None and not args:
            answer = await direct.create(client, kwargs)
            if answer is not NOT_SENT:
                return answer
        _send_untransformed(kwargs, "messages", [])
        return await super().create(*args, **kwargs)


class _LeanChat(AsyncChat):
    @cached_property
    def completions(self) -> AsyncCompletions:
        return _LeanCompletions(self._client)


class _LeanResponses(AsyncResponses):
    async def create(self, *args: Any, **kwargs: Any) -> Any:
        _request_sent()
        _send_untransformed(kwargs, "input", [])
        return await super().create(*args, **kwargs)


_T = TypeVar("_T")


def _stream_event_classes() -> dict[str, type[pydantic.BaseModel]]:
    """Each Responses stream event class by the value of its ``type`` field."""
    (union, *_annotations) = get_args(ResponseStreamEvent)
    classes: dict[str, type[pydantic.BaseModel]] = {}
    for cls in get_args(union):
        for tag in get_args(cls.model_fields["type"].annotation):
            classes[tag] = cls
    return classes


_RESPONSE_EVENTS: Final = _stream_event_classes()


def _validate_stream_chunk(data: object, cast_to: object) -> Any:
    """Build one streamed chunk with pydantic's validator, or ``None`` to fall back.

    The openai client builds every streamed chunk with its lenient,
    pure-Python ``construct_type``: about 200 µs per Chat Completions chunk,
    most of the server's CPU per streamed token (measured with
    ``bench/``). ``model_validate`` builds the same objects in about 10 µs.
    A chunk it rejects (a backend that leaves out a required field or sends a
    field of the wrong type) returns ``None``, and the lenient path takes it.
    """
    if not isinstance(data, dict):
        return None
    cls: type[pydantic.BaseModel] | None
    if cast_to is ChatCompletionChunk or cast_to is ChatCompletion:
        # A whole completion (a title) too: about 1 ms by the lenient path.
        cls = cast_to
    elif cast_to is ResponseStreamEvent:
        cls = _RESPONSE_EVENTS.get(data.get("type"))  # type: ignore[arg-type]
    else:
        return None
    if cls is None:
        return None
    try:
        chunk = cls.model_validate(data)
    except pydantic.ValidationError:
        return None
    if isinstance(chunk, ChatCompletionChunk):
        for choice in chunk.choices:
            _declare_provider_fields(choice.delta)
    return chunk


# Fields of a streamed delta that only some servers send. The Agents SDK
# probes each with getattr/hasattr on every chunk; on a pydantic model a
# missing attribute raises two AttributeErrors inside pydantic, which was 15%
# of the server's CPU per token (measured by bench/). Present as None, a probe
# is a dictionary lookup, and None is what the SDK uses when they are absent.
_PROVIDER_DELTA_FIELDS: Final = (
    "audio",
    "annotations",
    "reasoning",
    "reasoning_content",
    "thinking_blocks",
)


def _declare_provider_fields(delta: pydantic.BaseModel) -> None:
    extra = delta.__pydantic_extra__
    if extra is None:
        return
    for name in _PROVIDER_DELTA_FIELDS:
        if name not in extra:
            extra[name] = None


class LeanAsyncOpenAI(AsyncOpenAI):
    """``AsyncOpenAI`` that sends history untransformed and parses stream chunks fast.

    Text deltas that arrive in one network read are merged into one chunk
    (:mod:`chatkit_server.coalesce`), so a server that falls behind catches up.
    """

    direct: DirectChat | None = None
    """Sends Chat Completions requests itself (:mod:`chatkit_server.direct`); shared by copies."""

    earlier_messages: list[dict[str, Any]] | None = None
    """Chat messages sent before every request's own (after its instructions): see
    :func:`with_earlier_turns`."""

    def copy(self, *args: Any, **kwargs: Any) -> Self:
        """The client's copy (``with_options``), sharing the direct sender."""
        clone: Self = super().copy(*args, **kwargs)
        clone.direct = self.direct
        clone.earlier_messages = self.earlier_messages
        return clone

    def for_run(self, earlier_messages: list[dict[str, Any]]) -> Self:
        """A cheap copy of the client for one run, sending ``earlier_messages`` first."""
        clone = pycopy.copy(self)
        # The resources cached on the original are bound to it.
        for resource in ("chat", "responses"):
            clone.__dict__.pop(resource, None)
        clone.earlier_messages = earlier_messages
        return clone

    with_options = copy

    def _make_sse_decoder(self) -> CoalescingSSEDecoder:
        return CoalescingSSEDecoder()

    def _process_response_data(self, *, data: object, cast_to: type[_T], response: Any) -> _T:
        if not self._strict_response_validation:
            chunk = _validate_stream_chunk(data, cast_to)
            if chunk is not None:
                return chunk  # type: ignore[no-any-return]
        return super()._process_response_data(data=data, cast_to=cast_to, response=response)

    @cached_property
    def chat(self) -> AsyncChat:
        """Chat Completions, with ``messages`` sent as given."""
        return _LeanChat(self)

    @cached_property
    def responses(self) -> AsyncResponses:
        """The Responses API, with ``input`` sent as given."""
        return _LeanResponses(self)


@dataclass(frozen=True, kw_only=True)
class BackendConfig:
    """How to reach one OpenAI-compatible server."""

    name: str
    base_url: str | None
    api_key: str
    api: LLMApi = "chat_completions"
    read_timeout: float = 60.0
    connect_timeout: float = 5.0
    max_retries: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> BackendConfig:
        """The default backend described by the ``CHATKIT_LLM_*`` variables."""
        return cls(
            name=DEFAULT_BACKEND,
            base_url=settings.llm_base_url,
            api_key=settings.llm_api_key,
            api=settings.llm_api,
            read_timeout=settings.llm_read_timeout,
            connect_timeout=settings.llm_connect_timeout,
            max_retries=settings.llm_max_retries,
        )


class Backend:
    """One configured backend and its HTTP client."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.client: LeanAsyncOpenAI | None = None
        self.direct: DirectChat | None = None
        self._models: dict[str, Model] = {}
        if config.base_url is not None:
            # The client's own connection limit (1000) is far above what one
            # process streams at once, so only the timeouts need setting.
            timeout = Timeout(
                config.read_timeout,
                connect=config.connect_timeout,
                # aiohttp counts a new connection's set-up in this too, so it
                # must not be shorter than connecting; under a burst of
                # hundreds of new streams that takes more than a few seconds.
                pool=max(config.read_timeout, config.connect_timeout),
            )
            self.client = LeanAsyncOpenAI(
                base_url=config.base_url,
                api_key=config.api_key,
                timeout=timeout,
                max_retries=config.max_retries,
                default_headers=dict(config.headers) or None,
                # aiohttp, the openai client's optional transport: plain asyncio
                # reads (the default transport wraps each socket read in an
                # anyio timeout scope) and a connection pool that does not scan
                # every connection per request. With 500 streams open that was
                # a fifth of the server's CPU (measured by bench/).
                http_client=DefaultAioHttpClient(timeout=timeout),
            )
            self.direct = DirectChat()
            self.client.direct = self.direct

    @property
    def configured(self) -> bool:
        """Whether a base URL is set; without one every answer is an error event."""
        return self.client is not None

    def model(self, name: str) -> Model:
        """An Agents SDK model for ``name`` on this backend.

        Raises:
            RuntimeError: The backend has no base URL.
        """
        if self.client is None:
            raise RuntimeError(f"backend {self.config.name!r} has no base URL")
        # One per name: the SDK's models keep no per-request state, and an
        # agent built on the same model object is recognised as the same.
        model = self._models.get(name)
        if model is None:
            if self.config.api == "responses":
                model = OpenAIResponsesModel(model=name, openai_client=self.client)
            else:
                model = OpenAIChatCompletionsModel(model=name, openai_client=self.client)
            self._models[name] = model
        return model

    async def aclose(self) -> None:
        """Close the HTTP client and its connections."""
        if self.client is not None:
            if self.direct is not None:
                await self.direct.aclose()
            await self.client.close()


class BackendRegistry:
    """The backends known to this server, by name; owned by the app lifespan."""

    def __init__(self, configs: list[BackendConfig]) -> None:
        self._backends = {config.name: Backend(config) for config in configs}

    @classmethod
    def from_settings(cls, settings: Settings) -> BackendRegistry:
        """The backends of the workflows file, plus ``default`` from ``CHATKIT_LLM_*``.

        A backend named ``default`` in the file replaces the one from the
        environment.
        """
        configs = {DEFAULT_BACKEND: BackendConfig.from_settings(settings)}
        file = settings.workflows_file
        if file is not None:
            for name, spec in file.backends.items():
                configs[name] = BackendConfig(
                    name=name,
                    base_url=spec.base_url,
                    api_key=file.api_keys.get(name) or settings.llm_api_key,
                    api=spec.api,
                    read_timeout=spec.read_timeout,
                    connect_timeout=spec.connect_timeout,
                    max_retries=spec.max_retries,
                    headers=spec.headers,
                )
        return cls(list(configs.values()))

    def get(self, name: str) -> Backend:
        """The backend called ``name``.

        Raises:
            KeyError: No such backend.
        """
        return self._backends[name]

    async def aclose(self) -> None:
        """Close every backend's client."""
        for backend in self._backends.values():
            await backend.aclose()


def with_earlier_turns(
    model: Model, items: Sequence[TResponseInputItem]
) -> tuple[Model, list[TResponseInputItem]]:
    """A run's model and input that send the turns before the newest one as ready messages.

    The Agents SDK walks its whole input about five times before a Chat
    Completions request leaves (two deep copies, three conversions to plain
    JSON, then to chat messages): on a thread of 120 items that was a third
    of the time to the first token. The turns before the newest user message
    are converted to chat messages here, once, with the SDK's own converter,
    and sent ahead of the SDK's messages by this run's client copy; the SDK
    only sees the newest turn. The request is the same, message for message
    (a user message ends every merge the converter makes, so converting at
    that boundary changes nothing).

    Only for our own Chat Completions clients with the direct sender, not for
    OpenAI itself (the SDK checks OpenAI's input content types), and only
    when there is an earlier turn; otherwise ``model`` and ``items`` as given.
    """
    if type(model) is not OpenAIChatCompletionsModel:
        return model, list(items)
    client = model._client
    if (
        not isinstance(client, LeanAsyncOpenAI)
        or client.direct is None
        or ChatCmplHelpers.is_openai(client)
    ):
        return model, list(items)
    newest = len(items) - 1
    while newest > 0 and not is_user_message(items[newest]):
        newest -= 1
    if newest <= 0:
        return model, list(items)

    def convert(part: Sequence[TResponseInputItem]) -> list[dict[str, Any]]:
        messages = Converter.items_to_messages(
            part,
            model=model.model,
            base_url=str(client.base_url),
            should_replay_reasoning_content=model.should_replay_reasoning_content,
            strict_feature_validation=model._strict_feature_validation,
        )
        return cast(list[dict[str, Any]], messages)

    earlier = client.direct.earlier_turns.convert(model, items[:newest], convert)
    run_model = OpenAIChatCompletionsModel(
        model=model.model,
        openai_client=client.for_run(earlier),
        should_replay_reasoning_content=model.should_replay_reasoning_content,
        strict_feature_validation=model._strict_feature_validation,
        buffer_streamed_tool_calls=model._buffer_streamed_tool_calls,
    )
    return run_model, list(items[newest:])
