"""Sign-in: sessions, rate-limit counts and per-thread answer leases.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("cancelled_at", sa.BigInteger(), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_sessions_secret_hash")),
    )
    op.create_index("ix_sessions_expires_at", "sessions", ["expires_at"])
    op.create_index("ix_sessions_cancelled_at", "sessions", ["cancelled_at"])
    op.create_table(
        "rate_counts",
        sa.Column("subject", sa.String(length=271), nullable=False),
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("subject", "minute", name=op.f("pk_rate_counts")),
    )
    op.create_table(
        "thread_leases",
        sa.Column("thread_id", sa.String(length=128), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("thread_id", name=op.f("pk_thread_leases")),
    )
    op.create_index("ix_thread_leases_holder", "thread_leases", ["holder"])
    if op.get_bind().dialect.name == "postgresql":
        # No write-ahead log for counts and leases (see chatkit_server/store/tables.py).
        op.execute("ALTER TABLE rate_counts SET UNLOGGED")
        op.execute("ALTER TABLE thread_leases SET UNLOGGED")


def downgrade() -> None:
    op.drop_index("ix_thread_leases_holder", table_name="thread_leases")
    op.drop_table("thread_leases")
    op.drop_table("rate_counts")
    op.drop_index("ix_sessions_cancelled_at", table_name="sessions")
    op.drop_index("ix_sessions_expires_at", table_name="sessions")
    op.drop_table("sessions")
