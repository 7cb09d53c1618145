"""The REST API under /v1/chatkit, driven by the official ``openai`` client on a real uvicorn.

Every test runs on SQLite and on PostgreSQL (a database of its own per test,
see ``server_database_url``). The client parses each answer into its own
types; where its parsing is lenient, the raw JSON is also validated with
``model_validate`` of the same types.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import agents
import httpx
import openai
import pytest
from chatkit.types import (
    Annotation,
    AssistantMessageContent,
    AssistantMessageItem,
    ClientToolCallItem,
    ClosedStatus,
    CustomTask,
    EndOfTurnItem,
    EntitySource,
    FileAttachment,
    FileSource,
    GeneratedImageItem,
    HiddenContextItem,
    ImageAttachment,
    InferenceOptions,
    LockedStatus,
    SDKHiddenContextItem,
    SearchTask,
    TaskItem,
    ThoughtTask,
    ThreadItem,
    ThreadMetadata,
    ToolChoice,
    URLSource,
    UserMessageItem,
    UserMessageTagContent,
    UserMessageTextContent,
    WidgetItem,
    Workflow,
    WorkflowItem,
)
from chatkit.widgets import DynamicWidgetRoot
from openai.types.beta.chatkit import (
    ChatKitThread,
    ChatKitThreadAssistantMessageItem,
    ChatKitThreadItemList,
    ChatKitThreadUserMessageItem,
    ChatSession,
    ThreadDeleteResponse,
)
from pydantic import AnyUrl

from chatkit_server.context import RequestContext
from chatkit_server.settings import Settings
from chatkit_server.store import new_id
from chatkit_server.testing.client import ChatKitClient, ChatKitHTTPError
from chatkit_server.testing.fake_backend import Reply
from tests.live import FakeLLM, Live, LiveFactory

ADMIN_KEY = "test-admin-key-" + "k" * 32
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
WHEN = datetime(2025, 3, 4, 5, 6, 7)


@pytest.fixture
def rest_settings(live_settings: Settings, server_database_url: str) -> Settings:
    return live_settings.with_changes(admin_key=ADMIN_KEY, database_url=server_database_url)


@pytest.fixture
async def rest(start_live: LiveFactory, rest_settings: Settings) -> AsyncIterator[Live]:
    async with start_live(rest_settings) as running:
        yield running


def openai_client(url: str, api_key: str = ADMIN_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0)


@pytest.fixture
async def client(rest: Live) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai_client(rest.url) as api:
        yield api


@pytest.fixture
async def http(rest: Live) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"{rest.url}/v1/chatkit", headers=ADMIN) as session:
        yield session


def as_user(live: Live, secret: str) -> ChatKitClient:
    """A browser-like client signed in with a session's client secret."""
    return ChatKitClient(live.url, headers={"authorization": f"Bearer {secret}"})


async def session_for(client: openai.AsyncOpenAI, user: str, **options: Any) -> ChatSession:
    return await client.beta.chatkit.sessions.create(
        user=user, workflow={"id": "default"}, **options
    )


async def converse(live: Live, secret: str, *texts: str) -> str:
    """A thread of ``texts``, one answer each, made through /chatkit; its id."""
    async with as_user(live, secret) as user:
        first = await user.create_thread(texts[0])
        assert first.errors == []
        for text in texts[1:]:
            assert (await user.add_message(first.thread_id, text)).errors == []
    return first.thread_id


# -- sessions ------------------------------------------------------------------


async def test_create_session_with_defaults(
    start_live: LiveFactory, rest_settings: Settings
) -> None:
    async with (
        start_live(rest_settings.with_changes(titles=True)) as live,
        openai_client(live.url) as client,
        httpx.AsyncClient(headers=ADMIN) as http,
    ):
        before = int(time.time())
        session = await session_for(client, "alice")
        after = int(time.time())
        raw = await http.post(
            f"{live.url}/v1/chatkit/sessions", json={"user": "bob", "workflow": {"id": "default"}}
        )

    assert isinstance(session, ChatSession)
    assert session.object == "chatkit.session"
    assert session.id.startswith("cksess_")
    assert session.user == "alice"
    assert session.client_secret.startswith("cks_")
    assert session.status == "active"
    assert before + 600 <= session.expires_at <= after + 600
    assert session.max_requests_per_1_minute == 10
    assert session.rate_limits.max_requests_per_1_minute == 10
    assert session.workflow.model_dump() == {
        "id": "default",
        "version": None,
        "state_variables": None,
        # The server's CHATKIT_TRACING is off, so nothing is traced whatever a session asks.
        "tracing": {"enabled": False},
    }
    assert session.chatkit_configuration.model_dump() == {
        "automatic_thread_titling": {"enabled": True},
        "file_upload": {"enabled": False, "max_file_size": 512, "max_files": 10},
        "history": {"enabled": True, "recent_threads": None},
    }
    assert raw.status_code == 200
    assert ChatSession.model_validate(raw.json()).user == "bob"


