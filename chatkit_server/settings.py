"""Server settings: the only module that reads the environment.

Every knob is a ``CHATKIT_*`` environment variable, parsed once into a frozen
:class:`Settings`. An invalid value raises :class:`SettingsError` naming the
variable and what it expects, so a typo fails at start-up, not mid-request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from chatkit_server import settings_values as values
from chatkit_server.settings_values import DEFAULT_UPLOAD_TYPES, SettingsError
from chatkit_server.workflows.file import WorkflowFile, load_workflow_file

__all__ = [
    "DEFAULT_ANSWER_MAX_CHARS",
    "DEFAULT_ACTION_MAX_SECONDS",
    "DEFAULT_ANSWER_MAX_SECONDS",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DATA_DIR",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_JWT_LEEWAY",
    "DEFAULT_KEEPALIVE_TIMEOUT",
    "DEFAULT_LLM_MODEL",
    "DEFAULT_MAX_ATTACHMENTS",
    "DEFAULT_MIN_FREE_BYTES",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_TITLE_CHARS",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_UPLOAD_GRACE",
    "DEFAULT_UPLOAD_TYPES",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_STREAM_STALL_TIMEOUT",
    "DEFAULT_TRANSCRIBE_MAX_BYTES",
    "DEFAULT_TRANSCRIBE_MODEL",
    "DEFAULT_TRANSCRIBE_TIMEOUT",
    "DEFAULT_USER_RATE_LIMIT",
    "DATABASE_VARIABLES",
    "ENVIRONMENT_HELP",
    "AttachmentStorage",
    "LLMApi",
    "LocalModelMode",
    "Settings",
    "SettingsError",
    "environment_help",
]

LLMApi = Literal["chat_completions", "responses"]
# auto: with no backend configured, `serve` runs the bundled local model when installed.
LocalModelMode = Literal["auto", "off"]
# Where attachment bytes live: a directory under the data dir, or the database
# (for several replicas on one PostgreSQL, where no directory is shared).
AttachmentStorage = Literal["local", "database"]

DEFAULT_DATA_DIR = Path(".chatkit")
DEFAULT_LLM_MODEL = "default"
# Local servers (llama-server, vLLM, Ollama) ignore the key, but the OpenAI
# client refuses to start without one.
DEFAULT_LLM_API_KEY = "not-needed"
DEFAULT_CONNECT_TIMEOUT = 5.0
# Longest silence tolerated between two chunks of a streamed answer: the
# OpenAI client's own default is 600 s, which turns a stalled backend into a
# ten-minute spinner.
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 0
# A ChatKit request is a small JSON document (attachments travel separately);
# audio for input.transcribe is the largest thing that arrives inline.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
# Caps on what one request may ask the server to keep: generous for people,
# small enough that no single request can bloat every later listing.
DEFAULT_MAX_TITLE_CHARS = 200
DEFAULT_MAX_ATTACHMENTS = 10
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# An upload never attached to a message is deleted after this many seconds:
# long enough for a user to finish writing the message it was meant for.
DEFAULT_UPLOAD_GRACE = 24 * 3600
DEFAULT_HISTORY_ITEMS = 200
# An answer ends (with a notice, what came so far saved) past these: a backend
# that never stops must not stream forever or store megabytes in one message.
DEFAULT_ANSWER_MAX_CHARS = 100_000
DEFAULT_ANSWER_MAX_SECONDS = 600.0
# A widget action's handler is the operator's code: one that hangs must not
# hold its request (a sync action's JSON answer, a streamed one's stream) forever.
DEFAULT_ACTION_MAX_SECONDS = 60.0
# How long an answer waits for a client that takes none of it before the
# client is treated as gone (the answer is saved, the backend stopped).
DEFAULT_STREAM_STALL_TIMEOUT = 60.0
# Connections: a request's headers and its body must arrive within these, and
# an idle keep-alive connection is closed after the last.
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_KEEPALIVE_TIMEOUT = 5.0
# /healthz says 503 below this much free space where the server writes (the
# SQLite file's and the attachments' disks): writes would soon fail.
DEFAULT_MIN_FREE_BYTES = 64 * 1024 * 1024
# Fits SmolLM2 with llama-server's default 4k context and room for an answer.
DEFAULT_HISTORY_TOKENS = 3000
DEFAULT_SHUTDOWN_GRACE = 5.0
# Hosted ChatKit's defaults for a session: 10 minutes, 10 requests a minute.
DEFAULT_SESSION_SECONDS = 600
DEFAULT_SESSION_RATE_LIMIT = 10
# Signed-in users without a session (JWT, proxy header): a person typing and
# clicking, with room for retries.
DEFAULT_USER_RATE_LIMIT = 60
# Clock skew tolerated on a JWT's exp/nbf/iat.
DEFAULT_JWT_LEEWAY = 30.0

# Dictation (input.transcribe): the audio arrives base64-encoded (4/3 larger)
# inside the JSON body, so the default clip fits the default body limit.
DEFAULT_TRANSCRIBE_MAX_BYTES = 3_000_000
# OpenAI's name; whisper.cpp's server ignores it, vLLM needs its own model's name.
DEFAULT_TRANSCRIBE_MODEL = "whisper-1"
# A dictated clip is short: past this the user is better told than kept waiting.
DEFAULT_TRANSCRIBE_TIMEOUT = 30.0

# Smaller than any chat model's context: a typo such as 40 instead of 4096
# would leave no room for a message.
MIN_CONTEXT_TOKENS = 256

ENVIRONMENT_HELP = """\
environment:
  CHATKIT_DATA_DIR            directory of the default SQLite database (default ./.chatkit)
  CHATKIT_DATABASE_URL        SQLAlchemy URL: sqlite+aiosqlite:///path.db or
                              postgresql+asyncpg://user@host/db (default: SQLite in the data dir)
  CHATKIT_DATABASE_POOL_SIZE  PostgreSQL connections each process keeps open (default 30)
  CHATKIT_LLM_BASE_URL        OpenAI-compatible base URL of the model backend, e.g.
                              http://127.0.0.1:8080/v1 (llama-server) or http://127.0.0.1:11434/v1
  CHATKIT_LLM_API_KEY         API key sent to the backend (default: a placeholder for local servers)
  CHATKIT_LLM_MODEL           model name sent to the backend (default "default")
  CHATKIT_LLM_API             chat_completions (default) or responses
  CHATKIT_LLM_TIMEOUT         seconds a backend may stay silent mid-answer (default 60)
  CHATKIT_LLM_CONNECT_TIMEOUT seconds to connect to the backend (default 5)
  CHATKIT_LLM_MAX_RETRIES     retries of a failed backend request before answering (default 0)
  CHATKIT_WORKFLOWS           path of the workflows file (default: one workflow, "default")
  CHATKIT_LOCAL_MODEL         auto (default): with no backend configured, serve runs the bundled
                              SmolLM2 model on llama-server (extra "local"); off: never
  CHATKIT_ADMIN_KEY           bearer key of the REST API under /v1/chatkit, which mints sessions;
                              /chatkit then accepts their client secrets
  CHATKIT_JWT_SECRET          HS256 secret: /chatkit accepts JWTs signed with it (user = sub)
  CHATKIT_JWT_PUBLIC_KEY      path of a PEM public key for JWTs (RSA: RS256, EC P-256: ES256)
  CHATKIT_JWT_AUDIENCE        required "aud" of accepted JWTs (default: not checked)
  CHATKIT_JWT_ISSUER          required "iss" of accepted JWTs (default: not checked)
  CHATKIT_TRUSTED_USER_HEADER header naming the signed-in user, set by a reverse proxy, e.g.
                              X-Forwarded-User (needs CHATKIT_TRUSTED_PROXIES)
  CHATKIT_TRUSTED_PROXIES     comma-separated addresses or networks allowed to set that header
  CHATKIT_RATE_LIMIT          requests a minute that write, per JWT or proxy user (default 60;
                              0: none); a session has its own limit
  CHATKIT_CORS_ORIGINS        comma-separated origins allowed to call the server from a browser
                              (pages of other origins are refused; the server's own pass)
  CHATKIT_MAX_BODY_BYTES      largest accepted request body in bytes (default 4194304)
  CHATKIT_MAX_TITLE_CHARS     longest thread title a client may set (default 200)
  CHATKIT_MAX_ATTACHMENTS     most attachments on one message (default 10)
  CHATKIT_MAX_UPLOAD_BYTES    largest attachment in bytes (default 20971520)
  CHATKIT_ANSWER_MAX_CHARS    longest answer in characters; past it the answer ends with a
                              notice (default 100000; 0: no limit)
  CHATKIT_ANSWER_MAX_SECONDS  longest time one answer may take (default 600; 0: no limit)
  CHATKIT_ANSWER_MAX_TOKENS   max_tokens sent with every model request (default: not sent)
  CHATKIT_ACTION_MAX_SECONDS  longest time a widget action's handler may take, an answer it
                              runs excluded (default 60; 0: no limit)
  CHATKIT_STREAM_STALL_TIMEOUT seconds an answer waits for a client that reads none of it;
                              then the client is treated as gone (default 60)
  CHATKIT_HEADER_TIMEOUT      seconds a new connection has to send its request headers (default 10)
  CHATKIT_BODY_TIMEOUT        seconds a request has to send its body (default 30)
  CHATKIT_KEEPALIVE_TIMEOUT   seconds an idle keep-alive connection stays open (default 5)
  CHATKIT_MAX_CONNECTIONS     open connections (and requests) per process; past it, 503
                              (default: what the open-files limit allows)
  CHATKIT_MIN_FREE_BYTES      free space the data dir's disk must have for /healthz to say ok
                              (default 67108864)
  CHATKIT_UPLOAD_TYPES        comma-separated types an upload's bytes may be (image/png,
                              image/jpeg, image/gif, image/webp, application/pdf, text/plain =
                              any UTF-8 text, application/octet-stream = anything; image/* works;
                              default: all but application/octet-stream)
  CHATKIT_ATTACHMENT_STORAGE  where attachment bytes live: local (default: the data dir's
                              attachments/ directory) or database (shared by every replica)
  CHATKIT_UPLOAD_GRACE        seconds an upload may stay unattached to a message before it is
                              deleted (default 86400)
  CHATKIT_PUBLIC_URL          the server's address as browsers see it, e.g. https://chat.example.com
                              behind a proxy (default: the address each request was sent to)
  CHATKIT_LLM_VISION          on: the default workflow's model is sent image attachments
                              (default off: it is told their names)
  CHATKIT_HISTORY_ITEMS       most recent thread items sent to the model (default 200)
  CHATKIT_HISTORY_TOKENS      token budget for instructions + history (default 3000)
  CHATKIT_LLM_CONTEXT_TOKENS  context size of the backend's model, in tokens: history is cut to
                              fit it with room for the answer (default: not known)
  CHATKIT_TRANSCRIBE_BASE_URL OpenAI-compatible base URL of a speech-to-text server for dictation
                              (POST .../audio/transcriptions), e.g. http://127.0.0.1:8178/v1
                              (default: none, dictation is off)
  CHATKIT_TRANSCRIBE_MODEL    model name sent to it (default "whisper-1")
  CHATKIT_TRANSCRIBE_API_KEY  API key sent to it (default: none)
  CHATKIT_TRANSCRIBE_TIMEOUT  seconds a transcription may take in all (default 30)
  CHATKIT_TRANSCRIBE_MAX_BYTES
                              largest dictated audio clip in bytes (default 3000000)
  CHATKIT_TRACING             1 to enable Agents SDK tracing (off: it uploads chat content)
  CHATKIT_TITLES              0 to stop naming new threads with a model-written title (default 1)
  CHATKIT_CONSOLE             off to stop serving the built-in chat page at / (default on)
  CHATKIT_LOG_LEVEL           debug, info (default), warning or error
"""


# What `migrate` and `usage` use (they still validate every setting).
DATABASE_VARIABLES = ("CHATKIT_DATA_DIR", "CHATKIT_DATABASE_URL", "CHATKIT_LOG_LEVEL")


def environment_help(names: tuple[str, ...], *, heading: str = "environment:") -> str:
    """The rows of :data:`ENVIRONMENT_HELP` for ``names`` only, under ``heading``.

    A subcommand's ``--help`` lists only the variables it uses.

    Args:
        names: Variables to keep, in the table's order.
        heading: The first line.
    """
    rows: list[list[str]] = []
    for line in ENVIRONMENT_HELP.splitlines()[1:]:
        if line.startswith("  CHATKIT_"):
            rows.append([line])
        else:  # a description's continuation line
            rows[-1].append(line)
    kept = [line for row in rows if row[0].split()[0] in names for line in row]
    return "\n".join([heading, *kept]) + "\n"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the server is configured with, read once at start-up."""

    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str | None = None
    database_pool_size: int | None = None
    llm_base_url: str | None = None
    llm_api_key: str = DEFAULT_LLM_API_KEY
    llm_model: str = DEFAULT_LLM_MODEL
    llm_api: LLMApi = "chat_completions"
    llm_read_timeout: float = DEFAULT_READ_TIMEOUT
    llm_connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    llm_max_retries: int = DEFAULT_MAX_RETRIES
    llm_context_tokens: int | None = None
    workflows_path: Path | None = None
    workflows_file: WorkflowFile | None = None
    local_model: LocalModelMode = "auto"
    admin_key: str | None = None
    jwt_secret: str | None = None
    jwt_public_key: str | None = None  # the PEM text, read at start-up
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: float = DEFAULT_JWT_LEEWAY
    trusted_user_header: str | None = None
    trusted_proxies: tuple[str, ...] = field(default_factory=tuple)
    user_rate_limit: int = DEFAULT_USER_RATE_LIMIT
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_title_chars: int = DEFAULT_MAX_TITLE_CHARS
    max_attachments: int = DEFAULT_MAX_ATTACHMENTS
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    answer_max_chars: int = DEFAULT_ANSWER_MAX_CHARS
    answer_max_seconds: float = DEFAULT_ANSWER_MAX_SECONDS
    answer_max_tokens: int | None = None
    action_max_seconds: float = DEFAULT_ACTION_MAX_SECONDS
    stream_stall_timeout: float = DEFAULT_STREAM_STALL_TIMEOUT
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    max_connections: int | None = None
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES
    upload_types: tuple[str, ...] = DEFAULT_UPLOAD_TYPES
    attachment_storage: AttachmentStorage = "local"
    upload_grace: int = DEFAULT_UPLOAD_GRACE
    public_url: str | None = None
    llm_vision: bool = False
    history_items: int = DEFAULT_HISTORY_ITEMS
    history_tokens: int = DEFAULT_HISTORY_TOKENS
    tracing: bool = False
    titles: bool = True
    console: bool = True
    log_level: str = "info"
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    transcribe_base_url: str | None = None
    transcribe_model: str = DEFAULT_TRANSCRIBE_MODEL
    transcribe_api_key: str | None = None
    transcribe_timeout: float = DEFAULT_TRANSCRIBE_TIMEOUT
    transcribe_max_bytes: int = DEFAULT_TRANSCRIBE_MAX_BYTES

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file inside the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'chatkit.db').as_posix()}"

    @property
    def attachments_dir(self) -> Path:
        """Where the local attachment storage keeps its files."""
        return self.data_dir / "attachments"

    @property
    def sign_in_modes(self) -> tuple[str, ...]:
        """The sign-in modes that are on: ``sessions``, ``jwt``, ``proxy``."""
        modes = []
        if self.admin_key is not None:
            modes.append("sessions")
        if self.jwt_secret is not None or self.jwt_public_key is not None:
            modes.append("jwt")
        if self.trusted_user_header is not None:
            modes.append("proxy")
        return tuple(modes)

    @property
    def auth_enabled(self) -> bool:
        """Whether ``/chatkit`` requires a credential (some sign-in mode is on)."""
        return bool(self.sign_in_modes)

    def with_changes(self, **changes: object) -> Settings:
        """Return a copy with some fields replaced (settings stay immutable)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``CHATKIT_*`` variables.

        Args:
            environ: The environment to read; ``os.environ`` when omitted.

        Raises:
            SettingsError: A variable is set to a value that cannot be used.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            if value is None or value.strip() == "":
                return None
            return value.strip()

        data_dir = Path(get("CHATKIT_DATA_DIR") or DEFAULT_DATA_DIR)
        database_url = get("CHATKIT_DATABASE_URL")
        if database_url is not None:
            database_url = values.database_url(database_url)

        llm_base_url = get("CHATKIT_LLM_BASE_URL")
        if llm_base_url is not None and not llm_base_url.startswith(("http://", "https://")):
            raise SettingsError(
                "CHATKIT_LLM_BASE_URL",
                f"expected an http:// or https:// URL, got {llm_base_url!r}",
            )

        transcribe_base_url = get("CHATKIT_TRANSCRIBE_BASE_URL")
        if transcribe_base_url is not None and not transcribe_base_url.startswith(
            ("http://", "https://")
        ):
            raise SettingsError(
                "CHATKIT_TRANSCRIBE_BASE_URL",
                f"expected an http:// or https:// URL, got {transcribe_base_url!r}",
            )

        api = get("CHATKIT_LLM_API") or "chat_completions"
        if api not in ("chat_completions", "responses"):
            raise SettingsError(
                "CHATKIT_LLM_API", f"expected 'chat_completions' or 'responses', got {api!r}"
            )

        workflows = get("CHATKIT_WORKFLOWS")
        workflows_path = Path(workflows) if workflows else None
        workflows_file = None
        if workflows_path is not None:
            if not workflows_path.is_file():
                raise SettingsError("CHATKIT_WORKFLOWS", f"no such file: {workflows_path}")
            # Validated now, so a mistake in the file stops start-up with
            # a message naming the key, never a failing request later.
            workflows_file = load_workflow_file(workflows_path, env)

        local_model = (get("CHATKIT_LOCAL_MODEL") or "auto").lower()
        if local_model not in ("auto", "off"):
            raise SettingsError(
                "CHATKIT_LOCAL_MODEL", f"expected 'auto' or 'off', got {local_model!r}"
            )

        log_level = (get("CHATKIT_LOG_LEVEL") or "info").lower()
        if log_level not in ("debug", "info", "warning", "error"):
            raise SettingsError(
                "CHATKIT_LOG_LEVEL", f"expected debug, info, warning or error, got {log_level!r}"
            )

        origins = tuple(
            origin.strip()
            for origin in (get("CHATKIT_CORS_ORIGINS") or "").split(",")
            if origin.strip()
        )

        jwt_secret = values.jwt_secret(get("CHATKIT_JWT_SECRET"))
        jwt_public_key = values.pem_file(get("CHATKIT_JWT_PUBLIC_KEY"))
        jwt_audience = get("CHATKIT_JWT_AUDIENCE")
        jwt_issuer = get("CHATKIT_JWT_ISSUER")
        if jwt_secret is None and jwt_public_key is None:
            # Without a key JWTs are not accepted at all: an operator who set
            # only these would believe tokens are checked when none is.
            for name, value in (
                ("CHATKIT_JWT_AUDIENCE", jwt_audience),
                ("CHATKIT_JWT_ISSUER", jwt_issuer),
            ):
                if value is not None:
                    raise SettingsError(
                        name,
                        "set CHATKIT_JWT_SECRET or CHATKIT_JWT_PUBLIC_KEY too, or JWTs are "
                        "not accepted at all",
                    )

        trusted_header = values.header_name(get("CHATKIT_TRUSTED_USER_HEADER"))
        trusted_proxies = values.networks(get("CHATKIT_TRUSTED_PROXIES"))
        if trusted_header is not None and not trusted_proxies:
            raise SettingsError(
                "CHATKIT_TRUSTED_PROXIES",
                "CHATKIT_TRUSTED_USER_HEADER is set, so name the proxy addresses allowed to "
                "set it, e.g. 127.0.0.1 or 10.0.0.0/8",
            )
        if trusted_proxies and trusted_header is None:
            raise SettingsError(
                "CHATKIT_TRUSTED_USER_HEADER",
                "CHATKIT_TRUSTED_PROXIES is set, so name the header the proxy sets, "
                "e.g. X-Forwarded-User",
            )

        storage = (get("CHATKIT_ATTACHMENT_STORAGE") or "local").lower()
        if storage not in ("local", "database"):
            raise SettingsError(
                "CHATKIT_ATTACHMENT_STORAGE", f"expected 'local' or 'database', got {storage!r}"
            )

        return cls(
            data_dir=data_dir,
            database_url=database_url,
            database_pool_size=values.optional_whole_number(
                env, "CHATKIT_DATABASE_POOL_SIZE", minimum=1
            ),
            llm_base_url=llm_base_url.rstrip("/") if llm_base_url else None,
            llm_api_key=get("CHATKIT_LLM_API_KEY") or DEFAULT_LLM_API_KEY,
            llm_model=get("CHATKIT_LLM_MODEL") or DEFAULT_LLM_MODEL,
            llm_api=api,  # type: ignore[arg-type]  # checked above
            llm_read_timeout=values.positive_seconds(
                env, "CHATKIT_LLM_TIMEOUT", DEFAULT_READ_TIMEOUT
            ),
            llm_connect_timeout=values.positive_seconds(
                env, "CHATKIT_LLM_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT
            ),
            llm_max_retries=values.whole_number(
                env, "CHATKIT_LLM_MAX_RETRIES", DEFAULT_MAX_RETRIES, minimum=0
            ),
            llm_context_tokens=values.optional_whole_number(
                env, "CHATKIT_LLM_CONTEXT_TOKENS", minimum=MIN_CONTEXT_TOKENS
            ),
            workflows_path=workflows_path,
            workflows_file=workflows_file,
            local_model=local_model,  # type: ignore[arg-type]  # checked above
            admin_key=values.admin_key(get("CHATKIT_ADMIN_KEY")),
            jwt_secret=jwt_secret,
            jwt_public_key=jwt_public_key,
            jwt_audience=jwt_audience,
            jwt_issuer=jwt_issuer,
            trusted_user_header=trusted_header,
            trusted_proxies=trusted_proxies,
            user_rate_limit=values.whole_number(
                env, "CHATKIT_RATE_LIMIT", DEFAULT_USER_RATE_LIMIT, minimum=0
            ),
            cors_origins=origins,
            max_title_chars=values.whole_number(
                env, "CHATKIT_MAX_TITLE_CHARS", DEFAULT_MAX_TITLE_CHARS, minimum=1
            ),
            max_attachments=values.whole_number(
                env, "CHATKIT_MAX_ATTACHMENTS", DEFAULT_MAX_ATTACHMENTS, minimum=0
            ),
            max_upload_bytes=values.whole_number(
                env, "CHATKIT_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES, minimum=1
            ),
            max_body_bytes=values.whole_number(
                env, "CHATKIT_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, minimum=1024
            ),
            answer_max_chars=values.whole_number(
                env, "CHATKIT_ANSWER_MAX_CHARS", DEFAULT_ANSWER_MAX_CHARS, minimum=0
            ),
            answer_max_seconds=values.seconds_or_off(
                env, "CHATKIT_ANSWER_MAX_SECONDS", DEFAULT_ANSWER_MAX_SECONDS
            ),
            answer_max_tokens=values.optional_whole_number(
                env, "CHATKIT_ANSWER_MAX_TOKENS", minimum=1
            ),
            action_max_seconds=values.seconds_or_off(
                env, "CHATKIT_ACTION_MAX_SECONDS", DEFAULT_ACTION_MAX_SECONDS
            ),
            stream_stall_timeout=values.positive_seconds(
                env, "CHATKIT_STREAM_STALL_TIMEOUT", DEFAULT_STREAM_STALL_TIMEOUT
            ),
            header_timeout=values.positive_seconds(
                env, "CHATKIT_HEADER_TIMEOUT", DEFAULT_HEADER_TIMEOUT
            ),
            body_timeout=values.positive_seconds(env, "CHATKIT_BODY_TIMEOUT", DEFAULT_BODY_TIMEOUT),
            keepalive_timeout=values.positive_seconds(
                env, "CHATKIT_KEEPALIVE_TIMEOUT", DEFAULT_KEEPALIVE_TIMEOUT
            ),
            max_connections=values.optional_whole_number(env, "CHATKIT_MAX_CONNECTIONS", minimum=1),
            min_free_bytes=values.whole_number(
                env, "CHATKIT_MIN_FREE_BYTES", DEFAULT_MIN_FREE_BYTES, minimum=0
            ),
            upload_types=values.upload_types(get("CHATKIT_UPLOAD_TYPES")),
            attachment_storage=storage,  # type: ignore[arg-type]  # checked above
            upload_grace=values.whole_number(
                env, "CHATKIT_UPLOAD_GRACE", DEFAULT_UPLOAD_GRACE, minimum=60
            ),
            public_url=values.public_url(get("CHATKIT_PUBLIC_URL")),
            llm_vision=values.flag(env, "CHATKIT_LLM_VISION", default=False),
            history_items=values.whole_number(
                env, "CHATKIT_HISTORY_ITEMS", DEFAULT_HISTORY_ITEMS, minimum=1
            ),
            history_tokens=values.whole_number(
                env, "CHATKIT_HISTORY_TOKENS", DEFAULT_HISTORY_TOKENS, minimum=100
            ),
            tracing=values.flag(env, "CHATKIT_TRACING", default=False),
            titles=values.flag(env, "CHATKIT_TITLES", default=True),
            console=values.flag(env, "CHATKIT_CONSOLE", default=True),
            log_level=log_level,
            transcribe_base_url=transcribe_base_url.rstrip("/") if transcribe_base_url else None,
            transcribe_model=get("CHATKIT_TRANSCRIBE_MODEL") or DEFAULT_TRANSCRIBE_MODEL,
            transcribe_api_key=get("CHATKIT_TRANSCRIBE_API_KEY"),
            transcribe_timeout=values.positive_seconds(
                env, "CHATKIT_TRANSCRIBE_TIMEOUT", DEFAULT_TRANSCRIBE_TIMEOUT
            ),
            transcribe_max_bytes=values.whole_number(
                env, "CHATKIT_TRANSCRIBE_MAX_BYTES", DEFAULT_TRANSCRIBE_MAX_BYTES, minimum=1
            ),
        )
