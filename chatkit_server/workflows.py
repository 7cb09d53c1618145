"""Workflows: which agent, on which backend, answers a thread.

Without a workflows file there is exactly one workflow, ``default``, built
from the ``CHATKIT_LLM_*`` settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from agents import Agent, ModelSettings

from .backends import DEFAULT_BACKEND, Backend, BackendRegistry
from .settings import Settings

__all__ = ["DEFAULT_INSTRUCTIONS", "DEFAULT_WORKFLOW", "Workflow", "WorkflowRegistry"]

DEFAULT_WORKFLOW = "default"
DEFAULT_INSTRUCTIONS = "You are a helpful assistant. Answer clearly and concisely."


@dataclass(frozen=True, kw_only=True)
class Workflow:
    """One declared workflow: an agent bound to a backend and a model."""

    id: str
    backend: Backend
    model: str
    instructions: str = DEFAULT_INSTRUCTIONS

    @cached_property
    def agent(self) -> Agent[Any]:
        """The Agents SDK agent; stateless, so one serves every run.

        Raises:
            RuntimeError: The workflow's backend has no base URL.
        """
        settings = ModelSettings()
        if self.backend.config.api == "chat_completions":
            # Chat Completions only reports token usage when asked to.
            settings = ModelSettings(include_usage=True)
        return Agent(
            name=self.id,
            instructions=self.instructions,
            model=self.backend.model(self.model),
            model_settings=settings,
        )


class WorkflowRegistry:
    """The workflows this server runs, by id."""

    def __init__(self, workflows: list[Workflow]) -> None:
        self._workflows = {workflow.id: workflow for workflow in workflows}

    @classmethod
    def from_settings(cls, settings: Settings, backends: BackendRegistry) -> WorkflowRegistry:
        """The registry for the given settings.

        Raises:
            NotImplementedError: A workflows file is configured; loading one
                is not supported by this version.
        """
        if settings.workflows_path is not None:
            raise NotImplementedError(
                f"CHATKIT_WORKFLOWS={settings.workflows_path}: workflow files are not supported "
                "by this version yet; unset it to use the default workflow from CHATKIT_LLM_*"
            )
        default = Workflow(
            id=DEFAULT_WORKFLOW,
            backend=backends.get(DEFAULT_BACKEND),
            model=settings.llm_model,
        )
        return cls([default])

    def get(self, workflow_id: str) -> Workflow:
        """The workflow with this id.

        Raises:
            KeyError: No such workflow.
        """
        return self._workflows[workflow_id]

    def __contains__(self, workflow_id: object) -> bool:
        return workflow_id in self._workflows
