"""The SQL backend: the system of record on PostgreSQL (asyncpg) or SQLite (aiosqlite).

One table holds every namespace (:mod:`backends.sql_schema`); Alembic keeps it current
(:mod:`backends.sql_migrate`). SQLAlchemy owns the engine, the pool, the schema and every
statement that is not on the hot path (listings, ``get_many``, ``delete_owner``, purges,
streams).

The hot path (``get``, ``put``, ``delete``) sends fixed SQL text straight to the driver
connection checked out of SQLAlchemy's own pool: one autocommit statement, no
BEGIN/COMMIT round trips, no SQLAlchemy result processing; asyncpg prepares each statement
once per connection. A save is one statement, the version check inside it (``INSERT ... ON
CONFLICT DO UPDATE ... WHERE ... RETURNING`` or ``UPDATE ... WHERE version = ...``); an
expired row counts as absent everywhere. Reads that lose their connection and statements
that hit a serialization failure or deadlock are retried with bounded backoff.

On PostgreSQL, hot statements take turns first come, first served: at most as many run at
once as the pool holds connections less one (``pool_size + max_overflow - 1``), the others
wait in one FIFO queue (an :class:`asyncio.Semaphore`) for at most ``connect_timeout +
statement_timeout``. Without it a task that just finished would take the next connection
ahead of tasks that had been waiting (asyncio's and SQLAlchemy's queues let a newcomer take
an item before a woken waiter runs): some tasks got 100 times the turns of others. The
connection left over serves the tiered store's upkeep (the change feed, cache generations:
:data:`UPKEEP`) without a turn: the probe that closes the breaker after a cache outage must
not queue behind the requests the outage piled up.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.pool import QueuePool
from sqlalchemy.util import greenlet_spawn

from backends import sql_feed
from backends.base import (
    Backend,
    Capabilities,
    Change,
    Entry,
    Snapshot,
    check_listing,
    version_conflict,
)
from backends.sql_config import READ_ONLY, SQLConfig, create_engine, parse_sql_url
from backends.sql_errors import DRIVER_ERRORS, Failure, classify, translate
from backends.sql_migrate import ensure_schema
from backends.sql_numbers import jsonb_exact
from backends.sql_schema import (
    KEY_SEPARATOR,
    key_parts,
    key_text,
    kv_records,
    kv_tombstones,
    parse_sqlite_time,
    sqlite_time,
    stored_key,
)
from kvstore.clock import SYSTEM_CLOCK
from kvstore.errors import (
    BackendUnavailableError,
    ConflictError,
    DatabaseClosedError,
    SerializationError,
)
from kvstore.keys import DEFAULT_PAGE_SIZE, Key, check_component, check_namespace

if TYPE_CHECKING:
    import builtins
    from collections.abc import AsyncIterator, Callable, Sequence

    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import PoolProxiedConnection

    from kvstore.clock import Clock
    from kvstore.options import SQLOptions

HOLD_SECONDS: Final = 5.0
"""How long the hot path may keep a pooled connection between statements before it goes
back through the pool (where recycling and pre-ping apply)."""
_LEASED_AT: Final = "kvstore_leased_at"
UPKEEP: Final = frozenset(
    {"changes", "head", "read_generation", "insert_generation", "advance_generation"}
)
"""Statements that take no turn (see the module docstring)."""
MAX_ATTEMPTS: Final = 3
"""Tries of a retryable operation (the first included)."""
GET_MANY_CHUNK: Final = 500
DEFAULT_STREAM_BATCH: Final = 1000
TOMBSTONE_RETENTION: Final = 7 * 86400.0
"""Seconds ``purge_expired`` keeps the tombstone of a deletion: change-feed followers read
only the last moments, batch jobs a week's watermark."""

