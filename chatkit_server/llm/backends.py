"""OpenAI-compatible model backends: clients, timeouts and models.

A backend is one OpenAI-compatible server (llama-server, vLLM, Ollama, a
LiteLLM proxy or OpenAI itself) reached through one ``AsyncOpenAI`` client.
The client is created with explicit timeouts and retries because the
library's defaults (600 s read timeout, two retries) turn a stalled backend
into a ten-minute spinner. Requests go through the client's aiohttp transport
(``openai[aiohttp]``), which costs less CPU per streamed chunk, and streamed
answers are read by :mod:`chatkit_server.llm.client`.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx2
from agents import Model, OpenAIChatCompletionsModel, OpenAIResponsesModel
from openai import DefaultAioHttpClient, Timeout

from chatkit_server.llm.client import BackendClient
from chatkit_server.settings import LLMApi, Settings

__all__ = [
    "backend_connection_limit",
    "BACKEND_KEEPALIVE_SECONDS",
    "DEFAULT_BACKEND",
    "Backend",
    "BackendConfig",
    "BackendRegistry",
]

DEFAULT_BACKEND = "default"
BACKEND_KEEPALIVE_SECONDS = 2.0
"""How long an idle connection to a backend is kept for the next request.

Shorter than the servers' own keep-alive timeouts (uvicorn, which serves
vLLM, and llama-server both close idle connections after 5 s): a connection
the server is about to close is not reused, so a request is seldom sent into
one that the server resets.
"""


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


def backend_connection_limit() -> int:
    """How many connections to one backend a process may open: its open-files limit.

    Every streamed answer holds a connection, and a new thread's first
    answer a second one beside it (its title): with 500 new threads at
    once, a pool of 1,000 left answers waiting for a connection behind
    titles. So the pool never bounds them; the file limit, which bounds the
    client connections too (:func:`chatkit_server.http.connections.default_connection_limit`),
    does.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65536
    return max(1000, soft)


class Backend:
    """One configured backend and its HTTP client."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.client: BackendClient | None = None
        self._models: dict[str, Model] = {}
        if config.base_url is not None:
            # 100 connections are kept alive, for BACKEND_KEEPALIVE_SECONDS;
            # how many may be open is backend_connection_limit().
            timeout = Timeout(
                config.read_timeout,
                connect=config.connect_timeout,
                # aiohttp counts a new connection's set-up in this too, so it
                # must not be shorter than connecting; under a burst of
                # hundreds of new streams that takes more than a few seconds.
                pool=max(config.read_timeout, config.connect_timeout),
            )
            self.client = BackendClient(
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
                http_client=DefaultAioHttpClient(
                    timeout=timeout,
                    limits=httpx2.Limits(
                        max_connections=backend_connection_limit(),
                        max_keepalive_connections=100,
                        keepalive_expiry=BACKEND_KEEPALIVE_SECONDS,
                    ),
                ),
            )

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
