"""Create kv_records: one table for every namespace.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _key_text() -> sa.types.TypeEngine[str]:
    return sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")


def _time() -> sa.types.TypeEngine[Any]:
    return sa.DateTime(timezone=True).with_variant(sa.String(26), "sqlite")


def upgrade() -> None:
    op.create_table(
        "kv_records",
        sa.Column("namespace", _key_text(), nullable=False),
        sa.Column("owner", _key_text(), nullable=False),
        sa.Column("key", _key_text(), nullable=False, server_default=""),
        sa.Column(
            "value", sa.Text().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("updated_at", _time(), nullable=False),
        sa.Column("expires_at", _time(), nullable=True),
        sa.PrimaryKeyConstraint("namespace", "owner", "key", name="pk_kv_records"),
    )
    op.create_index("ix_kv_records_owner", "kv_records", ["owner"])
    op.create_index("ix_kv_records_namespace_updated_at", "kv_records", ["namespace", "updated_at"])
    op.create_index(
        "ix_kv_records_expires_at",
        "kv_records",
        ["expires_at"],
        postgresql_where=sa.text("expires_at IS NOT NULL"),
        sqlite_where=sa.text("expires_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_table("kv_records")
