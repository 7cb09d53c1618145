"""The built-in console: the page and its files, their headers, and turning it off."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import httpx
import pytest

from chatkit_server.app import create_app
from chatkit_server.http.console import CONTENT_SECURITY_POLICY
from chatkit_server.settings import Settings, SettingsError

CONSOLE_DIR = Path(__file__).parents[2] / "chatkit_server" / "console"


def _client(settings: Settings) -> httpx.AsyncClient:
    # No lifespan needed: the console's routes touch no database or backend.
    app = create_app(settings)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def _assert_security_headers(response: httpx.Response) -> None:
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "SAMEORIGIN"


def test_the_policy_allows_only_this_origin() -> None:
    directives = {
        part.split(" ", 1)[0]: part.split(" ", 1)[1] for part in CONTENT_SECURITY_POLICY.split("; ")
    }
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'self'"


async def test_the_page_is_served_at_root_with_security_headers(tmp_path: Path) -> None:
    async with _client(Settings(data_dir=tmp_path)) as client:
        response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    _assert_security_headers(response)
    page = response.text
    for hook in (
        "composer-input",
        "composer-send",
        "composer-stop",
        "new-thread",
        "attach-input",
    ):
        assert f'data-testid="{hook}"' in page
    # Inline script would be refused by the policy: the page has none.
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page) is None
    assert re.search(r"\son[a-z]+\s*=", page) is None  # nor inline handlers


async def test_every_file_the_page_names_is_served_with_its_type(tmp_path: Path) -> None:
    async with _client(Settings(data_dir=tmp_path)) as client:
        page = (await client.get("/")).text
        # Relative to the page, so that a path prefix added by a proxy still works.
        names = re.findall(r'(?:src|href)="(console/[^"]+)"', page)
        assert "console/app.js" in names
        assert "console/console.css" in names
        for name in names:
            response = await client.get(f"/{name}")
            assert response.status_code == 200, name
            expected = "text/css" if name.endswith(".css") else "text/javascript"
            assert response.headers["content-type"] == f"{expected}; charset=utf-8", name
            _assert_security_headers(response)


async def test_modules_import_only_files_of_the_console(tmp_path: Path) -> None:
    async with _client(Settings(data_dir=tmp_path)) as client:
        for path in sorted(CONSOLE_DIR.glob("*.js")):
            source = (await client.get(f"/console/{path.name}")).text
            for target in re.findall(r'^import .* from "([^"]+)";$', source, re.MULTILINE):
                assert target.startswith("./"), (path.name, target)
                resolved = (path.parent / target).resolve().relative_to(CONSOLE_DIR)
                response = await client.get(f"/console/{resolved.as_posix()}")
                assert response.status_code == 200, target


async def test_a_page_fetched_again_is_not_sent_again(tmp_path: Path) -> None:
    async with _client(Settings(data_dir=tmp_path)) as client:
        first = await client.get("/console/app.js")
        again = await client.get(
            "/console/app.js", headers={"if-none-match": first.headers["etag"]}
        )
    assert again.status_code == 304
    assert again.content == b""
    _assert_security_headers(again)


@pytest.mark.parametrize(
    "path", ["/console/nope.js", "/console/vendor/VENDORED.md", "/console/../settings.py"]
)
async def test_unknown_and_unservable_files_are_a_json_404(tmp_path: Path, path: str) -> None:
    async with _client(Settings(data_dir=tmp_path)) as client:
        response = await client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["type"]


async def test_console_off_leaves_root_a_json_404(tmp_path: Path) -> None:
    settings = Settings.from_env({"CHATKIT_DATA_DIR": str(tmp_path), "CHATKIT_CONSOLE": "off"})
    assert settings.console is False
    async with _client(settings) as client:
        for path in ("/", "/console/app.js"):
            response = await client.get(path)
            assert response.status_code == 404
            assert response.headers["content-type"] == "application/json"
            assert response.json()["error"]


def test_console_is_on_by_default() -> None:
    assert Settings.from_env({}).console is True


def test_a_bad_console_value_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="CHATKIT_CONSOLE"):
        Settings.from_env({"CHATKIT_CONSOLE": "maybe"})


def test_the_console_names_no_other_host() -> None:
    # Its own files: nothing may come from, or go to, a CDN or any other host.
    own = [path for path in CONSOLE_DIR.iterdir() if path.is_file()]
    assert {path.name for path in own} >= {"index.html", "app.js", "console.css"}
    for path in own:
        assert "://" not in path.read_text(), path.name


def test_vendored_libraries_are_recorded_with_their_licences() -> None:
    vendor = CONSOLE_DIR / "vendor"
    record = (vendor / "VENDORED.md").read_text()
    rows = [
        line.split(" | ") for line in record.splitlines() if line.startswith("| ") and "`" in line
    ]
    assert {row[0].lstrip("| ") for row in rows} == {"marked", "dompurify"}
    for row in rows:
        package, version, file = row[0].lstrip("| "), row[1], row[2].strip("`")
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), row
        assert (vendor / file).is_file(), file
        assert (vendor / f"{package}.LICENSE").is_file(), package
        assert "sourceMappingURL" not in (vendor / file).read_text()


def test_the_readme_turns_the_console_off_as_it_says() -> None:
    readme = (CONSOLE_DIR.parents[1] / "README.md").read_text()
    section = readme[readme.index("\n## Console") :]
    section = section[: section.index("\n## ", 1)]
    [command] = re.findall(r"```sh\n(.*?)\n```", section, flags=re.DOTALL)
    *assignments, program, subcommand = shlex.split(command)
    assert (program, subcommand) == (".venv/bin/chatkit-server", "serve")
    environ = dict(assignment.split("=", 1) for assignment in assignments)
    assert Settings.from_env(environ).console is False
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", section):
        assert (CONSOLE_DIR.parents[1] / image).is_file(), image
