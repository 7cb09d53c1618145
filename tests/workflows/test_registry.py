"""Workflows: registry, agents, and choosing what runs, over a real uvicorn."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import anyio
import httpx
import pytest
from agents import RunConfig, Runner
from agents.testing import ScriptedModel, assistant_message, function_call
from chatkit.types import (
    ThreadCreatedEvent,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    ThreadUpdatedEvent,
)

from chatkit_server.llm.backends import BackendRegistry
from chatkit_server.settings import Settings
from chatkit_server.testing.client import ChatKitHTTPError, user_input
from chatkit_server.testing.fake_backend import Reply
from chatkit_server.workflows.registry import WorkflowRegistry
from chatkit_server.workflows.titles import TITLE_INSTRUCTIONS
from tests.live import LOCAL, FakeLLM, LiveFactory

WORKFLOWS = """
default_workflow = "chat"

[backends.alpha]
base_url = "{url}"
headers = {{ "X-Backend" = "alpha" }}

[backends.beta]
base_url = "{url}"
headers = {{ "X-Backend" = "beta" }}

[workflows.chat]
backend = "alpha"
model = "small"
models = ["small", "medium"]
tools = ["chatkit_server.tools:current_time"]
handoffs = ["expert"]
greeting = "Hello!"
starter_prompts = [{{ label = "Time", prompt = "What time is it?" }}]

