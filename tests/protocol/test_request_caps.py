"""Caps and odd ids, decided before the store is asked (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from chatkit_server.settings import Settings
from chatkit_server.testing.client import ChatKitClient, user_input
from tests.live import Live, LiveFactory

MISSING = "thr_" + "0" * 32


@pytest.fixture
async def served(
    start_live: LiveFactory, live_settings: Settings, server_database_url: str
) -> AsyncIterator[Live]:
    settings = live_settings.with_changes(
        database_url=server_database_url,
        max_title_chars=20,
        max_attachments=2,
        max_upload_bytes=1000,
    )
    async with start_live(settings) as live:
        yield live


async def _post(client: ChatKitClient, request_type: str, **params: Any) -> tuple[int, Any]:
    response = await client.post_raw(json.dumps({"type": request_type, "params": params}))
    return response.status_code, response.json()


@pytest.mark.parametrize("bad", ["\x00", "thr_\x00x", "\x1b[31m", "a\x7f"])
async def test_ids_with_control_characters_are_unknown_ids(
    served: Live, bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = served.client
    thread_id = (await client.create_thread("hi")).thread_id
    cases: list[tuple[str, dict[str, Any]]] = [
        ("threads.get_by_id", {"thread_id": bad}),
        ("items.list", {"thread_id": bad}),
        ("threads.delete", {"thread_id": bad}),
        ("items.feedback", {"thread_id": thread_id, "item_ids": [bad], "kind": "positive"}),
        ("attachments.delete", {"attachment_id": bad}),
        ("threads.add_user_message", {"thread_id": bad, "input": user_input("x")}),
        ("threads.create", {"input": {**user_input("x"), "attachments": [bad]}}),
    ]
    for request_type, params in cases:
        status, body = await _post(client, request_type, **params)
        missing_status, missing_body = await _post(
            client,
            request_type,
            **json.loads(json.dumps(params).replace(json.dumps(bad)[1:-1], MISSING)),
        )
        assert (status, body) == (missing_status, missing_body), request_type
        assert status == 404, request_type
    status, body = await _post(client, "threads.list", after=bad)
    assert status == 400
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    # Nothing was lost on the way.
    assert (await client.call("threads.get_by_id", thread_id=thread_id))["id"] == thread_id


async def test_titles_attachments_and_sizes_are_capped(served: Live) -> None:
    client = served.client
    thread_id = (await client.create_thread("hi")).thread_id

    assert (await _post(client, "threads.update", thread_id=thread_id, title="x" * 21))[0] == 400
    assert (await _post(client, "threads.update", thread_id=thread_id, title="x" * 20))[0] == 200
    assert (await _post(client, "attachments.create", name="a", size=-1, mime_type="text/plain"))[
        0
    ] == 400
    assert (await _post(client, "attachments.create", name="a", size=1001, mime_type="text/plain"))[
        0
    ] == 413
    ids = [
        (await client.call("attachments.create", name=f"{n}.txt", size=10, mime_type="text/plain"))[
            "id"
        ]
        for n in range(3)
    ]
    three = {**user_input("x"), "attachments": ids}
    twice = {**user_input("x"), "attachments": [ids[0], ids[0]]}
    for message in (three, twice):
        status, body = await _post(
            client, "threads.add_user_message", thread_id=thread_id, input=message
        )
        assert status == 400, body
    items = await client.call("items.list", thread_id=thread_id, limit=50)
    assert len([i for i in items["data"] if i["type"] == "user_message"]) == 1


async def test_rest_ids_with_control_characters_are_unknown_ids(
    start_live: LiveFactory, live_settings: Settings, server_database_url: str
) -> None:
    key = "k" * 32
    settings = live_settings.with_changes(database_url=server_database_url, admin_key=key)
    async with (
        start_live(settings) as live,
        httpx.AsyncClient(base_url=live.url, headers={"authorization": f"Bearer {key}"}) as http,
    ):
        thread = await http.get("/v1/chatkit/threads/%00")
        items = await http.get("/v1/chatkit/threads/a%01b/items")
        cancel = await http.post("/v1/chatkit/sessions/%00/cancel")
        cursor = await http.get("/v1/chatkit/threads", params={"after": "\x00"})
        user = await http.get("/v1/chatkit/threads", params={"user": "al\x00ice"})
    assert (thread.status_code, items.status_code, cancel.status_code) == (404, 404, 404)
    assert thread.json()["error"]["code"] == "not_found"
    assert (cursor.status_code, user.status_code) == (400, 400)
