"""Browser requests from pages the server neither serves nor allows are refused."""

from __future__ import annotations

import json

import httpx
import pytest

from chatkit_server.settings import Settings
from chatkit_server.testing.client import user_input
from tests.live import Live, LiveFactory

CREATE = json.dumps({"type": "threads.create", "params": {"input": user_input("hi")}})
JSON = {"content-type": "application/json"}


async def _threads(live: Live) -> list[object]:
    listed = await live.client.call("threads.list", limit=10)
    return list(listed["data"])


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1:1"])
async def test_a_foreign_page_is_refused_before_anything_happens(live: Live, origin: str) -> None:
    async with httpx.AsyncClient(base_url=live.url, headers={"origin": origin}) as http:
        created = await http.post("/chatkit", content=CREATE, headers=JSON)
        workflows = await http.get("/chatkit/workflows")

    assert created.status_code == 403
    assert created.json()["error"]["code"] == "origin_not_allowed"
    assert "CHATKIT_CORS_ORIGINS" in created.json()["error"]["message"]
    assert workflows.status_code == 403
    assert await _threads(live) == []


async def test_the_servers_own_pages_and_non_browsers_pass(live: Live) -> None:
    host = live.url.removeprefix("http://")
    async with httpx.AsyncClient(base_url=live.url) as http:
        own = await http.post(
            "/chatkit", content=CREATE, headers={**JSON, "origin": f"http://{host}"}
        )
        # Behind a TLS-terminating proxy the page is https, the server sees http.
        proxied = await http.post(
            "/chatkit", content=CREATE, headers={**JSON, "origin": f"https://{host}"}
        )
        script = await http.post("/chatkit", content=CREATE, headers=JSON)

    assert [own.status_code, proxied.status_code, script.status_code] == [200, 200, 200]
    assert len(await _threads(live)) == 3


async def test_allowed_origins_pass(start_live: LiveFactory, live_settings: Settings) -> None:
    settings = live_settings.with_changes(cors_origins=("http://localhost:5173",))
    async with (
        start_live(settings) as live,
        httpx.AsyncClient(base_url=live.url) as http,
    ):
        allowed = await http.post(
            "/chatkit", content=CREATE, headers={**JSON, "origin": "http://localhost:5173"}
        )
        other = await http.post(
            "/chatkit", content=CREATE, headers={**JSON, "origin": "http://localhost:5174"}
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert other.status_code == 403
