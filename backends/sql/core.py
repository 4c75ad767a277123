"""Everything off the hot path: SQLAlchemy Core statements (:mod:`.queries`) on pooled
connections, with the retry policy of :mod:`.errors`, and the loops built on them
(keyset-paginated streams, batched purges).

Reads run without a write lock (autocommit on PostgreSQL, read-only on SQLite) and are
retried when the connection was lost; writes commit, and are retried on serialization
failures and other transient errors.

A write transaction on SQLite is not cut off by a cancellation of its caller: it runs to
its end (commit or rollback) and the cancellation is raised after. Cut off mid-way, its
connection would be dropped without a rollback and hold the file's write lock until it
is garbage-collected, so every other writer of the file would wait out its busy timeout
and fail. (On PostgreSQL the server rolls back a transaction whose connection goes.)
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from backends.sql import queries
from backends.sql.config import READ_ONLY
from backends.sql.errors import DRIVER_ERRORS, MAX_ATTEMPTS, Failure, backoff, classify, translate
from backends.sql.schema import key_parts, stored_key

if TYPE_CHECKING:
    import builtins
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
    from datetime import datetime

    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from backends.base import Entry
    from kvstore.clock import Clock
    from kvstore.keys import Key


T = TypeVar("T")


class CoreRunner:
    """Runs Core statements on the engine's pool for one SQL backend."""

    def __init__(
        self,
        engine: Callable[[], Awaitable[AsyncEngine]],
        *,
        postgres: bool,
        where: str,
        before: Callable[[], Awaitable[None]],
    ) -> None:
        """``engine`` returns the ready engine; ``before`` runs before each statement (the
        hot path gives back connections it holds, so the pool has them)."""
        self._engine = engine
        self._postgres = postgres
        self._where = where
        self._before = before

    async def run(
        self,
        action: str,
        statement: sa.Executable,
        *,
        write: bool = False,
        parameters: builtins.list[dict[str, Any]] | None = None,
    ) -> Any:
        """Run ``statement``; return all its rows. Raises ``BackendUnavailableError`` (or
        the error :func:`~backends.sql.errors.translate` makes) once retries are spent."""

        async def body(connection: AsyncConnection) -> Any:
            return (await connection.execute(statement, parameters)).all()

        return await self._retrying(action, write, body)

    async def run_all(
        self, action: str, statements: Sequence[tuple[sa.Executable, dict[str, Any]]]
    ) -> list[Any]:
        """Run ``statements`` in order in one write transaction; the rows of each."""

        async def body(connection: AsyncConnection) -> list[Any]:
            results = []
            for statement, parameters in statements:
                result = await connection.execute(statement, parameters)
                results.append(result.all() if result.returns_rows else [])
            return results

        result: list[Any] = await self._retrying(action, True, body)
        return result

    async def _retrying(
        self, action: str, write: bool, body: Callable[[AsyncConnection], Awaitable[Any]]
    ) -> Any:
        if write and not self._postgres:
            return await _to_the_end(self._attempts(action, write, body))
        return await self._attempts(action, write, body)

    async def _attempts(
        self, action: str, write: bool, body: Callable[[AsyncConnection], Awaitable[Any]]
    ) -> Any:
        engine = await self._engine()
        await self._before()
        attempt = 1
        while True:
            try:
                async with engine.connect() as connection:
                    if not write:
                        options: dict[str, Any] = (
                            {"isolation_level": "AUTOCOMMIT"}
                            if self._postgres
                            else {READ_ONLY: True}
                        )
                        await connection.execution_options(**options)
                    rows = await body(connection)
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
                await asyncio.sleep(backoff(attempt))
                attempt += 1


async def _to_the_end(work: Awaitable[T]) -> T:
    """``work`` run to its end even if the caller is cancelled meanwhile (the cancellation
    is raised once it has ended)."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not task.cancelled():
            task.exception()  # retrieved: the caller is told of its cancellation instead
        raise asyncio.CancelledError
    return task.result()


async def stream_pages(
    query: Callable[[str, sa.Executable], Awaitable[Any]],
    pages: queries.StreamPages,
    batch_size: int,
    clock: Clock,
) -> AsyncIterator[tuple[Key, Entry]]:
    """Every row ``pages`` selects, ``batch_size`` per query, in key order (keyset
    pagination over the primary key: no connection is held between batches)."""
    last: tuple[str, ...] | None = None
    while True:
        rows = await query("stream", pages.page(last, batch_size, clock.now()))
        for row in rows:
            yield stored_key(row[0], (row[1], *key_parts(row[2]))), queries.entry_of(row)
        if len(rows) < batch_size:
            return
        last = tuple(rows[-1][pages.fixed : 3])


async def purge(
    write: Callable[[str, sa.Executable], Awaitable[Any]],
    clock: Clock,
    batch_size: int,
    tombstones_older_than: float,
    tables: Sequence[sa.TableClause] = (queries.t,),
    *,
    postgres: bool,
) -> int:
    """Delete old tombstones, then expired rows, ``batch_size`` per transaction, table by
    table of ``tables`` (the records table, or its partitions one after another); return
    how many expired rows were deleted."""
    cutoff: datetime = clock.now() - timedelta(seconds=tombstones_older_than)
    statement = queries.purge_tombstones(cutoff, batch_size, postgres=postgres)
    while len(await write("purge_expired", statement)) >= batch_size:
        pass
    total = 0
    for table in tables:
        while True:
            expired = queries.purge_expired(clock.now(), batch_size, table, postgres=postgres)
            deleted = len(await write("purge_expired", expired))
            total += deleted
            if deleted < batch_size:
                break
    return total
