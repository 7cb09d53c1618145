"""Request checks: what cannot be served is refused before any answer starts."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from chatkit.types import (
    AssistantMessageItem,
    ClientToolCallItem,
    ThreadMetadata,
)

from chatkit_server.context import THREAD_WORKFLOW_KEY, RequestContext
from chatkit_server.errors import NotFoundError, RequestError
from chatkit_server.llm.backends import Backend, BackendConfig
from chatkit_server.protocol.checks import RequestChecks, parse_request, workflow_of
from chatkit_server.store import SQLStore
from chatkit_server.testing.client import user_input
from chatkit_server.workflows.registry import Workflow, WorkflowRegistry

ALICE = RequestContext(user_id="alice")
BOB = RequestContext(user_id="bob")
WHEN = datetime(2026, 1, 1, 12, 0)


def _body(kind: str, params: dict[str, Any], **top: Any) -> bytes:
    return json.dumps({"type": kind, "params": params, **top}).encode()


def _workflows() -> WorkflowRegistry:
    backend = Backend(BackendConfig(name="b", base_url=None, api_key="k"))
    return WorkflowRegistry(
        [
            Workflow(id="default", backend=backend, model="small", allowed_models=("small",)),
            Workflow(id="expert", backend=backend, model="large"),
        ]
    )


@pytest.fixture
def checks(store: SQLStore) -> RequestChecks:
    return RequestChecks(store=store, workflows=_workflows())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "The request body is not valid JSON."),
        (b'{"params": {}}', "The request has no 'type' field."),
        (_body("threads.nope", {}), "Unknown request type; expected one of"),
        (
            _body("threads.get_by_id", {}),
            "Invalid request: threads.get_by_id.params.thread_id: Field required",
        ),
        (
            _body("threads.create", {"input": user_input("hi"), "metadata": {"workflow": "x"}}),
            "'metadata' goes at the top level of the request",
        ),
    ],
)
def test_a_malformed_request_is_a_400_saying_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(RequestError) as raised:
        parse_request(body)
    assert raised.value.status_code == 400
    assert raised.value.message.startswith(message)


def test_metadata_at_the_top_level_is_accepted() -> None:
    request = parse_request(
        _body("threads.create", {"input": user_input("hi")}, metadata={"workflow": "expert"})
    )
    assert request.metadata == {"workflow": "expert"}


def test_the_workflow_asked_for_is_chosen_and_an_unknown_one_listed(
    checks: RequestChecks,
) -> None:
    create = _body("threads.create", {"input": user_input("hi")}, metadata={"workflow": "expert"})
    assert checks.choose_workflow(parse_request(create), ALICE).workflow_id == "expert"
    plain = _body("threads.create", {"input": user_input("hi")})
    assert checks.choose_workflow(parse_request(plain), ALICE).workflow_id == "default"

    unknown = _body("threads.create", {"input": user_input("hi")}, metadata={"workflow": "x"})
    with pytest.raises(RequestError, match="Unknown workflow 'x'; available: default, expert"):
        checks.choose_workflow(parse_request(unknown), ALICE)


def test_a_thread_keeps_the_workflow_it_remembers() -> None:
    workflows = _workflows()
    thread = ThreadMetadata(id="thr_1", created_at=WHEN, metadata={THREAD_WORKFLOW_KEY: "expert"})
    assert workflow_of(workflows, thread, ALICE).id == "expert"
    forgotten = ThreadMetadata(id="thr_2", created_at=WHEN, metadata={THREAD_WORKFLOW_KEY: "gone"})
    assert workflow_of(workflows, forgotten, ALICE).id == "default"


async def test_options_checked_against_an_unknown_or_foreign_thread_are_not_found(
    checks: RequestChecks, store: SQLStore
) -> None:
    # A message without options is not looked up here: admission only leases
    # a thread of the user's own (tests/protocol/test_admission.py).
    await store.save_thread(ThreadMetadata(id="thr_alice", created_at=WHEN), ALICE)
    message = {**user_input("hi"), "inference_options": {"model": "small"}}
    for thread_id in ("thr_alice", "thr_missing"):
        request = parse_request(
            _body("threads.add_user_message", {"thread_id": thread_id, "input": message})
        )
        with pytest.raises(NotFoundError):
            await checks.check(request, BOB)
    mine = parse_request(
        _body("threads.add_user_message", {"thread_id": "thr_alice", "input": message})
    )
    await checks.check(mine, ALICE)
    huge = {**user_input("hi"), "inference_options": {"model": "huge"}}
    with pytest.raises(RequestError, match="choose one of: small"):
        await checks.check(
            parse_request(
                _body("threads.add_user_message", {"thread_id": "thr_alice", "input": huge})
            ),
            ALICE,
        )


async def test_a_model_outside_the_workflow_is_refused_with_the_choices(
    checks: RequestChecks,
) -> None:
    message = {**user_input("hi"), "inference_options": {"model": "huge"}}
    request = parse_request(_body("threads.create", {"input": message}))
    with pytest.raises(RequestError, match="choose one of: small"):
        await checks.check(request, ALICE)


async def test_a_tool_output_needs_a_pending_client_tool_call(
    checks: RequestChecks, store: SQLStore
) -> None:
    await store.save_thread(ThreadMetadata(id="thr_1", created_at=WHEN), ALICE)
    output = parse_request(
        _body("threads.add_client_tool_output", {"thread_id": "thr_1", "result": {"ok": True}})
    )
    await store.add_thread_item(
        "thr_1",
        AssistantMessageItem(id="msg_1", thread_id="thr_1", created_at=WHEN, content=[]),
        ALICE,
    )
    with pytest.raises(RequestError) as raised:
        await checks.check(output, ALICE)
    assert raised.value.status_code == 409

    call = ClientToolCallItem(
        id="ctc_1",
        thread_id="thr_1",
        created_at=WHEN,
        status="pending",
        call_id="call_1",
        name="pick_color",
        arguments={},
    )
    await store.add_thread_item("thr_1", call, ALICE)
    await checks.check(output, ALICE)
