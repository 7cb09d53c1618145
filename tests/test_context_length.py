"""A message longer than the model's context: said plainly, and history never overflows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agents import ModelSettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from chatkit_server.llm.backends import Backend, BackendConfig, BackendRegistry
from chatkit_server.settings import Settings, SettingsError
from chatkit_server.testing.fake_backend import Reply
from chatkit_server.testing.live import serve_app
from chatkit_server.testing.stack import run_chatkit
from chatkit_server.workflows.history import estimate_tokens
from chatkit_server.workflows.registry import Workflow, WorkflowRegistry
from tests.live import FakeLLM, LiveFactory

# The error bodies the common servers send for a prompt over the context.
LLAMA_SERVER = (
    400,
    {
        "error": {
            "code": 400,
            "message": "the request exceeds the available context size, try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 5123,
            "n_ctx": 4096,
        }
    },
)
VLLM = (
    400,
    {
        "object": "error",
        "message": "This model's maximum context length is 2048 tokens. However, you requested "
        "3100 tokens (3000 in the messages, 100 in the completion). Please reduce the length "
        "of the messages or completion.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    },
)
OPENAI = (
    400,
    {
        "error": {
            "message": "This model's maximum context length is 8192 tokens. However, your "
            "messages resulted in 9001 tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    },
)


def _backend(status: int, body: dict[str, Any]) -> Starlette:
    async def refuse(request: Request) -> JSONResponse:
        return JSONResponse(body, status_code=status)

    paths = ("/v1/chat/completions", "/v1/responses")
    return Starlette(routes=[Route(path, refuse, methods=["POST"]) for path in paths])


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (LLAMA_SERVER, "(5123 tokens; the model reads at most 4096)"),
        (VLLM, "(3100 tokens; the model reads at most 2048)"),
        (OPENAI, "(9001 tokens; the model reads at most 8192)"),
    ],
    ids=["llama-server", "vllm", "openai"],
)
@pytest.mark.parametrize("llm_api", ["chat_completions", "responses"])
async def test_a_message_over_the_context_is_called_too_long(
    tmp_path: Path, reply: tuple[int, dict[str, Any]], expected: str, llm_api: str
) -> None:
    async with (
        serve_app(_backend(*reply)) as backend,
        run_chatkit(f"{backend}/v1", tmp_path, llm_api=llm_api) as stack,
    ):
        turn = await stack.client.create_thread("a very long message " * 100)
    [error] = turn.errors
    assert error.message.startswith("The message is too long for the model")
    assert expected in error.message


async def test_other_error_statuses_still_name_the_status(tmp_path: Path) -> None:
    body = {"error": {"message": "model not found", "type": "not_found", "code": 404}}
    async with (
        serve_app(_backend(404, body)) as backend,
        run_chatkit(f"{backend}/v1", tmp_path) as stack,
    ):
        turn = await stack.client.create_thread("hi")
    [error] = turn.errors
    assert error.message == "The model backend answered with an error (HTTP 404)."


async def test_history_never_takes_more_than_the_context_less_the_answer(
    start_live: LiveFactory, live_settings: Settings, fake_llm: FakeLLM
) -> None:
    # CHATKIT_HISTORY_TOKENS (3000) is more than this model's whole context.
    settings = live_settings.with_changes(history_tokens=3000, llm_context_tokens=600)
    async with start_live(settings) as live:
        fake_llm.backend.script(*(Reply.text("y" * 300) for _ in range(4)))
        turn = await live.client.create_thread("first " + "q" * 300)
        for n in range(3):
            await live.client.add_message(turn.thread_id, f"turn {n} " + "q" * 300)

    sent = fake_llm.backend.requests[-1].body["messages"]
    assert sent[-1]["content"].startswith("turn 2 ")
    assert not any(str(m["content"]).startswith("first ") for m in sent)
    # A quarter of the context stays free for the answer.
    assert sum(estimate_tokens(str(m["content"])) for m in sent) <= 600 - 150


# Not configured (no base URL): history_budget never reaches it.
_BACKEND = Backend(BackendConfig.from_settings(Settings()))


def _workflow(**fields: Any) -> Workflow:
    return Workflow(id="w", backend=_BACKEND, model="m", **fields)


@pytest.mark.parametrize(
    ("fields", "budget"),
    [
        ({}, 3000),  # context unknown: the budget as configured
        ({"history_tokens": 6000}, 6000),
        ({"context_tokens": 4096}, 3000),  # fits: unchanged
        ({"context_tokens": 2048}, 1536),  # a quarter kept for the answer
        ({"context_tokens": 2048, "model_settings": ModelSettings(max_tokens=512)}, 1536),
        ({"context_tokens": 2048, "model_settings": ModelSettings(max_tokens=256)}, 1792),
        ({"context_tokens": 8192, "history_tokens": 16000}, 6144),
    ],
)
def test_the_history_budget_stays_inside_the_context(fields: dict[str, Any], budget: int) -> None:
    assert _workflow(**fields).history_budget(3000) == budget


def test_context_sizes_come_from_the_environment_and_the_workflows_file(tmp_path: Path) -> None:
    path = tmp_path / "workflows.toml"
    path.write_text(
        '[backends.small]\nbase_url = "http://127.0.0.1:9/v1"\ncontext_tokens = 2048\n'
        '[workflows.a]\nbackend = "small"\nmodel = "m"\n'
        '[workflows.b]\nmodel = "m"\n'  # the CHATKIT_LLM_* backend
    )
    env = {"CHATKIT_WORKFLOWS": str(path), "CHATKIT_LLM_CONTEXT_TOKENS": "4096"}
    settings = Settings.from_env(env)
    assert settings.llm_context_tokens == 4096
    workflows = WorkflowRegistry.from_settings(settings, BackendRegistry.from_settings(settings))
    assert workflows.get("a").context_tokens == 2048
    assert workflows.get("b").context_tokens == 4096
    with pytest.raises(SettingsError, match="CHATKIT_LLM_CONTEXT_TOKENS"):
        Settings.from_env({"CHATKIT_LLM_CONTEXT_TOKENS": "40"})
