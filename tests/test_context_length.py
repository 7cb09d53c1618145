"""A message longer than the model's context: said plainly, and history never overflows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from chatkit_server.testing.live import serve_app
from chatkit_server.testing.stack import run_chatkit

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
