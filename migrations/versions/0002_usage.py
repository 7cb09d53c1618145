"""Token usage per answer.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "usage",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("thread_id", sa.String(length=128), nullable=False),
        sa.Column("item_id", sa.String(length=128), nullable=True),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("workflow", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["threads.id"],
            name=op.f("fk_usage_thread_id_threads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_usage")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_usage_thread_id_seq", "usage", ["thread_id", "seq"])
    op.create_index("ix_usage_user_id_seq", "usage", ["user_id", "seq"])


def downgrade() -> None:
    op.drop_index("ix_usage_user_id_seq", table_name="usage")
    op.drop_index("ix_usage_thread_id_seq", table_name="usage")
    op.drop_table("usage")
