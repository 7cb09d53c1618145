"""``GET /chatkit/workflows``: what a front end needs to set up the composer.

Each workflow's id, models for the model picker, tools for the tool menu,
greeting and starter prompts.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatkit_server.http.state import get_state

__all__ = ["list_workflows"]


async def list_workflows(request: Request) -> Response:
    """List the server's workflows, the default first."""
    registry = get_state(request).server.workflows
    workflows = sorted(registry, key=lambda workflow: workflow.id != registry.default)
    return JSONResponse(
        {"default": registry.default, "data": [workflow.describe() for workflow in workflows]}
    )
