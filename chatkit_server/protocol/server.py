"""The ChatKit server: answers every protocol request, streams agent replies.

Requests are parsed and checked first (:mod:`chatkit_server.protocol.checks`),
so that what cannot be served is a 4xx answer, never a stream that dies.
Replies run through the Agents SDK against the workflow's backend, with the
events rewritten by :mod:`chatkit_server.protocol.events`; stop (the client
going away) persists the partial answer and cancels the backend generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import anyio
from agents import RunResultStreaming
from chatkit.actions import Action
from chatkit.agents import stream_agent_response
from chatkit.server import ChatKitServer, NonStreamingResult, StreamingResult
from chatkit.types import (
    AssistantMessageContentPartTextDelta,
    AudioInput,
    ErrorEvent,
    FeedbackKind,
    InferenceOptions,
    SyncCustomActionResponse,
    ThreadItem,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    ThreadStreamEvent,
    TranscriptionResult,
    UserMessageItem,
    UserMessageTextContent,
    WidgetItem,
)

from chatkit_server import compat
from chatkit_server.context import RequestContext
from chatkit_server.errors import RequestError, StoreError
from chatkit_server.llm.local_model import no_backend_message
from chatkit_server.llm.repair import repair_run
from chatkit_server.llm.transcription import (
    Transcriber,
    TranscriptionError,
    TranscriptionTimeout,
)
from chatkit_server.pace import Pace
from chatkit_server.protocol.actions import (
    no_handler_message,
    run_streamed_action,
    run_sync_action,
)
from chatkit_server.protocol.admission import admit, lease_new_thread, release
from chatkit_server.protocol.answers import ASKING_REQUESTS, Answer, Answers
from chatkit_server.protocol.arrivals import Arrival, Arrivals
from chatkit_server.protocol.caps import AnswerCaps
from chatkit_server.protocol.checks import (
    RequestChecks,
    parse_request,
    workflow_of,
)
from chatkit_server.protocol.events import StreamFixer
from chatkit_server.settings import Settings
from chatkit_server.store import SQLStore, UsageRecord, UsageStore
from chatkit_server.store.gate import Lease, RequestGate
from chatkit_server.store.usage import usage_values
from chatkit_server.workflows.actions import ActionClock, ActionContext
from chatkit_server.workflows.registry import Workflow, WorkflowRegistry
from chatkit_server.workflows.titles import make_title
from chatkit_server.workflows.tool_tasks import show_tool_tasks

__all__ = ["CANCEL_CLEANUP_SECONDS", "ChatKitApp"]

logger = logging.getLogger(__name__)

# Upper bound for persisting a stopped answer: the client is gone, so this
# only delays the end of the request task, but it must never hang shutdown.
CANCEL_CLEANUP_SECONDS = 5.0


def _take_title(thread: ThreadMetadata, task: asyncio.Task[str]) -> None:
    """Name the thread by its finished title task (if it wrote one)."""
    if not task.cancelled() and task.exception() is None:
        thread.title = task.result()


def _answer_flows(event: ThreadStreamEvent) -> bool:
    """Whether the answer's text (or a finished item) is reaching the user."""
    if isinstance(event, ThreadItemUpdatedEvent):
        return isinstance(event.update, AssistantMessageContentPartTextDelta)
    return isinstance(event, ThreadItemDoneEvent)


