"""Backends: one client per server, with explicit timeouts, and the models on it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest
from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
)
from openai import DefaultAioHttpClient

from chatkit_server.llm.backends import DEFAULT_BACKEND, Backend, BackendConfig, BackendRegistry
from chatkit_server.llm.client import BackendClient
from chatkit_server.settings import Settings
from chatkit_server.testing.fake_backend import Reply
from chatkit_server.workflows.file import load_workflow_file
from tests.live import FakeLLM


def _config(fake_llm: FakeLLM, **changes: Any) -> BackendConfig:
    options: dict[str, Any] = {
        "name": "t",
        "base_url": fake_llm.v1,
        "api_key": "k",
        "read_timeout": 7.0,
        "connect_timeout": 3.0,
        "max_retries": 0,
    }
    return BackendConfig(**{**options, **changes})


def test_the_client_has_explicit_timeouts_and_retries(fake_llm: FakeLLM) -> None:
    client = Backend(_config(fake_llm, max_retries=2)).client

    assert isinstance(client, BackendClient)
    assert client.max_retries == 2
    assert str(client.base_url).rstrip("/") == fake_llm.v1
    assert client.api_key == "k"
    timeout: Any = client.timeout
    assert (timeout.read, timeout.connect) == (7.0, 3.0)
    # aiohttp counts connecting in the pool timeout: never shorter than either.
    assert timeout.pool == 7.0
    assert isinstance(client._client, DefaultAioHttpClient)


def test_the_pool_timeout_covers_a_longer_connect_timeout(fake_llm: FakeLLM) -> None:
    client = Backend(_config(fake_llm, read_timeout=2.0, connect_timeout=9.0)).client

    assert client is not None
    assert client.timeout.pool == 9.0  # type: ignore[union-attr]


async def test_a_silent_backend_times_out_at_the_read_timeout(fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.text("Late.", first_byte_delay=3.0))
    backend = Backend(_config(fake_llm, read_timeout=0.3))
    assert backend.client is not None

    started = time.monotonic()
    try:
        with pytest.raises(openai.APITimeoutError):
            await backend.client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "Hi"}], stream=True
            )
    finally:
        await backend.aclose()

    assert time.monotonic() - started < 2.0
    assert len(fake_llm.backend.requests) == 1  # no retry


async def test_failed_requests_are_retried_as_configured(fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply(status=503), Reply.text("Recovered."), Reply(status=503))
    retrying = Backend(_config(fake_llm, max_retries=1))
    single = Backend(_config(fake_llm, max_retries=0))
    assert retrying.client is not None
    assert single.client is not None
    messages: Any = [{"role": "user", "content": "Hi"}]

    try:
        answer = await retrying.client.chat.completions.create(model="m", messages=messages)
        with pytest.raises(openai.InternalServerError):
            await single.client.chat.completions.create(model="m", messages=messages)
    finally:
        await retrying.aclose()
        await single.aclose()

    assert answer.choices[0].message.content == "Recovered."
    assert len(fake_llm.backend.requests) == 3


async def test_configured_headers_reach_the_backend(fake_llm: FakeLLM) -> None:
    fake_llm.backend.script(Reply.text("Fine."))
    backend = Backend(_config(fake_llm, headers={"X-Team": "support"}))
    assert backend.client is not None

    try:
        await backend.client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Hi"}]
        )
    finally:
        await backend.aclose()

    headers = fake_llm.backend.requests[-1].headers
    assert headers["x-team"] == "support"
    assert headers["authorization"] == "Bearer k"


async def test_a_backend_without_a_base_url_has_no_client() -> None:
    backend = Backend(BackendConfig(name="none", base_url=None, api_key="k"))

    assert backend.client is None
    assert not backend.configured
    with pytest.raises(RuntimeError, match="'none' has no base URL"):
        backend.model("m")
    await backend.aclose()


@pytest.mark.parametrize(
    ("api", "cls"),
    [("chat_completions", OpenAIChatCompletionsModel), ("responses", OpenAIResponsesModel)],
)
async def test_models_are_made_once_per_name_for_the_configured_api(
    fake_llm: FakeLLM, api: str, cls: type[Any]
) -> None:
    backend = Backend(_config(fake_llm, api=api))

    try:
        model = backend.model("m")
        assert backend.configured
        assert isinstance(model, cls)
        assert model.model == "m"
        assert model._client is backend.client
        assert backend.model("m") is model
        other = backend.model("n")
        assert other is not model
        assert other.model == "n"  # type: ignore[attr-defined]
        assert backend.model("n") is other
    finally:
        await backend.aclose()


@pytest.mark.parametrize("api", ["chat_completions", "responses"])
async def test_a_model_answers_an_agent_through_its_backend(fake_llm: FakeLLM, api: str) -> None:
    fake_llm.backend.script(Reply.text("Fine, thanks."))
    backend = Backend(_config(fake_llm, api=api))
    agent = Agent(name="a", instructions="Be brief.", model=backend.model("fake"))

    try:
        result = Runner.run_streamed(agent, "Hi", run_config=RunConfig(tracing_disabled=True))
        async for _event in result.stream_events():
            pass
    finally:
        await backend.aclose()

    assert result.final_output == "Fine, thanks."
    request = fake_llm.backend.requests[-1]
    paths = {"chat_completions": "/v1/chat/completions", "responses": "/v1/responses"}
    assert request.path == paths[api]
    assert request.body["model"] == "fake"
    assert request.body["stream"] is True


async def test_aclose_closes_the_client(fake_llm: FakeLLM) -> None:
    backend = Backend(_config(fake_llm))
    assert backend.client is not None

    await backend.aclose()

    assert backend.client.is_closed()


def test_the_default_backend_comes_from_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        llm_base_url="http://127.0.0.1:8080/v1",
        llm_api_key="secret",
        llm_api="responses",
        llm_read_timeout=12.0,
        llm_connect_timeout=4.0,
        llm_max_retries=3,
    )

    config = BackendConfig.from_settings(settings)

    assert config == BackendConfig(
        name=DEFAULT_BACKEND,
        base_url="http://127.0.0.1:8080/v1",
        api_key="secret",
        api="responses",
        read_timeout=12.0,
        connect_timeout=4.0,
        max_retries=3,
    )


async def test_a_registry_from_settings_alone_has_the_default_backend(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, llm_base_url="http://127.0.0.1:8080/v1")
    registry = BackendRegistry.from_settings(settings)

    try:
        default = registry.get(DEFAULT_BACKEND)
        assert default.config == BackendConfig.from_settings(settings)
        assert default.configured
        with pytest.raises(KeyError):
            registry.get("other")
    finally:
        await registry.aclose()


async def test_a_registry_without_a_base_url_has_an_unconfigured_default(tmp_path: Path) -> None:
    registry = BackendRegistry.from_settings(Settings(data_dir=tmp_path))

    assert not registry.get(DEFAULT_BACKEND).configured
    await registry.aclose()


WORKFLOWS = """
[backends.local]
base_url = "http://127.0.0.1:8080/v1/"
api = "responses"
api_key_env = "LOCAL_KEY"
read_timeout = 30
connect_timeout = 2
max_retries = 1
headers = { "X-Team" = "support" }

