"""``POST /chatkit`` over a real uvicorn: headers, error statuses, limits, CORS."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
from chatkit.types import AssistantMessageContentPartTextDelta, ThreadItemUpdatedEvent

from chatkit_server import pace as pace_module
from chatkit_server.errors import StoreError
from chatkit_server.settings import Settings
from chatkit_server.testing.client import user_input
from chatkit_server.testing.fake_backend import Reply
from tests.live import FakeLLM, Live, LiveFactory


async def test_streaming_answer_has_sse_headers(live: Live) -> None:
    body = json.dumps({"type": "threads.create", "params": {"input": user_input("hi")}})
    response = await live.client.post_raw(body)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.text.startswith("data: {")


async def test_non_streaming_answer_is_json(live: Live) -> None:
    response = await live.client.post_raw(json.dumps({"type": "threads.list", "params": {}}))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"data": [], "has_more": False}


def _transcribe(audio_base64: str) -> str:
    params = {"audio_base64": audio_base64, "mime_type": "audio/webm"}
    return json.dumps({"type": "input.transcribe", "params": params})


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ('{"type": "threads.explode", "params": {}}', "Unknown request type"),
        ('{"params": {}}', "no 'type'"),
        ('{"type": "threads.get_by_id", "params": {}}', "thread_id"),
        ('{"type": "threads.list", "params": {"limit": "many"}}', "limit"),
        ("[1, 2, 3]", "Invalid request"),
        # ChatKit decodes the audio with no answer for a malformed string but a 500.
        (_transcribe("abcde"), "audio_base64"),
        (_transcribe("\u00e9t\u00e9"), "audio_base64"),
    ],
)
async def test_bad_requests_get_400_with_json(live: Live, body: str, fragment: str) -> None:
    response = await live.client.post_raw(body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert fragment in error["message"]


@pytest.mark.parametrize(
    "request_body",
    [
        {
            "type": "threads.add_user_message",
            "params": {"thread_id": "thr_missing", "input": user_input("hi")},
        },
        {
            "type": "threads.retry_after_item",
            "params": {"thread_id": "thr_missing", "item_id": "msg_missing"},
        },
        {
            "type": "threads.add_client_tool_output",
            "params": {"thread_id": "thr_missing", "result": 1},
        },
        {
            "type": "threads.custom_action",
            "params": {"thread_id": "thr_missing", "action": {"type": "x", "payload": {}}},
        },
        {"type": "threads.get_by_id", "params": {"thread_id": "thr_missing"}},
        {"type": "threads.update", "params": {"thread_id": "thr_missing", "title": "x"}},
        {"type": "threads.delete", "params": {"thread_id": "thr_missing"}},
        {"type": "items.list", "params": {"thread_id": "thr_missing"}},
        {
            "type": "items.feedback",
            "params": {"thread_id": "thr_missing", "item_ids": ["m"], "kind": "positive"},
        },
        {"type": "attachments.delete", "params": {"attachment_id": "atc_missing"}},
        {
            "type": "threads.create",
            "params": {"input": user_input("hi", attachments=["atc_missing"])},
        },
    ],
    ids=lambda body: str(body["type"]),
)
async def test_unknown_ids_get_404_before_any_stream(live: Live, request_body: object) -> None:
    response = await live.client.post_raw(json.dumps(request_body))

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["type"] == "not_found_error"


async def test_unknown_thread_creates_nothing(live: Live) -> None:
    body = {
        "type": "threads.create",
        "params": {"input": user_input("hi", attachments=["atc_missing"])},
    }
    await live.client.post_raw(json.dumps(body))
    assert (await live.client.call("threads.list"))["data"] == []


async def test_client_tool_output_without_pending_call_is_409(live: Live) -> None:
    turn = await live.client.create_thread("hi")
    body = {
        "type": "threads.add_client_tool_output",
        "params": {"thread_id": turn.thread_id, "result": {"ok": True}},
    }

    response = await live.client.post_raw(json.dumps(body))

    assert response.status_code == 409
    assert "pending client tool call" in response.json()["error"]["message"]


async def test_retry_after_a_non_user_item_is_400(live: Live) -> None:
    turn = await live.client.create_thread("hi")
    answer = turn.assistant_messages[0].id
    body = {
        "type": "threads.retry_after_item",
        "params": {"thread_id": turn.thread_id, "item_id": answer},
    }

    response = await live.client.post_raw(json.dumps(body))

    assert response.status_code == 400


async def test_oversized_body_gets_413(live: Live) -> None:
    text = "x" * (live.settings.max_body_bytes + 1)
    body = json.dumps({"type": "threads.create", "params": {"input": user_input(text)}})

    response = await live.client.post_raw(body)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert (await live.client.call("threads.list"))["data"] == []


async def test_oversized_chunked_body_gets_413(live: Live) -> None:
    chunk = b"x" * 8192
    count = live.settings.max_body_bytes // len(chunk) + 2

    async def body():  # type: ignore[no-untyped-def]
        for _ in range(count):
            yield chunk

    async with httpx.AsyncClient() as http:
        response = await http.post(
            live.url + "/chatkit", content=body(), headers={"content-type": "application/json"}
        )

    assert response.status_code == 413


async def test_transcribe_without_backend_is_501(live: Live) -> None:
    body = {
        "type": "input.transcribe",
        "params": {"audio_base64": "AAAA", "mime_type": "audio/webm"},
    }
    response = await live.client.post_raw(json.dumps(body))
    assert response.status_code == 501
    assert response.json()["error"]["type"] == "not_implemented_error"


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/chatkit", 405, "GET is not allowed on /chatkit; use POST."),
        ("DELETE", "/healthz", 405, "DELETE is not allowed on /healthz; use GET or HEAD."),
        ("GET", "/no/such/path", 404, "No such path: /no/such/path."),
        ("GET", "/v1/chatkit/nowhere", 404, "No such path: /v1/chatkit/nowhere."),
        ("POST", "/v1/chatkit/threads", 405, "POST is not allowed on /v1/chatkit/threads; use GET"),
    ],
)
async def test_routing_errors_are_json_too(
    live: Live, method: str, path: str, status: int, message: str
) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.request(method, live.url + path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"type", "code", "message"}
    assert error["message"].startswith(message)
    if status == 405:
        assert error["code"] == "method_not_allowed"
        assert "POST" in response.headers["allow"] or "GET" in response.headers["allow"]


async def test_healthz(live: Live) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(live.url + "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_cors_preflight_allows_the_chatkit_frame_header(
    start_live: LiveFactory, live_settings: Settings
) -> None:
    settings = live_settings.with_changes(cors_origins=("http://localhost:5173",))
    async with start_live(settings) as live, httpx.AsyncClient() as http:
        response = await http.options(
            live.url + "/chatkit",
            headers={
                "origin": "http://localhost:5173",
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type,chatkit-frame-instance-id",
            },
        )
        other = await http.options(
            live.url + "/chatkit",
            headers={
                "origin": "http://evil.example",
                "access-control-request-method": "POST",
            },
        )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "chatkit-frame-instance-id" in response.headers["access-control-allow-headers"]
    assert other.status_code == 400


async def test_unknown_cursor_is_400(live: Live) -> None:
    turn = await live.client.create_thread("hi")
    for request_type, params in [
        ("items.list", {"thread_id": turn.thread_id, "after": "msg_unknown"}),
        ("threads.list", {"after": "thr_unknown"}),
    ]:
        body = json.dumps({"type": request_type, "params": params})
        response = await live.client.post_raw(body)
        assert response.status_code == 400, request_type
        assert "cursor" in response.json()["error"]["message"]


async def test_internal_errors_are_500_without_details(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(live.store, "load_threads", explode)
    response = await live.client.post_raw(json.dumps({"type": "threads.list", "params": {}}))

    assert response.status_code == 500
    assert "secret" not in response.text
    assert response.json()["error"]["message"] == "Internal server error."


async def test_store_failure_after_the_stream_started_ends_with_an_error_event(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    turn = await live.client.create_thread("hi")
    original = live.store.add_thread_item

    async def failing_add(thread_id: str, item: object, context: object) -> None:
        raise StoreError("the database is busy: try again")

    monkeypatch.setattr(live.store, "add_thread_item", failing_add)
    failed = await live.client.add_message(turn.thread_id, "this cannot be saved")
    monkeypatch.setattr(live.store, "add_thread_item", original)

    assert failed.events[-1].type == "error"
    assert "could not" in (failed.errors[-1].message or "")
    again = await live.client.add_message(turn.thread_id, "and now?")
    assert again.assistant_messages


async def test_requests_are_parsed_once(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    # chatkit's process() builds a TypeAdapter per call (~4 ms); the server
    # dispatches its own parsed request instead.
    import chatkit.server

    def no_adapter(*args: object, **kwargs: object) -> None:
        raise AssertionError("ChatKitServer.process() parsed the request again")

    monkeypatch.setattr(chatkit.server, "TypeAdapter", no_adapter)
    turn = await live.client.create_thread("hi")
    listed = await live.client.call("threads.list")

    assert turn.assistant_messages
    assert [t["id"] for t in listed["data"]] == [turn.thread_id]


def test_a_failure_outside_the_chatkit_route_is_json_500_without_details() -> None:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.testclient import TestClient

    from chatkit_server.app import create_app

    async def boom(request: Request) -> Response:
        raise RuntimeError("password=hunter2")

    app = create_app(Settings())
    app.add_route("/boom", boom)
    # Not entered as a context manager: no lifespan, no database needed.
    response = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "Internal server error."
    assert "hunter2" not in response.text


async def test_a_client_leaving_mid_body_is_no_error(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chatkit_server")
    host, port = live.url.removeprefix("http://").split(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /chatkit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n" + b'{"type": "thr'
    )
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    await writer.wait_closed()
    # The server noticed (it logs the disconnect) and is still well.
    for _ in range(100):
        if any("disconnected" in record.getMessage() for record in caplog.records):
            break
        await asyncio.sleep(0.02)
    assert any("disconnected" in record.getMessage() for record in caplog.records)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert (await live.client.call("threads.list"))["data"] == []


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
async def test_only_json_bodies_are_read(live: Live, content_type: str | None) -> None:
    # A cross-site page can send these without a CORS preflight; a write
    # from one must not happen.
    body = json.dumps({"type": "threads.create", "params": {"input": user_input("hi")}})
    headers = {"content-type": content_type} if content_type else {}
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{live.url}/chatkit", content=body, headers=headers)
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    listed = await live.client.call("threads.list", limit=5)
    assert listed["data"] == []


async def test_json_with_a_charset_is_fine(live: Live) -> None:
    response = await live.client.post_raw(
        '{"type": "threads.list", "params": {}}',
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200


async def test_a_busy_process_sends_each_answer_in_fewer_larger_deltas(
    live: Live, fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if the process streamed many answers: this one's reads come 0.2 s apart.
    monkeypatch.setattr(pace_module, "UNSPACED_STREAMS", 0)
    monkeypatch.setattr(pace_module, "READ_SPACING", 0.2)
    fake_llm.backend.script(Reply.count(20, delay=0.02))

    turn = await live.client.create_thread("hi")

    deltas = [
        event
        for event in turn.events
        if isinstance(event, ThreadItemUpdatedEvent)
        and isinstance(event.update, AssistantMessageContentPartTextDelta)
    ]
    assert turn.assistant_text == "".join(f"tok{i} " for i in range(20))
    # 20 chunks over 0.4 s, read at most every 0.2 s after the first text
    # (an unspaced answer gets about one delta per chunk).
    assert 1 <= len(deltas) <= 6
