"""The workflows file: backends and agent workflows declared in TOML.

Read with the standard library's ``tomllib`` and validated in full at
start-up: every problem is reported as ``FILE: KEY: what is wrong`` so an
operator can find it without reading a traceback. Example::

    default_workflow = "assistant"

    [backends.local]
    base_url = "http://127.0.0.1:8080/v1"
    api = "chat_completions"          # or "responses"
    api_key_env = "LOCAL_LLM_KEY"     # or api_key = "..."; neither for local servers
    read_timeout = 60
    headers = { "X-Team" = "support" }
    context_tokens = 8192             # the model's context: history is cut to fit it

    [workflows.assistant]
    backend = "local"
    model = "smollm2"
    models = ["smollm2", "qwen3"]     # what the composer's model picker may choose
    instructions = "You are a helpful assistant."
    tools = ["mypackage.tools:lookup_order"]
    handoffs = ["billing"]
    greeting = "How can I help?"
    starter_prompts = [{ label = "Track an order", prompt = "Where is my order?" }]
    model_settings = { temperature = 0.3, max_tokens = 512 }
    history_tokens = 6000             # context budget; default CHATKIT_HISTORY_TOKENS
    title_model = "smollm2"           # writes thread titles; default: the workflow's model
    vision = false                    # true: image attachments reach the model (data: URLs)

    # Widget actions (a button's ActionConfig type) and their handlers: async
    # functions taking a chatkit_server.workflows.actions.ActionContext.
    actions = { "counter.add" = "chatkit_server.tools:add_to_counter" }

    # A tool the browser runs (ChatKit's onClientTool): the answer stops at the call
    # and goes on when threads.add_client_tool_output brings the result.
    [[workflows.assistant.client_tools]]
    name = "pick_color"
    description = "Ask the user to pick a color."
    parameters = { type = "object", properties = { hint = { type = "string" } } }
"""

from __future__ import annotations

import importlib
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chatkit_server.errors import ChatKitServerError
from chatkit_server.workflows.actions import ActionHandler, is_action_handler

if TYPE_CHECKING:
    from agents import FunctionTool

__all__ = [
    "BackendSpec",
    "ClientToolSpec",
    "ModelSettingsSpec",
    "StarterPrompt",
    "WorkflowFile",
    "WorkflowFileError",
    "WorkflowSpec",
    "load_workflow_file",
]

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# What OpenAI-compatible servers accept as a function name.
_TOOL_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_-]{0,63}"
_IMPORT_PATH_PATTERN = r"[A-Za-z_][\w.]*:[A-Za-z_]\w*"


class WorkflowFileError(ChatKitServerError):
    """The workflows file cannot be used; the message names the file and key."""

    def __init__(self, path: Path, key: str, message: str) -> None:
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.key = key


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendSpec(_Spec):
    """One OpenAI-compatible server."""

    base_url: str
    api: Literal["chat_completions", "responses"] = "chat_completions"
    api_key: str | None = None
    api_key_env: str | None = None
    read_timeout: float = Field(default=60.0, gt=0)
    connect_timeout: float = Field(default=5.0, gt=0)
    max_retries: int = Field(default=0, ge=0, le=10)
    headers: dict[str, str] = Field(default_factory=dict)
    # The model's context size, when known: the history budget stays inside it.
    context_tokens: int | None = Field(default=None, ge=256)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
        return value.rstrip("/")


class ModelSettingsSpec(_Spec):
    """Sampling settings passed to the model on every call."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, gt=0)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    parallel_tool_calls: bool | None = None


class StarterPrompt(_Spec):
    """A suggestion shown on the empty thread screen."""

    label: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    icon: str | None = None


class ClientToolSpec(_Spec):
    """A tool the browser runs: the model calls it, the front end answers."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    @field_validator("name")
    @classmethod
    def _tool_name(cls, value: str) -> str:
        if not re.fullmatch(_TOOL_NAME_PATTERN, value):
            raise ValueError(
                f"expected letters, digits, '_' or '-' (at most 64, not starting with a digit "
                f"or '-'), got {value!r}"
            )
        return value

    @field_validator("parameters")
    @classmethod
    def _object_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        # The model needs a JSON schema of an object: function arguments always are one.
        if value.get("type") != "object":
            raise ValueError('expected a JSON schema with type = "object"')
        properties = value.get("properties", {})
        if not isinstance(properties, dict) or not all(
            isinstance(schema, dict) for schema in properties.values()
        ):
            raise ValueError("properties: expected a table of JSON schemas, one per argument")
        required = value.get("required", [])
        if not isinstance(required, list) or not all(
            isinstance(name, str) and name in properties for name in required
        ):
            raise ValueError("required: expected a list of names declared in properties")
        return value