class ChatKitApp(ChatKitServer[RequestContext]):
    """chatkit-server's ChatKit protocol implementation.

    Args:
        store: The durable store (also the attachment metadata store).
        usage: Where token usage of each answer is recorded.
        workflows: The workflows that can answer.
        settings: Server settings (history size, tracing).
        gate: Rate limits and thread leases (a new one on the store's database
            when omitted).
    """

    def __init__(
        self,
        *,
        store: SQLStore,
        usage: UsageStore,
        workflows: WorkflowRegistry,
        settings: Settings,
        gate: RequestGate | None = None,
    ) -> None:
        super().__init__(store=store, attachment_store=store)
        self.gate = gate or RequestGate(store.database)
        self.sql_store = store
        self.usage = usage
        self.workflows = workflows
        self.settings = settings
        self.checks = RequestChecks(store=store, workflows=workflows, settings=settings)
        self.answers = Answers(store=store, workflows=workflows, settings=settings)
        self.arrivals = Arrivals()
        """This process's requests on their way to asking their model."""
        # Each request's answer usage (thread id, record), recorded when it ends.
        self._usage_due: dict[Pace, tuple[str, UsageRecord]] = {}
        self.hold_writes = store.database.statements_on_loop
        """Whether an answer's writes wait for a burst's models to be asked: where
        statements cost the event loop and a pooled connection (PostgreSQL)."""
        self.transcriber = (
            Transcriber(
                base_url=settings.transcribe_base_url,
                model=settings.transcribe_model,
                api_key=settings.transcribe_api_key,
                timeout=settings.transcribe_timeout,
            )
            if settings.transcribe_base_url
            else None
        )

    @functools.cached_property
    def no_backend_message(self) -> str:
        """The error every answer gets while no backend is configured: what to do about it.

        Worked out on first use: it looks for the bundled local model's files.
        """
        return no_backend_message(self.settings)

    async def handle(
        self, body: bytes, context: RequestContext, *, arrival: Arrival | None = None
    ) -> StreamingResult | NonStreamingResult:
        """Check a request completely, then process it.

        ``arrival``: the request as counted by :attr:`arrivals` since it
        came in; it leaves once its model is asked (see
        :mod:`chatkit_server.protocol.arrivals`).

        Raises:
            RequestError: The request is malformed or cannot be served (400),
                over the rate limit (429), or on a thread that is answering (409).
            NotFoundError: It names a thread, item or attachment the user does not have.
        """
        request = parse_request(body)
        context = self.checks.choose_workflow(request, context)
        context, lease = await admit(
            self.gate, request, context, newest_items=self.answers.history_read_early(request)
        )
        try:
            await self.checks.check(request, context)
            await self.answers.ask_early(request, context, lease)
            if lease is not None:
                lease = lease.bare()
            if arrival is not None:
                arrival.leave()
            if self.hold_writes and isinstance(request, ASKING_REQUESTS):
                await self.arrivals.settled()
            if lease is None:  # a new thread's, when admission did not take it
                lease = await lease_new_thread(self.gate, context)
            # Not self.process(): it would parse the body a second time, with a
            # validator it builds anew on every call (milliseconds of CPU).
            result = await compat.process_parsed(self, request, context)
        except BaseException:
            self.answers.end(context)
            if lease is not None:
                await release(self.gate, lease)
            raise
        if not isinstance(result, StreamingResult):
            self.answers.end(context)
            return result
        return StreamingResult(self._ending(result.json_events, context, lease))

    async def _ending(
        self, events: AsyncIterator[bytes], context: RequestContext, lease: Lease | None
    ) -> AsyncGenerator[bytes, None]:
        """``events``, then the request ended before its response, whatever ends it.

        A run started early that no answer took is stopped, and the lease
        is released with the answer's token usage recorded (one write).
        """
        try:
            async for event in events:
                yield event
        finally:
            self.answers.end(context)
            due = self._usage_due.pop(context.pace, None)
            if lease is not None:
                usage = None if due is None else usage_values(*due, context.user_id)
                await release(self.gate, lease, usage)
            elif due is not None:  # every answering request holds a lease; should one not
                await self._record_usage(*due, context)

    def workflow_of(self, thread: ThreadMetadata, context: RequestContext) -> Workflow:
        """The workflow that answers a thread: the one it remembers, else the request's."""
        return workflow_of(self.workflows, thread, context)

    def respond(
        self,
        thread: ThreadMetadata,
        input_user_message: UserMessageItem | None,
        context: RequestContext,
    ) -> AsyncIterator[ThreadStreamEvent]:
        """Stream the workflow's answer to the thread's latest turn."""
        options = input_user_message.inference_options if input_user_message else None
        return self._respond(thread, options or InferenceOptions(), context)

    async def _respond(
        self, thread: ThreadMetadata, options: InferenceOptions, context: RequestContext
    ) -> AsyncIterator[ThreadStreamEvent]:
        answer = self.answers.take(thread, context)
        if answer is None:
            answer = await self.answers.start(thread, options, context)
        async for event in self._answer_events(thread, answer):
            yield event

    async def _answer_events(
        self, thread: ThreadMetadata, answer: Answer | None
    ) -> AsyncIterator[ThreadStreamEvent]:
        """The events of a started answer, then its usage, title and workflow are kept."""
        if answer is None:
            yield ErrorEvent(code="custom", message=self.no_backend_message, allow_retry=False)
            return
        workflow, result, agent_context = answer.workflow, answer.result, answer.agent_context
        context = agent_context.request_context
        fixer = StreamFixer(lambda kind: self.store.generate_item_id(kind, thread, context))
        title_task: asyncio.Task[str] | None = None
        wants_title = True
        finished = False
        caps = AnswerCaps(
            max_chars=self.settings.answer_max_chars,
            max_seconds=self.settings.answer_max_seconds,
        )
        try:
            events = stream_agent_response(agent_context, repair_run(result, pace=context.pace))
            capped = caps.apply(show_tool_tasks(agent_context, events), stop=result.cancel)
            async for event in fixer.fix(capped):
                yield event
                if title_task is not None and title_task.done():
                    # Kept as soon as it is written: the ChatKit server saves
                    # the changed thread after the next event and sends
                    # thread.updated, so the user sees the title mid-answer and
                    # the write is not one more at the answer's end, when (with
                    # many answers ending at once) every write waits longest.
                    _take_title(thread, title_task)
                    title_task = None
                if wants_title and _answer_flows(event):
                    # Once the answer is flowing, not before: the title's
                    # request would compete with the answer's for the first
                    # token (and, with many new threads at once, for the CPU).
                    wants_title = False
                    title_task = self._start_title(thread, workflow, answer.history, context)
            finished = True
            if caps.reached is not None:
                logger.warning("thread %s: answer cut (%s cap)", thread.id, caps.reached)
                notice = caps.notice()
                if notice is not None:
                    yield notice
            if wants_title:  # an answer without content still names the thread
                title_task = self._start_title(thread, workflow, answer.history, context)
        finally:
            if not finished:
                # The SDK never cancels the run on its own: without this the
                # backend keeps generating after the user pressed stop.
                result.cancel()
                if title_task is not None:
                    title_task.cancel()
        await self._keep_usage(thread, workflow, answer.model, result, fixer, context)
        if title_task is not None:
            await self._apply_title(thread, title_task)

    def _start_title(
        self,
        thread: ThreadMetadata,
        workflow: Workflow,
        history: list[ThreadItem],
        context: RequestContext,
    ) -> asyncio.Task[str] | None:
        """Start writing a title alongside the first answer of an untitled thread."""
        if not self.settings.titles or not context.limits.titles or thread.title:
            return None
        users = [item for item in history if isinstance(item, UserMessageItem)]
        if len(users) != 1:
            return None
        text = " ".join(
            part.text for part in users[0].content if isinstance(part, UserMessageTextContent)
        )
        model = workflow.backend.model(workflow.title_model or workflow.model)
        return asyncio.create_task(
            make_title(model, text, tracing=self.settings.tracing and context.tracing)
        )

    async def _apply_title(self, thread: ThreadMetadata, task: asyncio.Task[str]) -> None:
        # The answer is complete; wait a bounded time for the title so a slow
        # title model never holds the stream open for long.
        with anyio.move_on_after(self.settings.llm_read_timeout):
            thread.title = await task
        if not task.done():
            task.cancel()
            logger.warning("thread %s: the title model did not answer in time", thread.id)

    async def _keep_usage(
        self,
        thread: ThreadMetadata,
        workflow: Workflow,
        model: str,
        result: RunResultStreaming,
        fixer: StreamFixer,
        context: RequestContext,
    ) -> None:
        """Hold a finished answer's token usage until its request ends (see :meth:`_ending`).

        Recorded with the release of the thread's lease, the answer ends
        with one write where it took two: with hundreds of answers ending
        at once, each write at their end waits behind all the others'.
        """
        used = result.context_wrapper.usage
        if used.requests == 0 and used.total_tokens == 0:
            return
        record = UsageRecord(
            item_id=fixer.last_answer_id,
            workflow=workflow.id,
            model=model,
            requests=used.requests,
            input_tokens=used.input_tokens,
            output_tokens=used.output_tokens,
        )
        earlier = self._usage_due.pop(context.pace, None)
        if earlier is not None:  # a request answering twice (a widget action's handler)
            await self._record_usage(*earlier, context)
        self._usage_due[context.pace] = (thread.id, record)

    async def _record_usage(
        self, thread_id: str, record: UsageRecord, context: RequestContext
    ) -> None:
        """Record an answer's usage on its own."""
        try:
            await self.usage.record(thread_id, record, context)
        except StoreError:
            # Accounting must not turn a delivered answer into an error.
            logger.exception("could not record token usage for thread %s", thread_id)

    async def handle_stream_cancelled(
        self,
        thread: ThreadMetadata,
        pending_items: list[ThreadItem],
        context: RequestContext,
    ) -> None:
        """Persist the partial answer after the client stopped the stream.

        Starlette cancels the response task when the client disconnects, and
        anyio re-cancels every later await in that task, so the base class's
        writes would never happen. They run shielded, with a time bound.
        """
        # The client is gone, so the writes only delay the end of the
        # request's task, but they must never hang shutdown.
        deadline = anyio.current_time() + CANCEL_CLEANUP_SECONDS
        with anyio.CancelScope(shield=True, deadline=deadline) as scope:
            await super().handle_stream_cancelled(thread, pending_items, context)
            # The thread as it is: the ChatKit server saves a changed thread
            # (a title just taken) only after the next event, which a stopped
            # stream never sends.
            await self.store.save_thread(thread, context=context)
        if scope.cancelled_caught:
            logger.error("gave up persisting the stopped answer of thread %s", thread.id)

    async def add_feedback(
        self,
        thread_id: str,
        item_ids: list[str],
        feedback: FeedbackKind,
        context: RequestContext,
    ) -> None:
        """Store thumbs up/down feedback for items of a thread."""
        await self.sql_store.add_feedback(thread_id, item_ids, feedback, context)

    async def transcribe(
        self, audio_input: AudioInput, context: RequestContext
    ) -> TranscriptionResult:
        """Dictation: the audio's text, from the ``CHATKIT_TRANSCRIBE_*`` server.

        Raises:
            RequestError: Dictation is not configured (501, saying how to turn
                it on), or the transcription server is down or refused the
                audio (502) or too slow (504).
        """
        if self.transcriber is None:
            raise RequestError(
                501,
                "Dictation is off on this server: set CHATKIT_TRANSCRIBE_BASE_URL to an "
                "OpenAI-compatible speech-to-text server (and CHATKIT_TRANSCRIBE_MODEL) "
                "to turn it on.",
                code="dictation_not_configured",
            )
        try:
            text = await self.transcriber.transcribe(audio_input.data, audio_input.mime_type)
        except TranscriptionTimeout as exc:
            raise RequestError(504, exc.message, code="transcription_timeout") from None
        except TranscriptionError as exc:
            raise RequestError(502, exc.message, code="transcription_failed") from None
        return TranscriptionResult(text=text)

    async def action(
        self,
        thread: ThreadMetadata,
        action: Action[str, Any],
        sender: WidgetItem | None,
        context: RequestContext,
    ) -> AsyncIterator[ThreadStreamEvent]:
        """Run the workflow's handler of a streamed widget action (``threads.custom_action``).

        The handler's events go to the browser as it yields them (the base
        class keeps the items they add, replace or remove). An action the
        workflow has no handler for, or a handler that raises or runs out of
        time, is an error event (see :mod:`chatkit_server.protocol.actions`).
        """
        workflow = self.workflow_of(thread, context)
        handler = workflow.actions.get(action.type)
        if handler is None:
            message = no_handler_message(workflow, action.type)
            yield ErrorEvent(code="custom", message=message, allow_retry=False)
            return
        clock = ActionClock(self.settings.action_max_seconds)
        action_context = ActionContext(
            action=action,
            sender=sender,
            thread=thread,
            request_context=context,
            store=self.store,
            agent=lambda: clock.excluding(self.respond(thread, None, context)),
        )
        async with contextlib.aclosing(
            run_streamed_action(handler, action_context, clock)
        ) as events:
            async for event in events:
                yield event

    async def sync_action(
        self,
        thread: ThreadMetadata,
        action: Action[str, Any],
        sender: WidgetItem | None,
        context: RequestContext,
    ) -> SyncCustomActionResponse:
        """Run the workflow's handler of a synchronous widget action (JSON answer).

        Items the handler adds, replaces or removes are kept; the sender's
        replacement is the answer's ``updated_item``. Events only a stream can
        carry (progress, notices, client effects) have nowhere to go.

        Raises:
            RequestError: The workflow has no handler for the action (400), or
                the handler failed (502) or ran out of time (504).
        """
        workflow = self.workflow_of(thread, context)
        handler = workflow.actions.get(action.type)
        if handler is None:
            raise RequestError(
                400, no_handler_message(workflow, action.type), code="unknown_action"
            )
        action_context = ActionContext(
            action=action,
            sender=sender,
            thread=thread,
            request_context=context,
            store=self.store,
            sync=True,
        )
        before = thread.model_copy(deep=True)
        clock = ActionClock(self.settings.action_max_seconds)
        updated = await run_sync_action(handler, action_context, clock, self.store)
        if thread != before:
            # A streamed action's thread is saved by the base class; here, no one else does.
            await self.store.save_thread(thread, context)
        return SyncCustomActionResponse(updated_item=updated)
