"""The SQL schema, defined once: the ``kv_records`` table every namespace shares.

Alembic migrations (:mod:`backends.sql.migrations`) create it; the backend's statements and
batch jobs read it. Key components are real columns so plain SQL filters with ``=``:
``owner`` is the first component, ``key`` the rest joined by :data:`KEY_SEPARATOR` (``''``
for a record addressed by its owner alone). Text key columns use the ``"C"`` collation on
PostgreSQL, so order is code point order and ``'U1'`` never equals ``'u1'``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from backends.base import Entry
from kvstore.keys import Key

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.engine import Dialect

TABLE_NAME: Final = "kv_records"
VERSION_TABLE: Final = "kvstore_alembic_version"
"""Alembic's bookkeeping table; named apart from an application's own ``alembic_version``."""

KEY_SEPARATOR: Final = "\x1f"
"""Joins the components after the owner. Ids never hold control characters, and it sorts
below every character an id can hold, so string order equals component tuple order."""

SQLITE_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S.%f"
"""How SQLite stores times: UTC text, fixed width, so text order is time order."""


def key_text(rest: tuple[str, ...]) -> str:
    """The ``key`` column value for the components after the owner."""
    return KEY_SEPARATOR.join(rest)


def key_parts(text: str) -> tuple[str, ...]:
    """Inverse of :func:`key_text`."""
    return tuple(text.split(KEY_SEPARATOR)) if text else ()


def stored_key(namespace: str, components: tuple[str, ...]) -> Key:
    """A :class:`Key` for a row of our tables, skipping re-validation: every row was
    written from a validated ``Key``, and checking each component of a million-row stream
    costs more than reading it."""
    key = object.__new__(Key)
    object.__setattr__(key, "namespace", namespace)
    object.__setattr__(key, "components", components)
    return key


def sqlite_time(value: datetime) -> str:
    """An aware datetime as SQLite's stored UTC text."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]  # == strftime(SQLITE_TIME_FORMAT)


def parse_sqlite_time(value: str) -> datetime:
    """Inverse of :func:`sqlite_time`."""
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


class DriverTimes:
    """Times as the hot path's driver rows carry them: ``datetime`` on PostgreSQL
    (asyncpg), :func:`sqlite_time` text on SQLite (aiosqlite)."""

    def __init__(self, postgres: bool) -> None:
        self._postgres = postgres

    def to_driver(self, value: datetime | None) -> Any:
        """``value`` as a statement parameter."""
        if value is None or self._postgres:
            return value
        return sqlite_time(value)

    def from_driver(self, value: Any) -> datetime | None:
        """A row's time column as an aware UTC datetime (``None`` stays ``None``)."""
        if value is None or self._postgres:
            return value  # type: ignore[no-any-return]
        return parse_sqlite_time(value)

    def required(self, value: Any) -> datetime:
        """A non-null time column."""
        result = self.from_driver(value)
        if result is None:
            raise ValueError("a required time column was NULL")
        return result

    def entry(self, row: Sequence[Any]) -> Entry:
        """An entry from a hot statement's row ending in value, version, created_at,
        updated_at, expires_at, revision (read by position from the end: a listing's rows
        start with the key)."""
        return Entry(
            value=row[-6].encode(),
            version=row[-5],
            created_at=self.required(row[-4]),
            updated_at=self.required(row[-3]),
            expires_at=self.from_driver(row[-2]),
            revision=row[-1],
        )


def key_columns(key: Key) -> tuple[str, str, str]:
    """``key`` as the table's key columns: namespace, owner, key (:func:`key_text`)."""
    return (key.namespace, key.owner, key_text(key.rest))


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """``timestamptz`` on PostgreSQL; fixed-width UTC text on SQLite. Always aware UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(26))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        if dialect.name == "postgresql":
            return None  # asyncpg already returns aware UTC datetimes: skip a call per value
        return super().result_processor(dialect, coltype)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> object:
        if value is None or dialect.name != "sqlite":
            return value
        return sqlite_time(value)

    def process_result_value(self, value: object, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return parse_sqlite_time(value)
        assert isinstance(value, datetime)
        return value.astimezone(UTC)


def _key_text() -> sa.types.TypeEngine[str]:
    return sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")


metadata = sa.MetaData()

kv_records = sa.Table(
    TABLE_NAME,
    metadata,
    sa.Column("namespace", _key_text(), nullable=False),
    sa.Column("owner", _key_text(), nullable=False),
    sa.Column("key", _key_text(), nullable=False, server_default=""),
    sa.Column("value", sa.Text().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
    sa.Column("version", sa.BigInteger(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("revision", sa.BigInteger(), nullable=False, server_default="0"),
    sa.PrimaryKeyConstraint("namespace", "owner", "key", name="pk_kv_records"),
    sa.Index("ix_kv_records_owner", "owner"),
    sa.Index("ix_kv_records_namespace_updated_at", "namespace", "updated_at"),
    sa.Index("ix_kv_records_revision", "revision"),
    sa.Index(
        "ix_kv_records_expires_at",
        "expires_at",
        postgresql_where=sa.text("expires_at IS NOT NULL"),
        sqlite_where=sa.text("expires_at IS NOT NULL"),
    ),
)
"""Every record of every namespace: ``(namespace, owner, key)`` is the primary key.

``revision`` is assigned by the database on every insert and update (by kvstore's own
statements, and by triggers for writes that leave the column alone; see migrations 0002 and
0003): batch jobs read "everything changed since revision N" with ``WHERE revision > N`` and
must leave the column alone when they write."""

kv_tombstones = sa.Table(
    "kv_tombstones",
    metadata,
    sa.Column("namespace", _key_text(), nullable=False),
    sa.Column("owner", _key_text(), nullable=False),
    sa.Column("key", _key_text(), nullable=False),
    sa.Column("revision", sa.BigInteger(), nullable=False),
    sa.Column("deleted_at", UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("namespace", "owner", "key", name="pk_kv_tombstones"),
    sa.Index("ix_kv_tombstones_revision", "revision"),
    sa.Index("ix_kv_tombstones_deleted_at", "deleted_at"),
)
"""The last deletion of each deleted key and its revision (written by a trigger on every
DELETE from ``kv_records``); kept for the change feed until purged."""

kv_cache_generations = sa.Table(
    "kv_cache_generations",
    metadata,
    sa.Column("name", _key_text(), primary_key=True),
    sa.Column("generation", sa.BigInteger(), nullable=False),
    sa.Column("incarnation", sa.Text(), nullable=False),
    sa.Column("changed_at", UTCDateTime(), nullable=False),
)
"""Per cache (by name): the generation its keys live under, and the incarnation of the
cache server that generation belongs to."""

kv_lock_tickets = sa.Table(
    "kv_lock_tickets",
    metadata,
    sa.Column(
        "ticket",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("owner", _key_text(), nullable=False),
    sa.Column("name", _key_text(), nullable=False),
    sa.Column("expires_at", sa.Float(precision=53), nullable=False),
    sa.Index("ix_kv_lock_tickets_lock", "owner", "name", "ticket"),
    sqlite_autoincrement=True,
)
"""Session locks' queues (migration 0004): one row per waiter or holder; the oldest live
ticket of a lock holds it. ``expires_at`` is in seconds since the epoch on the database's
clock."""

kv_fences = sa.Table(
    "kv_fences",
    metadata,
    sa.Column("owner", _key_text(), nullable=False),
    sa.Column("name", _key_text(), nullable=False),
    sa.Column("token", sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint("owner", "name", name="pk_kv_fences"),
)
"""Per session lock, the fencing token of its newest grant: fenced writes check it."""
