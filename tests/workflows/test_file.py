"""Workflows file validation: errors name the file, the key and what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatkit_server import tools
from chatkit_server.workflows.file import WorkflowFileError, load_workflow_file

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "workflows.toml"


def _load(tmp_path: Path, text: str, environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / "workflows.toml"
    path.write_text(text)
    return load_workflow_file(path, environ or {})


def test_checked_in_example_is_valid() -> None:
    loaded = load_workflow_file(EXAMPLE, {"GPU_BACKEND_KEY": "k"})

    assert loaded.default_workflow == "assistant"
    assert set(loaded.workflows) == {"assistant", "analyst"}
    assert {spec.backend for spec in loaded.workflows.values()} == {"local", "gpu"}
    assert loaded.api_keys["gpu"] == "k"
    assert [tool.name for tool in loaded.tools["assistant"]] == [
        "current_time",
        "show_counter",
        "ask_user_to_choose",
    ]
    assert set(loaded.workflows["assistant"].actions) == {"counter.add", "counter.reset"}
    [client] = loaded.workflows["assistant"].client_tools
    assert client.name == "pick_color"
    assert client.parameters["type"] == "object"
    assert loaded.workflows["analyst"].allowed_models == ["qwen3-8b", "qwen3-32b"]


def test_minimal_file_defaults_to_its_first_workflow(tmp_path: Path) -> None:
    loaded = _load(tmp_path, '[workflows.only]\nmodel = "m"\n')
    assert loaded.default_workflow == "only"
    assert loaded.workflows["only"].backend == "default"


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("[workflows.a\n", "", "not valid TOML"),
        ("", "workflows", "field required"),
        ('[workflows.a]\nmodel = "m"\ncolour = "red"\n', "workflows.a.colour", "extra inputs"),
        (
            '[workflows.a]\nmodel = "m"\nbackend = "gpu"\n',
            "workflows.a.backend",
            "no backend 'gpu'",
        ),
        (
            '[workflows.a]\nmodel = "m"\nmodel_settings = { temperature = 7 }\n',
            "workflows.a.model_settings.temperature",
            "less than or equal to 2",
        ),
        ('[workflows.a]\nmodel = "m"\nhandoffs = ["b"]\n', "workflows.a.handoffs[0]", "'b'"),
        ('[workflows.a]\nmodel = "m"\nhandoffs = ["a"]\n', "workflows.a.handoffs[0]", "'a'"),
        ('[workflows.a]\nmodel = "m"\ntools = ["nocolon"]\n', "workflows.a.tools", "module.path"),
        (
            '[workflows.a]\nmodel = "m"\ntools = ["no_such_module_xyz:f"]\n',
            "workflows.a.tools[0]",
            "cannot import",
        ),
        (
            '[workflows.a]\nmodel = "m"\ntools = ["chatkit_server.tools:__all__"]\n',
            "workflows.a.tools[0]",
            "not a function",
        ),
        (
            '[backends.b]\nbase_url = "ftp://x"\n[workflows.a]\nmodel = "m"\n',
            "backends.b.base_url",
            "http://",
        ),
        (
            '[backends.b]\nbase_url = "http://x"\napi_key_env = "MISSING_KEY"\n'
            '[workflows.a]\nmodel = "m"\nbackend = "b"\n',
            "backends.b.api_key_env",
            "MISSING_KEY is unset",
        ),
        (
            '[backends.b]\nbase_url = "http://x"\napi_key = "k"\napi_key_env = "K"\n'
            '[workflows.a]\nmodel = "m"\n',
            "backends.b",
            "not both",
        ),
        ('default_workflow = "zzz"\n[workflows.a]\nmodel = "m"\n', "default_workflow", "'zzz'"),
        (
            '[workflows.a]\nmodel = "m"\nactions = { "x" = "nocolon" }\n',
            "workflows.a.actions",
            "module.path",
        ),
        (
            '[workflows.a]\nmodel = "m"\nactions = { "x" = "no_such_module_xyz:f" }\n',
            "workflows.a.actions.x",
            "cannot import",
        ),
        (
            '[workflows.a]\nmodel = "m"\nactions = { "x" = "chatkit_server.tools:missing" }\n',
            "workflows.a.actions.x",
            "does not exist",
        ),
        (
            # A plain function: the handler must be async (it is awaited).
            '[workflows.a]\nmodel = "m"\nactions = { "x" = "chatkit_server.tools:current_time" }\n',
            "workflows.a.actions.x",
            "not an async function",
        ),
        ('[workflows."bad id!"]\nmodel = "m"\n', "bad id!", "letters, digits"),
        (
            '[workflows.a]\nmodel = "m"\nclient_tools = [{ name = "9lives" }]\n',
            "workflows.a.client_tools[0].name",
            "letters, digits",
        ),
        (
            '[workflows.a]\nmodel = "m"\nclient_tools = [{ name = "f", colour = 1 }]\n',
            "workflows.a.client_tools[0].colour",
            "extra inputs",
        ),
        (
            '[workflows.a]\nmodel = "m"\n'
            'client_tools = [{ name = "f", parameters = { type = "string" } }]\n',
            "workflows.a.client_tools[0].parameters",
            'type = "object"',
        ),
        (
            '[workflows.a]\nmodel = "m"\nclient_tools = [{ name = "f", parameters = '
            '{ type = "object", properties = { x = 1 } } }]\n',
            "workflows.a.client_tools[0].parameters",
            "properties",
        ),
        (
            '[workflows.a]\nmodel = "m"\nclient_tools = [{ name = "f", parameters = '
            '{ type = "object", required = ["x"] } }]\n',
            "workflows.a.client_tools[0].parameters",
            "required",
        ),
        (
            '[workflows.a]\nmodel = "m"\ntools = ["chatkit_server.tools:current_time"]\n'
            'client_tools = [{ name = "current_time" }]\n',
            "workflows.a.client_tools[0].name",
            "already has a tool named 'current_time'",
        ),
        (
            '[workflows.a]\nmodel = "m"\nclient_tools = [{ name = "f" }, { name = "f" }]\n',
            "workflows.a.client_tools[1].name",
            "already has a tool named 'f'",
        ),
    ],
)
def test_errors_name_file_key_and_problem(
    tmp_path: Path, text: str, key: str, fragment: str
) -> None:
    with pytest.raises(WorkflowFileError) as error:
        _load(tmp_path, text)
    message = str(error.value)
    assert message.startswith(str(tmp_path / "workflows.toml") + ": ")
    assert error.value.key == key
    assert fragment.lower() in message.lower()


def test_client_tools_default_to_no_arguments(tmp_path: Path) -> None:
    loaded = _load(tmp_path, '[workflows.a]\nmodel = "m"\nclient_tools = [{ name = "ping" }]\n')
    [client] = loaded.workflows["a"].client_tools
    assert (client.description, client.parameters) == ("", {"type": "object", "properties": {}})


def test_actions_resolve_to_their_handlers(tmp_path: Path) -> None:
    loaded = _load(
        tmp_path,
        '[workflows.a]\nmodel = "m"\n[workflows.a.actions]\n'
        '"counter.add" = "chatkit_server.tools:add_to_counter"\n'
        '"counter.reset" = "chatkit_server.tools:reset_counter"\n'
        '[workflows.b]\nmodel = "m"\n',
    )
    assert loaded.actions == {
        "a": {"counter.add": tools.add_to_counter, "counter.reset": tools.reset_counter},
        "b": {},
    }


def test_vision_is_off_unless_a_workflow_turns_it_on(tmp_path: Path) -> None:
    loaded = _load(
        tmp_path, '[workflows.text]\nmodel = "m"\n\n[workflows.eyes]\nmodel = "v"\nvision = true\n'
    )
    assert loaded.workflows["text"].vision is False
    assert loaded.workflows["eyes"].vision is True