[workflows.expert]
backend = "beta"
model = "large"
instructions = "You are an expert."
handoffs = ["chat"]
"""


@pytest.fixture
def workflow_settings(tmp_path: Path, live_settings: Settings, fake_llm: FakeLLM) -> Settings:
    path = tmp_path / "workflows.toml"
    path.write_text(WORKFLOWS.format(url=fake_llm.v1))
    return Settings.from_env(
        {
            "CHATKIT_DATA_DIR": str(live_settings.data_dir),
            "CHATKIT_WORKFLOWS": str(path),
            "CHATKIT_LLM_TIMEOUT": "5",
        }
    )


def _last_request(fake_llm: FakeLLM) -> tuple[str, str, dict[str, object]]:
    """The last answer's request (a new thread's title is asked for after it)."""
    request = next(
        request
        for request in reversed(fake_llm.backend.requests)
        if request.body["messages"][0]["content"] != TITLE_INSTRUCTIONS
    )
    return request.headers.get("x-backend", ""), str(request.body["model"]), request.body


def test_registry_builds_agents_with_tools_and_cyclic_handoffs(
    workflow_settings: Settings,
) -> None:
    registry = WorkflowRegistry.from_settings(
        workflow_settings, BackendRegistry.from_settings(workflow_settings)
    )

    chat, expert = registry.agent("chat"), registry.agent("expert")
    assert registry.default == "chat"
    assert [tool.name for tool in chat.tools] == ["current_time"]
    assert [agent.name for agent in chat.handoffs] == [expert.name]
    assert [agent.name for agent in expert.handoffs] == [chat.name]
    assert registry.agent("chat", model="medium").model is not chat.model
    # A copy per run: the SDK checks every live run of one Agent object
    # against the others, which grows with the number of concurrent answers.
    again = registry.agent("chat")
    assert again is not chat
    assert again.model is chat.model
    assert again.tools == chat.tools


async def test_agent_runs_its_tool_and_offers_its_handoff(workflow_settings: Settings) -> None:
    registry = WorkflowRegistry.from_settings(
        workflow_settings, BackendRegistry.from_settings(workflow_settings)
    )
    model = ScriptedModel(
        [
            [function_call("current_time", {"timezone": "UTC"}, call_id="call_1")],
            [assistant_message("It is late.")],
        ]
    )
    agent = registry.agent("chat").clone(model=model)

    result = await Runner.run(
        agent, "What time is it?", run_config=RunConfig(tracing_disabled=True)
    )

    assert result.final_output == "It is late."
    first, second = model.calls
    assert {tool.name for tool in first.tools} == {"current_time"}
    assert [handoff.agent_name for handoff in first.handoffs] == ["expert"]
    outputs = [item for item in second.input if item.get("type") == "function_call_output"]
    assert "UTC" in str(outputs[0]["output"])
    model.assert_complete()


async def test_thread_remembers_the_workflow_its_request_chose(
    start_live: LiveFactory, workflow_settings: Settings, fake_llm: FakeLLM
) -> None:
    async with start_live(workflow_settings) as live:
        default = await live.client.create_thread("hi")
        assert _last_request(fake_llm)[:2] == ("alpha", "small")

        chosen = await live.client.stream(
            "threads.create", input=user_input("hi expert"), metadata={"workflow": "expert"}
        )
        assert not chosen.errors
        assert _last_request(fake_llm)[:2] == ("beta", "large")
        body = _last_request(fake_llm)[2]
        assert body["messages"][0] == {"role": "system", "content": "You are an expert."}  # type: ignore[index]

        # Later messages go to the thread's workflow without naming it.
        await live.client.add_message(chosen.thread_id, "more")
        assert _last_request(fake_llm)[:2] == ("beta", "large")
        await live.client.add_message(default.thread_id, "more")
        assert _last_request(fake_llm)[:2] == ("alpha", "small")


async def test_a_new_thread_names_its_workflow_from_its_first_write(
    start_live: LiveFactory, workflow_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply.count(20, delay=0.05))  # a one-second answer
    async with start_live(workflow_settings.with_changes(titles=False)) as live:
        streaming = asyncio.create_task(
            live.client.stream(
                "threads.create", input=user_input("hi expert"), metadata={"workflow": "expert"}
            )
        )
        listed: list[ThreadMetadata] = []
        while not listed:  # the thread, as soon as it is stored
            listed = (await live.state.store.load_threads(10, None, "desc", LOCAL)).data
            await asyncio.sleep(0.01)
        answering = not streaming.done()
        chosen = await streaming

    assert answering
    assert listed[0].metadata["workflow"] == "expert"
    # Nothing left to save at the end of the answer: no thread.updated.
    assert not chosen.errors
    assert not [e for e in chosen.events if isinstance(e, ThreadUpdatedEvent)]


async def test_a_new_thread_is_saved_once_more_with_its_title(
    start_live: LiveFactory, workflow_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.default = Reply.text("Expert Title")
    async with start_live(workflow_settings) as live:
        chosen = await live.client.stream(
            "threads.create", input=user_input("hi expert"), metadata={"workflow": "expert"}
        )
        stored = await live.state.store.load_thread(chosen.thread_id, LOCAL)

    # The title: one thread.updated (one write), none before the first token.
    updates = [e for e in chosen.events if isinstance(e, ThreadUpdatedEvent)]
    assert len(updates) == 1
    assert chosen.events.index(updates[0]) > max(
        index for index, e in enumerate(chosen.events) if isinstance(e, ThreadItemUpdatedEvent)
    )
    assert stored.metadata["workflow"] == "expert"
    assert stored.title == "Expert Title"


async def test_a_stopped_first_answer_remembers_its_workflow(
    start_live: LiveFactory, workflow_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.backend.script(Reply.count(200, delay=0.02))
    async with start_live(workflow_settings) as live:
        thread_id = None
        async with live.client.open_stream(
            "threads.create", input=user_input("hi expert"), metadata={"workflow": "expert"}
        ) as events:
            async for event in events:
                if isinstance(event, ThreadCreatedEvent):
                    thread_id = event.thread.id
                if isinstance(event, ThreadItemUpdatedEvent):
                    break
        assert thread_id is not None
        await fake_llm.backend.wait_for_stream_end(timeout=5.0)

        async def remembered() -> bool:
            thread = await live.state.store.load_thread(thread_id, LOCAL)
            return thread.metadata.get("workflow") == "expert"

        with anyio.fail_after(5):
            while not await remembered():  # noqa: ASYNC110 - the server saves in its own task
                await anyio.sleep(0.02)
        # The next message goes to the thread's workflow without naming it.
        fake_llm.backend.script(Reply.text("Still the expert."))
        await live.client.add_message(thread_id, "more")
        assert _last_request(fake_llm)[:2] == ("beta", "large")


async def test_unknown_workflow_is_400(
    start_live: LiveFactory, workflow_settings: Settings
) -> None:
    async with start_live(workflow_settings) as live:
        body = {
            "type": "threads.create",
            "params": {"input": user_input("hi")},
            "metadata": {"workflow": "nope"},
        }
        response = await live.client.post_raw(json.dumps(body))
        assert response.status_code == 400
        assert "available: chat, expert" in response.json()["error"]["message"]
        assert (await live.client.call("threads.list"))["data"] == []


async def test_model_picker_selects_among_allowed_models(
    start_live: LiveFactory, workflow_settings: Settings, fake_llm: FakeLLM
) -> None:
    async with start_live(workflow_settings) as live:
        turn = await live.client.create_thread("hi", inference_options={"model": "medium"})
        assert not turn.errors
        assert _last_request(fake_llm)[:2] == ("alpha", "medium")

        with pytest.raises(ChatKitHTTPError) as rejected:
            await live.client.add_message(
                turn.thread_id, "bigger", inference_options={"model": "large"}
            )
        assert rejected.value.status_code == 400
        assert "choose one of: small, medium" in rejected.value.body["error"]["message"]


async def test_tool_choice_is_honoured_or_rejected(
    start_live: LiveFactory, workflow_settings: Settings, fake_llm: FakeLLM
) -> None:
    async with start_live(workflow_settings) as live:
        await live.client.create_thread(
            "time?", inference_options={"tool_choice": {"id": "current_time"}}
        )
        body = _last_request(fake_llm)[2]
        assert body["tool_choice"] == {"type": "function", "function": {"name": "current_time"}}
        with pytest.raises(ChatKitHTTPError) as rejected:
            await live.client.create_thread(
                "search?", inference_options={"tool_choice": {"id": "web_search"}}
            )
        assert rejected.value.status_code == 400


async def test_workflows_endpoint_describes_the_composer(
    start_live: LiveFactory, workflow_settings: Settings
) -> None:
    async with start_live(workflow_settings) as live, httpx.AsyncClient() as http:
        listed = (await http.get(live.url + "/chatkit/workflows")).json()
    assert (listed["default"], listed["dictation"]) == ("chat", False)
    chat, expert = listed["data"]
    assert chat == {
        "id": "chat",
        "model": "small",
        "models": ["small", "medium"],
        "tools": ["current_time"],
        "client_tools": [],
        "actions": [],
        "greeting": "Hello!",
        "starter_prompts": [{"label": "Time", "prompt": "What time is it?"}],
    }
    assert expert["id"] == "expert"


async def test_metadata_inside_params_is_refused_saying_where_it_goes(
    start_live: LiveFactory, workflow_settings: Settings
) -> None:
    async with start_live(workflow_settings) as live:
        body = {
            "type": "threads.create",
            "params": {"input": user_input("hi"), "metadata": {"workflow": "expert"}},
        }
        response = await live.client.post_raw(json.dumps(body))
        assert response.status_code == 400
        message = response.json()["error"]["message"]
        assert "'metadata' goes at the top level of the request" in message
        assert (await live.client.call("threads.list"))["data"] == []


def test_vision_reaches_the_workflow(tmp_path: Path) -> None:
    default = Settings(llm_vision=True)
    registry = WorkflowRegistry.from_settings(default, BackendRegistry.from_settings(default))
    assert registry.get("default").vision is True
    workflows = tmp_path / "workflows.toml"
    workflows.write_text(
        '[workflows.eyes]\nmodel = "v"\nvision = true\n[workflows.text]\nmodel = "m"\n'
    )
    from_file = Settings.from_env({"CHATKIT_WORKFLOWS": str(workflows)})
    registry = WorkflowRegistry.from_settings(from_file, BackendRegistry.from_settings(from_file))
    assert registry.get("eyes").vision is True
    assert registry.get("text").vision is False
