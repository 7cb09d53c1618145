"""Starting an answer: the thread's history fitted, the workflow's run begun.

:class:`Answers` reads the history a turn needs (newest first, until the
workflow's token budget is spent), converts it for the model and starts the
Agents SDK run; the ChatKit server (:mod:`chatkit_server.protocol.server`)
streams its events. A new message's answer may be started before the
message is stored (:meth:`Answers.ask_early`): the model's request then goes
out first and the ChatKit server's writes overlap the backend's time to its
first token.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from agents import ModelSettings, RunConfig, Runner, RunResultStreaming
from chatkit.agents import AgentContext
from chatkit.types import (
    ChatKitReq,
    InferenceOptions,
    ThreadItem,
    ThreadMetadata,
    ThreadsAddUserMessageReq,
    ThreadsCreateReq,
    UserMessageItem,
)

from chatkit_server.context import RequestContext
from chatkit_server.errors import InvalidCursorError
from chatkit_server.pace import PACE_ARGUMENT, Pace
from chatkit_server.protocol.checks import workflow_of
from chatkit_server.protocol.converter import HistoryConverter
from chatkit_server.settings import Settings
from chatkit_server.store import SQLStore, decode_item
from chatkit_server.store.gate import Lease
from chatkit_server.workflows.history import (
    EarlierTurns,
    HistoryCache,
    HistoryEntry,
    estimate_item_tokens,
    fit_turns,
)
from chatkit_server.workflows.registry import Workflow, WorkflowRegistry
from chatkit_server.workflows.state import render

__all__ = ["ASKING_REQUESTS", "ASK_WAIT_SECONDS", "Answer", "Answers"]

# The most a request asking early waits for its run to ask the model: a run
# that fails before asking holds the request no longer.
ASK_WAIT_SECONDS = 0.25

EARLY_HISTORY_ROWS = 100
"""The most stored items a new message's answer reads with its thread's lease."""

ASKING_REQUESTS = (ThreadsCreateReq, ThreadsAddUserMessageReq)
"""The requests that ask a model for a new message's answer (the ones asked early)."""


@dataclass(eq=False)
class Answer:
    """A started run and what finishing its answer needs.

    Attributes:
        workflow: The workflow answering.
        model: The model asked.
        history: The thread's items the run was given, the message answered last.
        agent_context: The run's context (its thread is the one the ChatKit server saves).
        result: The run.
    """

    workflow: Workflow
    model: str
    history: list[ThreadItem]
    agent_context: AgentContext[RequestContext]
    result: RunResultStreaming