@pytest.fixture
def tracing_restored() -> Iterator[None]:
    """The server under test turns the Agents SDK's process-wide tracing on; turn it off again."""
    yield
    agents.set_tracing_disabled(True)


async def test_create_session_with_every_option(
    start_live: LiveFactory, rest_settings: Settings, tracing_restored: None
) -> None:
    options: dict[str, Any] = {
        "workflow": {
            "id": "default",
            "version": "7",
            "state_variables": {"plan": "pro", "seats": 3, "ratio": 0.5, "beta": True},
            "tracing": {"enabled": True},
        },
        "expires_after": {"anchor": "created_at", "seconds": 3600},
        "rate_limits": {"max_requests_per_1_minute": 25},
        "chatkit_configuration": {
            "automatic_thread_titling": {"enabled": False},
            "file_upload": {"enabled": True, "max_file_size": 20, "max_files": 3},
            "history": {"enabled": False, "recent_threads": 5},
        },
    }
    settings = rest_settings.with_changes(tracing=True, titles=True)
    async with start_live(settings) as live, openai_client(live.url) as client:
        before = int(time.time())
        session = await client.beta.chatkit.sessions.create(user="carol", **options)
        after = int(time.time())
        untraced = await client.beta.chatkit.sessions.create(
            user="dave", workflow={"id": "default", "tracing": {"enabled": False}}
        )
        assert live.state.sessions is not None
        record = await live.state.sessions.get(session.id)

    assert session.user == "carol"
    assert before + 3600 <= session.expires_at <= after + 3600
    assert session.max_requests_per_1_minute == 25
    assert session.rate_limits.max_requests_per_1_minute == 25
    assert session.workflow.model_dump() == {
        "id": "default",
        # One version of each workflow runs: the workflows file's.
        "version": None,
        "state_variables": {"plan": "pro", "seats": 3, "ratio": 0.5, "beta": True},
        "tracing": {"enabled": True},
    }
    assert session.workflow.state_variables is not None
    assert type(session.workflow.state_variables["seats"]) is int
    assert type(session.workflow.state_variables["beta"]) is bool
    assert session.chatkit_configuration.model_dump() == options["chatkit_configuration"]
    assert untraced.workflow.tracing.enabled is False
    # What the server enforces is what the session reports.
    assert record is not None
    limits = record.limits()
    assert (limits.titles, limits.uploads, limits.history) == (False, True, False)
    assert (limits.max_file_bytes, limits.max_files, limits.recent_threads) == (20 << 20, 3, 5)
    assert record.rate_limit == 25


async def test_secret_signs_in_on_chatkit_as_the_sessions_user(
    rest: Live, client: openai.AsyncOpenAI
) -> None:
    alice = await session_for(client, "alice")
    bob = await session_for(client, "bob")

    thread_id = await converse(rest, alice.client_secret, "hi")

    thread = await client.beta.chatkit.threads.retrieve(thread_id)
    assert thread.user == "alice"
    async with as_user(rest, alice.client_secret) as as_alice:
        listed = await as_alice.call("threads.list")
    assert [entry["id"] for entry in listed["data"]] == [thread_id]
    # Bob's secret does not reach Alice's thread.
    async with as_user(rest, bob.client_secret) as as_bob:
        with pytest.raises(ChatKitHTTPError) as refused:
            await as_bob.call("items.list", thread_id=thread_id)
        assert (await as_bob.call("threads.list"))["data"] == []
    assert refused.value.status_code == 404


