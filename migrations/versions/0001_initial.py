"""Initial schema: threads, thread items, attachments and feedback.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Written out in full rather than imported from chatkit_server.store.tables, so
this revision keeps describing the schema as it was when later ones change it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite auto-increments only a column declared exactly INTEGER PRIMARY KEY.
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
ID = sa.String(length=128)
USER = sa.String(length=255)


def _thread_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["thread_id"],
        ["threads.id"],
        name=op.f(f"fk_{table}_thread_id_threads"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "threads",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("id", ID, nullable=False),
        sa.Column("user_id", USER, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_threads")),
        sa.UniqueConstraint("id", name=op.f("uq_threads_id")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_threads_user_id_seq", "threads", ["user_id", "seq"])

    op.create_table(
        "thread_items",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("thread_id", ID, nullable=False),
        sa.Column("id", ID, nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        _thread_fk("thread_items"),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_thread_items")),
        sa.UniqueConstraint("thread_id", "id", name=op.f("uq_thread_items_thread_id_id")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_thread_items_thread_id_seq", "thread_items", ["thread_id", "seq"])

    op.create_table(
        "attachments",
        sa.Column("id", ID, nullable=False),
        sa.Column("user_id", USER, nullable=False),
        sa.Column("thread_id", ID, nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        _thread_fk("attachments"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attachments")),
    )
    op.create_index("ix_attachments_thread_id", "attachments", ["thread_id"])

    op.create_table(
        "feedback",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("thread_id", ID, nullable=False),
        sa.Column("item_id", ID, nullable=False),
        sa.Column("user_id", USER, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("kind IN ('positive', 'negative')", name=op.f("ck_feedback_kind")),
        _thread_fk("feedback"),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_feedback")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_feedback_thread_id_seq", "feedback", ["thread_id", "seq"])


def downgrade() -> None:
    # Children first; their indexes go with them.
    op.drop_table("feedback")
    op.drop_table("attachments")
    op.drop_table("thread_items")
    op.drop_table("threads")
