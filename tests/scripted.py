"""Helpers for running agents on ``agents.testing.ScriptedModel`` through ChatKit's stream.

No network: the model is scripted, the store is a SQLite file in a temporary directory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from agents import Agent, RunConfig, Runner
from chatkit.agents import AgentContext, stream_agent_response
from chatkit.types import ThreadMetadata, ThreadStreamEvent

from chatkit_server.context import RequestContext
from chatkit_server.store import Database, SQLStore
from chatkit_server.workflows.tool_tasks import show_tool_tasks

LOCAL = RequestContext()


@asynccontextmanager
async def chatkit_context(tmp_path: Path) -> AsyncIterator[AgentContext[RequestContext]]:
    """An ``AgentContext`` on a new thread in a fresh SQLite store."""
    database = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'db' / 'chatkit.db'}")
    await database.create_all()
    try:
        store = SQLStore(database)
        thread = ThreadMetadata(id=store.generate_thread_id(LOCAL), created_at=datetime.now())  # noqa: DTZ005
        await store.save_thread(thread, LOCAL)
        yield AgentContext(thread=thread, store=store, request_context=LOCAL)
    finally:
        await database.dispose()


async def chatkit_events(
    agent: Agent[Any], context: AgentContext[RequestContext], text: str = "hi"
) -> list[ThreadStreamEvent]:
    """Run ``agent`` and return the ChatKit events, as the server's pipeline makes them."""
    result = Runner.run_streamed(
        agent, text, context=context, run_config=RunConfig(tracing_disabled=True)
    )
    return [
        event async for event in show_tool_tasks(context, stream_agent_response(context, result))
    ]