class Answers:
    """Starts the workflows' runs for the ChatKit server's answers.

    Args:
        store: Where the threads are (the runs' tools get it too).
        workflows: The workflows that answer.
        settings: History size and budget, answer caps, tracing.
    """

    def __init__(self, *, store: SQLStore, workflows: WorkflowRegistry, settings: Settings) -> None:
        self.store = store
        self.workflows = workflows
        self.settings = settings
        self.converter = HistoryConverter(files=store.files)
        self.history_cache = HistoryCache(decode_item)
        # Runs started before their message was stored, by request (ask_early).
        self._early: dict[Pace, Answer] = {}

    def end(self, context: RequestContext) -> None:
        """A request ended: stop a run started early for it that no answer took."""
        answer = self._early.pop(context.pace, None)
        if answer is not None:
            answer.result.cancel()

    def take(self, thread: ThreadMetadata, context: RequestContext) -> Answer | None:
        """The answer started early for this request, now given ``thread`` (else ``None``)."""
        answer = self._early.pop(context.pace, None)
        if answer is not None:
            # The thread object the ChatKit server saves, for the run's tools.
            answer.agent_context.thread = thread
            context.pace.claim()
        return answer

    def history_read_early(self, request: ChatKitReq) -> int:
        """How many stored items :meth:`ask_early` reads for ``request`` (0: none).

        Admission reads them with the thread's lease where that saves a
        statement, and :meth:`ask_early` takes them from the lease.
        """
        if not isinstance(request, ThreadsAddUserMessageReq) or request.params.input.attachments:
            return 0
        # The new message is the last; and no more than a page, as the store
        # would read first: a long history is most often cut by its budget.
        return max(0, min(self.settings.history_items - 1, EARLY_HISTORY_ROWS))

    async def ask_early(
        self, request: ChatKitReq, context: RequestContext, lease: Lease | None = None
    ) -> None:
        """Ask the model for a new message's answer before the message is stored.

        The ChatKit server stores the thread and the message, then asks for
        the answer (``respond``); started here, the model's request goes
        out first and those writes overlap the backend's time to its first
        token. The run is kept by the request's pace until :meth:`take`
        takes it; it hands on nothing before (:meth:`Pace.reserve`), so
        tools see the thread object the ChatKit server saves.

        ``lease`` is the request's lease on its thread; the thread, and its
        newest items if they were read with it, are used as they were read
        when the lease was taken rather than read again.

        It pays most under load: in a burst of new threads every model is
        asked before the burst's writes, and the backends stream while they
        are done. Measured with ``bench/bench_streaming.py --only
        concurrent`` (500 new threads at once, one process, 2 cores), the
        p99 stream time went from 1.37-1.42x the ideal to 1.28-1.35x, while
        the median first delta came 0.2 to 0.5 s later (each message is
        stored after every model was asked). Alone, the first token comes 3
        to 4 ms sooner (``--only ttft``).
        """
        if not isinstance(request, ASKING_REQUESTS):
            return
        message = request.params.input
        if message.attachments:
            return  # their conversion reads files: nothing to gain first
        stored: Sequence[tuple[str, str, str]] | None = None
        if isinstance(request, ThreadsCreateReq):
            assert context.new_thread_id is not None  # chosen by admission
            thread = ThreadMetadata(id=context.new_thread_id, created_at=datetime.now(UTC))
        elif lease is not None and lease.thread_data is not None:
            thread = ThreadMetadata.model_validate_json(lease.thread_data)
            stored = lease.newest_items
        else:
            thread = await self.store.load_thread(request.params.thread_id, context)
        newest = UserMessageItem(
            id="pending",
            thread_id=thread.id,
            created_at=datetime.now(UTC),
            content=message.content,
            attachments=[],
            quoted_text=message.quoted_text,
            inference_options=message.inference_options,
        )
        context.pace.reserve()
        answer = await self.start(thread, message.inference_options, context, newest, stored)
        if answer is None:
            context.pace.claim()
            return
        self._early[context.pace] = answer
        await context.pace.wait_asked(ASK_WAIT_SECONDS)

    async def start(
        self,
        thread: ThreadMetadata,
        options: InferenceOptions,
        context: RequestContext,
        newest: UserMessageItem | None = None,
        stored: Sequence[tuple[str, str, str]] | None = None,
    ) -> Answer | None:
        """Start the workflow's run on the thread's history; ``None``: no backend.

        ``newest``: the message being answered, when it is not stored yet.
        ``stored``: the thread's newest stored items, when already read (see
        :meth:`history`).
        """
        workflow = workflow_of(self.workflows, thread, context)
        if not workflow.backend.configured:
            return None
        budget = workflow.history_budget(self.settings.history_tokens)
        entries = await self.history(thread, budget, context, newest, stored)
        history = [entry.item for entry in entries]
        earlier, current = fit_turns(
            await self.converter.for_workflow(vision=workflow.vision, budget=budget).history_input(
                entries
            ),
            budget=budget,
            instructions=render(workflow.instructions, context.state_variables),
        )
        agent_context = AgentContext[RequestContext](
            thread=thread, store=self.store, request_context=context
        )
        # Every model call of the run (handoffs and tool rounds included) is
        # read at the pace its client takes the answer.
        run_settings = ModelSettings(
            tool_choice=options.tool_choice.id if options.tool_choice is not None else None,
            max_tokens=self.settings.answer_max_tokens,
            extra_args={PACE_ARGUMENT: context.pace},
        )
        agent = self.workflows.agent(workflow.id, model=options.model)
        run_config = RunConfig(
            tracing_disabled=not (self.settings.tracing and context.tracing),
            workflow_name=f"chatkit:{workflow.id}",
        )
        # Set after construction: given to the constructor, a ModelSettings is
        # checked against RunConfig's type hints, resolved anew on every run
        # (about a millisecond, before the model is asked). This one is built
        # right here, so there is nothing to check.
        run_config.model_settings = run_settings
        if earlier:
            run_config.call_model_input_filter = EarlierTurns(earlier)
        result = Runner.run_streamed(agent, current, context=agent_context, run_config=run_config)
        return Answer(
            workflow=workflow,
            model=options.model or workflow.model,
            history=history,
            agent_context=agent_context,
            result=result,
        )

    async def history(
        self,
        thread: ThreadMetadata,
        budget: int,
        context: RequestContext,
        newest: UserMessageItem | None = None,
        stored: Sequence[tuple[str, str, str]] | None = None,
    ) -> list[HistoryEntry]:
        """The newest items of the thread, oldest first.

        At most ``history_items``, and none past the first that exceeds the
        token ``budget``: older items would be dropped by :func:`fit_history`
        anyway, and each costs a validation and a conversion when not cached.
        ``newest`` is a message not stored yet, that goes last (a new thread
        has nothing stored: only it is read). ``stored``: the thread's newest
        items as ``(id, type, JSON)``, newest first, already read (see
        :meth:`history_read_early`); what more is needed is read here.
        """
        limit = self.settings.history_items
        entries: list[HistoryEntry] = []
        if newest is not None:
            entries.append(HistoryEntry(item=newest, tokens=estimate_item_tokens(newest)))
        tokens = sum(entry.tokens for entry in entries)
        complete = tokens <= budget
        unsaved_thread = newest is not None and thread.id == context.new_thread_id
        if complete and len(entries) < limit and not unsaved_thread:
            rows = self._newest_rows(thread.id, limit - len(entries), context, stored)
            async with contextlib.aclosing(rows):
                async for kind, data in rows:
                    entry = self.history_cache.entry(kind, data)
                    entries.append(entry)
                    tokens += entry.tokens
                    if tokens > budget:
                        complete = False
                        break
        complete = complete and len(entries) < limit
        entries.reverse()
        # A cut history must not open with an answer or a tool result whose
        # question was cut away: some servers reject such a conversation.
        while entries and not complete and not isinstance(entries[0].item, UserMessageItem):
            entries.pop(0)
        return entries

    async def _newest_rows(
        self,
        thread_id: str,
        wanted: int,
        context: RequestContext,
        stored: Sequence[tuple[str, str, str]] | None,
    ) -> AsyncGenerator[tuple[str, str], None]:
        """The thread's ``wanted`` newest rows: ``stored`` first, then the store's."""
        after = None
        if stored is not None:
            for item_id, kind, data in stored[:wanted]:
                yield kind, data
                after = item_id
            if len(stored) >= wanted or len(stored) < EARLY_HISTORY_ROWS:
                return  # enough, or all the thread has
            wanted -= len(stored)
        rows = self.store.newest_rows(thread_id, wanted, context, after=after)
        async with contextlib.aclosing(rows):
            try:
                async for row in rows:
                    yield row
            except InvalidCursorError:
                # The oldest item read with the lease was deleted since (only
                # a request that takes no lease can): the history ends there.
                return
