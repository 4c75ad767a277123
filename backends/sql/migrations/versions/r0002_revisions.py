"""Revisions from the database, tombstones of deletes, cache generations.

Every row of ``kv_records`` gets a ``revision`` drawn from one counter by the database
itself, on every insert and update (also those of batch jobs in plain SQL); every delete
leaves a row in ``kv_tombstones`` with a revision of its own. Revisions order every change;
the change feed reads ``revision > N`` from both tables. ``kv_cache_generations`` holds,
per cache, the generation its keys live under and the cache incarnation it belongs to.

PostgreSQL: a sequence; BEFORE row triggers assign it after forcing the transaction's id
(``pg_current_xact_id()``), so a revision is never held by a transaction without an id and
the feed can tell in-flight revisions from lost ones by snapshot (see ``backends.sql.feed``).
SQLite: a one-row counter bumped inside the write transaction; SQLite commits one writer
at a time, so revisions commit in order.

Forward-only. On PostgreSQL adding the column rewrites ``kv_records`` once (an ACCESS
EXCLUSIVE lock for the duration: plan a short maintenance window for large tables).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_POSTGRES = [
    "CREATE SEQUENCE kv_revision AS bigint",
    "ALTER TABLE kv_records ADD COLUMN revision bigint NOT NULL DEFAULT nextval('kv_revision')",
    "CREATE INDEX ix_kv_records_revision ON kv_records (revision)",
    """
    CREATE TABLE kv_tombstones (
        namespace text COLLATE "C" NOT NULL,
        owner text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        revision bigint NOT NULL,
        deleted_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT pk_kv_tombstones PRIMARY KEY (namespace, owner, key)
    )""",
    "CREATE INDEX ix_kv_tombstones_revision ON kv_tombstones (revision)",
    "CREATE INDEX ix_kv_tombstones_deleted_at ON kv_tombstones (deleted_at)",
    """
    CREATE FUNCTION kv_records_revise() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_current_xact_id();
        NEW.revision := nextval('kv_revision');
        RETURN NEW;
    END $$""",
    """
    CREATE TRIGGER kv_records_revise BEFORE INSERT OR UPDATE ON kv_records
    FOR EACH ROW EXECUTE FUNCTION kv_records_revise()""",
    # the trigger assigns it; a default would only burn a second value per insert
    "ALTER TABLE kv_records ALTER COLUMN revision DROP DEFAULT",
    """
    CREATE FUNCTION kv_records_tombstone() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_current_xact_id();
        INSERT INTO kv_tombstones AS t (namespace, owner, key, revision)
        VALUES (OLD.namespace, OLD.owner, OLD.key, nextval('kv_revision'))
        ON CONFLICT (namespace, owner, key)
        DO UPDATE SET revision = excluded.revision, deleted_at = excluded.deleted_at;
        RETURN OLD;
    END $$""",
    """
    CREATE TRIGGER kv_records_tombstone BEFORE DELETE ON kv_records
    FOR EACH ROW EXECUTE FUNCTION kv_records_tombstone()""",
    """
    CREATE TABLE kv_cache_generations (
        name text COLLATE "C" PRIMARY KEY,
        generation bigint NOT NULL,
        incarnation text NOT NULL,
        changed_at timestamptz NOT NULL DEFAULT now()
    )""",
]

_SQLITE = [
    "CREATE TABLE kv_revision (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL)",
    "INSERT INTO kv_revision (id, value) VALUES (1, 0)",
    "ALTER TABLE kv_records ADD COLUMN revision INTEGER NOT NULL DEFAULT 0",
    # existing rows: distinct revisions in key order
    """
    UPDATE kv_records SET revision = (
        SELECT count(*) FROM kv_records AS o
        WHERE (o.namespace, o.owner, o.key) <= (kv_records.namespace, kv_records.owner,
                                                kv_records.key))""",
    "UPDATE kv_revision SET value = (SELECT count(*) FROM kv_records)",
    "CREATE INDEX ix_kv_records_revision ON kv_records (revision)",
    """
    CREATE TABLE kv_tombstones (
        namespace TEXT NOT NULL,
        owner TEXT NOT NULL,
        key TEXT NOT NULL,
        revision INTEGER NOT NULL,
        deleted_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f000', 'now')),
        CONSTRAINT pk_kv_tombstones PRIMARY KEY (namespace, owner, key)
    )""",
    "CREATE INDEX ix_kv_tombstones_revision ON kv_tombstones (revision)",
    "CREATE INDEX ix_kv_tombstones_deleted_at ON kv_tombstones (deleted_at)",
    # kvstore's own statements set revision to the counter + 1 (the counter follows);
    # a batch job's INSERT or UPDATE that leaves revision alone gets the next one here
    """
    CREATE TRIGGER kv_records_revise_insert AFTER INSERT ON kv_records
    WHEN NEW.revision = 0
    BEGIN
        UPDATE kv_revision SET value = value + 1 WHERE id = 1;
        UPDATE kv_records SET revision = (SELECT value FROM kv_revision WHERE id = 1)
        WHERE rowid = NEW.rowid;
    END""",
    """
    CREATE TRIGGER kv_records_revise_update AFTER UPDATE ON kv_records
    WHEN NEW.revision = OLD.revision
    BEGIN
        UPDATE kv_revision SET value = value + 1 WHERE id = 1;
        UPDATE kv_records SET revision = (SELECT value FROM kv_revision WHERE id = 1)
        WHERE rowid = NEW.rowid;
    END""",
    """
    CREATE TRIGGER kv_records_count_insert AFTER INSERT ON kv_records
    WHEN NEW.revision <> 0
    BEGIN
        UPDATE kv_revision SET value = max(value, NEW.revision) WHERE id = 1;
    END""",
    """
    CREATE TRIGGER kv_records_count_update AFTER UPDATE ON kv_records
    WHEN NEW.revision <> OLD.revision
    BEGIN
        UPDATE kv_revision SET value = max(value, NEW.revision) WHERE id = 1;
    END""",
    """
    CREATE TRIGGER kv_records_tombstone BEFORE DELETE ON kv_records
    BEGIN
        UPDATE kv_revision SET value = value + 1 WHERE id = 1;
        INSERT INTO kv_tombstones (namespace, owner, key, revision)
        VALUES (OLD.namespace, OLD.owner, OLD.key, (SELECT value FROM kv_revision WHERE id = 1))
        ON CONFLICT (namespace, owner, key) DO UPDATE SET
            revision = excluded.revision, deleted_at = excluded.deleted_at;
    END""",
    """
    CREATE TABLE kv_cache_generations (
        name TEXT PRIMARY KEY,
        generation INTEGER NOT NULL,
        incarnation TEXT NOT NULL,
        changed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f000', 'now'))
    )""",
]


def upgrade() -> None:
    statements = _POSTGRES if op.get_bind().dialect.name == "postgresql" else _SQLITE
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("0002 is forward-only")
