"""PostgreSQL: ``kv_records`` hash-partitioned by owner.

One user's records live in one partition, so every per-user statement (get, save, delete,
listings, ``delete_user``) reads and locks one partition, and vacuum, index size and
bloat are per partition. The partitions are ``kv_records_p000``, ``kv_records_p001``, ...
(``FOR VALUES WITH (MODULUS n, REMAINDER i)``); the parent keeps the table's name, its
primary key, indexes and triggers, so statements, batch jobs and the change feed do not
change.

Partitioning is the table's physical layout, not a schema revision: Alembic's history stays
one line, and :func:`partition_records` converts a table at any revision from 0004 on. A
new table is partitioned at creation (the ``partitions`` option: nothing to copy); an
existing one is converted by ``kvstore db partition``, which copies its rows in one
transaction. Reads go on during the copy; writes wait for it (up to their
``statement_timeout``, after which they fail with ``BackendUnavailableError`` and may be
retried), and every statement waits for the short swap at the end. See docs/scale.md.

No statement here is built from input: the names are constants and the one number, the
partition count, is an ``int`` checked by :func:`~backends.sql.config.check_partitions`
(the lock timeout a ``float`` rendered as whole milliseconds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import sqlalchemy as sa

from backends.sql.config import check_partitions
from backends.sql.queries import partition_names
from backends.sql.schema import TABLE_NAME
from kvstore.errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

LOCK_TIMEOUT: Final = 5.0
"""Seconds the conversion waits for a lock on ``kv_records`` before giving up. While it
waits, every statement that needs a lock after it queues behind it: a transaction left
open elsewhere must not turn the wait into an outage."""
_NEW: Final = "kv_records_partitioned"
_INDEXES: Final = (
    # (name, definition): the indexes of backends.sql.schema.kv_records
    ("ix_kv_records_owner", "(owner)"),
    ("ix_kv_records_namespace_updated_at", "(namespace, updated_at)"),
    ("ix_kv_records_revision", "(revision)"),
    ("ix_kv_records_expires_at", "(expires_at) WHERE expires_at IS NOT NULL"),
)
_TRIGGERS: Final = (
    # the triggers of migrations 0002 and 0003, on the new parent (PostgreSQL 13+ runs
    # row triggers of a partitioned table on every partition)
    """CREATE TRIGGER kv_records_revise_insert BEFORE INSERT ON kv_records
    FOR EACH ROW WHEN (NEW.revision = 0) EXECUTE FUNCTION kv_records_revise()""",
    """CREATE TRIGGER kv_records_revise_update BEFORE UPDATE ON kv_records
    FOR EACH ROW WHEN (NEW.revision = OLD.revision) EXECUTE FUNCTION kv_records_revise()""",
    """CREATE TRIGGER kv_records_tombstone BEFORE DELETE ON kv_records
    FOR EACH ROW EXECUTE FUNCTION kv_records_tombstone()""",
)


def partition_name(index: int) -> str:
    """The name of partition ``index`` (``REMAINDER index``)."""
    return f"{TABLE_NAME}_p{index:03d}"


async def partition_count(connection: AsyncConnection) -> int:
    """How many hash partitions ``kv_records`` has; 0 if it is a plain table."""
    count = len((await connection.execute(partition_names())).all())
    if count:
        return count
    partitioned = await connection.scalar(
        sa.text("SELECT count(*) FROM pg_partitioned_table WHERE partrelid = to_regclass(:t)"),
        {"t": TABLE_NAME},
    )
    if partitioned:
        raise ConfigurationError(f"{TABLE_NAME} is partitioned but has no partitions")
    return 0


async def partition_records(
    connection: AsyncConnection, partitions: int, *, lock_timeout: float = LOCK_TIMEOUT
) -> int:
    """Make ``kv_records`` a table hash-partitioned by owner into ``partitions`` parts,
    keeping every row (and its revision) as it is; return how many rows were copied.

    Runs in the caller's transaction, which must commit it: :func:`build_copy`, then
    :func:`swap_in_copy`. Refuses a table that is already partitioned
    (:class:`ConfigurationError`)."""
    copied = await build_copy(connection, partitions, lock_timeout=lock_timeout)
    await swap_in_copy(connection)
    return copied


async def build_copy(
    connection: AsyncConnection, partitions: int, *, lock_timeout: float = LOCK_TIMEOUT
) -> int:
    """The first phase: lock ``kv_records`` against writes (reads go on), copy it into a
    new partitioned table and build that table's indexes; return how many rows were
    copied. Each lock is waited for at most ``lock_timeout`` seconds (the driver's
    ``LockNotAvailableError`` then; nothing changed), the copy itself as long as it takes."""
    partitions = check_partitions(partitions)
    existing = await partition_count(connection)
    if existing:
        raise ConfigurationError(f"{TABLE_NAME} is already partitioned ({existing} partitions)")
    run = connection.exec_driver_sql
    await run("SET LOCAL statement_timeout = 0")
    await run(f"SET LOCAL lock_timeout = {round(lock_timeout * 1000)}")
    await run(f"LOCK TABLE {TABLE_NAME} IN SHARE ROW EXCLUSIVE MODE")
    await run(
        f"CREATE TABLE {_NEW} (LIKE {TABLE_NAME} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
        "INCLUDING STORAGE) PARTITION BY HASH (owner)"
    )
    for index in range(partitions):
        await run(
            f"CREATE TABLE {partition_name(index)} PARTITION OF {_NEW} "
            f"FOR VALUES WITH (MODULUS {partitions}, REMAINDER {index})"
        )
    copied = await run(f"INSERT INTO {_NEW} SELECT * FROM {TABLE_NAME}")  # noqa: S608
    # indexes are built after the copy (faster than maintained row by row)
    await run(f"ALTER TABLE {_NEW} ADD CONSTRAINT pk_{_NEW} PRIMARY KEY (namespace, owner, key)")
    for name, definition in _INDEXES:
        await run(f"CREATE INDEX {name}_new ON {_NEW} {definition}")
    await run(f"ANALYZE {_NEW}")
    return int(copied.rowcount)


async def swap_in_copy(connection: AsyncConnection) -> None:
    """The second phase: drop the plain table and give its names and triggers to the copy.
    From here until commit every statement on the table waits (a catalog change only)."""
    run = connection.exec_driver_sql
    await run(f"DROP TABLE {TABLE_NAME}")
    await run(f"ALTER TABLE {_NEW} RENAME TO {TABLE_NAME}")
    await run(f"ALTER TABLE {TABLE_NAME} RENAME CONSTRAINT pk_{_NEW} TO pk_{TABLE_NAME}")
    for name, _ in _INDEXES:
        await run(f"ALTER INDEX {name}_new RENAME TO {name}")
    for trigger in _TRIGGERS:
        await run(trigger)
