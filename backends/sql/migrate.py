"""Schema migrations: bring a database to the current schema with Alembic.

:func:`ensure_schema` is what ``initialize()`` runs: a cheap version check, and only when
the database is behind, the upgrade under a lock, so two processes starting at once
migrate once (PostgreSQL: an advisory lock; SQLite: a lock file beside the database, and
the write lock of ``BEGIN IMMEDIATE`` around Alembic's transaction). :func:`upgrade` and
:func:`current_revision` are the command-line entry points (``kvstore db upgrade`` /
``kvstore db current``).
"""

from __future__ import annotations

import asyncio
import os
import re
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

from backends.sql.config import check_partitions, create_engine, parse_sql_url
from backends.sql.errors import DRIVER_ERRORS, translate
from backends.sql.schema import VERSION_TABLE
from kvstore.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from alembic.config import Config
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

MIGRATIONS: Final = Path(__file__).with_name("migrations")
_REVISION = re.compile(r'^(down_revision|revision)\b[^=]*=\s*(?:"(\w+)"|None)\s*$', re.M)


@cache
def code_head() -> str:
    """The newest revision in ``migrations/versions``, read from the files' ``revision`` and
    ``down_revision`` lines without importing them or Alembic (a test keeps it equal to
    Alembic's head): what :func:`ensure_schema` compares with, so that a store at the
    current schema opens without Alembic (a tenth of a second of every command-line run)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for name, value in _REVISION.findall(path.read_text(encoding="utf-8")):
            if value:
                (revisions if name == "revision" else parents).add(value)
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads, not one: {sorted(heads)}")
    return heads.pop()


_LOCK_ID: Final = 0x6B7673746F7265  # "kvstore": the advisory lock serializing migrations


def alembic_config() -> Config:
    """Alembic's configuration for the packaged migrations (no ini file needed)."""
    from alembic.config import Config  # imported only when a migration runs

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@cache
def head_revision() -> str:
    """The newest revision this code knows, as Alembic reads it from the migrations."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _current(connection: sa.Connection) -> str | None:
    """The revision in Alembic's version table (``None``: never migrated), read with plain
    SQL: one linear history, so the table holds at most one row."""
    if not sa.inspect(connection).has_table(VERSION_TABLE):
        return None
    version: sa.Select[Any] = sa.select(sa.column("version_num")).select_from(
        sa.table(VERSION_TABLE)
    )
    revision = connection.execute(version).scalar()
    return None if revision is None else str(revision)


def _upgrade(connection: sa.Connection, target: str) -> None:
    from alembic import command

    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, target)


async def _revision(connection: AsyncConnection) -> str | None:
    revision = await connection.run_sync(_current)
    await connection.rollback()
    return revision


async def ensure_schema(
    engine: AsyncEngine, target: str = "head", *, partitions: int | None = None
) -> str | None:
    """Upgrade the database behind ``engine`` to ``target`` unless it is there already;
    return the revision it is at afterwards. Idempotent and safe to run concurrently.

    ``partitions`` (PostgreSQL): ``kv_records`` must have that many hash partitions by
    owner; an empty plain table is partitioned now, one holding records is refused
    (:class:`ConfigurationError`: ``kvstore db partition`` converts it), as is one
    partitioned otherwise."""
    if engine.dialect.name == "sqlite":
        async with _file_lock(engine.url.database or ""):
            return await _ensure(engine, target, None)
    return await _ensure(engine, target, partitions)


@asynccontextmanager
async def _file_lock(database: str) -> AsyncIterator[None]:
    """Serialize SQLite initialization across processes with a lock file beside the
    database (``<file>-kvstore.lock``). SQLite's own locks can't cover it: switching a
    new file to WAL while another process migrates it can deadlock past the busy timeout.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: SQLite's own locking only
        yield
        return
    descriptor = os.open(f"{database}-kvstore.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        await asyncio.to_thread(fcntl.flock, descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


async def _ensure(engine: AsyncEngine, target: str, partitions: int | None) -> str | None:
    wanted = code_head() if target == "head" else target
    async with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            # WAL persists in the file: readers never block the writer (outside a transaction)
            raw = await connection.get_raw_connection()
            driver: Any = raw.driver_connection
            await driver.execute("PRAGMA journal_mode=WAL")
        current = await _revision(connection)
        if current == wanted and (partitions is None or await _partitioned(connection, partitions)):
            return wanted
        postgres = engine.dialect.name == "postgresql"
        if postgres:
            await connection.execute(sa.select(sa.func.pg_advisory_lock(_LOCK_ID)))
            await connection.commit()
        try:
            if await _revision(connection) != wanted:
                await connection.run_sync(_upgrade, target)
                await connection.commit()
            if partitions is not None and not await _partitioned(connection, partitions):
                await _partition_empty(connection, partitions)
                await connection.commit()
            return await _revision(connection)
        finally:
            if postgres:
                await connection.execute(sa.select(sa.func.pg_advisory_unlock(_LOCK_ID)))
                await connection.commit()


async def _partitioned(connection: AsyncConnection, partitions: int) -> bool:
    """Whether ``kv_records`` has ``partitions`` partitions (``False``: a plain table);
    :class:`ConfigurationError` if it has another number."""
    from backends.sql.partition import partition_count

    count = await partition_count(connection)
    await connection.rollback()
    if count and count != partitions:
        raise ConfigurationError(
            f"kv_records has {count} partitions, the partitions option asks for {partitions}"
        )
    return count == partitions


async def _partition_empty(connection: AsyncConnection, partitions: int) -> None:
    """Partition a plain ``kv_records`` that holds no records; refuse one that does (a copy
    that makes writes wait is for ``kvstore db partition`` to start, not a restart)."""
    from backends.sql.partition import partition_records

    holds = await connection.scalar(sa.text("SELECT EXISTS (SELECT 1 FROM kv_records)"))
    if holds:
        await connection.rollback()
        raise ConfigurationError(
            "kv_records holds records and is not partitioned: `kvstore db partition "
            f"--partitions {partitions}` converts it (writes wait during the copy; see "
            "docs/scale.md)"
        )
    await partition_records(connection, partitions)


async def partition(url: str, partitions: int, *, lock_timeout: float | None = None) -> int | None:
    """Hash-partition the ``kv_records`` of the PostgreSQL database at ``url`` by owner
    into ``partitions`` parts, copying its rows (:mod:`backends.sql.partition`); return how
    many rows were copied, ``None`` if it was partitioned so already (another number of
    partitions is a :class:`ConfigurationError`). The schema is brought to head first.
    A lock on the table not granted within ``lock_timeout`` seconds (default
    :data:`~backends.sql.partition.LOCK_TIMEOUT`) ends it with nothing changed
    (:class:`BackendUnavailableError`)."""
    config = parse_sql_url(url)
    if config.dialect != "postgresql":
        raise ConfigurationError("partitioning is for PostgreSQL databases")
    check_partitions(partitions)
    engine = create_engine(config)
    try:
        await ensure_schema(engine)
        async with engine.connect() as connection:
            await connection.execute(sa.select(sa.func.pg_advisory_lock(_LOCK_ID)))
            await connection.commit()
            try:
                from backends.sql.partition import LOCK_TIMEOUT, partition_records

                if await _partitioned(connection, partitions):
                    return None
                copied = await partition_records(
                    connection, partitions, lock_timeout=lock_timeout or LOCK_TIMEOUT
                )
                await connection.commit()
                return copied
            finally:
                await connection.rollback()
                await connection.execute(sa.select(sa.func.pg_advisory_unlock(_LOCK_ID)))
                await connection.commit()
    except DRIVER_ERRORS as exc:
        raise translate(exc, "partition", config.masked_url) from exc
    finally:
        await engine.dispose()


async def upgrade(url: str, target: str = "head") -> str | None:
    """Upgrade the database at ``url`` to ``target``; return its revision afterwards.
    Raises :class:`BackendUnavailableError` when the server can't be reached."""
    config = parse_sql_url(url)
    engine = create_engine(config)
    try:
        return await ensure_schema(engine, target, partitions=config.partitions)
    except DRIVER_ERRORS as exc:
        raise translate(exc, "upgrade", config.masked_url) from exc
    finally:
        await engine.dispose()


async def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at (``None``: never migrated)."""
    config = parse_sql_url(url)
    engine = create_engine(config)
    try:
        async with engine.connect() as connection:
            return await _revision(connection)
    except DRIVER_ERRORS as exc:
        raise translate(exc, "read the schema revision", config.masked_url) from exc
    finally:
        await engine.dispose()
