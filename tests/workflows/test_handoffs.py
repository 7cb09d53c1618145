"""Handoffs between workflows keep the whole conversation, on both APIs, over real HTTP.

A handoff target is another agent of the same run: its request to the
backend must carry the earlier turns just as the first agent's did, and the
turns after a handoff must carry the handoff too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chatkit_server.settings import Settings
from chatkit_server.testing.fake_backend import Reply
from chatkit_server.workflows.file import load_workflow_file
from tests.live import FakeLLM, LiveFactory

WORKFLOWS = """
[backends.fake]
base_url = "{url}"
api = "{api}"

[workflows.front]
backend = "fake"
model = "front-model"
instructions = "You are the front desk."
handoffs = ["expert"]

[workflows.expert]
backend = "fake"
model = "expert-model"
instructions = "You are the expert."
handoff_description = "Answers hard questions."
"""


def _texts(body: dict[str, Any], api: str) -> list[tuple[str, str]]:
    """(role, text) of every message the backend was sent, in order."""
    if api == "responses":
        messages = [item for item in body["input"] if item.get("type", "message") == "message"]
        instructions = body.get("instructions")
        head = [("system", instructions)] if instructions else []
    else:
        messages = body["messages"]
        head = []
    out = list(head)
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content)
        if isinstance(content, str) and content:
            out.append((message["role"], content))
    return out


@pytest.mark.parametrize("api", ["chat_completions", "responses"])
async def test_a_handoff_target_and_the_turns_after_it_see_the_whole_conversation(
    tmp_path: Path, live_settings: Settings, fake_llm: FakeLLM, start_live: LiveFactory, api: str
) -> None:
    path = tmp_path / "workflows.toml"
    path.write_text(WORKFLOWS.format(url=fake_llm.v1, api=api))
    settings = live_settings.with_changes(
        workflows_path=path, workflows_file=load_workflow_file(path, {})
    )
    fake_llm.backend.script(
        Reply.text("Hello Zed."),
        Reply.tool_call("transfer_to_expert", {}),
        Reply.text("The expert says hi, Zed."),
        Reply.text("Still here."),
    )
    async with start_live(settings) as live:
        first = await live.client.create_thread("My name is Zed.")
        assert (first.errors, first.assistant_text) == ([], "Hello Zed.")
        second = await live.client.add_message(first.thread_id, "Ask the expert my name.")
        assert second.errors == []
        assert second.assistant_text == "The expert says hi, Zed."
        third = await live.client.add_message(first.thread_id, "Thanks.")
        assert (third.errors, third.assistant_text) == ([], "Still here.")

        # Earlier turns reach every model call as the history cache's own
        # entries (EarlierTurns): a call that changed one would change every
        # later turn of every thread that shares the item.
        answers = live.state.server.answers
        shared = [e for e in answers.history_cache._entries.values() if e.model_input]
        assert len(shared) >= 4  # the questions and answers of turns 1 and 2
        for entry in shared:
            assert entry.model_input == await answers.converter.to_agent_input([entry.item])

    requests = [request.body for request in fake_llm.backend.requests]
    assert [body["model"] for body in requests] == [
        "front-model",
        "front-model",
        "expert-model",
        "front-model",
    ]
    turn_one = [("user", "My name is Zed."), ("assistant", "Hello Zed.")]
    # The front desk's request of turn 2, then the expert's after the handoff.
    front, expert, after = (_texts(body, api) for body in requests[1:])
    assert front[1:] == [*turn_one, ("user", "Ask the expert my name.")]
    assert expert[0] == ("system", "You are the expert.")
    assert expert[1:4] == [*turn_one, ("user", "Ask the expert my name.")]
    # The transfer call and its result reached the expert as well.
    sent = str(requests[2])
    assert "transfer_to_expert" in sent
    # Turn 3 carries everything before it, the expert's answer included.
    assert after[1:] == [
        *turn_one,
        ("user", "Ask the expert my name."),
        ("assistant", "The expert says hi, Zed."),
        ("user", "Thanks."),
    ]
