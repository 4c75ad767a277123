"""The hot path: fixed statements sent straight to driver connections from SQLAlchemy's pool.

``get``, ``put`` and ``delete`` run one autocommit statement each (:mod:`backends.sql.
statements`): no BEGIN/COMMIT round trips, no SQLAlchemy result processing; asyncpg prepares
each statement once per connection. Statements that lose their connection before it was
used, reads that lose it mid-way and statements that hit a serialization failure or
deadlock are retried with bounded backoff.

On PostgreSQL, statements take turns first come, first served: at most as many run at once
as the pool holds connections less one (``pool_size + max_overflow - 1``), the others wait
in one FIFO queue (an :class:`asyncio.Semaphore`) for at most ``connect_timeout +
statement_timeout``. Without it a task that just finished would take the next connection
ahead of tasks that had been waiting (asyncio's and SQLAlchemy's queues let a newcomer take
an item before a woken waiter runs): some tasks got 100 times the turns of others. The
connection left over serves the tiered store's upkeep (the change feed, cache generations:
:data:`UPKEEP`) without a turn: the probe that closes the breaker after a cache outage must
not queue behind the requests the outage piled up. SQLite's statements share one connection
(see :meth:`HotPath._checkout_shared`).

This module is the one place that relies on SQLAlchemy details outside its documented
async API (a synchronous ``raw_connection()`` checkout that raises ``MissingGreenlet`` when
it would need I/O, ``greenlet_spawn`` for a check-in that closes): measured to halve the
cost SQLAlchemy adds per call; SQLAlchemy's upper bound is pinned and
``tests/test_driver_internals.py`` fails when these change.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy.pool import QueuePool
from sqlalchemy.util import greenlet_spawn

from backends.sql.errors import DRIVER_ERRORS, MAX_ATTEMPTS, Failure, backoff, classify, translate
from backends.sql.statements import POSTGRES_SQL, SQLITE_SQL
from kvstore.errors import BackendUnavailableError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import PoolProxiedConnection

    from backends.sql.config import SQLConfig

_BURY: Final = """
SELECT pid, pg_terminate_backend(pid, $2) FROM pg_stat_activity
WHERE pid = ANY($1::int[]) AND usename = current_user AND datname = current_database()"""
"""End the server processes of connections dropped with a write in flight; each call waits
up to ``$2`` ms for them to exit."""
_ALIVE: Final = "SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[])"

HOLD_SECONDS: Final = 5.0
"""How long the hot path may keep a pooled connection between statements before it goes
back through the pool (where recycling and pre-ping apply)."""
_LEASED_AT: Final = "kvstore_leased_at"
UPKEEP: Final = frozenset(
    {"changes", "head", "read_generation", "insert_generation", "advance_generation"}
)
"""Statements that take no turn (see the module docstring)."""


class HotPath:
    """Runs the hot statements of one SQL backend on connections of its engine's pool."""

    def __init__(
        self, config: SQLConfig, where: str, engine: Callable[[], Awaitable[AsyncEngine]]
    ) -> None:
        """``engine`` returns the initialized engine (it raises once the backend closed)."""
        self._config = config
        self._where = where
        self._get_engine = engine
        self._engine: AsyncEngine | None = None
        self._postgres = config.dialect == "postgresql"
        self._sql = POSTGRES_SQL if self._postgres else SQLITE_SQL
        self._lock = asyncio.Lock()
        self._checkout_tries = config.pool_size + config.max_overflow + 1
        self._shared: PoolProxiedConnection | None = None
        self._held: list[PoolProxiedConnection] = []
        self._hold_max = 0 if config.pool_pre_ping else config.pool_size // 2
        self.turns = max(1, config.pool_size + config.max_overflow - 1)
        """Hot statements that may run at once (PostgreSQL)."""
        self._turns = asyncio.Semaphore(self.turns)
        self.in_use = 0
        """Hot statements holding a turn now (PostgreSQL)."""
        self.waits = 0
        """Hot statements that found every turn taken and waited for one."""
        self.wait_seconds = 0.0
        """Time those waits took in all (loop time)."""
        self._ghosts: set[int] = set()
        """PostgreSQL server processes of connections dropped while a write was in flight
        (see :meth:`_bury_ghosts`)."""
        self.turn_timeout = config.connect_timeout + config.statement_timeout
        """The longest a statement waits for its turn."""

    async def run(self, action: str, name: str, args: tuple[Any, ...], *, idempotent: bool) -> Any:
        """Run statement ``name`` with ``args``; return its rows. Retries what is safe to
        retry; every failure leaves as a kvstore error naming ``action``."""
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
                        if self._ghosts and not idempotent:
                            await self._bury_ghosts(driver)
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
                        if self._postgres and not idempotent and failure is not Failure.STALE:
                            self._remember_ghost(driver)
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
                    self.in_use -= 1
                    self._turns.release()
            await asyncio.sleep(backoff(attempt))  # without holding a turn
            attempt += 1

    async def return_held(self) -> None:
        """Give the connections the hot path holds back to the pool (before SQLAlchemy's
        own statements, which check out through the pool's queue)."""
        held, self._held = self._held, []
        for fairy in held:
            fairy.info.pop(_LEASED_AT, None)
            await self._release(fairy)

    async def close(self) -> None:
        """Give back every connection; hold none from now on."""
        self._hold_max = 0
        await self.return_held()
        shared, self._shared = self._shared, None
        if shared is not None:
            await greenlet_spawn(shared.close)
        self._engine = None

    def _remember_ghost(self, driver: Any) -> None:
        """A write whose connection is dropped may still be waiting in the server's socket
        (a frozen or overloaded server reads it later) and commit after a later write of
        the same key that was acknowledged: the older value would win. Its server process
        is ended before this backend sends another write."""
        with contextlib.suppress(Exception):
            self._ghosts.add(int(driver.get_server_pid()))

    async def _bury_ghosts(self, driver: Any) -> None:
        """End the server processes of dropped writes (:meth:`_remember_ghost`) and wait
        until they are gone, before a write is sent on ``driver``: whatever they were going
        to commit has committed by then, before it. Raises (a driver error, handled as any
        failure of the write) if one is still there after ``statement_timeout``."""
        ghosts = list(self._ghosts)
        wait_ms = round(self._config.statement_timeout * 1000)
        await driver.fetch(_BURY, ghosts, wait_ms)
        alive = {row[0] for row in await driver.fetch(_ALIVE, ghosts)}
        self._ghosts.difference_update(set(ghosts) - alive)
        if alive:
            raise TimeoutError(f"{len(alive)} dropped connection(s) still running on the server")

    async def _take_turn(self, action: str) -> None:
        """Wait for this statement's turn (first come, first served), at most
        ``connect_timeout + statement_timeout``."""
        turns = self._turns
        if not turns.locked():
            await turns.acquire()  # free: returns at once
            self.in_use += 1
            return
        self.waits += 1
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            async with asyncio.timeout(self.turn_timeout):
                await turns.acquire()
        except TimeoutError as exc:
            raise self.no_turn(action) from exc
        finally:
            self.wait_seconds += loop.time() - began
        self.in_use += 1

    def no_turn(self, action: str) -> BackendUnavailableError:
        """The error of a statement that waited :attr:`turn_timeout` for its turn."""
        return BackendUnavailableError(
            f"{action} on {self._where}: no connection free within {self.turn_timeout:g} s"
        )

    async def _checkout(self) -> PoolProxiedConnection:
        engine = self._engine = await self._get_engine()
        if not self._postgres:
            return self._shared or await self._checkout_shared(engine)
        while self._held:
            fairy = self._held.pop()
            if not fairy.driver_connection.is_closed():  # type: ignore[union-attr]
                return fairy
            fairy.invalidate()  # the server dropped it while idle; nothing was sent
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

    async def _checkout_shared(self, engine: AsyncEngine) -> PoolProxiedConnection:
        """SQLite: the one pooled connection every hot statement of this backend shares.

        SQLite runs one writer at a time anyway, and one aiosqlite thread pipelining the
        statements of many tasks beats many threads fighting for the GIL and sleeping in
        SQLite's busy handler (measured: ``benchmarks/sql_backend.py``). Each statement is
        one autocommit call, so tasks can't see each other's half-done work.
        """
        async with self._lock:
            if self._shared is None:
                try:
                    self._shared = await engine.raw_connection()
                except DRIVER_ERRORS as exc:
                    raise translate(exc, "connect", self._where) from exc
            return self._shared

    def _checkout_now(self, engine: AsyncEngine) -> PoolProxiedConnection | None:
        """Check out an idle pooled connection without a greenlet switch (the common case,
        and the largest cost SQLAlchemy adds per call), or ``None`` if that needs I/O."""
        pool = engine.pool
        if self._config.pool_pre_ping or not isinstance(pool, QueuePool) or not pool.checkedin():
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

    def _discard(self, fairy: PoolProxiedConnection) -> None:
        """Close a broken connection and drop it from the pool."""
        if fairy is self._shared:
            self._shared = None
        fairy.invalidate()