_UPSERT: Final = """
INSERT INTO kv_records AS r
    (namespace, owner, key, value, version, created_at, updated_at, expires_at, revision)
VALUES ($1, $2, $3, $4, 1, $5, $5, $6, {revision})
ON CONFLICT (namespace, owner, key) DO UPDATE SET
    value = excluded.value,
    version = CASE WHEN r.expires_at <= excluded.updated_at THEN 1 ELSE r.version + 1 END,
    created_at = CASE WHEN r.expires_at <= excluded.updated_at
        THEN excluded.created_at ELSE r.created_at END,
    updated_at = excluded.updated_at,
    expires_at = excluded.expires_at,
    revision = {revision}
"""
SQL: Final = {
    "get": """
        SELECT value, version, created_at, updated_at, expires_at, revision FROM kv_records
        WHERE namespace = $1 AND owner = $2 AND key = $3
          AND (expires_at IS NULL OR expires_at > $4)""",
    "version": """
        SELECT version FROM kv_records
        WHERE namespace = $1 AND owner = $2 AND key = $3
          AND (expires_at IS NULL OR expires_at > $4)""",
    # no condition: insert, or update the live row, or restart an expired one at version 1
    "put": _UPSERT + "RETURNING version, created_at, revision",
    # expected_version=0: insert, or restart an expired row; a live row blocks it
    "put_new": _UPSERT
    + "WHERE r.expires_at <= excluded.updated_at RETURNING version, created_at, revision",
    # expected_version=N: update the live row at version N, nothing else
    "put_if": """
        UPDATE kv_records SET value = $4, version = version + 1, updated_at = $5,
            expires_at = $6, revision = {revision}
        WHERE namespace = $1 AND owner = $2 AND key = $3 AND version = $7
          AND (expires_at IS NULL OR expires_at > $5)
        RETURNING version, created_at, revision""",
    # returns expires_at, not a liveness expression: SQLite 3.40 evaluates
    # "expires_at IS NULL" wrongly in the RETURNING clause of a DELETE
    "delete": """
        DELETE FROM kv_records WHERE namespace = $1 AND owner = $2 AND key = $3
        RETURNING expires_at, {deleted}""",
    "delete_if": """
        DELETE FROM kv_records
        WHERE namespace = $1 AND owner = $2 AND key = $3 AND version = $4
          AND (expires_at IS NULL OR expires_at > $5)
        RETURNING version, {deleted}""",
}
"""The hot statements, in PostgreSQL's ``$n`` style (SQLite gets ``?n``, same numbers).

Revisions: the statement draws the written row's revision itself (an upsert's update draws
a new one in its ``SET``, evaluated once the row is locked, so one key's revisions grow with
its versions however concurrent saves interleave), on PostgreSQL from the
sequence after forcing the transaction's id (which the change feed relies on: see
:mod:`backends.sql_feed`; ``CASE`` evaluates its condition first), on SQLite as the counter
+ 1 (a trigger moves the counter). Triggers give one to writes that leave the column alone
(batch jobs' plain SQL). The delete trigger draws the tombstone's revision, read back with
``currval`` (PostgreSQL) or from the counter (SQLite)."""

_POSTGRES_REVISION: Final = (
    "CASE WHEN pg_current_xact_id() IS NOT NULL THEN nextval('kv_revision') END"
)
POSTGRES_SQL: Final = {
    name: text.replace("{revision}", _POSTGRES_REVISION).replace(
        "{deleted}", "currval('kv_revision')"
    )
    for name, text in SQL.items()
} | sql_feed.POSTGRES
"""Every statement as PostgreSQL runs it (benchmarks run the same text on the raw driver)."""
SQLITE_SQL: Final = {
    name: re.sub(r"\$(\d)", r"?\1", text)
    .replace("{revision}", "(SELECT value + 1 FROM kv_revision WHERE id = 1)")
    .replace("{deleted}", "(SELECT value FROM kv_revision WHERE id = 1)")
    for name, text in SQL.items()
} | sql_feed.SQLITE
"""Every statement as SQLite runs it."""


def _same(value: Any) -> Any:
    return value


def _to_sqlite_time(value: datetime | None) -> str | None:
    return None if value is None else sqlite_time(value)


def _from_sqlite_time(value: str | None) -> datetime | None:
    return None if value is None else parse_sqlite_time(value)


