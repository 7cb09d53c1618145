"""The resources an app instance owns, created and closed by its lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from chatkit_server.files import FileStorage, LinkSigner
from chatkit_server.http.auth import Authenticator
from chatkit_server.http.idle import OpenStreams
from chatkit_server.llm.backends import BackendRegistry
from chatkit_server.protocol.server import ChatKitApp
from chatkit_server.settings import Settings
from chatkit_server.store import Database, SQLStore
from chatkit_server.store.gate import RequestGate
from chatkit_server.store.sessions import SessionStore

__all__ = ["AppState", "get_state"]


@dataclass(frozen=True, kw_only=True)
class AppState:
    """Everything a request handler may use; one per running app."""

    settings: Settings
    database: Database
    store: SQLStore
    backends: BackendRegistry
    server: ChatKitApp
    auth: Authenticator
    gate: RequestGate
    sessions: SessionStore | None
    files: FileStorage
    signer: LinkSigner
    streams: OpenStreams


def get_state(request: Request) -> AppState:
    """The running app's resources (set by the lifespan)."""
    state: AppState = request.app.state.chatkit
    return state
