"""examples/react agrees with the server it is an example of.

CI builds and type-checks the app (``.ci/run``); these tests read its
sources and hold them to the server: the client tools it answers are the
example workflows' client tools, the paths it calls are routes of the app,
the workflow fields it reads are the ones ``GET /chatkit/workflows`` sends,
its upload strategy is the one our ``attachments.create`` answers for, the
README's CORS origin is the dev server's, and its lockfile names no registry.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from chatkit.types import AttachmentCreateParams
from starlette.routing import Match

from chatkit_server.app import create_app
from chatkit_server.context import RequestContext
from chatkit_server.llm.backends import BackendRegistry
from chatkit_server.settings import Settings
from chatkit_server.store import Database, SQLStore
from chatkit_server.workflows.file import load_workflow_file
from chatkit_server.workflows.registry import WorkflowRegistry

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "react"
WORKFLOWS_FILE = REPO / "examples" / "workflows.toml"
# The example file's gpu backend reads its key from here; any text will do.
WORKFLOWS_ENV = {"GPU_BACKEND_KEY": "changeme"}


def _source(name: str) -> str:
    return (EXAMPLE / name).read_text(encoding="utf-8")


def _string_constant(source: str, name: str) -> str:
    [value] = re.findall(rf'export const {name} = "([^"]*)";', source)
    return str(value)


def _type_fields(source: str, name: str) -> set[str]:
    """The top-level field names of ``export type NAME = { ... };``."""
    [body] = re.findall(rf"export type {name} = \{{(.*?)\}};", source, flags=re.DOTALL)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.DOTALL)
    while re.search(r"\{[^{}]*\}", body):
        body = re.sub(r"\{[^{}]*\}", "", body)
    return set(re.findall(r"(\w+)\??:", body))


def _settings(**extra: str) -> Settings:
    return Settings.from_env(
        {
            "CHATKIT_WORKFLOWS": str(WORKFLOWS_FILE),
            "CHATKIT_ADMIN_KEY": "k" * 40,
            **WORKFLOWS_ENV,
            **extra,
        }
    )


def test_the_app_answers_exactly_the_example_workflows_client_tools() -> None:
    workflows = load_workflow_file(WORKFLOWS_FILE, WORKFLOWS_ENV).workflows
    declared = {tool.name for spec in workflows.values() for tool in spec.client_tools}
    [names] = re.findall(
        r"export const CLIENT_TOOLS = \[(.*?)\] as const;", _source("src/clientTools.ts")
    )
    answered = set(re.findall(r'"(\w+)"', names))
    assert declared == {"pick_color"}
    assert answered == declared
    # Each one has its case in the handler, with the parameter the workflow declares.
    handler = _source("src/clientTools.ts")
    assert 'case "pick_color":' in handler
    tools = {tool.name: tool for spec in workflows.values() for tool in spec.client_tools}
    pick_color = tools["pick_color"]
    assert pick_color.parameters["required"] == ["hint"]
    assert "toolCall.params.hint" in handler


def test_the_paths_the_app_calls_are_routes_of_the_server() -> None:
    app = create_app(_settings())
    browser = _source("src/server.ts")
    backend = _source("session-route.ts")
    calls = [
        (_string_constant(browser, "CHATKIT_PATH"), "POST"),
        (_string_constant(browser, "WORKFLOWS_PATH"), "GET"),
        (_string_constant(backend, "SESSIONS_PATH"), "POST"),
    ]
    assert calls[0][0] == "/chatkit"
    for path, method in calls:
        scope = {"type": "http", "path": path, "method": method, "root_path": ""}
        assert any(route.matches(scope)[0] is Match.FULL for route in app.routes), (path, method)
    # The browser asks the example's backend route for a session where it serves one.
    assert _string_constant(browser, "SESSION_ROUTE") == _string_constant(backend, "SESSION_ROUTE")
    assert "chatkitSessionRoute()" in _source("vite.config.ts")


async def test_the_workflow_fields_the_app_reads_are_the_ones_the_server_sends() -> None:
    settings = _settings()
    backends = BackendRegistry.from_settings(settings)
    try:
        registry = WorkflowRegistry.from_settings(settings, backends)
        described = registry.get("assistant").describe()
    finally:
        await backends.aclose()
    browser = _source("src/server.ts")
    assert _type_fields(browser, "Workflow") == set(described)
    assert _type_fields(browser, "Workflows") == {"default", "dictation", "data"}
    # The starter prompts go to ChatKit's startScreen as they come.
    assert described["starter_prompts"][0].keys() <= {"label", "prompt", "icon"}


async def test_the_upload_strategy_is_the_one_attachments_create_answers_for(
    sqlite_database: Database,
) -> None:
    app = _source("src/App.tsx")
    assert re.search(r'uploadStrategy: \{ type: "two_phase" \}', app)
    attachment = await SQLStore(sqlite_database).create_attachment(
        # What the web component sends with attachments.create.
        AttachmentCreateParams(name="a.png", size=3, mime_type="image/png"),
        RequestContext(),
    )
    # two_phase: the component sends the bytes where upload_descriptor says.
    assert attachment.upload_descriptor is not None
    assert attachment.upload_descriptor.method == "POST"


def test_the_readme_allows_the_dev_servers_origin() -> None:
    config = _source("vite.config.ts")
    [host] = set(re.findall(r'host: "([^"]+)"', config))
    [port] = set(re.findall(r"port: (\d+)", config))
    origin = f"http://{host}:{port}"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("\n## Using the ChatKit React component")
    end = readme.find("\n## ", start + 1)
    commands = "".join(re.findall(r"```sh\n(.*?)```", readme[start:end], flags=re.DOTALL))
    assert set(re.findall(r"CHATKIT_CORS_ORIGINS=(\S+)", commands)) == {origin}
    assert _settings(CHATKIT_CORS_ORIGINS=origin).cors_origins == (origin,)


def test_the_lockfile_names_no_registry_and_matches_package_json() -> None:
    lock = json.loads(_source("package-lock.json"))
    package = json.loads(_source("package.json"))
    assert lock["lockfileVersion"] == 3
    root = lock["packages"][""]
    assert root["dependencies"] == package["dependencies"]
    assert root["devDependencies"] == package["devDependencies"]
    assert not [name for name, entry in lock["packages"].items() if "resolved" in entry]
    assert "omit-lockfile-registry-resolved=true" in _source(".npmrc").splitlines()
    for path in EXAMPLE.rglob("*"):
        if {"node_modules", "dist"} & set(path.relative_to(EXAMPLE).parts) or path.is_dir():
            continue
        text = path.read_text(encoding="utf-8")
        assert "registry.npmjs" not in text, path
        assert "registry.yarnpkg" not in text, path
    # The component is pinned: its option names were checked against this version's types.
    assert re.fullmatch(r"\d+\.\d+\.\d+", package["dependencies"]["@openai/chatkit-react"])
