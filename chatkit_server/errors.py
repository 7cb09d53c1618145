"""The server's exception hierarchy.

::

    ChatKitServerError
     +-- SettingsError            (settings.py) an environment variable is invalid
     +-- LocalModelError          (local_model.py) the bundled local model did not start
     |    +-- LocalModelUnavailable  its extra (llama-server, SmolLM2) is not installed
     +-- StoreError               the store could not complete an operation
     |    +-- NotFoundError       missing, or owned by someone else (indistinguishable)
     |    +-- InvalidCursorError  a pagination cursor does not name an item of the listing
     |    +-- DatabaseUnavailableError  the database cannot be reached or opened
     |    +-- MigrationError      the schema cannot be moved to the revision asked for
     +-- RequestError             a client request cannot be served; carries an HTTP status
 +-- TranscriptionError       (llm/transcription.py) dictation's server gave no text
      +-- TranscriptionUnavailable  unreachable, an error status, or no text
      +-- TranscriptionTimeout      no answer in time
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from chatkit.store import NotFoundError as ChatKitNotFoundError

__all__ = [
    "ChatKitServerError",
    "DatabaseUnavailableError",
    "InvalidCursorError",
    "MigrationError",
    "NotFoundError",
    "RequestError",
    "StoreError",
    "causes",
]


class ChatKitServerError(Exception):
    """Base class of every error this package raises on purpose."""


class StoreError(ChatKitServerError):
    """The store could not complete an operation."""


class NotFoundError(StoreError, ChatKitNotFoundError):
    """A thread, item or attachment does not exist for this user.

    "Missing" and "owned by another user" raise the same error with the same
    message, so ids cannot be probed.
    """


class InvalidCursorError(StoreError):
    """A pagination ``after`` cursor does not name an entry of the listing."""


class DatabaseUnavailableError(StoreError):
    """The database cannot be reached or opened (refused, unknown, denied).

    The message is for the operator: the database URL (without its password)
    and the driver's reason.
    """


class MigrationError(StoreError):
    """The schema cannot be moved to the revision asked for (e.g. an unknown one)."""


class RequestError(ChatKitServerError):
    """A client request that cannot be served, with the HTTP status to answer."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str = "invalid_request",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.code = code
        self.headers = dict(headers or {})


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it was raised from or during, and so on, each once.

    Clients wrap socket errors in their own exceptions (the openai client's
    aiohttp transport even reports a refused connection as a timeout): the
    error underneath tells what really happened.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or cause.__context__
