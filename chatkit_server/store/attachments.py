"""Attachments beyond the ChatKit store interface: their links, uploads and sweeps.

- :class:`AttachmentLinks` builds what a browser follows: the upload URL of a
  two-phase upload and the signed preview link of an image, on the address
  the request came to;
- the functions below run the statements the upload routes and the sweep
  need, which the ChatKit ``Store`` has no method for.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any, Final, TypeGuard

import sqlalchemy as sa
from chatkit.types import (
    Attachment,
    AttachmentUploadDescriptor,
    FileAttachment,
    ImageAttachment,
    ThreadItem,
    UserMessageItem,
)
from pydantic import AnyUrl, TypeAdapter

from chatkit_server.context import RequestContext
from chatkit_server.files.links import LinkSigner
from chatkit_server.store.database import Database
from chatkit_server.store.tables import attachments

__all__ = [
    "ATTACHMENT",
    "AttachmentLinks",
    "attachment_owner",
    "has_image",
    "existing_attachment_ids",
    "finish_upload",
    "sweep_unattached",
    "upload_metadata",
]

# Building a TypeAdapter for the union costs milliseconds; do it once.
ATTACHMENT: Final[TypeAdapter[Attachment]] = TypeAdapter(Attachment)


class AttachmentLinks:
    """Upload and preview links of attachments.

    Args:
        base_url: The server's address when a request's context does not say
            how the browser reached it.
        signer: Signs upload and preview links (none: links without a signature, which
            the preview route refuses).
    """

    def __init__(self, base_url: str, signer: LinkSigner | None) -> None:
        self.default_base_url = base_url.rstrip("/")
        self.signer = signer

    def base_url(self, context: RequestContext) -> str:
        """The server's address as the request's browser sees it."""
        return (context.base_url or self.default_base_url).rstrip("/")

    def upload_descriptor(
        self, attachment_id: str, context: RequestContext
    ) -> AttachmentUploadDescriptor:
        """Where a two-phase upload sends the attachment's bytes: a signed link.

        Signed, so that it works as the presigned URL ChatKit expects: the
        upload needs no credential of its own (one is accepted all the same).
        """
        base = self.base_url(context)
        if self.signer is None:
            url = f"{base}/chatkit/attachments/{attachment_id}/upload"
        else:
            url = self.signer.url(base, attachment_id, context.user_id, action="upload")
        return AttachmentUploadDescriptor(url=AnyUrl(url), method="POST")

    def preview_url(self, attachment_id: str, context: RequestContext) -> str:
        """A fresh link to the preview of the caller's image attachment."""
        base = self.base_url(context)
        if self.signer is None:
            return f"{base}/chatkit/attachments/{attachment_id}/preview"
        return self.signer.url(base, attachment_id, context.user_id)

    def new_attachment(
        self,
        attachment_id: str,
        *,
        name: str,
        mime_type: str,
        context: RequestContext,
        upload_descriptor: AttachmentUploadDescriptor | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Attachment:
        """A new attachment of ``context``'s user, as its type makes it.

        ``image/*`` types give an ``ImageAttachment`` with a preview link,
        others a ``FileAttachment``.
        """
        if mime_type.lower().startswith("image/"):
            return ImageAttachment(
                id=attachment_id,
                name=name,
                mime_type=mime_type,
                upload_descriptor=upload_descriptor,
                preview_url=AnyUrl(self.preview_url(attachment_id, context)),
                metadata=metadata,
            )
        return FileAttachment(
            id=attachment_id,
            name=name,
            mime_type=mime_type,
            upload_descriptor=upload_descriptor,
            metadata=metadata,
        )

    def fresh(self, attachment: Attachment, context: RequestContext) -> Attachment:
        """``attachment`` with a preview link that works now (links expire)."""
        if not isinstance(attachment, ImageAttachment) or self.signer is None:
            return attachment
        url = AnyUrl(self.preview_url(attachment.id, context))
        return attachment.model_copy(update={"preview_url": url})

    def fresh_item(self, item: ThreadItem, context: RequestContext) -> ThreadItem:
        """A user message's image attachments with preview links that work now."""
        if not has_image(item):
            return item
        fresh = [self.fresh(attachment, context) for attachment in item.attachments]
        return item.model_copy(update={"attachments": fresh})


def has_image(item: ThreadItem) -> TypeGuard[UserMessageItem]:
    """Whether ``item`` is a user message with an image attachment (whose preview link expires)."""
    return isinstance(item, UserMessageItem) and any(
        isinstance(attachment, ImageAttachment) for attachment in item.attachments
    )


async def finish_upload(
    database: Database, attachment: Attachment, context: RequestContext
) -> bool:
    """Save an uploaded attachment's new JSON if the caller's attachment still exists.

    Never inserts: an attachment deleted while its bytes were arriving stays
    deleted. Returns whether it was saved.
    """
    rows = await database.write_one(
        sa.update(attachments)
        .where(attachments.c.id == attachment.id, attachments.c.user_id == context.user_id)
        .values(data=attachment.model_dump_json())
        .returning(attachments.c.id)
    )
    return bool(rows)


async def attachment_owner(database: Database, attachment_id: str) -> tuple[str, Attachment] | None:
    """Any user's attachment and its owner, for a signed preview link (which names no user)."""
    async with database.read() as session:
        row = (
            await session.execute(
                sa.select(attachments.c.user_id, attachments.c.data).where(
                    attachments.c.id == attachment_id
                )
            )
        ).one_or_none()
    if row is None:
        return None
    return row.user_id, ATTACHMENT.validate_json(row.data)


async def existing_attachment_ids(database: Database, attachment_ids: Collection[str]) -> set[str]:
    """Which of these ids name an attachment (of any user), for sweeping orphaned bytes."""
    if not attachment_ids:
        return set()
    async with database.read() as session:
        found = await session.scalars(
            sa.select(attachments.c.id).where(attachments.c.id.in_(list(attachment_ids)))
        )
        return set(found.all())


async def sweep_unattached(database: Database, *, older_than: datetime) -> list[str]:
    """Delete the attachments created before ``older_than`` that no message carries.

    An attachment gets its thread when a message carrying it is saved; one
    without a thread past the grace period was uploaded and abandoned.

    Returns:
        The ids deleted (their bytes are the caller's to delete).
    """
    cutoff = older_than.astimezone(UTC).replace(tzinfo=None)
    rows = await database.write_one(
        sa.delete(attachments)
        .where(attachments.c.thread_id.is_(None), attachments.c.created_at < cutoff)
        .returning(attachments.c.id)
    )
    return [row.id for row in rows]


def upload_metadata(size: int, context: RequestContext) -> dict[str, Any]:
    """The declared size, and the session's size limit: the upload may come without sign-in."""
    metadata: dict[str, Any] = {"size": size}
    if context.limits.max_file_bytes is not None:
        metadata["max_bytes"] = context.limits.max_file_bytes
    return metadata
