"""A session's configuration is enforced by the server, not only reported."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from chatkit_server.settings import Settings
from chatkit_server.store.sessions import SessionStore
from chatkit_server.testing.client import ChatKitClient, ChatKitHTTPError
from chatkit_server.testing.fake_backend import Reply
from chatkit_server.workflows.file import load_workflow_file
from tests.live import FakeLLM, Live, LiveFactory

ADMIN_KEY = "a" * 32

Mint = Callable[..., Awaitable[ChatKitClient]]


@pytest.fixture
async def admin_live(
    start_live: LiveFactory, live_settings: Settings, tmp_path: Any
) -> AsyncIterator[Live]:
    path = tmp_path / "workflows.toml"
    path.write_text(
        """
default_workflow = "support"

[backends.fake]
base_url = "BACKEND"

[workflows.support]
backend = "fake"
model = "fake-model"
instructions = "Help {{ state.name }} on the {{state.plan}} plan (vip: {{ state.vip }})."

[workflows.sales]
backend = "fake"
model = "fake-model"
""".replace("BACKEND", str(live_settings.llm_base_url))
    )
    settings = live_settings.with_changes(
        admin_key=ADMIN_KEY,
        titles=True,
        workflows_path=path,
        workflows_file=load_workflow_file(path, {}),
    )
    async with start_live(settings) as live:
        yield live


@pytest.fixture
async def mint(admin_live: Live) -> AsyncIterator[Mint]:
    clients: list[ChatKitClient] = []

    async def make(
        *, workflow: dict[str, Any] | None = None, **configuration: Any
    ) -> ChatKitClient:
        sessions = admin_live.state.sessions
        assert isinstance(sessions, SessionStore)
        _, secret = await sessions.create(
            user_id="alice",
            workflow=workflow or {"id": "support"},
            expires_in=600,
            rate_limit=100,
            configuration=configuration,
        )
        client = ChatKitClient(admin_live.url, headers={"authorization": f"Bearer {secret}"})
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def _system_prompt(fake_llm: FakeLLM) -> str:
    body = fake_llm.backend.requests[-1].body
    return str(body["messages"][0]["content"])


async def test_state_variables_fill_the_instructions(mint: Mint, fake_llm: FakeLLM) -> None:
    client = await mint(
        workflow={"id": "support", "state_variables": {"name": "Zed", "plan": "pro", "vip": True}},
        automatic_thread_titling={"enabled": False},
    )
    await client.create_thread("hello")
    assert _system_prompt(fake_llm) == "Help Zed on the pro plan (vip: true)."


async def test_a_variable_the_session_does_not_set_is_empty(mint: Mint, fake_llm: FakeLLM) -> None:
    client = await mint(automatic_thread_titling={"enabled": False})
    await client.create_thread("hello")
    assert _system_prompt(fake_llm) == "Help  on the  plan (vip: )."


async def test_the_session_fixes_the_workflow(mint: Mint) -> None:
    client = await mint(automatic_thread_titling={"enabled": False})
    with pytest.raises(ChatKitHTTPError) as refused:
        await client.stream(
            "threads.create",
            metadata={"workflow": "sales"},
            input={
                "content": [{"type": "input_text", "text": "hi"}],
                "attachments": [],
                "inference_options": {},
            },
        )
    assert refused.value.status_code == 400
    assert "support" in refused.value.body["error"]["message"]


async def test_titles_follow_the_session(mint: Mint, fake_llm: FakeLLM) -> None:
    untitled = await mint(automatic_thread_titling={"enabled": False})
    titled = await mint(automatic_thread_titling={"enabled": True})
    fake_llm.backend.script(Reply.text("answer"), Reply.text("A fine title"))
    thread_id = (await titled.create_thread("name me")).thread_id
    fake_llm.backend.script(Reply.text("answer"))
    other_id = (await untitled.create_thread("do not name me")).thread_id

    titles = {
        thread["id"]: thread.get("title")
        for thread in (await titled.call("threads.list", limit=10))["data"]
    }
    assert titles[thread_id] == "A fine title"
    assert titles[other_id] is None


async def test_uploads_are_off_unless_the_session_turns_them_on(mint: Mint) -> None:
    client = await mint()  # hosted ChatKit's default: uploads off
    with pytest.raises(ChatKitHTTPError) as refused:
        await client.call("attachments.create", name="a.txt", size=10, mime_type="text/plain")
    assert refused.value.status_code == 403
    assert refused.value.body["error"]["code"] == "uploads_disabled"


async def test_upload_size_and_count_limits(mint: Mint) -> None:
    client = await mint(file_upload={"enabled": True, "max_file_size": 1, "max_files": 2})
    with pytest.raises(ChatKitHTTPError) as too_large:
        await client.call(
            "attachments.create", name="big.txt", size=1024 * 1024 + 1, mime_type="text/plain"
        )
    for n in range(2):
        await client.call("attachments.create", name=f"{n}.txt", size=10, mime_type="text/plain")
    with pytest.raises(ChatKitHTTPError) as too_many:
        await client.call("attachments.create", name="3.txt", size=10, mime_type="text/plain")

    assert too_large.value.status_code == 413
    assert too_many.value.status_code == 403
    assert too_many.value.body["error"]["code"] == "too_many_files"


async def test_history_off_lists_nothing(mint: Mint) -> None:
    writer = await mint(automatic_thread_titling={"enabled": False})
    await writer.create_thread("one")
    reader = await mint(history={"enabled": False})
    listed = await reader.call("threads.list", limit=10)
    assert listed["data"] == []
    assert listed["has_more"] is False


@pytest.mark.parametrize("order", ["desc", "asc"])
async def test_recent_threads_limits_the_listing(mint: Mint, order: str) -> None:
    writer = await mint(automatic_thread_titling={"enabled": False})
    made = [(await writer.create_thread(f"t{n}")).thread_id for n in range(5)]
    reader = await mint(history={"enabled": True, "recent_threads": 3})

    seen: list[str] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 2, "order": order}
        if after:
            params["after"] = after
        page = await reader.call("threads.list", **params)
        seen += [thread["id"] for thread in page["data"]]
        if not page["has_more"]:
            break
        after = page["after"]

    newest = made[-3:]
    assert seen == (newest[::-1] if order == "desc" else newest)


async def test_a_session_lists_only_its_workflow(admin_live: Live, mint: Mint) -> None:
    client = await mint(workflow={"id": "sales"})
    async with httpx.AsyncClient() as http:
        url = f"{admin_live.url}/chatkit/workflows"
        response = await http.get(url, headers=client.headers)
        anonymous = await http.get(url)

    assert response.json()["default"] == "sales"
    assert [workflow["id"] for workflow in response.json()["data"]] == ["sales"]
    assert anonymous.status_code == 401
