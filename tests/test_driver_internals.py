"""The private driver details kvstore relies on, each measured to be worth it, each in one
module, each driver pinned below its next major (or minor) release in pyproject.toml. When
a release changes one of them, this file fails loudly, before production does.

* ``backends/redis/connect.py`` (``WaitingPool``): takes and returns an idle connection of
  redis-py's ``BlockingConnectionPool`` without its condition variable (about a fifth of a
  cache-hit GET here): ``_available_connections``, ``_in_use_connections``, ``_condition``
  with its ``_waiters``, ``_in_maintenance`` (a pool being handed over during server
  maintenance goes the regular way).
* ``backends/redis/connect.py`` (``install_cluster_connect_hook``): redis-py's asyncio
  ``RedisCluster`` takes no ``redis_connect_func``; kvstore puts it in
  ``nodes_manager.connection_kwargs`` and each known node's ``connection_kwargs``, from
  which every new node connection is made (the cache's per-node ``run_id`` check).
* ``backends/sql/hot_path.py``: checks a pooled connection out of SQLAlchemy's
  ``QueuePool`` synchronously when one is idle (``sync_engine.raw_connection()``, which
  raises ``MissingGreenlet`` when it would need I/O) and closes one with ``greenlet_spawn``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import QueuePool
from sqlalchemy.util import greenlet_spawn

from backends.redis.connect import WaitingPool, install_cluster_connect_hook


def test_redis_pool_internals_the_waiting_pool_reads() -> None:
    pool = WaitingPool(max_connections=2, timeout=1)
    assert isinstance(pool, BlockingConnectionPool)
    assert isinstance(pool._available_connections, list)
    assert isinstance(pool._in_use_connections, set)
    assert isinstance(pool._condition, asyncio.Condition)
    assert hasattr(pool._condition, "_waiters")
    assert pool._in_maintenance is False
    assert callable(pool.ensure_connection)
    assert callable(pool.connection_class.should_reconnect)


async def test_redis_cluster_internals_the_connect_hook_uses() -> None:
    """New node connections are made from ``connection_kwargs``: a hook put there is the
    handshake of every connection, to startup nodes and to nodes found later."""
    client = RedisCluster(host="127.0.0.1", port=1)  # no I/O until the first command

    async def hook(connection: AbstractConnection) -> None:
        await connection.on_connect()

    install_cluster_connect_hook(client, hook)
    assert client.nodes_manager.connection_kwargs["redis_connect_func"] is hook
    [startup] = client.nodes_manager.startup_nodes.values()
    assert startup.connection_kwargs["redis_connect_func"] is hook
    assert (
        ClusterNode("127.0.0.1", 2, **client.nodes_manager.connection_kwargs).connection_kwargs[
            "redis_connect_func"
        ]
        is hook
    )
    connection = startup.connection_class(**startup.connection_kwargs)
    assert connection.redis_connect_func is hook
    await client.aclose()


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


async def test_sqlalchemy_checks_out_an_idle_connection_without_io_and_refuses_io(
    tmp_path: Path,
) -> None:
    """What the hot path's checkout and check-in rely on, in a running event loop: the
    synchronous ``raw_connection()`` raises ``MissingGreenlet`` when it would have to
    connect (and leaves the pool usable), returns an idle pooled connection without I/O,
    and a synchronous ``close()`` checks it back in while the pool has room."""
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'pool.db'}", pool_size=2, max_overflow=0
    )
    try:
        pool = engine.pool
        assert isinstance(pool, QueuePool)
        with pytest.raises(sa.exc.MissingGreenlet):
            engine.sync_engine.raw_connection()  # nothing idle: connecting needs I/O
        assert (pool.checkedin(), pool.checkedout()) == (0, 0)
        fairy = await engine.raw_connection()
        await greenlet_spawn(fairy.close)
        assert pool.checkedin() == 1
        idle = engine.sync_engine.raw_connection()  # idle: taken without a greenlet switch
        assert idle.driver_connection is not None
        assert (pool.checkedin(), pool.checkedout()) == (0, 1)
        idle.close()  # the pool has room: back in without I/O
        assert (pool.checkedin(), pool.checkedout()) == (1, 0)
    finally:
        await engine.dispose()


PRIVATE_DETAILS = {
    "greenlet_spawn": "backends/sql/hot_path.py",
    "MissingGreenlet": "backends/sql/hot_path.py",
    "sync_engine.raw_connection": "backends/sql/hot_path.py",
    "_available_connections": "backends/redis/connect.py",
    "_in_use_connections": "backends/redis/connect.py",
    "._condition.": "backends/redis/connect.py",
    "_in_maintenance": "backends/redis/connect.py",
    "nodes_manager": "backends/redis/connect.py",
}
"""Each private driver detail kvstore uses, and the one module allowed to use it."""


def test_each_private_detail_lives_in_one_module() -> None:
    root = Path(__file__).parent.parent
    for detail, home in PRIVATE_DETAILS.items():
        users = sorted(
            str(path.relative_to(root))
            for package in ("kvstore", "backends", "serializers")
            for path in (root / package).rglob("*.py")
            if detail in path.read_text(encoding="utf-8")
        )
        assert users == [home], (detail, users)
