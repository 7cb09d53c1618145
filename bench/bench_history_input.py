"""How long the Agents SDK takes to ask the model, by how a thread's history is given to it.

Usage::

    .venv/bin/python bench/bench_history_input.py            # 5, 25 and 50 turns, ~10 s
    .venv/bin/python bench/bench_history_input.py --runs 1000

Every answer starts a run with the thread's history. Given all of it as the
run's input, the SDK copies and re-checks the whole list several times
before its first model call; given only the current turn, with the earlier
turns put in front of each model call's input by a
``call_model_input_filter`` (:class:`chatkit_server.workflows.history.EarlierTurns`,
what the server does), it does that for the current turn only.

Measured here: from ``Runner.run_streamed`` to the model client's
``create`` call, for both ways in turn (interleaved, so both see the same
machine), on a Chat Completions agent like the server's own. Printed per
history length: both medians, and the filter's as a ratio of the whole
history's (the baseline). Both ways send the backend the same messages;
the script checks that too.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, RunConfig, Runner  # noqa: E402

from chatkit_server.workflows.history import EarlierTurns, fit_turns  # noqa: E402

TURNS = (5, 25, 50)


class _Asked(Exception):
    """Raised by the stub client: the model was asked; nothing more to time."""


class _StubCompletions:
    def __init__(self) -> None:
        self.asked_at = 0.0
        self.messages: list[Any] = []

    async def create(self, **kwargs: Any) -> Any:
        self.asked_at = time.perf_counter()
        self.messages = kwargs["messages"]
        raise _Asked


class _StubChat:
    def __init__(self) -> None:
        self.completions = _StubCompletions()


class _StubClient:
    """What the SDK's Chat Completions model uses of an ``AsyncOpenAI`` client."""

    base_url = "http://127.0.0.1:9/v1/"

    def __init__(self) -> None:
        self.chat = _StubChat()


def _history(turns: int) -> list[Any]:
    """A conversation of ``turns`` questions and answers, then a new question."""
    items: list[Any] = []
    for n in range(turns):
        items.append({"role": "user", "content": f"Question {n}: " + "word " * 15})
        items.append(
            {
                "type": "message",
                "role": "assistant",
                "id": f"msg_{n:04}",
                "status": "completed",
                "content": [{"type": "output_text", "text": "answer " * 40, "annotations": []}],
            }
        )
    items.append({"role": "user", "content": "The newest question."})
    return items


async def _ask(client: _StubClient, agent: Agent[Any], items: list[Any], filtered: bool) -> float:
    """Seconds from starting the run to the model call."""
    config = RunConfig(tracing_disabled=True, workflow_name="bench")
    config.model_settings = ModelSettings(max_tokens=256)
    run_input = items
    if filtered:
        # A budget that keeps every turn: the two ways send the same messages.
        earlier, run_input = fit_turns(items, budget=10**9, instructions=None)
        config.call_model_input_filter = EarlierTurns(earlier)
    started = time.perf_counter()
    result = Runner.run_streamed(agent, run_input, run_config=config)
    try:
        async for _event in result.stream_events():
            pass
    except _Asked:
        pass
    return client.chat.completions.asked_at - started


async def _measure(turns: int, runs: int) -> tuple[float, float]:
    client = _StubClient()
    agent = Agent(
        name="bench",
        instructions="You are a helpful assistant.",
        model=OpenAIChatCompletionsModel("bench-model", openai_client=client),  # type: ignore[arg-type]
        model_settings=ModelSettings(include_usage=True),
    )
    items = _history(turns)
    sent: dict[bool, list[Any]] = {}
    for filtered in (False, True) * 20:  # warm-up
        await _ask(client, agent, items, filtered)
        sent[filtered] = client.chat.completions.messages
    if sent[False] != sent[True]:
        raise SystemExit(f"{turns} turns: the backend would be sent different messages")
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(runs):
        for filtered in (False, True):
            times[filtered].append(await _ask(client, agent, items, filtered))
    return statistics.median(times[False]), statistics.median(times[True])


def main() -> int:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="runs of each way (default 300)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    for turns in TURNS:
        whole, filtered = asyncio.run(_measure(turns, args.runs))
        print(
            f"{turns} turns: run to model call p50 {filtered * 1e3:.3f} ms with EarlierTurns,"
            f" {whole * 1e3:.3f} ms given the whole history (baseline); ratio"
            f" {filtered / whole:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
