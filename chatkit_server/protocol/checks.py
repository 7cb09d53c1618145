"""Request checks: everything that can fail is decided before an answer starts.

Once ``200 text/event-stream`` is sent, a failure can only be an ``error``
event in a stream the browser already shows. So the request is parsed here,
its workflow chosen, and the threads, items and attachments it names are
loaded for the requesting user (someone else's look the same as missing):
an unknown thread is a 404, a tool output with nothing pending a 409, an
unknown model a 400, all before anything is streamed.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Final

from chatkit.types import (
    AttachmentsCreateReq,
    AttachmentsDeleteReq,
    ChatKitReq,
    ClientToolCallItem,
    InferenceOptions,
    InputTranscribeReq,
    StructuredInputItem,
    ThreadMetadata,
    ThreadsAddClientToolOutputReq,
    ThreadsAddStructuredInputReq,
    ThreadsAddUserMessageReq,
    ThreadsCreateReq,
    ThreadsCustomActionReq,
    ThreadsRetryAfterItemReq,
    ThreadsSyncCustomActionReq,
    ThreadsUpdateReq,
    UserMessageItem,
    WidgetItem,
)
from pydantic import BaseModel, TypeAdapter, ValidationError

from chatkit_server.context import THREAD_WORKFLOW_KEY, RequestContext
from chatkit_server.errors import InvalidCursorError, NotFoundError, RequestError
from chatkit_server.settings import Settings
from chatkit_server.store import SQLStore
from chatkit_server.store.ids import has_control_character
from chatkit_server.workflows.registry import Workflow, WorkflowRegistry

__all__ = ["RequestChecks", "parse_request", "workflow_of"]

_REQUEST_ADAPTER: TypeAdapter[ChatKitReq] = TypeAdapter(ChatKitReq)


def parse_request(body: bytes) -> ChatKitReq:
    """Parse and validate a ChatKit request body.

    Raises:
        RequestError: 400 for malformed JSON, an unknown type or invalid params.
        NotFoundError: An id holds a control character: no id of ours does.
        InvalidCursorError: So does the ``after`` cursor.
    """
    try:
        request = _REQUEST_ADAPTER.validate_json(body)
    except ValidationError as exc:
        raise RequestError(400, _describe_validation_error(exc)) from None
    if b'"metadata"' in body:  # the second parse only when it can matter
        _refuse_metadata_in_params(body)
    # JSON carries a control character escaped (\u0000 to \u001f, \u007f), or
    # DEL raw (the one control character JSON allows unescaped): only then
    # are the ids walked.
    if b"\\u00" in body or b"\x7f" in body:
        _refuse_control_characters(request.params)
    return request


def _refuse_control_characters(params: object) -> None:
    """Ids with control characters answer as unknown ids do, before any query.

    PostgreSQL refuses NUL in text outright (the driver's error would be a
    503 and a traceback); no id this server makes holds one.
    """
    if not isinstance(params, BaseModel):
        return
    for name, value in params:
        if isinstance(value, BaseModel):
            _refuse_control_characters(value)
        elif name == "after" and isinstance(value, str) and has_control_character(value):
            raise InvalidCursorError("a cursor with a control character")
        elif (name.endswith("_id") or name in _ID_LISTS) and _holds_control(value):
            raise NotFoundError("an id with a control character")


_ID_LISTS: Final = frozenset({"item_ids", "attachments"})


def _holds_control(value: object) -> bool:
    if isinstance(value, str):
        return has_control_character(value)
    if isinstance(value, list):
        return any(isinstance(item, str) and has_control_character(item) for item in value)
    return False


def _refuse_metadata_in_params(body: bytes) -> None:
    """Refuse ``params.metadata``: no request type has one, so it would be ignored.

    A front end that puts ``metadata.workflow`` there would otherwise get the
    default workflow without a word.
    """
    params = json.loads(body).get("params")
    if isinstance(params, dict) and "metadata" in params:
        raise RequestError(
            400,
            "'metadata' goes at the top level of the request, next to 'type' and 'params', "
            'not inside \'params\': {"type": ..., "metadata": {"workflow": ...}, "params": ...}.',
        )


def _describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        if error["type"] == "json_invalid":
            return "The request body is not valid JSON."
        if error["type"] == "union_tag_invalid":
            tags = error.get("ctx", {}).get("expected_tags", "")
            return f"Unknown request type; expected one of {tags}."
        if error["type"] == "union_tag_not_found":
            return "The request has no 'type' field."
        location = ".".join(str(part) for part in error["loc"])
        problems.append(f"{location}: {error['msg']}" if location else error["msg"])
    return "Invalid request: " + "; ".join(problems)


def workflow_of(
    workflows: WorkflowRegistry, thread: ThreadMetadata, context: RequestContext
) -> Workflow:
    """The workflow that answers a thread: the one it remembers, else the request's."""
    remembered = thread.metadata.get(THREAD_WORKFLOW_KEY)
    if isinstance(remembered, str) and remembered in workflows:
        return workflows.get(remembered)
    return workflows.get(context.workflow_id)


