"""Attachment uploads over a real uvicorn: both ChatKit upload strategies, limits, owners."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa
from chatkit.types import AttachmentCreateParams

from chatkit_server.context import RequestContext, SessionLimits
from chatkit_server.errors import NotFoundError, RequestError
from chatkit_server.settings import Settings
from chatkit_server.store.attachments import attachment_owner
from chatkit_server.store.tables import attachments
from chatkit_server.testing.client import ChatKitClient, user_input
from tests.live import Live, LiveFactory

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))
SECRET = "s" * 40


def token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


async def create(
    client: ChatKitClient, name: str = "notes.txt", mime_type: str = "text/plain", size: int = 5
) -> dict[str, Any]:
    created: dict[str, Any] = await client.call(
        "attachments.create", name=name, size=size, mime_type=mime_type
    )
    return created


def stored_files(live: Live) -> list[str]:
    root = live.settings.attachments_dir
    return sorted(path.name for path in root.iterdir()) if root.exists() else []


async def test_two_phase_post_multipart_uploads_to_the_servers_real_port(live: Live) -> None:
    created = await create(live.client)
    descriptor = created["upload_descriptor"]
    # The URL follows the port uvicorn really bound, not a hard-coded one.
    assert descriptor["url"].startswith(
        f"{live.url}/chatkit/attachments/{created['id']}/upload?expires="
    )
    assert "&signature=" in descriptor["url"]
    assert descriptor["method"] == "POST"

    async with httpx.AsyncClient() as http:
        response = await http.post(
            descriptor["url"], files={"file": ("notes.txt", b"hello", "text/plain")}
        )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == created["id"]
    assert "upload_descriptor" not in body
    assert "metadata" not in body
    saved = await live.store.load_attachment(created["id"], _local())
    assert saved.upload_descriptor is None
    assert saved.metadata == {"size": 5}
    assert await live.state.files.read(created["id"]) == b"hello"
    assert stored_files(live) == [created["id"]]


async def test_two_phase_put_takes_the_raw_body(live: Live) -> None:
    created = await create(live.client, name="data.csv", mime_type="text/csv")
    async with httpx.AsyncClient() as http:
        response = await http.put(created["upload_descriptor"]["url"], content=b"a,b\n1,2\n")

    assert response.status_code == 200, response.text
    assert response.json()["mime_type"] == "text/csv"  # text, as declared
    assert await live.state.files.read(created["id"]) == b"a,b\n1,2\n"


async def test_a_second_upload_is_refused(live: Live) -> None:
    created = await create(live.client)
    async with httpx.AsyncClient() as http:
        assert (await http.put(created["upload_descriptor"]["url"], content=b"one")).is_success
        again = await http.put(created["upload_descriptor"]["url"], content=b"two")

    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_uploaded"
    assert await live.state.files.read(created["id"]) == b"one"


async def test_direct_upload_creates_the_attachment_in_one_request(live: Live) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{live.url}/chatkit/attachments",
            files={"file": ("../../etc/photo.png", PNG, "image/png")},
        )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "image"
    assert body["name"] == "photo.png"  # a display name only, never a path
    assert body["mime_type"] == "image/png"
    assert body["preview_url"].startswith(f"{live.url}/chatkit/attachments/{body['id']}/preview?")
    assert "upload_descriptor" not in body
    assert stored_files(live) == [body["id"]]  # named by id only
    assert await live.state.files.read(body["id"]) == PNG


async def test_a_png_declared_as_text_is_kept_as_the_png_it_is(live: Live) -> None:
    created = await create(live.client, name="innocent.txt", mime_type="text/plain")
    assert created["type"] == "file"
    async with httpx.AsyncClient() as http:
        response = await http.put(created["upload_descriptor"]["url"], content=PNG)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "image"
    assert body["mime_type"] == "image/png"
    assert "preview_url" in body
    saved = await live.store.load_attachment(created["id"], _local())
    assert saved.mime_type == "image/png"


async def test_an_image_declared_that_is_text_is_kept_as_text(live: Live) -> None:
    created = await create(live.client, name="fake.png", mime_type="image/png")
    assert created["type"] == "image"
    async with httpx.AsyncClient() as http:
        response = await http.put(created["upload_descriptor"]["url"], content=b"just text")

    assert response.json()["type"] == "file"
    assert response.json()["mime_type"] == "text/plain"


async def test_a_type_the_server_does_not_take_is_refused_and_not_kept(live: Live) -> None:
    created = await create(live.client, name="tool.exe", mime_type="application/x-msdownload")
    async with httpx.AsyncClient() as http:
        response = await http.put(created["upload_descriptor"]["url"], content=b"MZ\x90\x00\x03")

    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_file_type"
    assert stored_files(live) == []
    saved = await live.store.load_attachment(created["id"], _local())
    assert saved.upload_descriptor is not None  # still waiting for its bytes


@pytest.fixture
def small_limit(live_settings: Settings) -> Settings:
    return live_settings.with_changes(max_upload_bytes=100_000)


async def _send_until_answered(
    url: str, method: str, head: bytes, chunk: bytes, count: int, tail: bytes
) -> tuple[int, bytes]:
    """Send a chunked body chunk by chunk, stopping when the server answers.

    httpx sends the whole body before it reads the answer, so this speaks
    HTTP/1.1 on a socket: how far the body got when the answer came shows
    whether the server cut the upload at the limit or read it all first.
    """
    parts = httpx.URL(url)
    reader, writer = await asyncio.open_connection(parts.host, parts.port)
    writer.write(
        f"{method} {parts.raw_path.decode()} HTTP/1.1\r\nHost: {parts.host}:{parts.port}\r\n"
        "Transfer-Encoding: chunked\r\n".encode()
        + head
        + b"\r\n"
    )
    answer = asyncio.ensure_future(reader.read(65536))
    sent = 0
    try:
        for index in range(count):
            if answer.done():
                break
            body = chunk + (tail if index == count - 1 else b"")
            writer.write(f"{len(body):x}\r\n".encode() + body + b"\r\n")
            await writer.drain()
            sent += 1
            await asyncio.sleep(0.002)
        else:
            writer.write(b"0\r\n\r\n")
    except ConnectionError:
        pass
    response = await asyncio.wait_for(answer, 10)
    writer.close()
    return sent, response


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_over_the_limit_is_cut_at_once_and_nothing_is_left(
    start_live: LiveFactory, small_limit: Settings, method: str
) -> None:
    async with start_live(small_limit) as live:
        created = await create(live.client)
        head, first, tail = b"", b"", b""
        if method == "POST":
            head = b"Content-Type: multipart/form-data; boundary=b\r\n"
            first = (
                b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n'
                b"Content-Type: text/plain\r\n\r\n"
            )
            tail = b"\r\n--b--\r\n"
        # 400 x 16 KiB = 6.4 MB, 64 times the limit.
        sent, response = await _send_until_answered(
            created["upload_descriptor"]["url"],
            method,
            head,
            first + b"x" * 16384 if method == "POST" else b"x" * 16384,
            400,
            tail,
        )

        assert response.startswith(b"HTTP/1.1 413 "), response[:200]
        assert b'"too_large"' in response
        assert sent < 100  # cut near the limit (7 chunks), not after the whole body
        assert stored_files(live) == []
        saved = await live.store.load_attachment(created["id"], _local())
        assert saved.upload_descriptor is not None


async def test_a_declared_length_over_the_limit_is_refused_before_reading(
    start_live: LiveFactory, small_limit: Settings
) -> None:
    async with start_live(small_limit) as live:
        created = await create(live.client)
        async with httpx.AsyncClient() as http:
            response = await http.put(created["upload_descriptor"]["url"], content=b"x" * 100_001)
        assert response.status_code == 413
        assert stored_files(live) == []


async def test_a_sessions_file_limit_tightens_the_servers(live: Live) -> None:
    # Made by a session that allows 10 bytes; uploaded through its signed link,
    # which names no session: the limit travels with the attachment.
    session = RequestContext(limits=SessionLimits(max_file_bytes=10), base_url=live.url)
    attachment = await live.store.create_attachment(_params("a.txt", 5, "text/plain"), session)
    await live.store.save_attachment(attachment, session)
    assert attachment.upload_descriptor is not None
    url = str(attachment.upload_descriptor.url)
    async with httpx.AsyncClient() as http:
        too_large = await http.put(url, content=b"x" * 11)
        fits = await http.put(url, content=b"x" * 10)
    assert too_large.status_code == 413
    assert fits.status_code == 200


def _params(name: str, size: int, mime_type: str) -> AttachmentCreateParams:
    return AttachmentCreateParams(name=name, size=size, mime_type=mime_type)


def _local() -> RequestContext:
    return RequestContext()


@pytest.fixture
def signed_in(live_settings: Settings) -> Settings:
    return live_settings.with_changes(jwt_secret=SECRET, user_rate_limit=0)


def unsigned(url: str) -> str:
    return str(httpx.URL(url).copy_with(query=None))


async def test_another_users_attachment_is_a_404_like_a_missing_one(
    start_live: LiveFactory, signed_in: Settings
) -> None:
    async with start_live(signed_in) as live:
        alice = ChatKitClient(live.url, headers=bearer("alice"))
        async with alice:
            created = await create(alice)
        signed = created["upload_descriptor"]["url"]
        url = unsigned(signed)
        missing = url.replace(created["id"], "atc_" + "0" * 32)
        other = await live.store.create_attachment(
            AttachmentCreateParams(name="b.txt", size=1, mime_type="text/plain"),
            RequestContext(user_id="bob"),
        )
        # Bob's own signed link, pointed at alice's attachment.
        bobs_link = httpx.URL(str(other.upload_descriptor.url) if other.upload_descriptor else "")
        borrowed = httpx.URL(url).copy_merge_params(dict(bobs_link.params))
        async with httpx.AsyncClient(headers=bearer("bob")) as bob:
            foreign_post = await bob.post(url, files={"file": ("x.txt", b"bob", "text/plain")})
            foreign_put = await bob.put(url, content=b"bob")
            absent = await bob.put(missing, content=b"bob")
            forged = await bob.put(borrowed, content=b"bob")
        async with httpx.AsyncClient() as anonymous:
            unsigned_put = await anonymous.put(url, content=b"anyone")
            tampered = await anonymous.put(signed[:-2] + "AA", content=b"anyone")

        statuses = [r.status_code for r in (foreign_post, foreign_put, absent, forged, tampered)]
        assert statuses == [404] * 5
        assert len({r.text for r in (foreign_post, foreign_put, absent, forged, tampered)}) == 1
        assert unsigned_put.status_code == 401
        assert stored_files(live) == []


async def test_the_signed_upload_link_needs_no_credential(
    start_live: LiveFactory, signed_in: Settings
) -> None:
    # As a presigned URL: ChatKit may send the bytes without the app's headers.
    async with start_live(signed_in) as live:
        async with ChatKitClient(live.url, headers=bearer("alice")) as alice:
            created = await create(alice)
        async with httpx.AsyncClient(headers={"Origin": "https://cdn.example"}) as iframe:
            response = await iframe.post(
                created["upload_descriptor"]["url"],
                files={"file": ("notes.txt", b"hello", "text/plain")},
            )
        assert response.status_code == 200, response.text
        assert response.headers["access-control-allow-origin"] == "*"
        saved = await live.store.load_attachment(created["id"], RequestContext(user_id="alice"))
        assert saved.upload_descriptor is None


async def test_the_unsigned_upload_route_signs_in_like_chatkit(
    start_live: LiveFactory, signed_in: Settings
) -> None:
    async with start_live(signed_in) as live:
        async with ChatKitClient(live.url, headers=bearer("alice")) as alice:
            created = await create(alice)
        async with httpx.AsyncClient(headers=bearer("alice")) as http:
            response = await http.put(unsigned(created["upload_descriptor"]["url"]), content=b"hi")
        assert response.status_code == 200, response.text


async def test_direct_upload_needs_sign_in(start_live: LiveFactory, signed_in: Settings) -> None:
    async with start_live(signed_in) as live, httpx.AsyncClient() as http:
        response = await http.post(
            f"{live.url}/chatkit/attachments", files={"file": ("a.txt", b"a", "text/plain")}
        )
        assert response.status_code == 401
        assert stored_files(live) == []


async def test_a_foreign_page_is_refused(live: Live) -> None:
    created = await create(live.client)
    async with httpx.AsyncClient(headers={"Origin": "https://evil.example"}) as http:
        two_phase = await http.put(unsigned(created["upload_descriptor"]["url"]), content=b"x")
        direct = await http.post(
            f"{live.url}/chatkit/attachments", files={"file": ("a.txt", b"a", "text/plain")}
        )
    assert two_phase.status_code == direct.status_code == 403
    assert stored_files(live) == []


async def test_uploads_off_for_a_session_refuse_direct_uploads(live: Live) -> None:
    # The checks attachments.create runs apply to a direct upload too.
    context = RequestContext(limits=SessionLimits(uploads=False))
    with pytest.raises(RequestError) as refused:
        await live.state.server.checks.check_upload(0, context)
    assert refused.value.status_code == 403


async def test_public_url_names_the_upload_and_preview_links(
    start_live: LiveFactory, live_settings: Settings
) -> None:
    settings = live_settings.with_changes(public_url="https://chat.example.com")
    async with start_live(settings) as live:
        created = await create(live.client, name="p.png", mime_type="image/png")
    assert created["upload_descriptor"]["url"].startswith(
        "https://chat.example.com/chatkit/attachments/"
    )
    assert created["preview_url"].startswith("https://chat.example.com/chatkit/attachments/")


async def test_a_message_with_an_uploaded_attachment_keeps_it(live: Live, fake_llm: Any) -> None:
    created = await create(live.client)
    async with httpx.AsyncClient() as http:
        await http.put(created["upload_descriptor"]["url"], content=b"hello")

    turn = await live.client.stream(
        "threads.create", input=user_input("see file", attachments=[created["id"]])
    )

    thread = await live.client.call("threads.get_by_id", thread_id=turn.thread_id)
    message = thread["items"]["data"][0]
    assert [a["id"] for a in message["attachments"]] == [created["id"]]
    assert "upload_descriptor" not in message["attachments"][0]


async def test_a_message_naming_an_attachment_not_uploaded_yet_is_refused(live: Live) -> None:
    created = await create(live.client)
    body = json.dumps(
        {
            "type": "threads.create",
            "params": {"input": user_input("see file", attachments=[created["id"]])},
        }
    )
    response = await live.client.post_raw(body)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_uploaded"


async def direct_png(live: Live, client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.post(
        f"{live.url}/chatkit/attachments", files={"file": ("photo.png", PNG, "image/png")}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_preview_link_serves_the_image_to_another_origin(
    start_live: LiveFactory, live_settings: Settings
) -> None:
    settings = live_settings.with_changes(cors_origins=("http://app.example",))
    async with start_live(settings) as live, httpx.AsyncClient() as http:
        image = await direct_png(live, http)
        # The ChatKit iframe: another origin, no credentials.
        response = await http.get(
            image["preview_url"], headers={"Origin": "https://cdn.platform.openai.com"}
        )

    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["cross-origin-resource-policy"] == "cross-origin"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_a_preview_link_opens_only_its_own_image(live: Live) -> None:
    async with httpx.AsyncClient() as http:
        image = await direct_png(live, http)
        other = await direct_png(live, http)
        url = httpx.URL(image["preview_url"])
        tampered = url.copy_set_param("signature", url.params["signature"][:-2] + "AA")
        later = url.copy_set_param("expires", str(int(url.params["expires"]) + 3600))
        swapped = httpx.URL(other["preview_url"]).copy_set_param(
            "signature", url.params["signature"]
        )
        answers = [
            await http.get(link)
            for link in (
                tampered,
                later,
                swapped,
                url.copy_remove_param("signature"),
                f"{live.url}/chatkit/attachments/atc_{'0' * 32}/preview",
            )
        ]
    assert [answer.status_code for answer in answers] == [404] * 5
    assert len({answer.text for answer in answers}) == 1


async def test_a_preview_link_signed_for_its_owner_only(
    start_live: LiveFactory, signed_in: Settings
) -> None:
    async with start_live(signed_in) as live:
        async with httpx.AsyncClient(headers=bearer("alice")) as alice:
            image = await direct_png(live, alice)
        owner, _ = await attachment_owner(live.state.database, image["id"]) or ("", None)
        assert owner == "alice"
        url = httpx.URL(image["preview_url"])
        bobs_link = live.state.signer.url(live.url, image["id"], "bob")
        async with httpx.AsyncClient() as anyone:
            assert (await anyone.get(url)).status_code == 200
            assert (await anyone.get(bobs_link)).status_code == 404


async def test_loading_a_thread_renews_its_preview_links(live: Live) -> None:
    async with httpx.AsyncClient() as http:
        image = await direct_png(live, http)
    turn = await live.client.stream(
        "threads.create", input=user_input("look", attachments=[image["id"]])
    )
    thread = await live.client.call("threads.get_by_id", thread_id=turn.thread_id)
    link = thread["items"]["data"][0]["attachments"][0]["preview_url"]
    assert "signature=" in link
    async with httpx.AsyncClient() as http:
        assert (await http.get(link)).content == PNG


async def test_a_preview_of_a_file_that_is_not_an_image_is_refused(live: Live) -> None:
    created = await create(live.client, name="x.png", mime_type="image/png")
    async with httpx.AsyncClient() as http:
        before = await http.get(created["preview_url"])  # not uploaded yet
        await http.put(created["upload_descriptor"]["url"], content=b"text, not an image")
        after = await http.get(created["preview_url"])
    assert before.status_code == after.status_code == 404


async def test_deleting_an_attachment_deletes_its_bytes_over_http(live: Live) -> None:
    async with httpx.AsyncClient() as http:
        image = await direct_png(live, http)
    await live.client.call("attachments.delete", attachment_id=image["id"])
    assert stored_files(live) == []


async def test_database_storage_over_http(
    start_live: LiveFactory, live_settings: Settings, server_database_url: str
) -> None:
    settings = live_settings.with_changes(
        attachment_storage="database", database_url=server_database_url
    )
    async with start_live(settings) as live:
        created = await create(live.client)
        async with httpx.AsyncClient() as http:
            response = await http.post(
                created["upload_descriptor"]["url"],
                files={"file": ("notes.txt", b"hello", "text/plain")},
            )
            image = await direct_png(live, http)
            preview = await http.get(image["preview_url"])
        assert response.status_code == 200
        assert await live.state.files.read(created["id"]) == b"hello"
        assert preview.content == PNG
        assert stored_files(live) == []  # nothing on disk


async def test_a_cross_origin_put_passes_the_preflight(
    start_live: LiveFactory, live_settings: Settings
) -> None:
    settings = live_settings.with_changes(cors_origins=("http://app.example",))
    async with start_live(settings) as live, httpx.AsyncClient() as http:
        response = await http.options(
            f"{live.url}/chatkit/attachments/atc_1/upload",
            headers={
                "Origin": "http://app.example",
                "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": "authorization, chatkit-frame-instance-id",
            },
        )
    assert response.status_code == 200
    assert "PUT" in response.headers["access-control-allow-methods"]


async def test_an_upload_never_sent_is_swept_on_start(
    start_live: LiveFactory, live_settings: Settings
) -> None:
    settings = live_settings.with_changes(upload_grace=3600)
    async with start_live(settings) as live, httpx.AsyncClient() as http:
        image = await direct_png(live, http)
        async with live.state.database.write() as session:
            await session.execute(
                sa.update(attachments)
                .where(attachments.c.id == image["id"])
                .values(created_at=datetime(2000, 1, 1))
            )
        assert stored_files(live) == [image["id"]]

    async with start_live(settings) as live:
        for _ in range(100):  # the sweep runs in the background, at once
            if not stored_files(live):
                break
            await asyncio.sleep(0.05)
        assert stored_files(live) == []
        with pytest.raises(NotFoundError):
            await live.store.load_attachment(image["id"], _local())
