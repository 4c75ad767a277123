"""SQLAlchemy Core statements for everything off the hot path: batched reads, listings,
erasure, purges, restore and streams. Pure builders (no I/O); values are bound parameters.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from backends.base import Entry
from backends.sql.numbers import jsonb_exact
from backends.sql.schema import KEY_SEPARATOR, TABLE_NAME, key_text, kv_records, kv_tombstones

if TYPE_CHECKING:
    from collections.abc import Sequence

    from kvstore.keys import Key

t = kv_records


def entry_columns() -> tuple[sa.ColumnElement[Any], ...]:
    """The columns of an :class:`Entry`, the value as JSON text (no parse on the way out)."""
    value = sa.type_coerce(t.c.value, sa.Text()).label("value")
    return (value, t.c.version, t.c.created_at, t.c.updated_at, t.c.expires_at, t.c.revision)


def entry_of(row: Sequence[Any]) -> Entry:
    """The entry of a row ending in the :func:`entry_columns` (by position: faster)."""
    return Entry(row[-6].encode(), row[-5], row[-4], row[-3], row[-2], row[-1])


def live(now: datetime) -> sa.ColumnElement[bool]:
    """Rows not expired at ``now``."""
    return sa.or_(t.c.expires_at.is_(None), t.c.expires_at > now)


def live_at(expires_at: datetime | None, now: datetime) -> bool:
    """Whether a row expiring at ``expires_at`` is live at ``now``."""
    return expires_at is None or expires_at > now


def select_listing(
    namespace: str,
    prefix: tuple[str, ...],
    after: tuple[str, ...] | None,
    limit: int,
    now: datetime,
) -> sa.Select[Any] | None:
    """One page of the owner's (``prefix[0]``) live rows under ``prefix``, in key order,
    after ``after``; ``None`` when ``after`` is past every key of the owner."""
    owner = prefix[0]
    conditions = [t.c.namespace == namespace, t.c.owner == owner, live(now)]
    if len(prefix) > 1:
        head = key_text(prefix[1:])
        # the key itself, or keys continuing it with a separator: a range, no LIKE
        conditions.append(
            sa.or_(
                t.c.key == head,
                sa.and_(t.c.key >= head + KEY_SEPARATOR, t.c.key < head + chr(0x20)),
            )
        )
    if after is not None:
        if after[0] > owner:
            return None
        if after[0] == owner:
            conditions.append(t.c.key > key_text(after[1:]))
    return sa.select(t.c.key, *entry_columns()).where(*conditions).order_by(t.c.key).limit(limit)


def delete_owner(owner: str) -> sa.Executable:
    """Delete every row of ``owner``, returning each one's expiry."""
    return sa.delete(t).where(t.c.owner == owner).returning(t.c.expires_at)


def _row_id(postgres: bool) -> sa.ColumnClause[Any]:
    """The physical row address: ``ctid`` on PostgreSQL, ``rowid`` on SQLite. A batched
    delete that picks its rows by address deletes them with one lookup each (a TID scan);
    picked by key, PostgreSQL hash-joined the batch against a scan of the whole table."""
    return sa.literal_column("ctid" if postgres else "rowid")


def purge_tombstones(cutoff: datetime, batch_size: int, *, postgres: bool) -> sa.Executable:
    """Delete up to ``batch_size`` tombstones of deletions before ``cutoff``."""
    dead = kv_tombstones
    row = _row_id(postgres)
    old = sa.select(row).select_from(dead).where(dead.c.deleted_at < cutoff).limit(batch_size)
    return (
        sa.delete(dead)
        .where(row.in_(old))
        .where(dead.c.deleted_at < cutoff)
        .returning(dead.c.revision)
    )


def purge_expired(
    now: datetime, batch_size: int, table: sa.TableClause = kv_records, *, postgres: bool
) -> sa.Executable:
    """Delete up to ``batch_size`` rows expired at ``now`` (from ``table``: the records
    table, or one of its partitions, :func:`partition_table`). A row saved again since
    it was picked (a new address on PostgreSQL) waits for the next batch."""
    row = _row_id(postgres)
    expired = sa.select(row).select_from(table).where(table.c.expires_at <= now).limit(batch_size)
    return (
        sa.delete(table)
        .where(row.in_(expired))
        .where(table.c.expires_at <= now)  # re-checked on rows saved meanwhile
        .returning(table.c.version)
    )


def partition_table(name: str) -> sa.TableClause:
    """Partition ``name`` of the records table, with its columns, for statements that work
    partition by partition."""
    return sa.table(name, *(sa.column(column.name, column.type) for column in kv_records.c))


def partition_names() -> sa.Select[Any]:
    """The partitions of the records table, in order (none for a plain table)."""
    inherits = sa.table("pg_inherits", sa.column("inhrelid"), sa.column("inhparent"))
    name = sa.cast(sa.cast(inherits.c.inhrelid, postgresql.REGCLASS), sa.Text)
    parent = sa.func.to_regclass(TABLE_NAME)
    return sa.select(name).where(inherits.c.inhparent == parent).order_by(name)


