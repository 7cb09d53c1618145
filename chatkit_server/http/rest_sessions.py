"""Sessions over REST: the body of ``POST /v1/chatkit/sessions`` and the ``chatkit.session`` shape.

The body is ``openai.types.beta.chatkit.SessionCreateParams``; what comes
back is ``openai.types.beta.chatkit.ChatSession``, with every option
resolved to the value the server applies:

- ``workflow.tracing.enabled`` is the request's (default true) *and* the
  server's ``CHATKIT_TRACING``: nothing is traced unless the operator turned
  tracing on, whatever a session asks;
- ``chatkit_configuration.automatic_thread_titling.enabled`` likewise needs
  ``CHATKIT_TITLES`` on;
- ``workflow.version`` is accepted and reported as ``null``: the workflows
  file holds one version of each workflow, the one that runs.

The client secret is shown once, in the answer to ``create``: only its
keyed hash is stored (:mod:`chatkit_server.store.sessions`), so a cancelled
session comes back with ``client_secret: ""``.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from chatkit_server.errors import RequestError
from chatkit_server.http.auth import MAX_USER_LENGTH
from chatkit_server.settings import Settings
from chatkit_server.store.sessions import SessionRecord, SessionStore
from chatkit_server.workflows.registry import WorkflowRegistry

__all__ = [
    "DEFAULT_EXPIRES_SECONDS",
    "DEFAULT_RATE_LIMIT",
    "MAX_EXPIRES_SECONDS",
    "SessionCreateBody",
    "cancel_session",
    "create_session",
    "session_object",
]

DEFAULT_EXPIRES_SECONDS: Final = 600
"""A session's lifetime when the body gives no ``expires_after`` (as in hosted ChatKit)."""

MAX_EXPIRES_SECONDS: Final = 7 * 24 * 3600
"""The longest lifetime a session may ask for: a leaked secret works no longer than this."""

DEFAULT_RATE_LIMIT: Final = 10
"""Requests per minute when the body gives no ``rate_limits``."""

MAX_STATE_KEY_LENGTH: Final = 64
_MAX_RATE_LIMIT: Final = 1_000_000
_MAX_FILE_SIZE_MB: Final = 512
_ERRORS_SHOWN: Final = 5

# Strict: a string is not a number or a boolean here, and a misspelt
# option is an error rather than silently the default.
_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Tracing(BaseModel):
    model_config = _STRICT
    enabled: bool = True


class _Workflow(BaseModel):
    model_config = _STRICT
    id: Annotated[str, StringConstraints(min_length=1)]
    version: str | None = None
    state_variables: (
        dict[
            Annotated[str, StringConstraints(min_length=1, max_length=MAX_STATE_KEY_LENGTH)],
            str | int | float | bool,
        ]
        | None
    ) = None
    tracing: _Tracing = Field(default_factory=_Tracing)


class _ExpiresAfter(BaseModel):
    model_config = _STRICT
    anchor: Literal["created_at"]
    seconds: int = Field(ge=1, le=MAX_EXPIRES_SECONDS)


class _RateLimits(BaseModel):
    model_config = _STRICT
    max_requests_per_1_minute: int = Field(default=DEFAULT_RATE_LIMIT, ge=1, le=_MAX_RATE_LIMIT)


class _Titling(BaseModel):
    model_config = _STRICT
    enabled: bool = True


class _FileUpload(BaseModel):
    model_config = _STRICT
    enabled: bool = False
    max_file_size: int = Field(default=_MAX_FILE_SIZE_MB, ge=1, le=_MAX_FILE_SIZE_MB)
    max_files: int = Field(default=10, ge=0)


class _History(BaseModel):
    model_config = _STRICT
    enabled: bool = True
    recent_threads: int | None = Field(default=None, ge=1)


class _Configuration(BaseModel):
    model_config = _STRICT
    automatic_thread_titling: _Titling = Field(default_factory=_Titling)
    file_upload: _FileUpload = Field(default_factory=_FileUpload)
    history: _History = Field(default_factory=_History)