class WorkflowSpec(_Spec):
    """One agent workflow as declared in the file."""

    backend: str = "default"
    model: str = Field(min_length=1)
    models: list[str] = Field(default_factory=list)
    instructions: str = "You are a helpful assistant. Answer clearly and concisely."
    model_settings: ModelSettingsSpec = Field(default_factory=ModelSettingsSpec)
    tools: list[str] = Field(default_factory=list)
    client_tools: list[ClientToolSpec] = Field(default_factory=list)
    handoffs: list[str] = Field(default_factory=list)
    handoff_description: str | None = None
    greeting: str | None = None
    starter_prompts: list[StarterPrompt] = Field(default_factory=list)
    history_tokens: int | None = Field(default=None, ge=100)
    title_model: str | None = Field(default=None, min_length=1)
    actions: dict[str, str] = Field(default_factory=dict)
    # The model accepts images: image attachments reach it as data: URLs.
    vision: bool = False

    @field_validator("tools")
    @classmethod
    def _import_paths(cls, value: list[str]) -> list[str]:
        for index, path in enumerate(value):
            if not re.fullmatch(_IMPORT_PATH_PATTERN, path):
                raise ValueError(f"item {index}: expected 'module.path:function', got {path!r}")
        return value

    @field_validator("actions")
    @classmethod
    def _action_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for action_type, path in value.items():
            if not action_type.strip():
                raise ValueError("an action type must not be empty")
            if not re.fullmatch(_IMPORT_PATH_PATTERN, path):
                raise ValueError(f"{action_type!r}: expected 'module.path:function', got {path!r}")
        return value

    @property
    def allowed_models(self) -> list[str]:
        """The models the composer's picker may choose, the default first."""
        return [self.model, *(m for m in self.models if m != self.model)]


class _FileSpec(_Spec):
    default_workflow: str | None = None
    backends: dict[str, BackendSpec] = Field(default_factory=dict)
    workflows: dict[str, WorkflowSpec] = Field(min_length=1)


@dataclass(frozen=True, kw_only=True)
class WorkflowFile:
    """A validated workflows file, with API keys and tools resolved."""

    path: Path
    default_workflow: str
    backends: Mapping[str, BackendSpec]
    api_keys: Mapping[str, str | None]
    workflows: Mapping[str, WorkflowSpec]
    tools: Mapping[str, tuple[FunctionTool, ...]]
    actions: Mapping[str, Mapping[str, ActionHandler]]


