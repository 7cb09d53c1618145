"""``GET /chatkit/workflows``: what a front end needs to set up the composer.

Each workflow's id, models for the model picker, tools for the tool menu,
widget action types, greeting and starter prompts; and whether dictation is
on (``CHATKIT_TRANSCRIBE_BASE_URL``), so the front end shows the microphone
only then. Signed in like ``/chatkit``; a session sees only its own workflow.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatkit_server.errors import RequestError
from chatkit_server.http.errors import request_error_response
from chatkit_server.http.origin import refuse_foreign_origin
from chatkit_server.http.state import get_state

__all__ = ["list_workflows"]


async def list_workflows(request: Request) -> Response:
    """List the server's workflows, the default first."""
    state = get_state(request)
    refused = refuse_foreign_origin(request, state.settings.cors_origins)
    if refused is not None:
        return refused
    try:
        context = await state.auth.authenticate(request)
    except RequestError as exc:
        return request_error_response(exc)
    registry = state.server.workflows
    dictation = state.server.transcriber is not None
    if context.session_id is not None:
        workflow = registry.get(context.workflow_id)
        return JSONResponse(
            {"default": workflow.id, "dictation": dictation, "data": [workflow.describe()]}
        )
    workflows = sorted(registry, key=lambda workflow: workflow.id != registry.default)
    return JSONResponse(
        {
            "default": registry.default,
            "dictation": dictation,
            "data": [workflow.describe() for workflow in workflows],
        }
    )
