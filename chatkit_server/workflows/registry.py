"""Workflows: which agent, on which backend and model, answers a thread.

Without a workflows file there is exactly one workflow, ``default``, built
from the ``CHATKIT_LLM_*`` settings. With one, every workflow of the file,
its tools and its handoffs to other workflows. Function tools run on the
server and show as tasks while they run (:mod:`chatkit_server.workflows.tool_tasks`);
client tools stop the answer for the browser (:mod:`chatkit_server.workflows.client_tools`).
"""

from __future__ import annotations

import copy as pycopy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents import Agent, FunctionTool, ModelSettings

from chatkit_server.llm.backends import DEFAULT_BACKEND, Backend, BackendRegistry
from chatkit_server.settings import Settings
from chatkit_server.workflows.actions import ActionHandler
from chatkit_server.workflows.client_tools import client_tool
from chatkit_server.workflows.file import StarterPrompt, WorkflowSpec
from chatkit_server.workflows.state import instructions_for
from chatkit_server.workflows.structured_input import stop_when_waiting
from chatkit_server.workflows.tool_tasks import show_progress

__all__ = [
    "ANSWER_RESERVE_FRACTION",
    "DEFAULT_INSTRUCTIONS",
    "DEFAULT_WORKFLOW",
    "Workflow",
    "WorkflowRegistry",
]

DEFAULT_WORKFLOW = "default"
DEFAULT_INSTRUCTIONS = "You are a helpful assistant. Answer clearly and concisely."
# Share of a model's context kept free for the answer when the workflow sets no
# max_tokens: a quarter (1024 of llama-server's default 4096).
ANSWER_RESERVE_FRACTION = 0.25


@dataclass(frozen=True, kw_only=True)
class Workflow:
    """One workflow: an agent bound to a backend, with the models it may use."""

    id: str
    backend: Backend
    model: str
    allowed_models: tuple[str, ...] = ()
    instructions: str = DEFAULT_INSTRUCTIONS
    model_settings: ModelSettings = field(default_factory=ModelSettings)
    tools: tuple[FunctionTool, ...] = ()
    client_tools: tuple[FunctionTool, ...] = ()
    handoff_description: str | None = None
    greeting: str | None = None
    starter_prompts: tuple[StarterPrompt, ...] = ()
    history_tokens: int | None = None
    title_model: str | None = None
    context_tokens: int | None = None
    # Widget action handlers by action type (chatkit_server.workflows.actions).
    actions: Mapping[str, ActionHandler] = field(default_factory=dict)
    # Whether the model accepts images: off by default, since many local
    # models (the bundled one too) refuse a request that carries one.
    vision: bool = False

    @property
    def models(self) -> tuple[str, ...]:
        """Models the composer's picker may choose, the default first."""
        return self.allowed_models or (self.model,)

    @property
    def tool_names(self) -> frozenset[str]:
        """Names of the workflow's tools, server-side and client."""
        return frozenset(tool.name for tool in (*self.tools, *self.client_tools))

    def history_budget(self, default: int) -> int:
        """Tokens the instructions and history may take in a request to this workflow's model.

        The workflow's ``history_tokens`` (else ``default``), but never more than
        its backend's context (when known) less room for the answer: the
        workflow's ``max_tokens``, else :data:`ANSWER_RESERVE_FRACTION` of it.
        A budget over the context would have the backend refuse every long
        thread.

        Args:
            default: The server-wide budget (``CHATKIT_HISTORY_TOKENS``).
        """
        budget = self.history_tokens or default
        if self.context_tokens is None:
            return budget
        reserve = self.model_settings.max_tokens or int(
            self.context_tokens * ANSWER_RESERVE_FRACTION
        )
        # At least one token: the newest message is always sent, whatever the budget.
        return max(1, min(budget, self.context_tokens - reserve))

    def build_agent(self) -> Agent[Any]:
        """A new Agents SDK agent for this workflow (without handoffs).

        Raises:
            RuntimeError: The workflow's backend has no base URL.
        """
        settings = self.model_settings
        if self.backend.config.api == "chat_completions":
            # Chat Completions only reports token usage when asked to.
            settings = settings.resolve(ModelSettings(include_usage=True))
        return Agent(
            name=self.id,
            instructions=instructions_for(self.instructions),
            handoff_description=self.handoff_description,
            model=self.backend.model(self.model),
            model_settings=settings,
            tools=[*map(show_progress, self.tools), *self.client_tools],
            # The answer ends at a client tool call or a question for the user; the
            # browser's output (or the user's answers) resumes it.
            tool_use_behavior=stop_when_waiting,
        )

    def describe(self) -> dict[str, Any]:
        """What a front end needs to know: id, models, tools, greeting, starter prompts.

        ``client_tools`` names the tools the front end must answer (``onClientTool``);
        ``actions`` the widget action types the workflow handles.
        """
        return {
            "id": self.id,
            "model": self.model,
            "models": list(self.models),
            "tools": sorted(self.tool_names),
            "client_tools": sorted(tool.name for tool in self.client_tools),
            "actions": sorted(self.actions),
            "greeting": self.greeting,
            "starter_prompts": [
                prompt.model_dump(exclude_none=True) for prompt in self.starter_prompts
            ],
        }