def load_workflow_file(path: Path, environ: Mapping[str, str]) -> WorkflowFile:
    """Read, validate and resolve a workflows file.

    Args:
        path: The TOML file.
        environ: Where ``api_key_env`` names are looked up (the settings pass
            the process environment; nothing else reads it).

    Raises:
        WorkflowFileError: The file is unreadable, not TOML, or invalid; the
            message names the key and what is wrong.
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WorkflowFileError(path, "", f"cannot read the file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise WorkflowFileError(path, "", f"not valid TOML: {exc}") from None
    try:
        spec = _FileSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        key = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]
        ).lstrip(".")
        raise WorkflowFileError(path, key, _plain(first["msg"])) from None

    for name in list(spec.backends) + list(spec.workflows):
        if not re.fullmatch(_ID_PATTERN, name):
            raise WorkflowFileError(path, name, "ids use letters, digits, '_', '.', '-'")

    api_keys: dict[str, str | None] = {}
    for name, backend in spec.backends.items():
        key = f"backends.{name}"
        if backend.api_key is not None and backend.api_key_env is not None:
            raise WorkflowFileError(path, key, "set api_key or api_key_env, not both")
        if backend.api_key_env is not None:
            value = environ.get(backend.api_key_env, "").strip()
            if not value:
                raise WorkflowFileError(
                    path,
                    key + ".api_key_env",
                    f"environment variable {backend.api_key_env} is unset",
                )
            api_keys[name] = value
        else:
            api_keys[name] = backend.api_key

    tools: dict[str, tuple[FunctionTool, ...]] = {}
    actions: dict[str, dict[str, ActionHandler]] = {}
    for workflow_id, workflow in spec.workflows.items():
        key = f"workflows.{workflow_id}"
        if workflow.backend not in spec.backends and workflow.backend != "default":
            known = ", ".join(sorted(spec.backends)) or "none"
            raise WorkflowFileError(
                path, key + ".backend", f"no backend {workflow.backend!r} (declared: {known})"
            )
        for index, target in enumerate(workflow.handoffs):
            if target not in spec.workflows or target == workflow_id:
                raise WorkflowFileError(
                    path, f"{key}.handoffs[{index}]", f"no other workflow {target!r}"
                )
        tools[workflow_id] = tuple(
            _import_tool(path, f"{key}.tools[{index}]", target)
            for index, target in enumerate(workflow.tools)
        )
        names = {tool.name for tool in tools[workflow_id]}
        for index, client in enumerate(workflow.client_tools):
            if client.name in names:
                raise WorkflowFileError(
                    path,
                    f"{key}.client_tools[{index}].name",
                    f"the workflow already has a tool named {client.name!r}",
                )
            names.add(client.name)
        actions[workflow_id] = {
            action_type: _import_action(path, f"{key}.actions.{action_type}", target)
            for action_type, target in workflow.actions.items()
        }

    default = spec.default_workflow or next(iter(spec.workflows))
    if default not in spec.workflows:
        raise WorkflowFileError(path, "default_workflow", f"no workflow {default!r}")
    return WorkflowFile(
        path=path,
        default_workflow=default,
        backends=spec.backends,
        api_keys=api_keys,
        workflows=spec.workflows,
        tools=tools,
        actions=actions,
    )


def _import_target(path: Path, key: str, target: str) -> Any:
    """The object ``module.path:name`` names (``None`` if the module lacks it)."""
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WorkflowFileError(path, key, f"cannot import {module_name!r}: {exc}") from None
    except Exception as exc:
        # The module exists but fails while importing (a syntax error, a
        # failing top-level statement): still the file's line to fix.
        raise WorkflowFileError(
            path, key, f"cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    return getattr(module, attribute, None)


def _import_action(path: Path, key: str, target: str) -> ActionHandler:
    obj = _import_target(path, key, target)
    if obj is None:
        raise WorkflowFileError(path, key, f"{target!r} does not exist")
    if not is_action_handler(obj):
        raise WorkflowFileError(
            path, key, f"{target!r} is not an async function (async def handler(action))"
        )
    handler: ActionHandler = obj
    return handler


def _import_tool(path: Path, key: str, target: str) -> FunctionTool:
    # Imported here: the Agents SDK takes over a second to import, and the
    # commands that read settings without running workflows (--help,
    # migrate, a mistake reported in one line, the supervisor of --workers)
    # need none of it.
    from agents import FunctionTool, function_tool

    obj: Any = _import_target(path, key, target)
    if isinstance(obj, FunctionTool):
        return obj
    if not callable(obj):
        raise WorkflowFileError(path, key, f"{target!r} is not a function")
    try:
        return function_tool(_as_callable(obj))
    except Exception as exc:
        # The SDK derives the tool's JSON schema from the signature; say
        # which function it could not describe.
        raise WorkflowFileError(path, key, f"{target!r} cannot be a tool: {exc}") from None


def _as_callable(obj: Any) -> Callable[..., Any]:
    function: Callable[..., Any] = obj
    return function


def _plain(message: str) -> str:
    # pydantic's wording, lower-cased to read as the tail of our sentence.
    return message[0].lower() + message[1:] if message else message