async def test_cancel_stops_the_secret_at_once(
    rest: Live, client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    session = await session_for(client, "alice")
    async with as_user(rest, session.client_secret) as user:
        await user.call("threads.list")

        cancelled = await client.beta.chatkit.sessions.cancel(session.id)

        with pytest.raises(ChatKitHTTPError) as refused:
            await user.call("threads.list")
    assert refused.value.status_code == 401
    assert cancelled.status == "cancelled"
    assert cancelled.id == session.id
    # The secret is not stored (only its keyed hash), so it cannot be shown again.
    assert cancelled.client_secret == ""
    again = await http.post(f"/sessions/{session.id}/cancel")
    assert again.status_code == 200
    assert ChatSession.model_validate(again.json()).status == "cancelled"


async def test_sessions_survive_a_restart(start_live: LiveFactory, rest_settings: Settings) -> None:
    async with start_live(rest_settings) as live, openai_client(live.url) as client:
        session = await session_for(client, "alice")
        thread_id = await converse(live, session.client_secret, "hi")

    async with start_live(rest_settings) as live, openai_client(live.url) as client:
        async with as_user(live, session.client_secret) as user:
            listed = await user.call("threads.list")
        cancelled = await client.beta.chatkit.sessions.cancel(session.id)
        async with as_user(live, session.client_secret) as user:
            with pytest.raises(ChatKitHTTPError) as refused:
                await user.call("threads.list")

    assert [entry["id"] for entry in listed["data"]] == [thread_id]
    assert cancelled.status == "cancelled"
    assert refused.value.status_code == 401


async def test_an_expired_session_is_refused(rest: Live, client: openai.AsyncOpenAI) -> None:
    session = await session_for(
        client, "alice", expires_after={"anchor": "created_at", "seconds": 1}
    )
    # Wait out the session's lifetime, by the clock it is judged by.
    await asyncio.sleep(max(0.0, session.expires_at - time.time()) + 0.05)

    async with as_user(rest, session.client_secret) as user:
        with pytest.raises(ChatKitHTTPError) as refused:
            await user.call("threads.list")
    cancelled = await client.beta.chatkit.sessions.cancel(session.id)

    assert refused.value.status_code == 401
    # Cancelling a session that has ended changes nothing.
    assert cancelled.status == "expired"


async def test_unknown_workflow_is_400_naming_the_existing_ones(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.beta.chatkit.sessions.create(user="alice", workflow={"id": "nope"})

    message = refused.value.message
    assert "'workflow.id'" in message
    assert "'nope'" in message
    assert "default" in message


VALID = {"user": "alice", "workflow": {"id": "default"}}

# Each body with the field its error must name. All are sent to one server, a
# case per request: a server per case would be most of this file's time.
BAD_BODIES: list[tuple[object, str]] = [
    ({}, "'user'"),
    ({"workflow": {"id": "default"}}, "'user'"),
    ({**VALID, "user": ""}, "'user'"),
    ({**VALID, "user": "u" * 256}, "'user'"),
    ({**VALID, "user": 5}, "'user'"),
    ({"user": "alice"}, "'workflow'"),
    ({**VALID, "workflow": {}}, "'workflow.id'"),
    ({**VALID, "workflow": {"id": 7}}, "'workflow.id'"),
    (
        {**VALID, "workflow": {"id": "default", "state_variables": {"k" * 65: 1}}},
        "'workflow.state_variables",
    ),
    (
        {**VALID, "workflow": {"id": "default", "state_variables": {"a": {"b": 1}}}},
        "'workflow.state_variables.a",
    ),
    (
        {**VALID, "workflow": {"id": "default", "state_variables": {"a": [1]}}},
        "'workflow.state_variables.a",
    ),
    (
        {**VALID, "workflow": {"id": "default", "tracing": {"enabled": "yes"}}},
        "'workflow.tracing.enabled'",
    ),
    ({**VALID, "expires_after": {"seconds": 60}}, "'expires_after.anchor'"),
    (
        {**VALID, "expires_after": {"anchor": "now", "seconds": 60}},
        "'expires_after.anchor'",
    ),
    (
        {**VALID, "expires_after": {"anchor": "created_at", "seconds": 0}},
        "'expires_after.seconds'",
    ),
    (
        {**VALID, "expires_after": {"anchor": "created_at", "seconds": 8 * 86400}},
        "'expires_after.seconds'",
    ),
    (
        {**VALID, "rate_limits": {"max_requests_per_1_minute": 0}},
        "'rate_limits.max_requests_per_1_minute'",
    ),
    (
        {**VALID, "chatkit_configuration": {"file_upload": {"max_file_size": 513}}},
        "'chatkit_configuration.file_upload.max_file_size'",
    ),
    (
        {**VALID, "chatkit_configuration": {"history": {"recent_threads": 0}}},
        "'chatkit_configuration.history.recent_threads'",
    ),
    ({**VALID, "colour": "blue"}, "'colour'"),
    ([VALID], "the body"),
]


async def test_bad_bodies_are_400_naming_the_field(http: httpx.AsyncClient) -> None:
    answers = [(await http.post("/sessions", json=body), named) for body, named in BAD_BODIES]

    wrong = [
        (named, response.status_code, response.text)
        for response, named in answers
        if response.status_code != 400
        or response.json()["error"]["type"] != "invalid_request_error"
        or named not in response.json()["error"]["message"]
    ]
    assert wrong == []


async def test_a_body_that_is_not_json_is_400(http: httpx.AsyncClient) -> None:
    for content in (b"{nope", b""):
        response = await http.post("/sessions", content=content)
        assert response.status_code == 400
        assert "not valid JSON" in response.json()["error"]["message"]


async def test_the_admin_key_is_required(rest: Live, client: openai.AsyncOpenAI) -> None:
    session = await session_for(client, "alice")
    for wrong in ("wrong-key", ADMIN_KEY + "x", session.client_secret):
        async with openai_client(rest.url, api_key=wrong) as stranger:
            with pytest.raises(openai.AuthenticationError):
                await stranger.beta.chatkit.sessions.create(user="eve", workflow={"id": "default"})
            with pytest.raises(openai.AuthenticationError):
                await stranger.beta.chatkit.threads.list()
    async with httpx.AsyncClient(base_url=f"{rest.url}/v1/chatkit") as anonymous:
        responses = [
            await anonymous.get("/threads"),
            await anonymous.post("/sessions", json=VALID),
            await anonymous.get("/threads", headers={"authorization": f"Basic {ADMIN_KEY}"}),
        ]
    for response in responses:
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_without_an_admin_key_the_rest_api_is_off(live: Live) -> None:
    async with openai_client(live.url, api_key="anything") as client:
        with pytest.raises(openai.NotFoundError) as refused:
            await client.beta.chatkit.sessions.create(user="alice", workflow={"id": "default"})
        with pytest.raises(openai.NotFoundError):
            await client.beta.chatkit.threads.list()

    assert "CHATKIT_ADMIN_KEY" in refused.value.message
    assert refused.value.code == "rest_api_off"


async def test_unknown_ids_are_404(client: openai.AsyncOpenAI) -> None:
    chatkit = client.beta.chatkit
    with pytest.raises(openai.NotFoundError):
        await chatkit.threads.retrieve("thr_missing")
    with pytest.raises(openai.NotFoundError):
        await chatkit.threads.delete("thr_missing")
    with pytest.raises(openai.NotFoundError):
        await chatkit.threads.list_items("thr_missing")
    with pytest.raises(openai.NotFoundError):
        await chatkit.sessions.cancel("cksess_missing")


async def test_wrong_methods_and_paths_are_json(http: httpx.AsyncClient) -> None:
    put = await http.put("/threads/thr_x")
    nowhere = await http.get("/nowhere")

    assert put.status_code == 405
    assert "DELETE or GET" in put.json()["error"]["message"]
    assert nowhere.status_code == 404
    assert nowhere.json()["error"]["type"] == "not_found_error"


# -- threads -------------------------------------------------------------------


@pytest.fixture
async def five_threads(rest: Live, client: openai.AsyncOpenAI) -> list[tuple[str, str]]:
    """Five threads made through /chatkit, oldest first: ``(thread id, user)``."""
    secrets = {user: (await session_for(client, user)).client_secret for user in ("alice", "bob")}
    threads = []
    for user in ("alice", "bob", "alice", "bob", "alice"):
        threads.append((await converse(rest, secrets[user], f"hello from {user}"), user))
    return threads


async def test_thread_list_pages_with_the_clients_auto_pagination(
    rest: Live, client: openai.AsyncOpenAI, five_threads: list[tuple[str, str]]
) -> None:
    threads = client.beta.chatkit.threads
    newest_first = [thread_id for thread_id, _ in reversed(five_threads)]

    walked = [thread async for thread in threads.list(limit=2)]
    alices = [thread async for thread in threads.list(limit=2, user="alice")]
    oldest_first = [thread async for thread in threads.list(limit=2, order="asc")]

    assert [thread.id for thread in walked] == newest_first
    assert all(isinstance(thread, ChatKitThread) for thread in walked)
    assert [thread.user for thread in walked] == [user for _, user in reversed(five_threads)]
    assert [thread.id for thread in alices] == [newest_first[0], newest_first[2], newest_first[4]]
    assert [thread.id for thread in oldest_first] == newest_first[::-1]


async def test_thread_list_before_is_the_previous_page(
    http: httpx.AsyncClient, client: openai.AsyncOpenAI, five_threads: list[tuple[str, str]]
) -> None:
    threads = client.beta.chatkit.threads
    first = await threads.list(limit=2)
    second = await threads.list(limit=2, after=first.data[-1].id)
    raw = (await http.get("/threads", params={"limit": 2, "after": first.data[-1].id})).json()

    back = await threads.list(limit=2, before=second.data[0].id)

    assert [thread.id for thread in back.data] == [thread.id for thread in first.data]
    assert back.has_more is False
    assert second.has_more is True
    assert raw["object"] == "list"
    assert raw["first_id"] == second.data[0].id
    assert raw["last_id"] == second.data[-1].id == second.last_id


BAD_LIST_PARAMETERS: list[tuple[dict[str, Any], str]] = [
    ({"limit": 101}, "'limit'"),
    ({"limit": 0}, "'limit'"),
    ({"limit": "many"}, "'limit'"),
    ({"order": "sideways"}, "'order'"),
    ({"after": ""}, "'after'"),
    ({"after": "thr_missing"}, "cursor"),
    ({"before": "thr_missing"}, "cursor"),
]


async def test_bad_list_parameters_are_400(http: httpx.AsyncClient) -> None:
    answers = [
        (await http.get("/threads", params=params), named) for params, named in BAD_LIST_PARAMETERS
    ]

    wrong = [
        (named, response.status_code, response.text)
        for response, named in answers
        if response.status_code != 400 or named not in response.json()["error"]["message"]
    ]
    assert wrong == []


async def test_retrieve_and_delete_a_thread(rest: Live, client: openai.AsyncOpenAI) -> None:
    session = await session_for(client, "alice")
    before = int(time.time())
    thread_id = await converse(rest, session.client_secret, "hi")
    after = int(time.time())
    threads = client.beta.chatkit.threads

    thread = await threads.retrieve(thread_id)
    deleted = await threads.delete(thread_id)

    assert thread.model_dump() == {
        "id": thread_id,
        "object": "chatkit.thread",
        "created_at": thread.created_at,
        "status": {"type": "active"},
        "title": None,  # titles are off on the test server
        "user": "alice",
    }
    assert before <= thread.created_at <= after
    assert isinstance(deleted, ThreadDeleteResponse)
    assert (deleted.id, deleted.object, deleted.deleted) == (
        thread_id,
        "chatkit.thread.deleted",
        True,
    )
    with pytest.raises(openai.NotFoundError):
        await threads.retrieve(thread_id)
    async with as_user(rest, session.client_secret) as user:
        with pytest.raises(ChatKitHTTPError) as gone:
            await user.call("threads.get_by_id", thread_id=thread_id)
    assert gone.value.status_code == 404


async def test_thread_status_and_title_are_shown(rest: Live, client: openai.AsyncOpenAI) -> None:
    owner = RequestContext(user_id="alice")
    locked = ThreadMetadata(
        id=new_id("thr"), created_at=WHEN, title="Locked", status=LockedStatus(reason="spam")
    )
    closed = ThreadMetadata(id=new_id("thr"), created_at=WHEN, status=ClosedStatus())
    for thread in (locked, closed):
        await rest.store.save_thread(thread, owner)

    shown_locked = await client.beta.chatkit.threads.retrieve(locked.id)
    shown_closed = await client.beta.chatkit.threads.retrieve(closed.id)

    assert shown_locked.title == "Locked"
    assert shown_locked.status.model_dump() == {"type": "locked", "reason": "spam"}
    assert shown_closed.status.model_dump() == {"type": "closed", "reason": None}
    # The SDK stamps naive local time; the API shows Unix seconds of that moment.
    assert shown_locked.created_at == int(WHEN.timestamp())


# -- items ---------------------------------------------------------------------


async def test_items_of_a_real_conversation(
    rest: Live, client: openai.AsyncOpenAI, http: httpx.AsyncClient, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply.text("First answer."), Reply.text("Second answer."))
    session = await session_for(client, "alice")
    thread_id = await converse(rest, session.client_secret, "hi", "and again")
    items = client.beta.chatkit.threads

    oldest_first = [item async for item in items.list_items(thread_id, order="asc", limit=1)]
    raw = (await http.get(f"/threads/{thread_id}/items", params={"order": "asc"})).json()

    assert [type(item) for item in oldest_first] == [
        ChatKitThreadUserMessageItem,
        ChatKitThreadAssistantMessageItem,
    ] * 2
    texts = [part.text for item in oldest_first for part in item.content]
    assert texts == ["hi", "First answer.", "and again", "Second answer."]
    first = oldest_first[0]
    assert isinstance(first, ChatKitThreadUserMessageItem)
    assert (first.thread_id, first.object, first.attachments) == (
        thread_id,
        "chatkit.thread_item",
        [],
    )
    answer = oldest_first[1]
    assert isinstance(answer, ChatKitThreadAssistantMessageItem)
    assert answer.content[0].annotations == []
    assert ChatKitThreadItemList.model_validate(raw).has_more is False
    assert [item["id"] for item in raw["data"]] == [item.id for item in oldest_first]
    newest = await items.list_items(thread_id, limit=2)
    assert [item.id for item in newest.data] == [item.id for item in oldest_first[:1:-1]]
    assert newest.has_more is True


async def test_every_kind_of_item_has_its_rest_form(
    rest: Live, client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    owner = RequestContext(user_id="alice")
    thread = ThreadMetadata(id=new_id("thr"), created_at=WHEN)
    await rest.store.save_thread(thread, owner)
    tid = thread.id
    image = ImageAttachment(
        id="atc_img",
        name="cat.png",
        mime_type="image/png",
        preview_url=AnyUrl("http://127.0.0.1/cat.png"),
    )
    file = FileAttachment(id="atc_doc", name="doc.pdf", mime_type="application/pdf")
    widget = DynamicWidgetRoot.model_validate(
        {"type": "Card", "children": [{"type": "Text", "value": "Hello"}]}
    )
    stored: list[ThreadItem] = [
        UserMessageItem(
            id="msg_user",
            thread_id=tid,
            created_at=WHEN,
            content=[
                UserMessageTextContent(text="Look at "),
                UserMessageTagContent(id="tag1", text="@Bob", data={}),
            ],
            attachments=[image, file],
            quoted_text="an earlier line",
            inference_options=InferenceOptions(model="m1", tool_choice=ToolChoice(id="search")),
        ),
        HiddenContextItem(id="hc_1", thread_id=tid, created_at=WHEN, content="secret"),
        SDKHiddenContextItem(id="shcx_1", thread_id=tid, created_at=WHEN, content="secret"),
        AssistantMessageItem(
            id="msg_answer",
            thread_id=tid,
            created_at=WHEN,
            content=[
                AssistantMessageContent(
                    text="See sources.",
                    annotations=[
                        Annotation(source=URLSource(title="Site", url="https://example.com")),
                        Annotation(source=FileSource(title="Doc", filename="doc.pdf")),
                        Annotation(source=EntitySource(title="Ent", id="ent_1")),
                    ],
                )
            ],
        ),
        WidgetItem(id="wdg_1", thread_id=tid, created_at=WHEN, widget=widget),
        ClientToolCallItem(
            id="tc_1",
            thread_id=tid,
            created_at=WHEN,
            call_id="call_1",
            name="get_location",
            arguments={"precise": True},
        ),
        ClientToolCallItem(
            id="tc_2",
            thread_id=tid,
            created_at=WHEN,
            status="completed",
            call_id="call_2",
            name="get_location",
            arguments={},
            output={"city": "Paris"},
        ),
        TaskItem(
            id="tsk_1",
            thread_id=tid,
            created_at=WHEN,
            task=CustomTask(title="Looking up", content="the weather"),
        ),
        TaskItem(
            id="tsk_2", thread_id=tid, created_at=WHEN, task=ThoughtTask(title="Hmm", content="x")
        ),
        WorkflowItem(
            id="wf_1",
            thread_id=tid,
            created_at=WHEN,
            workflow=Workflow(
                type="reasoning",
                tasks=[
                    ThoughtTask(content="think"),
                    SearchTask(title_query="weather", queries=["paris", "rain"]),
                ],
            ),
        ),
        GeneratedImageItem(id="img_1", thread_id=tid, created_at=WHEN),
        EndOfTurnItem(id="eot_1", thread_id=tid, created_at=WHEN),
    ]
    for item in stored:
        await rest.store.add_thread_item(tid, item, owner)

    page = await client.beta.chatkit.threads.list_items(tid, order="asc")
    raw = (await http.get(f"/threads/{tid}/items", params={"order": "asc"})).json()

    ChatKitThreadItemList.model_validate(raw)
    shown = {item["id"]: item for item in raw["data"]}
    # The stored preview link is replaced by one that works now, signed for
    # the thread's owner (a browser fetching it sends no credentials).
    preview = httpx.URL(shown["msg_user"]["attachments"][0].pop("preview_url"))
    assert str(preview.copy_with(query=None)) == f"{rest.url}/chatkit/attachments/atc_img/preview"
    assert rest.state.signer.verify(
        "atc_img", "alice", preview.params["expires"], preview.params["signature"]
    )
    assert list(shown) == [item.id for item in page.data]
    assert list(shown) == [
        "msg_user", "msg_answer", "wdg_1", "tc_1", "tc_2", "tsk_1", "tsk_2", "wf_1"
    ]  # fmt: skip
    common = {
        "object": "chatkit.thread_item",
        "thread_id": tid,
        "created_at": int(WHEN.timestamp()),
    }
    assert shown["msg_user"] == {
        **common,
        "id": "msg_user",
        "type": "chatkit.user_message",
        "content": [
            {"type": "input_text", "text": "Look at "},
            {"type": "input_text", "text": "@Bob"},
            {"type": "quoted_text", "text": "an earlier line"},
        ],
        "attachments": [
            {
                "id": "atc_img",
                "type": "image",
                "name": "cat.png",
                "mime_type": "image/png",
            },
            {
                "id": "atc_doc",
                "type": "file",
                "name": "doc.pdf",
                "mime_type": "application/pdf",
                "preview_url": None,
            },
        ],
        "inference_options": {"model": "m1", "tool_choice": {"id": "search"}},
    }
    assert shown["msg_answer"]["content"] == [
        {
            "type": "output_text",
            "text": "See sources.",
            "annotations": [
                {"type": "url", "source": {"type": "url", "url": "https://example.com"}},
                {"type": "file", "source": {"type": "file", "filename": "doc.pdf"}},
            ],
        }
    ]
    assert shown["wdg_1"]["type"] == "chatkit.widget"
    assert json.loads(shown["wdg_1"]["widget"]) == widget.model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    assert {key: shown["tc_1"][key] for key in ("type", "arguments", "output", "status")} == {
        "type": "chatkit.client_tool_call",
        "arguments": '{"precise": true}',
        "output": None,
        "status": "in_progress",
    }
    assert (json.loads(shown["tc_2"]["output"]), shown["tc_2"]["status"]) == (
        {"city": "Paris"},
        "completed",
    )
    assert {key: shown["tsk_1"][key] for key in ("type", "task_type", "heading", "summary")} == {
        "type": "chatkit.task",
        "task_type": "custom",
        "heading": "Looking up",
        "summary": "the weather",
    }
    assert shown["tsk_2"]["task_type"] == "thought"
    assert shown["wf_1"]["type"] == "chatkit.task_group"
    assert shown["wf_1"]["tasks"] == [
        {"type": "thought", "heading": None, "summary": "think"},
        {"type": "custom", "heading": "weather", "summary": "paris, rain"},
    ]


# -- extensions ----------------------------------------------------------------


async def test_feedback_lists_every_users_votes(
    rest: Live, client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    votes = []
    for user, kind in (("alice", "positive"), ("bob", "negative")):
        session = await session_for(client, user)
        async with as_user(rest, session.client_secret) as browser:
            turn = await browser.create_thread("hi")
            answer = turn.assistant_messages[0].id
            await browser.call(
                "items.feedback", thread_id=turn.thread_id, item_ids=[answer], kind=kind
            )
        votes.append((turn.thread_id, answer, user, kind))

    everything = (await http.get("/feedback")).json()
    alices = (await http.get("/feedback", params={"user": "alice"})).json()
    on_bobs_thread = (await http.get("/feedback", params={"thread_id": votes[1][0]})).json()
    first = (await http.get("/feedback", params={"limit": 1, "order": "asc"})).json()
    rest_of_them = (
        await http.get("/feedback", params={"order": "asc", "after": first["last_id"]})
    ).json()
    bad = await http.get("/feedback", params={"after": "fb_nope"})

    assert everything["object"] == "list"
    assert [
        (vote["thread_id"], vote["item_id"], vote["user"], vote["kind"])
        for vote in everything["data"]
    ] == votes[::-1]
    assert all(vote["object"] == "chatkit.feedback" for vote in everything["data"])
    assert all(isinstance(vote["created_at"], int) for vote in everything["data"])
    assert [vote["user"] for vote in alices["data"]] == ["alice"]
    assert [vote["user"] for vote in on_bobs_thread["data"]] == ["bob"]
    assert ([vote["user"] for vote in first["data"]], first["has_more"]) == (["alice"], True)
    assert [vote["user"] for vote in rest_of_them["data"]] == ["bob"]
    assert bad.status_code == 400


async def test_usage_per_thread_and_per_user(
    rest: Live, client: openai.AsyncOpenAI, http: httpx.AsyncClient, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(
        Reply.text("One.", usage=(11, 2)),
        Reply.text("Two.", usage=(20, 3)),
        Reply.text("Three.", usage=(5, 1)),
    )
    alice = (await session_for(client, "alice")).client_secret
    bob = (await session_for(client, "bob")).client_secret
    alices_thread = await converse(rest, alice, "one", "two")
    bobs_thread = await converse(rest, bob, "three")

    per_thread = (await http.get("/usage")).json()
    per_user = (await http.get("/usage", params={"group_by": "user"})).json()
    only_bob = (await http.get("/usage", params={"user": "bob"})).json()
    one_thread = (await http.get("/usage", params={"thread_id": alices_thread, "limit": 1})).json()
    bad = await http.get("/usage", params={"group_by": "model"})

    assert per_thread["object"] == "list"
    assert per_thread["has_more"] is False
    assert [
        (row["thread_id"], row["user"], row["answers"], row["input_tokens"], row["output_tokens"])
        for row in per_thread["data"]
    ] == [(alices_thread, "alice", 2, 31, 5), (bobs_thread, "bob", 1, 5, 1)]
    assert per_thread["data"][0]["total_tokens"] == 36
    assert per_thread["data"][0]["object"] == "chatkit.usage"
    assert [(row["user"], row["thread_id"], row["total_tokens"]) for row in per_user["data"]] == [
        ("alice", None, 36),
        ("bob", None, 6),
    ]
    assert [row["thread_id"] for row in only_bob["data"]] == [bobs_thread]
    assert [row["thread_id"] for row in one_thread["data"]] == [alices_thread]
    assert bad.status_code == 400
    assert "'group_by'" in bad.json()["error"]["message"]


async def test_usage_limit_sets_has_more(
    rest: Live, client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    secret = (await session_for(client, "alice")).client_secret
    for text in ("one", "two"):
        await converse(rest, secret, text)

    page = (await http.get("/usage", params={"limit": 1})).json()

    assert (len(page["data"]), page["has_more"]) == (1, True)
