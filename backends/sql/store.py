"""The SQL backend: the system of record on PostgreSQL (asyncpg) or SQLite (aiosqlite).

One table holds every namespace (:mod:`backends.sql.schema`); Alembic keeps it current
(:mod:`backends.sql.migrate`). ``get``, ``put`` and ``delete`` are one fixed statement each
(:mod:`backends.sql.statements`) run on the hot path (:mod:`backends.sql.hot_path`); so are
the change feed's and the cache generations' (:mod:`backends.sql.feed`). SQLAlchemy owns
the engine, the pool, the schema and every other statement (:mod:`backends.sql.queries`:
listings, ``get_many``, ``delete_owner``, purges, restore, streams; the reads of many rows
and the bulk operations are in :mod:`backends.sql.bulk`), run by :mod:`backends.sql.core`
on a pooled connection. An expired row counts as absent everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Final

import sqlalchemy as sa

from backends.base import (
    Backend,
    Capabilities,
    Change,
    Entry,
    Snapshot,
    check_fence,
    check_lock,
    fenced,
    version_conflict,
)
from backends.reports import SQLStats, Stats
from backends.sql import feed, queries
from backends.sql.batch import GroupCommit
from backends.sql.bulk import BulkOperations
from backends.sql.config import SQLConfig, create_engine, parse_sql_url
from backends.sql.core import CoreRunner
from backends.sql.errors import DRIVER_ERRORS, translate
from backends.sql.hot_path import HotPath
from backends.sql.locks import LockQueue
from backends.sql.migrate import ensure_schema
from backends.sql.numbers import jsonb_exact
from backends.sql.replica import ReplicaReads, replica_config
from backends.sql.schema import DriverTimes, key_columns, key_parts, key_text, stored_key
from kvstore.clock import SYSTEM_CLOCK
from kvstore.errors import (
    ConflictError,
    DatabaseClosedError,
    KVStoreError,
    SerializationError,
)
from kvstore.keys import Fence, Key, check_component

if TYPE_CHECKING:
    import builtins
    from collections.abc import Sequence

    from sqlalchemy.ext.asyncio import AsyncEngine

    from kvstore.clock import Clock
    from kvstore.options import SQLOptions

FENCED_PUTS: Final[dict[int | None, str]] = {None: "put_fenced", 0: "put_new_fenced"}
"""The fenced statement of a save without a version check, and of one that must create."""


class SQLBackend(BulkOperations, Backend):
    """Records in one SQL table; see the module docstring."""

    kind: ClassVar[str] = "sql"
    capabilities = Capabilities(persistent=True, shared=True, bulk=True, feed=True)

    def __init__(
        self, config: SQLConfig, *, engine: AsyncEngine | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.config = config
        self.system = config.dialect
        self.clock = clock
        self._engine = engine
        self._owns_engine = engine is None
        self._ready = False
        self._closed = False
        self._init_lock = asyncio.Lock()
        self._where = config.masked_url
        self._postgres = config.dialect == "postgresql"
        self._times = DriverTimes(self._postgres)
        self._hot = HotPath(config, self._where, self._ready_engine)
        self._locks = LockQueue(self._transaction, config.dialect)
        self._core = CoreRunner(
            self._ready_engine,
            postgres=self._postgres,
            where=self._where,
            before=self._hot.return_held,
        )
        self._saves = GroupCommit(
            self._hot, self._hot.turns, together=self._postgres and config.group_commit
        )
        self._replica = (
            ReplicaReads(replica_config(config), self._primary_position, wait=config.replica_wait)
            if config.replica_url is not None
            else None
        )
        self._writes = 0
        """Writes that have ended (acknowledged or not): a replica read after one waits for
        the replica to replay it."""
        self._active = 0
        """Statements in flight (hot path and SQLAlchemy): ``close`` waits for them."""
        self._drained: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"SQLBackend({self._where!r})"

    def sql_stats(self) -> SQLStats:
        """The counters now."""
        hot, replica = self._hot, self._replica
        return SQLStats(
            saves=self._saves.saves,
            save_statements=self._saves.statements,
            connections_in_use=hot.in_use,
            connection_waits=hot.waits,
            connection_wait_seconds=hot.wait_seconds,
            replica_reads=replica.reads if replica else 0,
            replica_fallbacks=replica.fallbacks if replica else 0,
            replica_errors=replica.errors if replica else 0,
        )

    def stats(self) -> Stats:
        return Stats(backend=self.kind, sql=self.sql_stats())

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
                await ensure_schema(self._engine, partitions=self.config.partitions)
            except DRIVER_ERRORS as exc:
                raise translate(exc, "initialize", self._where) from exc
            self._ready = True

    async def _ready_engine(self) -> AsyncEngine:
        if not self._ready:
            await self.initialize()
        return self.engine

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
        await self._saves.close()
        await self._hot.close()
        if self._replica is not None:
            await self._replica.close()
        if engine is not None and self._owns_engine:
            await engine.dispose()

    def _enter(self) -> None:
        if self._closed:
            raise DatabaseClosedError("the SQL backend is closed")
        self._active += 1

    def _leave(self) -> None:
        self._active -= 1
        if not self._active and self._drained is not None:
            self._drained.set()

    async def _run(self, action: str, name: str, args: tuple[Any, ...], *, idempotent: bool) -> Any:
        """Run hot statement ``name`` (:mod:`backends.sql.hot_path`); return its rows."""
        self._enter()
        try:
            return await self._hot.run(action, name, args, idempotent=idempotent)
        finally:
            if not idempotent:
                self._writes += 1
            self._leave()

    # -- the hot path: one fixed statement per operation -----------------------------------

    async def get(self, key: Key) -> Entry | None:
        args = (*key_columns(key), self._times.to_driver(self.clock.now()))
        rows = await self._run("get", "get", args, idempotent=True)
        return self._times.entry(rows[0]) if rows else None

    async def _get_batch(
        self, keys: Sequence[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], Entry]:
        """The live entries of ``keys`` (table key columns) as the hot statement
        ``get_batch``, by key."""
        now = self._times.to_driver(self.clock.now())
        if self._postgres:
            namespaces, owners, texts = (list(part) for part in zip(*keys, strict=True))
            args: tuple[Any, ...] = (namespaces, owners, texts, now)
        else:
            args = (json.dumps(keys), now)
        rows = await self._run("get_many", "get_batch", args, idempotent=True)
        entry = self._times.entry
        return {(row[0], row[1], row[2]): entry(row) for row in rows}

    async def _list_owner(
        self, namespace: str, owner: str, after: tuple[str, ...] | None, limit: int
    ) -> builtins.list[tuple[Key, Entry]] | None:
        """A page of one owner's records as a hot statement (a tenth of the CPU of the Core
        statement, built and cache-keyed per call); ``None`` when a replica answers
        listings (the Core path, :mod:`.bulk`)."""
        if self._replica is not None:
            return None
        start = ""  # every key is longer: the first page
        if after is not None:
            if after[0] > owner:
                return []
            if after[0] == owner:
                start = key_text(after[1:])
        args = (namespace, owner, start, self._times.to_driver(self.clock.now()), limit)
        rows = await self._run("list", "list", args, idempotent=True)
        entry = self._times.entry
        return [(stored_key(namespace, (owner, *key_parts(row[0]))), entry(row)) for row in rows]

    async def put(
        self,
        key: Key,
        value: bytes,
        *,
        expected_version: int | None = None,
        ttl: float | None = None,
        fence: Fence | None = None,
    ) -> Entry:
        check_fence(key, fence)
        try:
            text = jsonb_exact(bytes(value)) if self._postgres else bytes(value).decode()
        except UnicodeDecodeError as exc:
            raise SerializationError("the SQL backend stores UTF-8 JSON text") from exc
        now = self.clock.now()
        expires_at = None if ttl is None else now + timedelta(seconds=ttl)
        times = self._times
        args = (*key_columns(key), text, times.to_driver(now), times.to_driver(expires_at))
        self._enter()
        try:
            if fence is None:
                saved = await self._saves.save(args, expected_version)
            else:  # alone, never grouped: the fence check is in its statement
                name = FENCED_PUTS.get(expected_version, "put_if_fenced")
                check: tuple[int, ...] = (expected_version,) if expected_version else ()
                rows = await self._hot.run(
                    "put", name, (*args, *check, fence.name, fence.token), idempotent=False
                )
                saved = (rows[0][0], rows[0][1], rows[0][2]) if rows else None
        finally:
            self._writes += 1
            self._leave()
        if saved is None:
            raise await self._refused(key, expected_version or 0, fence)
        version, created_at, revision = saved
        return Entry(
            value=bytes(value),
            version=version,
            created_at=self._times.required(created_at),
            updated_at=now,
            expires_at=expires_at,
            revision=revision,
        )

    async def delete(
        self, key: Key, *, expected_version: int | None = None, fence: Fence | None = None
    ) -> int:
        check_fence(key, fence)
        args = key_columns(key)
        clock = self.clock.now()
        now = self._times.to_driver(clock)
        fenced = () if fence is None else (fence.name, fence.token)
        suffix = "" if fence is None else "_fenced"
        if expected_version is None:
            rows = await self._run("delete", "delete" + suffix, (*args, *fenced), idempotent=False)
            if not rows and fence is not None:
                await self._check_fence(fence)
            if not rows:
                return 0
            expires_at, revision = rows[0]
            # an expired row was not live: its removal is still a change (a tombstone)
            return (
                int(revision) if queries.live_at(self._times.from_driver(expires_at), clock) else 0
            )
        if expected_version == 0:
            rows = await self._run("delete", "version", (*args, now), idempotent=True)
            if rows:
                raise version_conflict(0, rows[0][0])
            return 0
        rows = await self._run(
            "delete",
            "delete_if" + suffix,
            (*args, expected_version, now, *fenced),
            idempotent=False,
        )
        if not rows:
            raise await self._refused(key, expected_version, fence)
        return int(rows[0][1])

    async def _refused(self, key: Key, expected: int, fence: Fence | None) -> KVStoreError:
        """Why a conditional write wrote nothing: a newer lock (``FencedError``), else the
        version check (``ConflictError``)."""
        if fence is not None:
            await self._check_fence(fence)
        return await self._conflict(key, expected)

    async def _check_fence(self, fence: Fence) -> None:
        rows = await self._run("read fence", "fence", (fence.owner, fence.name), idempotent=True)
        newest = int(rows[0][0]) if rows else 0
        if newest > fence.token:
            raise fenced(fence, newest)

    # -- session locks (backends.sql.locks) ------------------------------------------------

    async def lock_ticket(self, owner: str, name: str, *, hold: float) -> int:
        check_lock(owner, name, hold)
        if not self._postgres:
            return await self._locks.ticket(owner, name, hold)
        rows = await self._run("lock", "lock_ticket", (owner, name, hold), idempotent=False)
        return int(rows[0][0])

    async def lock_turn(
        self, owner: str, name: str, ticket: int, *, hold: float, lease: float
    ) -> bool | None:
        check_lock(owner, name, hold, lease)
        if not self._postgres:
            return await self._locks.turn(owner, name, ticket, hold, lease)
        args = (owner, name, ticket, hold, lease)
        [(renewed, token)] = await self._run("lock", "lock_turn", args, idempotent=True)
        if renewed is None:
            return None
        if token is not None and token > ticket:  # passed over: see backends.sql.locks
            await self.lock_release(owner, name, ticket)
            return None
        return bool(token == ticket)

    async def lock_release(self, owner: str, name: str, ticket: int) -> None:
        check_lock(owner, name)
        if not self._postgres:
            await self._locks.release(owner, name, ticket)
            return
        await self._run("unlock", "lock_release", (owner, name, ticket), idempotent=True)

    async def _conflict(self, key: Key, expected: int) -> ConflictError:
        args = (*key_columns(key), self._times.to_driver(self.clock.now()))
        rows = await self._run("read version", "version", args, idempotent=True)
        return version_conflict(expected, rows[0][0] if rows else 0)

    # -- the change feed and cache generations (backends.sql.feed) -------------------------

    async def read_changes(
        self, after: int, limit: int
    ) -> tuple[builtins.list[Change], Snapshot | None]:
        rows = await self._run("read changes", "changes", (after, limit), idempotent=True)
        return feed.changes_of(rows), feed.snapshot_of(rows)

    async def head(self) -> tuple[int, Snapshot | None]:
        rows = await self._run("read the head revision", "head", (), idempotent=True)
        return int(rows[0][2]), feed.snapshot_of(rows)

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

    # -- everything else: SQLAlchemy Core (backends.sql.queries) ---------------------------

    async def _query(
        self,
        action: str,
        statement: sa.Executable,
        *,
        write: bool = False,
        parameters: builtins.list[dict[str, Any]] | None = None,
    ) -> Any:
        """Run a Core ``statement`` (:class:`~backends.sql.core.CoreRunner`); its rows."""
        self._enter()
        try:
            return await self._core.run(action, statement, write=write, parameters=parameters)
        finally:
            if write:
                self._writes += 1
            self._leave()

    async def _read(self, action: str, statement: sa.Executable) -> Any:
        """Run a batch-style read: on the replica if there is one and it has this backend's
        writes (:mod:`backends.sql.replica`), else on the primary."""
        replica = self._replica
        if replica is not None:
            self._enter()
            try:
                rows = await replica.rows(statement, self._writes)
            finally:
                self._leave()
            if rows is not None:
                return rows
        return await self._query(action, statement)

    async def _primary_position(self) -> str:
        """The primary's WAL position now: at or past every commit acknowledged so far."""
        position = sa.cast(sa.func.pg_current_wal_lsn(), sa.Text)
        rows = await self._query("read the WAL position", sa.select(position))
        return str(rows[0][0])

    async def _transaction(
        self, action: str, statements: Sequence[tuple[sa.Executable, dict[str, Any]]]
    ) -> builtins.list[Any]:
        """Run Core ``statements`` in one transaction; the rows of each."""
        self._enter()
        try:
            return await self._core.run_all(action, statements)
        finally:
            self._writes += 1
            self._leave()

    async def delete_owner(self, owner: str) -> int:
        check_component(owner, "owner")
        now = self.clock.now()
        rows = await self._query("delete_owner", queries.delete_owner(owner), write=True)
        await self._locks.erase(owner)
        return sum(1 for row in rows if queries.live_at(row.expires_at, now))


def build_sql_backend(
    url: str, options: SQLOptions | None = None, *, clock: Clock = SYSTEM_CLOCK
) -> SQLBackend:
    """A SQL backend for ``url`` (``postgresql://``, ``sqlite:///path``). No I/O."""
    return SQLBackend(parse_sql_url(url, options), clock=clock)
