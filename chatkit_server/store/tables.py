"""The database schema, as SQLAlchemy Core tables.

Each thread, item and attachment is stored as the JSON its SDK model dumps
(``data``) and rebuilt with the SDK types on load, so values come back exactly
as they went in (naive datetimes stay naive). The other columns exist only to
order, filter and join:

- ``seq`` is an auto-increment key that gives listings a monotonic order
  (``created_at`` alone ties, and the SDK stamps items with local time);
- ``user_id`` on threads and attachments scopes every query by owner;
- foreign keys cascade, so deleting a thread deletes its items, attachments
  and feedback in the same statement.

Alembic owns the schema (``migrations/versions``); keep the two in step, which
``tests/store/test_migrations.py`` checks.
"""

from __future__ import annotations

from typing import Any, Final

import sqlalchemy as sa

__all__ = [
    "ID_LENGTH",
    "NAMING_CONVENTION",
    "attachment_chunks",
    "attachments",
    "feedback",
    "metadata",
    "rate_counts",
    "server_keys",
    "sessions",
    "thread_items",
    "thread_leases",
    "threads",
    "usage",
]

# Constraint names must be deterministic for Alembic to alter or drop them
# later (SQLite batch mode rebuilds tables by name).
NAMING_CONVENTION: Final = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Our ids are about 40 characters; the slack admits ids chosen by other code.
ID_LENGTH: Final = 128
_USER_LENGTH: Final = 255

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only auto-increments a column declared exactly "INTEGER PRIMARY KEY";
# elsewhere a 64-bit sequence outlives any deployment.
_Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _seq() -> sa.Column[int]:
    return sa.Column("seq", _Seq, primary_key=True, autoincrement=True)


def _thread_fk(*, nullable: bool) -> sa.Column[str]:
    return sa.Column(
        "thread_id",
        sa.String(ID_LENGTH),
        sa.ForeignKey("threads.id", ondelete="CASCADE"),
        nullable=nullable,
    )


