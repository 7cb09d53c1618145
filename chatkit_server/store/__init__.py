"""Persistence: the ChatKit store on SQLAlchemy (SQLite or PostgreSQL).

- :class:`Database`: the async engine and its read/write sessions;
- :class:`SQLStore`: ChatKit's ``Store`` and ``AttachmentStore`` in one class;
- :func:`upgrade`, :func:`downgrade`, :func:`current`, :func:`upgrade_async`:
  Alembic migrations, which own the schema;
- :func:`new_id`: long, time-ordered ids with the SDK's prefixes.

No Starlette here: the HTTP layer calls in, never the other way round.
"""

from chatkit_server.store.database import Database
from chatkit_server.store.ids import new_id
from chatkit_server.store.migrate import alembic_config, current, downgrade, upgrade, upgrade_async
from chatkit_server.store.sql_store import (
    DEFAULT_UPLOAD_BASE_URL,
    FeedbackRecord,
    SQLStore,
    decode_item,
)
from chatkit_server.store.statements import MAX_PAGE_SIZE
from chatkit_server.store.usage import UsageRecord, UsageStore, UsageTotals

__all__ = [
    "DEFAULT_UPLOAD_BASE_URL",
    "MAX_PAGE_SIZE",
    "Database",
    "FeedbackRecord",
    "SQLStore",
    "UsageRecord",
    "UsageStore",
    "UsageTotals",
    "alembic_config",
    "current",
    "decode_item",
    "downgrade",
    "new_id",
    "upgrade",
    "upgrade_async",
]