class WorkflowRegistry:
    """The workflows this server runs, by id, and their agents."""

    def __init__(
        self,
        workflows: Sequence[Workflow],
        *,
        default: str = DEFAULT_WORKFLOW,
        handoffs: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self._workflows = {workflow.id: workflow for workflow in workflows}
        if default not in self._workflows:
            raise KeyError(default)
        self.default = default
        self._agents: dict[str, Agent[Any]] = {}
        # Agents are built up front when their backend is usable; handoffs
        # may form cycles, so they are linked after every agent exists.
        for workflow in workflows:
            if workflow.backend.configured:
                self._agents[workflow.id] = workflow.build_agent()
        for source, targets in (handoffs or {}).items():
            if source in self._agents:
                self._agents[source].handoffs = [
                    self._agents[target] for target in targets if target in self._agents
                ]

    @classmethod
    def from_settings(cls, settings: Settings, backends: BackendRegistry) -> WorkflowRegistry:
        """The workflows of the settings: the file's, or ``default`` from ``CHATKIT_LLM_*``."""
        file = settings.workflows_file
        if file is None:
            default = Workflow(
                id=DEFAULT_WORKFLOW,
                backend=backends.get(DEFAULT_BACKEND),
                model=settings.llm_model,
                context_tokens=settings.llm_context_tokens,
                vision=settings.llm_vision,
            )
            return cls([default])
        workflows = [
            _from_spec(
                workflow_id,
                spec,
                backends.get(spec.backend),
                file.tools[workflow_id],
                file.actions.get(workflow_id, {}),
                # A file's workflow may run on the CHATKIT_LLM_* backend ("default").
                context_tokens=spec_backend.context_tokens
                if (spec_backend := file.backends.get(spec.backend))
                else settings.llm_context_tokens,
            )
            for workflow_id, spec in file.workflows.items()
        ]
        handoffs = {workflow_id: spec.handoffs for workflow_id, spec in file.workflows.items()}
        return cls(workflows, default=file.default_workflow, handoffs=handoffs)

    def get(self, workflow_id: str) -> Workflow:
        """The workflow with this id.

        Raises:
            KeyError: No such workflow.
        """
        return self._workflows[workflow_id]

    def agent(self, workflow_id: str, *, model: str | None = None) -> Agent[Any]:
        """A new copy of a workflow's agent for one run, optionally on another allowed model.

        A copy per run, because the Agents SDK compares every run of one
        ``Agent`` object with every other run of it that is still going (to
        detect tools changed mid-run): with 500 concurrent answers that was a
        tenth of the server's CPU. A shallow copy: ``Agent.clone()`` checks
        every field's type again (about 0.2 ms, from type hints it resolves
        each time) for values that were checked when the template was built.

        Raises:
            KeyError: No such workflow, or its backend is not configured.
        """
        agent = self._agents[workflow_id]
        workflow = self._workflows[workflow_id]
        copy = pycopy.copy(agent)
        if model is not None and model != workflow.model:
            copy.model = workflow.backend.model(model)
        return copy

    def __contains__(self, workflow_id: object) -> bool:
        return workflow_id in self._workflows

    def __iter__(self) -> Any:
        return iter(self._workflows.values())


def _from_spec(
    workflow_id: str,
    spec: WorkflowSpec,
    backend: Backend,
    tools: tuple[FunctionTool, ...],
    actions: Mapping[str, ActionHandler],
    *,
    context_tokens: int | None,
) -> Workflow:
    settings = ModelSettings(**spec.model_settings.model_dump(exclude_none=True))
    return Workflow(
        id=workflow_id,
        backend=backend,
        model=spec.model,
        allowed_models=tuple(spec.allowed_models),
        instructions=spec.instructions,
        model_settings=settings,
        tools=tools,
        client_tools=tuple(
            client_tool(tool.name, tool.description, tool.parameters) for tool in spec.client_tools
        ),
        handoff_description=spec.handoff_description,
        greeting=spec.greeting,
        starter_prompts=tuple(spec.starter_prompts),
        history_tokens=spec.history_tokens,
        title_model=spec.title_model,
        context_tokens=context_tokens,
        actions=dict(actions),
        vision=spec.vision,
    )
