"""PostgreSQL: kvstore's own writes draw their revision in the statement; the trigger stays
for everyone else's.

Until 0002 a row trigger drew every written row's revision. A plpgsql trigger runs per row
on the server; kvstore's hot statements now draw the revision themselves (after forcing the
transaction's id, as the trigger does: see ``backends.sql.feed``), and the trigger only
fires for a write that leaves ``revision`` alone: an INSERT that omits it (the column
defaults to 0) or an UPDATE that does not change it (a batch job's plain SQL, or a restore).

SQLite is unchanged (its statements already take the counter themselves). Forward-only;
no table rewrite (only the column's default and the triggers change).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_POSTGRES = [
    "ALTER TABLE kv_records ALTER COLUMN revision SET DEFAULT 0",
    "DROP TRIGGER kv_records_revise ON kv_records",
    """
    CREATE TRIGGER kv_records_revise_insert BEFORE INSERT ON kv_records
    FOR EACH ROW WHEN (NEW.revision = 0) EXECUTE FUNCTION kv_records_revise()""",
    """
    CREATE TRIGGER kv_records_revise_update BEFORE UPDATE ON kv_records
    FOR EACH ROW WHEN (NEW.revision = OLD.revision) EXECUTE FUNCTION kv_records_revise()""",
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in _POSTGRES:
            op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("0003 is forward-only")