def select_recent(namespace: str, owner: str | None, limit: int, now: datetime) -> sa.Select[Any]:
    """Live rows of ``namespace`` (of ``owner``), newest ``updated_at`` first."""
    conditions = [t.c.namespace == namespace, live(now)]
    if owner is not None:
        conditions.append(t.c.owner == owner)
    return (
        sa.select(t.c.namespace, t.c.owner, t.c.key, *entry_columns())
        .where(*conditions)
        .order_by(t.c.updated_at.desc())
        .limit(limit)
    )


def count_live(now: datetime) -> sa.Select[Any]:
    """Live rows per namespace, counted in the database as every row (a scan of the
    (namespace, updated_at) index alone, index-only where the visibility map allows) less
    the expired ones not purged yet (the partial index on ``expires_at``): the rows
    themselves are not read, which a ``WHERE`` on ``expires_at`` over every row would."""
    rows = (
        sa.select(t.c.namespace, sa.func.count().label("rows"))
        .group_by(t.c.namespace)
        .subquery("all_rows")
    )
    expired = (
        sa.select(t.c.namespace, sa.func.count().label("rows"))
        .where(t.c.expires_at.is_not(None), t.c.expires_at <= now)
        .group_by(t.c.namespace)
        .subquery("expired")
    )
    live_rows = rows.c.rows - sa.func.coalesce(expired.c.rows, 0)
    return (
        sa.select(rows.c.namespace, live_rows)
        .select_from(rows.outerjoin(expired, expired.c.namespace == rows.c.namespace))
        .where(live_rows > 0)
        .order_by(rows.c.namespace)
    )


def restore(postgres: bool, now: datetime) -> sa.Executable:
    """One upsert, compiled once and executed for many rows (:func:`restore_rows`), that
    only replaces older or expired rows; the JSON text is cast on the server."""
    insert = postgresql.insert if postgres else sqlite.insert
    value_type = postgresql.JSONB() if postgres else sa.Text()
    columns = ("namespace", "owner", "key", "version", "created_at", "updated_at", "expires_at")
    upsert = insert(t).values(
        {name: sa.bindparam(name) for name in columns}
        | {"value": sa.cast(sa.bindparam("value", type_=sa.Text()), value_type)}
    )
    return upsert.on_conflict_do_update(
        index_elements=[t.c.namespace, t.c.owner, t.c.key],
        set_={
            name: upsert.excluded[name]
            for name in ("value", "version", "created_at", "updated_at", "expires_at")
        },
        where=(t.c.version < upsert.excluded.version) | (t.c.expires_at <= now),
    ).returning(t.c.version)


def restore_rows(items: Sequence[tuple[Key, Entry]], postgres: bool) -> list[dict[str, Any]]:
    """The parameters of :func:`restore` for ``items``."""
    return [
        {
            "namespace": key.namespace,
            "owner": key.owner,
            "key": key_text(key.rest),
            "value": jsonb_exact(entry.value) if postgres else entry.value.decode(),
            "version": entry.version,
            "created_at": entry.created_at,
            "updated_at": entry.updated_at,
            "expires_at": entry.expires_at,
        }
        for key, entry in items
    ]


class StreamPages:
    """Keyset pagination over the primary key, filtered by namespace, owner and
    ``updated_at``: each page is one short query."""

    def __init__(
        self,
        namespace: str | None,
        owner: str | None,
        updated_since: datetime | None,
        updated_before: datetime | None,
    ) -> None:
        self._conditions: list[sa.ColumnElement[bool]] = []
        if namespace is not None:
            self._conditions.append(t.c.namespace == namespace)
        if owner is not None:
            self._conditions.append(t.c.owner == owner)
        if updated_since is not None:
            self._conditions.append(t.c.updated_at >= _aware(updated_since))
        if updated_before is not None:
            self._conditions.append(t.c.updated_at < _aware(updated_before))
        # the keyset compares only the key columns not fixed by the filters: SQLite can
        # seek on "namespace = ? AND (owner, key) > (?, ?)" but not on the full row value
        self.fixed = 0 if namespace is None else 1 if owner is None else 2

    def page(self, last: tuple[str, ...] | None, batch_size: int, now: datetime) -> sa.Select[Any]:
        """The page after the row whose moving key columns are ``last``."""
        primary = (t.c.namespace, t.c.owner, t.c.key)
        moving = primary[self.fixed :]
        where = [*self._conditions, live(now)]
        if last is not None:
            where.append(
                sa.tuple_(*moving) > sa.tuple_(*last) if len(last) > 1 else moving[0] > last[0]
            )
        return (
            sa.select(*primary, *entry_columns()).where(*where).order_by(*primary).limit(batch_size)
        )


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("stream time bounds must be aware datetimes")
    return value.astimezone(UTC)