class SessionCreateBody(BaseModel):
    """The body of ``POST /v1/chatkit/sessions`` (``SessionCreateParams``)."""

    model_config = _STRICT
    user: Annotated[str, StringConstraints(min_length=1, max_length=MAX_USER_LENGTH)]
    workflow: _Workflow
    expires_after: _ExpiresAfter | None = None
    rate_limits: _RateLimits = Field(default_factory=_RateLimits)
    chatkit_configuration: _Configuration = Field(default_factory=_Configuration)

    @classmethod
    def parse(cls, body: bytes) -> SessionCreateBody:
        """Validate a request body.

        Raises:
            RequestError: 400 naming each field that is missing or wrong.
        """
        try:
            return cls.model_validate_json(body)
        except ValidationError as exc:
            raise RequestError(400, _describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    """A client-facing message naming the fields at fault (never the input's values)."""
    errors = exc.errors(include_url=False, include_input=False)
    if any(error["type"] == "json_invalid" for error in errors):
        return "The request body is not valid JSON."
    parts = []
    for error in errors[:_ERRORS_SHOWN]:
        where = ".".join(str(part) for part in error["loc"])
        parts.append(f"'{where}': {error['msg']}" if where else f"the body: {error['msg']}")
    more = len(errors) - _ERRORS_SHOWN
    return "Invalid " + "; ".join(parts) + (f" (and {more} more)." if more > 0 else ".")


async def create_session(
    body: bytes, *, sessions: SessionStore, workflows: WorkflowRegistry, settings: Settings
) -> dict[str, Any]:
    """Mint a session from a request body; its ``chatkit.session`` with the client secret.

    Raises:
        RequestError: 400, the body is malformed or names an unknown workflow.
    """
    params = SessionCreateBody.parse(body)
    workflow = params.workflow
    if workflow.id not in workflows:
        known = ", ".join(sorted(known.id for known in workflows))
        raise RequestError(
            400,
            f"Invalid 'workflow.id': this server has no workflow {workflow.id!r}; "
            f"its workflows: {known}.",
            code="unknown_workflow",
        )
    config = params.chatkit_configuration
    configuration = config.model_dump()
    configuration["automatic_thread_titling"]["enabled"] = (
        config.automatic_thread_titling.enabled and settings.titles
    )
    record, secret = await sessions.create(
        user_id=params.user,
        workflow={
            "id": workflow.id,
            "version": None,
            "state_variables": workflow.state_variables,
            "tracing": {"enabled": workflow.tracing.enabled and settings.tracing},
        },
        expires_in=(
            params.expires_after.seconds
            if params.expires_after is not None
            else DEFAULT_EXPIRES_SECONDS
        ),
        rate_limit=params.rate_limits.max_requests_per_1_minute,
        configuration=configuration,
    )
    return session_object(record, secret)


async def cancel_session(session_id: str, *, sessions: SessionStore) -> dict[str, Any]:
    """Cancel a session; its ``chatkit.session`` (a session that had ended stays as it was).

    Its secret stops working in this process at once, in others within
    :data:`~chatkit_server.store.sessions.VERIFIED_TTL`.

    Raises:
        RequestError: 404, no such session.
    """
    record = await sessions.cancel(session_id)
    if record is None:
        raise RequestError(404, f"No session {session_id!r}.", code="not_found")
    return session_object(record, "")


def session_object(record: SessionRecord, client_secret: str) -> dict[str, Any]:
    """A ``chatkit.session``; the secret is known only when the session is created."""
    workflow = record.workflow
    return {
        "id": record.id,
        "object": "chatkit.session",
        "user": record.user_id,
        "workflow": {
            "id": workflow["id"],
            "version": workflow.get("version"),
            "state_variables": workflow.get("state_variables"),
            "tracing": {"enabled": bool(workflow.get("tracing", {}).get("enabled", False))},
        },
        "client_secret": client_secret,
        "expires_at": record.expires_at,
        "status": record.status(),
        "max_requests_per_1_minute": record.rate_limit,
        "rate_limits": {"max_requests_per_1_minute": record.rate_limit},
        "chatkit_configuration": record.configuration,
    }