class RequestChecks:
    """The checks of every request type, against the store and the workflows.

    Args:
        store: Where the named threads, items and attachments are looked up.
        workflows: The workflows a request may ask for.
    """

    def __init__(
        self, *, store: SQLStore, workflows: WorkflowRegistry, settings: Settings | None = None
    ) -> None:
        self.store = store
        self.workflows = workflows
        self.settings = settings or Settings()

    def choose_workflow(self, request: ChatKitReq, context: RequestContext) -> RequestContext:
        """The workflow a request asks for (``metadata.workflow``), else the default.

        Only a new thread takes it: an existing thread keeps the workflow it
        was created with.
        """
        requested = request.metadata.get("workflow")
        if context.session_id is not None:
            # A session is minted for one workflow: the front end cannot pick another.
            if requested is not None and requested != context.workflow_id:
                raise RequestError(
                    400,
                    f"This session is for workflow {context.workflow_id!r}, "
                    f"not {requested!r}; mint a session for the other workflow.",
                )
            return context
        if requested is None:
            if context.workflow_id in self.workflows:
                return context
            return replace(context, workflow_id=self.workflows.default)
        if not isinstance(requested, str) or requested not in self.workflows:
            available = ", ".join(sorted(workflow.id for workflow in self.workflows))
            raise RequestError(400, f"Unknown workflow {requested!r}; available: {available}.")
        return replace(context, workflow_id=requested)

    def _check_inference_options(self, workflow: Workflow, options: InferenceOptions) -> None:
        if options.model is not None and options.model not in workflow.models:
            raise RequestError(
                400,
                f"Model {options.model!r} is not available in workflow {workflow.id!r}; "
                f"choose one of: {', '.join(workflow.models)}.",
            )
        if options.tool_choice is not None and options.tool_choice.id not in workflow.tool_names:
            raise RequestError(
                400,
                f"Workflow {workflow.id!r} has no tool {options.tool_choice.id!r}.",
            )

    def _check_attachment_ids(self, attachment_ids: list[str]) -> None:
        if len(set(attachment_ids)) != len(attachment_ids):
            raise RequestError(400, "The message names the same attachment more than once.")
        cap = self.settings.max_attachments
        if len(attachment_ids) > cap:
            raise RequestError(
                400, f"A message may carry at most {cap} attachments, not {len(attachment_ids)}."
            )

    async def _check_attachments(self, attachment_ids: list[str], context: RequestContext) -> None:
        """The user's own attachments, each with its bytes uploaded."""
        for attachment_id in attachment_ids:
            attachment = await self.store.load_attachment(attachment_id, context)
            if attachment.upload_descriptor is not None:
                # The model would get a file without content: the upload is
                # still running, failed, or never started.
                raise RequestError(
                    409,
                    f"Attachment {attachment_id} has not been uploaded yet.",
                    code="not_uploaded",
                )

    async def check_upload(self, size: int, context: RequestContext) -> None:
        """The declared size, and a session's ``file_upload``: on, size, number of files."""
        if size < 0:
            raise RequestError(400, "params.size must not be negative.")
        if size > self.settings.max_upload_bytes:
            raise RequestError(
                413,
                f"The file is larger than this server accepts "
                f"({self.settings.max_upload_bytes} bytes).",
                code="too_large",
            )
        limits = context.limits
        if not limits.uploads:
            raise RequestError(
                403, "File uploads are turned off for this session.", code="uploads_disabled"
            )
        if limits.max_file_bytes is not None and size > limits.max_file_bytes:
            raise RequestError(
                413,
                f"The file is larger than this session allows "
                f"({limits.max_file_bytes // (1024 * 1024)} MB).",
                code="too_large",
            )
        if limits.max_files is not None and limits.files_since is not None:
            made = await self.store.count_attachments(since=limits.files_since, context=context)
            if made >= limits.max_files:
                raise RequestError(
                    403,
                    f"This session may upload at most {limits.max_files} files.",
                    code="too_many_files",
                )

    async def check(self, request: ChatKitReq, context: RequestContext) -> None:
        """Check everything about ``request`` that can fail before its answer starts.

        Raises:
            RequestError: The request cannot be served as asked (4xx).
            NotFoundError: It names a thread, item or attachment the user does not have.
        """
        store = self.store
        match request:
            case ThreadsCreateReq():
                self._check_attachment_ids(request.params.input.attachments)
                self._check_inference_options(
                    self.workflows.get(context.workflow_id),
                    request.params.input.inference_options,
                )
                await self._check_attachments(request.params.input.attachments, context)
            case ThreadsAddUserMessageReq():
                self._check_attachment_ids(request.params.input.attachments)
                options = request.params.input.inference_options
                if options.model is not None or options.tool_choice is not None:
                    # Only the options need the thread's workflow. The thread's
                    # existence is not checked here: admission leased it, which
                    # only an existing thread of this user's can be.
                    thread = await store.load_thread(request.params.thread_id, context)
                    self._check_inference_options(
                        workflow_of(self.workflows, thread, context), options
                    )
                await self._check_attachments(request.params.input.attachments, context)
            case ThreadsAddClientToolOutputReq():
                await store.load_thread(request.params.thread_id, context)
                last = await store.load_thread_items(
                    request.params.thread_id, None, 1, "desc", context
                )
                if not (
                    last.data
                    and isinstance(last.data[0], ClientToolCallItem)
                    and last.data[0].status == "pending"
                ):
                    raise RequestError(
                        409, "The thread has no pending client tool call to complete."
                    )
            case ThreadsAddStructuredInputReq():
                await store.load_thread(request.params.thread_id, context)
                item = await store.load_item(
                    request.params.thread_id, request.params.item_id, context
                )
                if not isinstance(item, StructuredInputItem) or item.status != "pending":
                    raise RequestError(409, "That item is not a pending structured input.")
            case ThreadsRetryAfterItemReq():
                await store.load_thread(request.params.thread_id, context)
                item = await store.load_item(
                    request.params.thread_id, request.params.item_id, context
                )
                if not isinstance(item, UserMessageItem):
                    raise RequestError(400, "Only a user message can be retried.")
            case ThreadsCustomActionReq() | ThreadsSyncCustomActionReq():
                await store.load_thread(request.params.thread_id, context)
                if request.params.item_id is not None:
                    item = await store.load_item(
                        request.params.thread_id, request.params.item_id, context
                    )
                    if not isinstance(item, WidgetItem):
                        raise RequestError(400, "Actions can only be sent from a widget item.")
            case ThreadsUpdateReq():
                cap = self.settings.max_title_chars
                if len(request.params.title) > cap:
                    raise RequestError(400, f"A title may be at most {cap} characters long.")
            case AttachmentsCreateReq():
                await self.check_upload(request.params.size, context)
            case InputTranscribeReq():
                # ChatKit decodes the audio itself (as here: the same
                # strings pass) and has no answer but a 500 for one that
                # is not base64.
                try:
                    audio = base64.b64decode(request.params.audio_base64)
                except ValueError:  # binascii.Error, or a non-ASCII character
                    raise RequestError(400, "params.audio_base64 is not valid base64.") from None
                cap = self.settings.transcribe_max_bytes
                if len(audio) > cap:
                    raise RequestError(
                        413,
                        f"The audio clip is larger than this server transcribes ({cap} bytes).",
                        code="too_large",
                    )
            case AttachmentsDeleteReq():
                # The store's delete is idempotent; the client still deserves
                # to hear that the id was never theirs.
                await store.load_attachment(request.params.attachment_id, context)
            case _:
                # Non-streaming requests are answered in full before the
                # response starts, so their errors map to a status directly.
                pass
