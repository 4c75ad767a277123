"""The private driver details kvstore relies on, each measured to be worth it, each in one
module, each driver pinned below its next major (or minor) release in pyproject.toml. When
a release changes one of them, this file fails loudly, before production does.

* ``backends/redis_connect.py`` (``WaitingPool``): takes and returns an idle connection of
  redis-py's ``BlockingConnectionPool`` without its condition variable (about a fifth of a
  cache-hit GET here): ``_available_connections``, ``_in_use_connections``, ``_condition``
  with its ``_waiters``.
* ``backends/sql.py`` (the hot path): checks a pooled connection out of SQLAlchemy's
  ``QueuePool`` synchronously when one is idle (``sync_engine.raw_connection()``, which
  raises ``MissingGreenlet`` when it would need I/O) and closes one with ``greenlet_spawn``.
"""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from redis.asyncio import BlockingConnectionPool
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.util import greenlet_spawn

from backends.redis_connect import WaitingPool


def test_redis_pool_internals_the_waiting_pool_reads() -> None:
    pool = WaitingPool(max_connections=2, timeout=1)
    assert isinstance(pool, BlockingConnectionPool)
    assert isinstance(pool._available_connections, list)
    assert isinstance(pool._in_use_connections, set)
    assert isinstance(pool._condition, asyncio.Condition)
    assert hasattr(pool._condition, "_waiters")
    assert callable(pool.ensure_connection)


async def test_sqlalchemy_pool_internals_the_hot_path_uses() -> None:
    assert issubclass(sa.exc.MissingGreenlet, sa.exc.InvalidRequestError)
    engine = create_async_engine("sqlite+aiosqlite://")
    try:
        fairy = await engine.raw_connection()
        assert fairy.driver_connection is not None
        await greenlet_spawn(fairy.close)  # the release path of the hot statements
        assert callable(engine.sync_engine.raw_connection)
    finally:
        await engine.dispose()
