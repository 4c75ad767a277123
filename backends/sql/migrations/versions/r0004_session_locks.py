"""Session locks: a queue of tickets per lock, and the newest fencing token of each lock.

``kv_lock_tickets`` holds one row per waiter or holder; a ticket is a number drawn from the
table's own counter (never reused), and expires on the database's clock (seconds since the
epoch), so hosts whose clocks disagree agree on which tickets are live. ``kv_fences`` holds
per lock the token of its newest grant; fenced writes check it in their own statement.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def _key_text() -> sa.types.TypeEngine[str]:
    return sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "kv_lock_tickets",
        sa.Column(
            "ticket",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("owner", _key_text(), nullable=False),
        sa.Column("name", _key_text(), nullable=False),
        sa.Column("expires_at", sa.Float(precision=53), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_kv_lock_tickets_lock", "kv_lock_tickets", ["owner", "name", "ticket"])
    op.create_table(
        "kv_fences",
        sa.Column("owner", _key_text(), nullable=False),
        sa.Column("name", _key_text(), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "name", name="pk_kv_fences"),
    )


def downgrade() -> None:
    op.drop_table("kv_fences")
    op.drop_table("kv_lock_tickets")