[backends.keyless]
base_url = "http://127.0.0.1:8081/v1"

[workflows.assistant]
backend = "local"
model = "m"
"""


async def test_a_registry_has_the_backends_of_the_workflows_file(tmp_path: Path) -> None:
    path = tmp_path / "workflows.toml"
    path.write_text(WORKFLOWS, encoding="utf-8")
    settings = Settings(
        data_dir=tmp_path,
        llm_base_url="http://127.0.0.1:9000/v1",
        llm_api_key="env-key",
        workflows_file=load_workflow_file(path, {"LOCAL_KEY": "local-key"}),
    )
    registry = BackendRegistry.from_settings(settings)

    try:
        local, keyless = registry.get("local"), registry.get("keyless")
        default = registry.get(DEFAULT_BACKEND)
    finally:
        await registry.aclose()

    assert local.config == BackendConfig(
        name="local",
        base_url="http://127.0.0.1:8080/v1",
        api_key="local-key",
        api="responses",
        read_timeout=30.0,
        connect_timeout=2.0,
        max_retries=1,
        headers={"X-Team": "support"},
    )
    assert local.client is not None
    assert local.client.default_headers["X-Team"] == "support"
    # A backend without a key of its own sends the environment's.
    assert keyless.config.api_key == "env-key"
    assert keyless.config.api == "chat_completions"
    assert default.config.base_url == "http://127.0.0.1:9000/v1"


async def test_a_default_backend_in_the_file_replaces_the_environments(tmp_path: Path) -> None:
    path = tmp_path / "workflows.toml"
    path.write_text(
        '[backends.default]\nbase_url = "http://127.0.0.1:7000/v1"\napi_key = "file-key"\n'
        '[workflows.a]\nmodel = "m"\n',
        encoding="utf-8",
    )
    settings = Settings(
        data_dir=tmp_path,
        llm_base_url="http://127.0.0.1:9000/v1",
        workflows_file=load_workflow_file(path, {}),
    )
    registry = BackendRegistry.from_settings(settings)

    try:
        default = registry.get(DEFAULT_BACKEND)
    finally:
        await registry.aclose()

    assert default.config.base_url == "http://127.0.0.1:7000/v1"
    assert default.config.api_key == "file-key"


async def test_registry_aclose_closes_every_client(tmp_path: Path) -> None:
    path = tmp_path / "workflows.toml"
    path.write_text(WORKFLOWS, encoding="utf-8")
    settings = Settings(
        data_dir=tmp_path,
        llm_base_url="http://127.0.0.1:9000/v1",
        workflows_file=load_workflow_file(path, {"LOCAL_KEY": "x"}),
    )
    registry = BackendRegistry.from_settings(settings)
    clients = [registry.get(name).client for name in (DEFAULT_BACKEND, "local", "keyless")]

    await registry.aclose()

    assert all(client is not None and client.is_closed() for client in clients)
