"""Thread titles: a few words naming the conversation, made by a model.

The title is requested once the first answer's text flows, so it never
delays it; as soon as it is written (mid-answer, or at the latest when the
answer ends) the ChatKit server saves the thread and sends
``thread.updated``. A model that fails or answers with
nothing usable falls back to the start of the user's first message, so a
thread never stays "New chat" because of a small model's whims.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

from agents import Agent, ItemHelpers, Model, ModelSettings, ModelTracing, RunConfig, Runner
from openai.types.responses import ResponseOutputMessage

__all__ = ["MAX_TITLE_CHARS", "TITLE_INSTRUCTIONS", "clean_title", "fallback_title", "make_title"]

logger = logging.getLogger(__name__)

MAX_TITLE_CHARS = 60
TITLE_INSTRUCTIONS = (
    "You write titles for conversations. Reply with a title of at most six words that "
    "names the topic of the user's message. Reply with the title only: no quotes, no "
    "punctuation at the end, no explanation."
)
_TITLE_SETTINGS = ModelSettings(temperature=0.2, max_tokens=24)


def clean_title(text: str) -> str:
    """The first line of a model's answer, without quotes, labels or trailing dots."""
    line = next((part.strip() for part in text.strip().splitlines() if part.strip()), "")
    line = re.sub(r"^(title|titre)\s*:\s*", "", line, flags=re.IGNORECASE)
    line = line.strip().strip("\"'`*#").strip().rstrip(".!:;,").strip()
    return _shorten(line)


def fallback_title(message: str) -> str:
    """A title cut from the user's message when the model gave none."""
    return _shorten(" ".join(message.split())) or "New conversation"


def _shorten(text: str) -> str:
    if len(text) <= MAX_TITLE_CHARS:
        return text
    cut = text[: MAX_TITLE_CHARS - 1].rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:.") + "…"


@functools.lru_cache(maxsize=64)
def _title_agent_template(model: Any) -> Agent[Any]:
    return Agent(
        name="title", instructions=TITLE_INSTRUCTIONS, model=model, model_settings=_TITLE_SETTINGS
    )


def _title_agent(model: Any) -> Agent[Any]:
    # A copy per run, as for workflows (WorkflowRegistry.agent): the SDK
    # checks every live run of one Agent object against all the others.
    return _title_agent_template(model).clone()


async def make_title(model: Any, message: str, *, tracing: bool) -> str:
    """A short title for a conversation that starts with ``message``.

    Args:
        model: The Agents SDK model (or model name) that writes the title.
        message: The user's first message.
        tracing: Whether Agents SDK tracing is enabled.
    """
    try:
        if tracing or isinstance(model, str):
            # A traced run (or a model name to resolve) needs the runner.
            result = await Runner.run(
                _title_agent(model),
                message[:2000],
                run_config=RunConfig(tracing_disabled=not tracing, workflow_name="chatkit:title"),
            )
            text = str(result.final_output or "")
        else:
            text = await _ask(model, message[:2000])
        title = clean_title(text)
    except Exception as exc:
        logger.warning("title model failed (%s); using the first words instead", type(exc).__name__)
        title = ""
    return title or fallback_title(message)


async def _ask(model: Model, message: str) -> str:
    """One untraced model call: a title needs no tools, guardrails or run loop.

    Runner.run costs several times the model call itself in CPU (agent
    bookkeeping, guardrail and hook plumbing), and a title is made for every
    new thread.
    """
    response = await model.get_response(
        TITLE_INSTRUCTIONS,
        message,
        _TITLE_SETTINGS,
        [],
        None,
        [],
        ModelTracing.DISABLED,
        previous_response_id=None,
        conversation_id=None,
        prompt=None,
    )
    return "".join(
        ItemHelpers.extract_last_text(item) or ""
        for item in response.output
        if isinstance(item, ResponseOutputMessage)
    )
