"""PostgreSQL: listings, exports and counts read from a streaming replica, and a process
reads its own writes there.

With ``replica_url``, the SQL backend sends its batch-style reads (``list``, ``recent``,
``count``, ``stream``/``scan``: listings, exports, the cache's warm-up) to the replica;
single-record reads, the change feed and every write stay on the primary. A replica
replays the primary's WAL some time after each commit, so a read there may miss the last
writes. Other processes' writes show up there within the replica's lag (as in any
replicated setup). This process's own writes are waited for:

* after a write is acknowledged, the next replica read first asks the primary for its WAL
  position (``pg_current_wal_lsn()``, one round trip; at or past the commit of every
  write acknowledged so far), and
* on the replica it waits until ``pg_last_wal_replay_lsn()`` has reached it, checking
  every few milliseconds, for at most ``replica_wait`` seconds.

Past that wait, or if the replica cannot be reached, the read goes to the primary
instead: a lagging or stopped replica costs time, never a stale read of one's own write or
an error. No write since the last check: no round trip to the primary at all.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

from backends.sql.config import create_engine, parse_sql_url
from backends.sql.errors import DRIVER_ERRORS
from kvstore.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from backends.sql.config import SQLConfig

logger = logging.getLogger("kvstore.sql")

_REPLAYED: Final = sa.text(
    "SELECT pg_last_wal_replay_lsn() IS NULL"
    " OR pg_last_wal_replay_lsn() >= CAST(CAST(:lsn AS text) AS pg_lsn)"
)
"""Whether the replica has replayed the WAL up to ``lsn`` (a server not in recovery, e.g.
a promoted replica, has nothing to wait for)."""
_UNREACHABLE: Final[tuple[type[BaseException], ...]] = (*DRIVER_ERRORS, OSError)
"""What a replica that fails or cannot be reached raises (``TimeoutError`` is an
``OSError``)."""
POLL_MAX: Final = 0.02
"""The longest pause between two checks of the replica's replay position."""


def replica_config(primary: SQLConfig) -> SQLConfig:
    """The replica's settings: its URL, the primary's options, and a connect timeout no
    longer than ``replica_wait`` (a replica that does not answer is given up on)."""
    assert primary.replica_url is not None  # the config refuses it off PostgreSQL
    parsed = parse_sql_url(primary.replica_url)
    if parsed.dialect != "postgresql":
        raise ConfigurationError("replica_url must be a postgresql:// URL")
    return replace(
        primary,
        url=parsed.url,
        replica_url=None,
        connect_timeout=min(primary.connect_timeout, primary.replica_wait),
        pool_size=max(1, primary.pool_size // 2),
        partitions=None,
    )


class ReplicaReads:
    """Runs read statements on the replica, reading this backend's own writes."""

    def __init__(
        self,
        config: SQLConfig,
        primary_position: Callable[[], Awaitable[str]],
        *,
        wait: float,
    ) -> None:
        """``config`` is the replica's (:func:`replica_config`); ``primary_position``
        returns the primary's WAL position now."""
        self._config = config
        self._primary_position = primary_position
        self._wait = wait
        self._engine: AsyncEngine | None = None
        self._wanted: str | None = None
        """The WAL position the replica must have replayed (``None``: no write yet)."""
        self._synced = 0
        """The backend's write count when ``_wanted`` was read."""
        self.reads = 0
        """Reads the replica answered."""
        self.fallbacks = 0
        """Reads sent to the primary because the replica lagged past ``replica_wait``."""
        self.errors = 0
        """Reads sent to the primary because the replica failed or could not be reached."""
        self._failing = False

    @property
    def where(self) -> str:
        """The replica's URL without its password."""
        return self._config.masked_url

    async def rows(self, statement: sa.Executable, writes: int) -> list[Any] | None:
        """The rows of ``statement`` from the replica, once it has replayed every write
        this backend had acknowledged (``writes`` of them so far); ``None`` if the primary
        must answer instead."""
        wanted = await self.position_for(writes)
        try:
            async with self._ready().connect() as connection:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                if wanted is not None and not await self._replayed(connection, wanted):
                    self.fallbacks += 1
                    return None
                rows = (await connection.execute(statement)).all()
        except _UNREACHABLE as exc:
            if not self._failing:  # logged once per outage, counted always
                logger.warning(
                    "replica %s failed (%s); reading from the primary",
                    self.where,
                    type(exc).__name__,
                )
            self._failing = True
            self.errors += 1
            return None
        self._failing = False
        self.reads += 1
        return list(rows)

    async def position_for(self, writes: int) -> str | None:
        """The WAL position the replica must have replayed for a read that begins after
        ``writes`` writes of this backend ended (``None``: none yet). Asks the primary only
        after a write; concurrent reads each keep the position they asked for, and the
        newest is remembered."""
        if writes == self._synced:
            return self._wanted
        position = await self._primary_position()
        if writes > self._synced:  # a read that asked earlier may answer later: keep the newest
            self._wanted, self._synced = position, writes
        return position

    async def _replayed(self, connection: AsyncConnection, wanted: str) -> bool:
        """Whether the replica replays up to ``wanted`` within ``wait`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        pause = 0.001
        while True:
            if await connection.scalar(_REPLAYED, {"lsn": wanted}):
                return True
            if loop.time() + pause > deadline:
                return False
            await asyncio.sleep(pause)
            pause = min(pause * 2, POLL_MAX)

    def _ready(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = create_engine(self._config)
        return self._engine

    async def close(self) -> None:
        """Close the replica's connections."""
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()