class SQLBackend(Backend):
    """Records in one SQL table; see the module docstring for the hot path."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        persistent=True, shared=True, bulk=True, feed=True
    )

    def __init__(
        self, config: SQLConfig, *, engine: AsyncEngine | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.config = config
        self.clock = clock
        self._engine = engine
        self._owns_engine = engine is None
        self._ready = False
        self._closed = False
        self._init_lock = asyncio.Lock()
        self._where = config.masked_url
        self._postgres = config.dialect == "postgresql"
        self._sql = POSTGRES_SQL if self._postgres else SQLITE_SQL
        self._to_time: Callable[[datetime | None], Any] = (
            _same if self._postgres else _to_sqlite_time
        )
        self._from_time: Callable[[Any], datetime | None] = (
            _same if self._postgres else _from_sqlite_time
        )
        self._checkout_tries = config.pool_size + config.max_overflow + 1
        self._shared: PoolProxiedConnection | None = None
        self._held: list[PoolProxiedConnection] = []
        self._hold_max = 0 if config.pool_pre_ping else config.pool_size // 2
        self._turns = asyncio.Semaphore(max(1, config.pool_size + config.max_overflow - 1))
        self._turn_timeout = config.connect_timeout + config.statement_timeout
        self._active = 0
        """Statements in flight (hot path and SQLAlchemy): ``close`` waits for them."""
        self._drained: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"SQLBackend({self._where!r})"

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine (created by :meth:`initialize`)."""
        if self._engine is None:
            raise DatabaseClosedError("the SQL backend is not initialized")
        return self._engine

    async def initialize(self) -> None:
        """Create the engine and bring the schema to the current revision."""
        if self._closed:
            raise DatabaseClosedError("the SQL backend is closed")
        if self._ready:
            return
        async with self._init_lock:
            if self._ready:
                return
            if self._engine is None:
                self._engine = create_engine(self.config)
            try:
                await ensure_schema(self._engine)
            except DRIVER_ERRORS as exc:
                raise translate(exc, "initialize", self._where) from exc
            self._ready = True

    async def close(self) -> None:
        """Refuse new statements, wait for those in flight (up to ``statement_timeout``),
        then close every connection: after ``close`` returns, none is left open."""
        if self._closed:
            return
        self._closed = True
        if self._active:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.statement_timeout):
                    await self._drained.wait()
        engine, self._engine = self._engine, None
        shared, self._shared = self._shared, None
        self._hold_max = 0
        await self._return_held()
        if shared is not None:
            await greenlet_spawn(shared.close)
        if engine is not None and self._owns_engine:
            await engine.dispose()

    # -- the hot path: driver connections from the engine's pool ---------------------------

    async def _checkout(self) -> PoolProxiedConnection:
        if not self._ready:
            await self.initialize()
        if not self._postgres:
            return self._shared or await self._checkout_shared()
        while self._held:
            fairy = self._held.pop()
            if not fairy.driver_connection.is_closed():  # type: ignore[union-attr]
                return fairy
            fairy.invalidate()  # the server dropped it while idle; nothing was sent
        engine = self.engine
        try:
            for _ in range(self._checkout_tries):
                fairy = self._checkout_now(engine) or await engine.raw_connection()
                driver: Any = fairy.driver_connection
                if not driver.is_closed():
                    fairy.info[_LEASED_AT] = time.monotonic()
                    return fairy
                fairy.invalidate()  # the server dropped it while idle; nothing was sent
            return await engine.raw_connection()
        except DRIVER_ERRORS as exc:
            raise translate(exc, "connect", self._where) from exc

    async def _checkout_shared(self) -> PoolProxiedConnection:
        """SQLite: the one pooled connection every hot statement of this backend shares.

        SQLite runs one writer at a time anyway, and one aiosqlite thread pipelining the
        statements of many tasks beats many threads fighting for the GIL and sleeping in
        SQLite's busy handler (measured: ``benchmarks/sql_backend.py``). Each statement is
        one autocommit call, so tasks can't see each other's half-done work.
        """
        async with self._init_lock:
            if self._shared is None:
                try:
                    self._shared = await self.engine.raw_connection()
                except DRIVER_ERRORS as exc:
                    raise translate(exc, "connect", self._where) from exc
            return self._shared

    def _checkout_now(self, engine: AsyncEngine) -> PoolProxiedConnection | None:
        """Check out an idle pooled connection without a greenlet switch (the common case,
        and the largest cost SQLAlchemy adds per call), or ``None`` if that needs I/O."""
        pool = engine.pool
        if self.config.pool_pre_ping or not isinstance(pool, QueuePool) or not pool.checkedin():
            return None
        try:
            return engine.sync_engine.raw_connection()
        except sa.exc.MissingGreenlet:
            # the idle connection was due for recycling: SQLAlchemy discarded it and undid
            # the checkout; the caller takes the awaiting path
            return None

    async def _release(self, fairy: PoolProxiedConnection) -> None:
        """Check a connection back in; without a greenlet switch when the pool has room
        for it (otherwise the check-in closes it, which awaits the driver)."""
        if fairy is self._shared:
            return
        if (
            len(self._held) < self._hold_max
            and time.monotonic() - fairy.info.get(_LEASED_AT, 0.0) < HOLD_SECONDS
        ):
            self._held.append(fairy)
            return
        pool = self._engine.pool if self._engine is not None else None
        if isinstance(pool, QueuePool) and pool.checkedin() < pool.size():
            fairy.close()
        else:
            await greenlet_spawn(fairy.close)

    async def _return_held(self) -> None:
        """Give the connections the hot path holds back to the pool."""
        held, self._held = self._held, []
        for fairy in held:
            fairy.info.pop(_LEASED_AT, None)
            await self._release(fairy)

    def _discard(self, fairy: PoolProxiedConnection) -> None:
        """Close a broken connection and drop it from the pool."""
        if fairy is self._shared:
            self._shared = None
        fairy.invalidate()

    def _enter(self) -> None:
        if self._closed:
            raise DatabaseClosedError("the SQL backend is closed")
        self._active += 1

    def _leave(self) -> None:
        self._active -= 1
        if not self._active and self._drained is not None:
            self._drained.set()

    async def _run(self, action: str, name: str, args: tuple[Any, ...], *, idempotent: bool) -> Any:
        """Run hot statement ``name``; return its rows. Retries what is safe to retry."""
        self._enter()
        try:
            return await self._run_statement(action, name, args, idempotent=idempotent)
        finally:
            self._leave()

    async def _run_statement(
        self, action: str, name: str, args: tuple[Any, ...], *, idempotent: bool
    ) -> Any:
        sql = self._sql[name]
        turns = self._postgres and name not in UPKEEP
        attempt, stale = 1, 0
        while True:
            if turns:
                await self._take_turn(action)
            try:
                fairy = await self._checkout()
                try:
                    driver: Any = fairy.driver_connection
                    if self._postgres:
                        rows = await driver.fetch(sql, *args)
                    else:
                        rows = await driver.execute_fetchall(sql, args)
                except BaseException as exc:
                    failure = classify(exc) if isinstance(exc, DRIVER_ERRORS) else None
                    if failure in (Failure.LOST, Failure.STALE, Failure.TIMEOUT) or (
                        failure is None and self._postgres
                    ):
                        # broken, or cancelled mid-statement (asyncpg can't resume the
                        # protocol; an aiosqlite statement finishes in its thread: kept)
                        self._discard(fairy)
                    else:
                        await self._release(fairy)  # the server answered: the connection is fine
                    if failure is None:
                        raise
                    if failure is Failure.STALE and stale < self._checkout_tries:
                        stale += 1  # nothing was sent: try the next pooled connection
                        continue
                    retry = failure is Failure.TRANSIENT or (failure is Failure.LOST and idempotent)
                    if not retry or attempt >= MAX_ATTEMPTS:
                        raise translate(exc, action, self._where) from exc
                else:
                    await self._release(fairy)
                    return rows
            finally:
                if turns:
                    self._turns.release()
            await asyncio.sleep(_backoff(attempt))  # without holding a turn
            attempt += 1

    async def _take_turn(self, action: str) -> None:
        """Wait for this statement's turn (first come, first served; see the module
        docstring), at most ``connect_timeout + statement_timeout``."""
        turns = self._turns
        if not turns.locked():
            await turns.acquire()  # free: returns at once
            return
        try:
            async with asyncio.timeout(self._turn_timeout):
                await turns.acquire()
        except TimeoutError as exc:
            raise BackendUnavailableError(
                f"{action} on {self._where}: no connection free within {self._turn_timeout:g} s"
            ) from exc

    def _entry(self, row: Sequence[Any]) -> Entry:
        value, version, created_at, updated_at, expires_at, revision = row
        return Entry(
            value=value.encode(),
            version=version,
            created_at=self._from_time(created_at),  # type: ignore[arg-type]
            updated_at=self._from_time(updated_at),  # type: ignore[arg-type]
            expires_at=self._from_time(expires_at),
            revision=revision,
        )

    async def get(self, key: Key) -> Entry | None:
        args = (key.namespace, key.owner, key_text(key.rest), self._to_time(self.clock.now()))
        rows = await self._run("get", "get", args, idempotent=True)
        return self._entry(rows[0]) if rows else None

    async def put(
        self,
        key: Key,
        value: bytes,
        *,
        expected_version: int | None = None,
        ttl: float | None = None,
    ) -> Entry:
        try:
            text = jsonb_exact(bytes(value)) if self._postgres else bytes(value).decode()
        except UnicodeDecodeError as exc:
            raise SerializationError("the SQL backend stores UTF-8 JSON text") from exc
        now = self.clock.now()
        expires_at = None if ttl is None else now + timedelta(seconds=ttl)
        args: tuple[Any, ...] = (
            key.namespace,
            key.owner,
            key_text(key.rest),
            text,
            self._to_time(now),
            self._to_time(expires_at),
        )
        if expected_version is None:
            name = "put"
        elif expected_version == 0:
            name = "put_new"
        else:
            name, args = "put_if", (*args, expected_version)
        rows = await self._run("save", name, args, idempotent=False)
        if not rows:
            raise await self._conflict(key, expected_version or 0)
        version, created_at, revision = rows[0]
        return Entry(
            value=bytes(value),
            version=version,
            created_at=self._from_time(created_at),  # type: ignore[arg-type]
            updated_at=now,
            expires_at=expires_at,
            revision=revision,
        )

    async def delete(self, key: Key, *, expected_version: int | None = None) -> int:
        args: tuple[Any, ...] = (key.namespace, key.owner, key_text(key.rest))
        clock = self.clock.now()
        now = self._to_time(clock)
        if expected_version is None:
            rows = await self._run("delete", "delete", args, idempotent=False)
            if not rows:
                return 0
            expires_at, revision = rows[0]
            # an expired row was not live: its removal is still a change (a tombstone)
            return int(revision) if _live_at(self._from_time(expires_at), clock) else 0
        if expected_version == 0:
            rows = await self._run("delete", "version", (*args, now), idempotent=True)
            if rows:
                raise version_conflict(0, rows[0][0])
            return 0
        rows = await self._run(
            "delete", "delete_if", (*args, expected_version, now), idempotent=False
        )
        if not rows:
            raise await self._conflict(key, expected_version)
        return int(rows[0][1])

    async def _conflict(self, key: Key, expected: int) -> ConflictError:
        args = (key.namespace, key.owner, key_text(key.rest), self._to_time(self.clock.now()))
        rows = await self._run("read version", "version", args, idempotent=True)
        return version_conflict(expected, rows[0][0] if rows else 0)

    # -- the change feed and cache generations (backends.sql_feed) -------------------------

    async def read_changes(
        self, after: int, limit: int
    ) -> tuple[builtins.list[Change], Snapshot | None]:
        rows = await self._run("read changes", "changes", (after, limit), idempotent=True)
        return sql_feed.changes_of(rows), sql_feed.snapshot_of(rows)

    async def head(self) -> tuple[int, Snapshot | None]:
        rows = await self._run("read the head revision", "head", (), idempotent=True)
        return int(rows[0][2]), sql_feed.snapshot_of(rows)

    async def read_generation(self, cache: str) -> tuple[int, str] | None:
        rows = await self._run(
            "read the cache generation", "read_generation", (cache,), idempotent=True
        )
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    async def advance_generation(
        self, cache: str, incarnation: str, *, current: int | None, to: int
    ) -> bool:
        if current is None:
            args: tuple[Any, ...] = (cache, incarnation, to)
            name = "insert_generation"
        else:
            args, name = (cache, incarnation, to, current), "advance_generation"
        rows = await self._run("set the cache generation", name, args, idempotent=False)
        return bool(rows)

    # -- everything else: SQLAlchemy Core ---------------------------------------------------

    async def _query(
        self,
        action: str,
        statement: sa.Executable,
        *,
        write: bool = False,
        parameters: builtins.list[dict[str, Any]] | None = None,
    ) -> Any:
        """Run ``statement`` on a pooled SQLAlchemy connection; return all rows. Reads run
        without a write lock (autocommit on PostgreSQL) and are retried when the
        connection is lost; writes commit, and are retried on serialization failures."""
        self._enter()
        try:
            return await self._query_statement(action, statement, write, parameters)
        finally:
            self._leave()

    async def _query_statement(
        self,
        action: str,
        statement: sa.Executable,
        write: bool,
        parameters: builtins.list[dict[str, Any]] | None,
    ) -> Any:
        if not self._ready:
            await self.initialize()
        await self._return_held()
        attempt = 1
        while True:
            try:
                async with self.engine.connect() as connection:
                    if not write:
                        options: dict[str, Any] = (
                            {"isolation_level": "AUTOCOMMIT"}
                            if self._postgres
                            else {READ_ONLY: True}
                        )
                        await connection.execution_options(**options)
                    result = await connection.execute(statement, parameters)
                    rows = result.all()
                    if write:
                        await connection.commit()
                    return rows
            except DRIVER_ERRORS as exc:
                failure = classify(exc)
                retry = failure in (Failure.TRANSIENT, Failure.STALE) or (
                    failure is Failure.LOST and not write
                )
                if not retry or attempt >= MAX_ATTEMPTS:
                    raise translate(exc, action, self._where) from exc
                await asyncio.sleep(_backoff(attempt))
                attempt += 1

    @staticmethod
    def _sa_entry(row: Sequence[Any]) -> Entry:
        """The entry of a row ending in the :func:`_entry_columns` (by position: faster)."""
        return Entry(row[-6].encode(), row[-5], row[-4], row[-3], row[-2], row[-1])

    async def get_many(self, keys: Sequence[Key]) -> list[Entry | None]:
        if not keys:
            return []
        if len(keys) == 1:  # the tiered store's single misses: take the hot path
            return [await self.get(keys[0])]
        t = kv_records
        found: dict[tuple[str, str, str], Entry] = {}
        wanted = [(k.namespace, k.owner, key_text(k.rest)) for k in keys]
        unique = list(dict.fromkeys(wanted))
        now = self.clock.now()
        for start in range(0, len(unique), GET_MANY_CHUNK):
            chunk = unique[start : start + GET_MANY_CHUNK]
            statement = sa.select(t.c.namespace, t.c.owner, t.c.key, *_entry_columns()).where(
                sa.tuple_(t.c.namespace, t.c.owner, t.c.key).in_(chunk), _live(now)
            )
            for row in await self._query("get_many", statement):
                found[(row.namespace, row.owner, row.key)] = self._sa_entry(row)
        return [found.get(k) for k in wanted]

    async def list(
        self,
        namespace: str,
        prefix: tuple[str, ...],
        *,
        after: tuple[str, ...] | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> list[tuple[Key, Entry]]:
        check_listing(namespace, prefix, after, limit)
        owner = prefix[0]
        t = kv_records
        conditions = [t.c.namespace == namespace, t.c.owner == owner, _live(self.clock.now())]
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
                return []
            if after[0] == owner:
                conditions.append(t.c.key > key_text(after[1:]))
        statement = (
            sa.select(t.c.key, *_entry_columns()).where(*conditions).order_by(t.c.key).limit(limit)
        )
        rows = await self._query("list", statement)
        return [
            (stored_key(namespace, (owner, *key_parts(row[0]))), self._sa_entry(row))
            for row in rows
        ]

    async def delete_owner(self, owner: str) -> int:
        check_component(owner, "owner")
        t = kv_records
        now = self.clock.now()
        statement = sa.delete(t).where(t.c.owner == owner).returning(t.c.expires_at)
        rows = await self._query("delete_owner", statement, write=True)
        return sum(1 for row in rows if _live_at(row.expires_at, now))

    async def purge_expired(
        self, batch_size: int = 1000, *, tombstones_older_than: float = TOMBSTONE_RETENTION
    ) -> int:
        """Delete expired rows, ``batch_size`` per transaction, and the tombstones of
        deletions older than ``tombstones_older_than`` seconds (the change feed reads only
        recent ones); return how many rows were deleted."""
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        dead = kv_tombstones
        cutoff = self.clock.now() - timedelta(seconds=tombstones_older_than)
        old = sa.select(dead.c.namespace, dead.c.owner, dead.c.key).where(
            dead.c.deleted_at < cutoff
        )
        while True:
            statement = (
                sa.delete(dead)
                .where(
                    sa.tuple_(dead.c.namespace, dead.c.owner, dead.c.key).in_(old.limit(batch_size))
                )
                .returning(dead.c.revision)
            )
            if len(await self._query("purge_expired", statement, write=True)) < batch_size:
                break
        t = kv_records
        total = 0
        while True:
            now = self.clock.now()
            expired = (
                sa.select(t.c.namespace, t.c.owner, t.c.key)
                .where(t.c.expires_at <= now)
                .limit(batch_size)
            )
            statement = (
                sa.delete(t)
                .where(sa.tuple_(t.c.namespace, t.c.owner, t.c.key).in_(expired))
                .where(t.c.expires_at <= now)  # re-checked on rows saved meanwhile
                .returning(t.c.version)
            )
            deleted = len(await self._query("purge_expired", statement, write=True))
            total += deleted
            if deleted < batch_size:
                return total

    async def recent(
        self, namespace: str, *, owner: str | None = None, limit: int = DEFAULT_PAGE_SIZE
    ) -> builtins.list[tuple[Key, Entry]]:
        """Live entries of ``namespace`` (of ``owner`` if given), newest ``updated_at``
        first, at most ``limit``: served by the (namespace, updated_at) index (cache warm-up,
        "sessions updated lately")."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        t = kv_records
        conditions = [t.c.namespace == check_namespace(namespace), _live(self.clock.now())]
        if owner is not None:
            conditions.append(t.c.owner == check_component(owner, "owner"))
        statement = (
            sa.select(t.c.namespace, t.c.owner, t.c.key, *_entry_columns())
            .where(*conditions)
            .order_by(t.c.updated_at.desc())
            .limit(limit)
        )
        rows = await self._query("recent", statement)
        return [
            (stored_key(row[0], (row[1], *key_parts(row[2]))), self._sa_entry(row)) for row in rows
        ]

    async def count(self) -> dict[str, int]:
        """Live records per namespace: one ``GROUP BY namespace`` query counted in the
        database (no value leaves it; what ``kvstore stats`` shows)."""
        t = kv_records
        statement = (
            sa.select(t.c.namespace, sa.func.count())
            .where(_live(self.clock.now()))
            .group_by(t.c.namespace)
            .order_by(t.c.namespace)
        )
        return {str(name): int(number) for name, number in await self._query("count", statement)}

    def scan(
        self,
        *,
        namespace: str | None = None,
        owner: str | None = None,
        batch_size: int = DEFAULT_STREAM_BATCH,
    ) -> AsyncIterator[tuple[Key, Entry]]:
        return self.stream(namespace, owner, batch_size=batch_size)

    async def restore(self, items: Sequence[tuple[Key, Entry]]) -> int:
        """One upsert, compiled once and executed for many rows, that only replaces older
        or expired rows; the JSON text is cast on the server, never re-encoded."""
        if not items:
            return 0
        t = kv_records
        insert = postgresql.insert if self._postgres else sqlite.insert
        value_type = postgresql.JSONB() if self._postgres else sa.Text()
        columns = ("namespace", "owner", "key", "version", "created_at", "updated_at")
        upsert = insert(t).values(
            {name: sa.bindparam(name) for name in (*columns, "expires_at")}
            | {"value": sa.cast(sa.bindparam("value", type_=sa.Text()), value_type)}
        )
        statement = upsert.on_conflict_do_update(
            index_elements=[t.c.namespace, t.c.owner, t.c.key],
            set_={
                name: upsert.excluded[name]
                for name in ("value", "version", "created_at", "updated_at", "expires_at")
            },
            where=(t.c.version < upsert.excluded.version) | (t.c.expires_at <= self.clock.now()),
        ).returning(t.c.version)
        rows = [
            {
                "namespace": key.namespace,
                "owner": key.owner,
                "key": key_text(key.rest),
                "value": jsonb_exact(entry.value) if self._postgres else entry.value.decode(),
                "version": entry.version,
                "created_at": entry.created_at,
                "updated_at": entry.updated_at,
                "expires_at": entry.expires_at,
            }
            for key, entry in items
        ]
        written = await self._query("restore", statement, write=True, parameters=rows)
        return len(written)

    async def stream(
        self,
        namespace: str | None = None,
        owner: str | None = None,
        *,
        updated_since: datetime | None = None,
        updated_before: datetime | None = None,
        batch_size: int = DEFAULT_STREAM_BATCH,
    ) -> AsyncIterator[tuple[Key, Entry]]:
        """Every live entry (of ``namespace``, of ``owner``, updated in
        ``[updated_since, updated_before)``), in key order, for batch jobs.

        Keyset pagination over the primary key: each batch is one short query on a pooled
        connection (none is held while the caller works), so memory stays flat however many
        rows there are. Rows saved while the stream runs may or may not be seen.
        """
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        t = kv_records
        conditions: list[sa.ColumnElement[bool]] = []
        if namespace is not None:
            conditions.append(t.c.namespace == check_namespace(namespace))
        if owner is not None:
            conditions.append(t.c.owner == check_component(owner, "owner"))
        if updated_since is not None:
            conditions.append(t.c.updated_at >= _aware(updated_since))
        if updated_before is not None:
            conditions.append(t.c.updated_at < _aware(updated_before))
        primary = (t.c.namespace, t.c.owner, t.c.key)
        # the keyset compares only the key columns not fixed by the filters: SQLite can
        # seek on "namespace = ? AND (owner, key) > (?, ?)" but not on the full row value
        fixed = 0 if namespace is None else 1 if owner is None else 2
        moving = primary[fixed:]
        last: tuple[str, ...] | None = None
        while True:
            where = [*conditions, _live(self.clock.now())]
            if last is not None:
                where.append(
                    sa.tuple_(*moving) > sa.tuple_(*last) if len(last) > 1 else moving[0] > last[0]
                )
            statement = (
                sa.select(*primary, *_entry_columns())
                .where(*where)
                .order_by(*primary)
                .limit(batch_size)
            )
            rows = await self._query("stream", statement)
            for row in rows:
                key = stored_key(row[0], (row[1], *key_parts(row[2])))
                yield key, self._sa_entry(row)
            if len(rows) < batch_size:
                return
            last = tuple(rows[-1][fixed:3])


def _entry_columns() -> tuple[sa.ColumnElement[Any], ...]:
    t = kv_records
    # the value as JSON text: no parse on the way out
    value = sa.type_coerce(t.c.value, sa.Text()).label("value")
    return (value, t.c.version, t.c.created_at, t.c.updated_at, t.c.expires_at, t.c.revision)


def _live(now: datetime) -> sa.ColumnElement[bool]:
    expires_at = kv_records.c.expires_at
    return sa.or_(expires_at.is_(None), expires_at > now)


def _live_at(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is None or expires_at > now


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("stream time bounds must be aware datetimes")
    return value.astimezone(UTC)


def _backoff(attempt: int) -> float:
    """Seconds before try ``attempt + 1``: exponential from 20 ms, capped, jittered."""
    return min(0.02 * 2.0**attempt, 0.5) * (0.5 + random.random() / 2)  # noqa: S311


def build_sql_backend(
    url: str, options: SQLOptions | None = None, *, clock: Clock = SYSTEM_CLOCK
) -> SQLBackend:
    """A SQL backend for ``url`` (``postgresql://``, ``sqlite:///path``). No I/O."""
    return SQLBackend(parse_sql_url(url, options), clock=clock)