threads = sa.Table(
    "threads",
    metadata,
    _seq(),
    sa.Column("id", sa.String(ID_LENGTH), nullable=False, unique=True),
    sa.Column("user_id", sa.String(_USER_LENGTH), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("data", sa.Text(), nullable=False),
    sa.Index("ix_threads_user_id_seq", "user_id", "seq"),
    # AUTOINCREMENT stops SQLite from reusing the seq of a deleted last row.
    sqlite_autoincrement=True,
)

thread_items = sa.Table(
    "thread_items",
    metadata,
    _seq(),
    _thread_fk(nullable=False),
    sa.Column("id", sa.String(ID_LENGTH), nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("data", sa.Text(), nullable=False),
    sa.UniqueConstraint("thread_id", "id"),
    sa.Index("ix_thread_items_thread_id_seq", "thread_id", "seq"),
    sqlite_autoincrement=True,
)

attachments = sa.Table(
    "attachments",
    metadata,
    sa.Column("id", sa.String(ID_LENGTH), primary_key=True),
    sa.Column("user_id", sa.String(_USER_LENGTH), nullable=False),
    _thread_fk(nullable=True),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("data", sa.Text(), nullable=False),
    # PostgreSQL does not index foreign keys by itself; without this every
    # thread delete scans the table for attachments to cascade to.
    sa.Index("ix_attachments_thread_id", "thread_id"),
)

# Attachment bytes when CHATKIT_ATTACHMENT_STORAGE=database, a megabyte per
# row (a row is written, and read, without holding a whole file in memory).
# file_id is the attachment's id once the upload is complete; before, a
# temporary name that the final transaction renames, so a half-written file
# is never seen. No foreign key: the bytes of a direct upload are stored
# before its attachment row, and a sweep removes rows that name no attachment.
attachment_chunks = sa.Table(
    "attachment_chunks",
    metadata,
    sa.Column("file_id", sa.String(ID_LENGTH), nullable=False),
    sa.Column("chunk", sa.Integer(), nullable=False),
    sa.Column("data", sa.LargeBinary(), nullable=False),
    # Unix seconds: when the sweep may take it if it names no attachment.
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint("file_id", "chunk"),
    sa.Index("ix_attachment_chunks_created_at", "created_at"),
)

# Secrets the server makes for itself when the operator configured none
# (e.g. the key that signs attachment upload and preview links), shared by every
# worker process and replica on the database.
server_keys = sa.Table(
    "server_keys",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(128), nullable=False),
)

feedback = sa.Table(
    "feedback",
    metadata,
    _seq(),
    _thread_fk(nullable=False),
    sa.Column("item_id", sa.String(ID_LENGTH), nullable=False),
    sa.Column("user_id", sa.String(_USER_LENGTH), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.CheckConstraint("kind IN ('positive', 'negative')", name="kind"),
    sa.Index("ix_feedback_thread_id_seq", "thread_id", "seq"),
    sqlite_autoincrement=True,
)

# Token usage of each answer; item_id names the answer's last assistant
# message (NULL when the answer failed before producing one).
usage = sa.Table(
    "usage",
    metadata,
    _seq(),
    _thread_fk(nullable=False),
    sa.Column("item_id", sa.String(ID_LENGTH), nullable=True),
    sa.Column("user_id", sa.String(_USER_LENGTH), nullable=False),
    sa.Column("workflow", sa.String(64), nullable=False),
    sa.Column("model", sa.String(_USER_LENGTH), nullable=False),
    sa.Column("requests", sa.Integer(), nullable=False),
    sa.Column("input_tokens", sa.Integer(), nullable=False),
    sa.Column("output_tokens", sa.Integer(), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Index("ix_usage_thread_id_seq", "thread_id", "seq"),
    sa.Index("ix_usage_user_id_seq", "user_id", "seq"),
    sqlite_autoincrement=True,
)

# Sessions minted by the REST API. Only a keyed hash of the client secret is
# kept: a copy of the database does not sign anyone in. Times are Unix
# seconds, as the REST API reports them.
sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(ID_LENGTH), primary_key=True),
    sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("user_id", sa.String(_USER_LENGTH), nullable=False),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Column("expires_at", sa.BigInteger(), nullable=False),
    sa.Column("cancelled_at", sa.BigInteger(), nullable=True),
    # workflow, rate limit and chatkit_configuration as the REST API resolved them
    sa.Column("data", sa.Text(), nullable=False),
    sa.Index("ix_sessions_expires_at", "expires_at"),
    # Every process asks for the sessions cancelled lately (several times a second).
    sa.Index("ix_sessions_cancelled_at", "cancelled_at"),
)

# Requests counted per rate-limit key (a session, a user) and clock minute,
# in the database so that every worker process and replica counts together.
rate_counts = sa.Table(
    "rate_counts",
    metadata,
    sa.Column("subject", sa.String(_USER_LENGTH + 16), nullable=False),
    sa.Column("minute", sa.BigInteger(), nullable=False),
    sa.Column("count", sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint("subject", "minute"),
)

# One answer at a time per thread, across processes: a lease that its holder
# renews while the answer streams and deletes at its end. A crashed holder's
# lease runs out by itself. No foreign key: a new thread's lease is taken
# before the thread row is written.
thread_leases = sa.Table(
    "thread_leases",
    metadata,
    sa.Column("thread_id", sa.String(ID_LENGTH), primary_key=True),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("token", sa.String(64), nullable=False),
    # Unix milliseconds
    sa.Column("expires_at", sa.BigInteger(), nullable=False),
    sa.Index("ix_thread_leases_holder", "holder"),
)


# On PostgreSQL, counts and leases skip the write-ahead log: a write to them
# then commits without waiting for a disk flush (they are written on every
# answer), and after a crash they are simply empty, which frees every thread
# and restarts the minute's counts: what a crash should do to them anyway.
def _unlogged(table: sa.Table, connection: sa.Connection, **_: Any) -> None:
    if connection.dialect.name == "postgresql":
        name = connection.dialect.identifier_preparer.format_table(table)
        connection.exec_driver_sql(f"ALTER TABLE {name} SET UNLOGGED")


for _table in (rate_counts, thread_leases):
    sa.event.listen(_table, "after_create", _unlogged)
