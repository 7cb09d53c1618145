"""Workflow state variables: a session's values in instructions and tools.

A session minted with ``workflow.state_variables`` (``{"plan": "pro"}``)
makes them available to:

- the workflow's instructions, as ``{{ state.plan }}`` placeholders filled in
  on every run (a variable the session does not set becomes empty text);
- function tools, through :func:`state_variables` on the tool's context.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from agents import Agent, RunContextWrapper

from chatkit_server.context import RequestContext, StateValue

__all__ = ["has_placeholders", "instructions_for", "render", "state_variables"]

_PLACEHOLDER: Final = re.compile(r"\{\{\s*state\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

Instructions = Callable[[RunContextWrapper[Any], Agent[Any]], str]


def has_placeholders(template: str) -> bool:
    """Whether ``template`` names any state variable."""
    return _PLACEHOLDER.search(template) is not None


def render(template: str, variables: Mapping[str, StateValue]) -> str:
    """``template`` with each ``{{ state.name }}`` replaced by its value."""

    def value(match: re.Match[str]) -> str:
        found = variables.get(match.group(1))
        if found is None:
            return ""
        if isinstance(found, bool):  # as JSON spells them, which models read best
            return "true" if found else "false"
        return str(found)

    return _PLACEHOLDER.sub(value, template)


def state_variables(context: RunContextWrapper[Any]) -> Mapping[str, StateValue]:
    """The state variables of the run's session (empty without a session).

    For function tools that take a ``RunContextWrapper`` as first argument::

        def greet(ctx: RunContextWrapper[Any]) -> str:
            return f"Hello from the {state_variables(ctx).get('plan', 'free')} plan"
    """
    request = getattr(context.context, "request_context", None)
    if isinstance(request, RequestContext):
        return request.state_variables
    return {}


def instructions_for(template: str) -> str | Instructions:
    """The agent's ``instructions``: the text itself, or a function filling its placeholders."""
    if not has_placeholders(template):
        return template

    def instructions(context: RunContextWrapper[Any], agent: Agent[Any]) -> str:
        return render(template, state_variables(context))

    return instructions
