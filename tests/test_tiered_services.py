"""The tiered store on real services: the session's PostgreSQL database and ``redis-server``
processes each test starts on a free port of its own, then kills, freezes (SIGSTOP) and
restarts. Every store call runs under a generous deadline: a call that hangs fails the test
(a hang guard, not a timing assertion; timings live in ``benchmarks/``)."""

from __future__ import annotations

import asyncio
import signal
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import pytest
from redis.asyncio import Redis

from backends.breaker import BreakerState
from backends.redis.format import unpack
from backends.tiered import TieredBackend, WarmReport
from kvstore import DatabaseType, StateRecord, create_database
from kvstore.clock import SYSTEM_CLOCK, ManualClock
from kvstore.keys import Key
from kvstore.store import Store
from tests import postgres
from tests.redis_servers import REDIS_SERVER, RedisServer, free_port
from tests.services import unavailable
from tests.tiered_stress import run_stress
from tests.waiting import feed_caught_up

if TYPE_CHECKING:
    from collections.abc import Awaitable
    from pathlib import Path

    from kvstore.clock import Clock

T = TypeVar("T")

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

HANG_GUARD = 2.0
"""Seconds any single store call may take before the test calls it a hang."""


def tiered(
    postgres_url: str,
    cache_url: str,
    *,
    follow_changes: bool = True,
    clock: Clock = SYSTEM_CLOCK,
    **options: float,
) -> tuple[Store, TieredBackend]:
    settings: dict[str, float] = {
        "cache_timeout": 0.1,
        "breaker_threshold": 2,
        "breaker_reset_after": 0.2,
    }
    settings.update(options)
    db = create_database(
        DatabaseType.TIERED,
        postgres_url,
        cache_url=cache_url,
        cache_timeout=settings["cache_timeout"],
        breaker_threshold=int(settings["breaker_threshold"]),
        breaker_reset_after=settings["breaker_reset_after"],
        follow_changes=follow_changes,
        clock=clock,
    )
    assert isinstance(db, Store)
    assert isinstance(db.backend, TieredBackend)
    return db, db.backend


async def guarded(call: Awaitable[T]) -> T:
    async with asyncio.timeout(HANG_GUARD):
        return await call


def new_user() -> str:
    return f"tiered-{uuid.uuid4().hex[:12]}"


async def version_of(db: Store, user: str) -> int:
    record = await guarded(db.get_state(user, "s1"))
    return 0 if record is None else record.version


async def test_hot_reads_come_from_redis_and_verify_repairs_a_changed_row(
    postgres_url: str, redis_server: RedisServer
) -> None:
    """Without the change feed (``follow_changes=False``), a row changed behind the store's
    back stays cached until ``verify(repair=True)``; with it, see tests/test_coherence.py."""
    db, backend = tiered(postgres_url, redis_server.url, follow_changes=False)
    user = new_user()
    async with db:
        await db.save_state(StateRecord(user_id=user, session_id="s1", state="CACHED"))
        await postgres.execute(
            postgres_url,
            'UPDATE kv_records SET value = value || \'{"state": "CHANGED"}\'::jsonb '
            "WHERE namespace = 'state' AND owner = $1",
            user,
        )
        hits = backend.tier_stats().hits
        cached = await db.get_state(user, "s1")
        assert cached is not None
        assert cached.state == "CACHED"  # the row changed behind the store's back
        assert backend.tier_stats().hits == hits + 1
        key = db.states.key(user, "s1")
        report = await backend.verify("state", owner=user)
        assert (report.checked, report.stale, report.extra) == (1, [key], [])
        repaired = await backend.verify("state", owner=user, repair=True)
        assert repaired.stale == [key]
        fresh = await db.get_state(user, "s1")
        assert fresh is not None
        assert fresh.state == "CHANGED"
        assert (await backend.verify("state", owner=user)).stale == []
        await db.delete_user(user)


@pytest.mark.slow
async def test_readers_writers_and_a_flushing_task_never_read_the_past(
    postgres_url: str, redis_server: RedisServer
) -> None:
    db, backend = tiered(postgres_url, redis_server.url, breaker_threshold=1000)
    flusher = Redis.from_url(redis_server.url)

    async def flush() -> None:
        await flusher.flushall()

    try:
        async with db:
            reads = await run_stress(db, flush, seconds=3.0)
        assert reads > 100
        stats = backend.tier_stats()
        assert stats.hits > 0
        assert stats.misses > 0
    finally:
        await flusher.aclose()


async def test_killing_the_cache_process_keeps_the_store_serving_and_restart_heals(
    postgres_url: str, redis_server: RedisServer
) -> None:
    clock = ManualClock(datetime.now(UTC))  # the breaker's: its reset is a step, not a wait
    db, backend = tiered(postgres_url, redis_server.url, clock=clock)
    user = new_user()
    async with db:
        await guarded(db.save_state(StateRecord(user_id=user, session_id="s1", state="A")))
        assert await version_of(db, user) == 1
        redis_server.stop()
        for n in range(2, 8):
            saved = await guarded(
                db.save_state(StateRecord(user_id=user, session_id="s1", state="A"))
            )
            assert saved.version == n
            assert await version_of(db, user) == n
        assert backend.tier_stats().breaker is not BreakerState.CLOSED  # open, or probing
        redis_server.start()
        clock.advance(0.25)  # past breaker_reset_after
        assert await version_of(db, user) == 7  # the key is dirty: from PostgreSQL
        assert backend.tier_stats().breaker is BreakerState.CLOSED
        assert await backend.repaired() == 0  # repaired in the background
        hits = backend.tier_stats().hits
        assert await version_of(db, user) == 7
        assert backend.tier_stats().hits == hits + 1  # the cache is used again
        await guarded(db.delete_user(user))


async def test_a_frozen_cache_holding_v1_never_serves_it_after_v2(
    postgres_url: str, redis_server: RedisServer
) -> None:
    db, backend = tiered(postgres_url, redis_server.url, breaker_threshold=1000)
    other, _ = tiered(postgres_url, redis_server.url, breaker_threshold=1000)
    user = new_user()
    assert redis_server.process is not None
    async with db, other:
        await guarded(db.save_state(StateRecord(user_id=user, session_id="s1", state="V1")))
        assert await version_of(db, user) == 1
        assert await version_of(other, user) == 1
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            saved = await guarded(
                db.save_state(StateRecord(user_id=user, session_id="s1", state="V2"))
            )
            assert saved.version == 2  # acknowledged once PostgreSQL committed
            assert await version_of(db, user) == 2  # dirty: read from PostgreSQL
            assert backend.tier_stats().dirty == 1
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        for _ in range(20):  # each read finding the key dirty restarts a failed repair
            assert await version_of(db, user) == 2
            if await backend.repaired() == 0:
                break
        assert backend.tier_stats().dirty == 0
        assert await version_of(other, user) == 2  # the repair reached the shared cache
        await guarded(db.delete_user(user))


async def test_a_cache_unreachable_at_start_up(postgres_url: str, tmp_path: Path) -> None:
    if REDIS_SERVER is None:
        unavailable("redis-server is needed for the tiered fault tests")
    server = RedisServer(tmp_path / "redis", port=free_port())  # not started yet
    clock = ManualClock(datetime.now(UTC))
    db, backend = tiered(postgres_url, server.url, clock=clock)
    user = new_user()
    try:
        async with db:
            assert backend.tier_stats().breaker is BreakerState.OPEN
            saved = await guarded(
                db.save_state(StateRecord(user_id=user, session_id="s1", state="A"))
            )
            assert saved.version == 1
            assert await version_of(db, user) == 1
            server.start()
            clock.advance(0.25)  # past breaker_reset_after
            assert await version_of(db, user) == 1
            assert backend.tier_stats().breaker is BreakerState.CLOSED
            assert await backend.repaired() == 0
            hits = backend.tier_stats().hits
            assert await version_of(db, user) == 1
            assert backend.tier_stats().hits == hits + 1
            await guarded(db.delete_user(user))
    finally:
        server.stop()


async def test_delete_user_erases_the_cache_tier_too(
    postgres_url: str, redis_server: RedisServer
) -> None:
    """No value of an erased user is left in the cache, before or after the change feed
    brings the erasure's deletions back: what it writes are tombstones (a revision, no
    value), which fence off stale fills and expire with the cache TTL."""
    db, backend = tiered(postgres_url, redis_server.url)
    user = new_user()
    async with db:
        for session in ["s1", "s2"]:
            await db.save_state(StateRecord(user_id=user, session_id=session, state="A"))
            await db.get_state(user, session)
        assert await db.delete_user(user) == 2
        assert (await backend.verify("state", owner=user)).checked == 0
        client = Redis.from_url(redis_server.url)
        try:
            assert await values_left(client, user) == []
            await feed_caught_up(backend)
            assert await values_left(client, user) == []
        finally:
            await client.aclose()


async def values_left(client: Redis, user: str) -> list[bytes]:
    """The cache keys naming ``user`` that hold a value (not a tombstone, not the erase
    epoch or the key index)."""
    left = []
    async for key in client.scan_iter(match=f"*{user}*"):
        if await client.type(key) == b"string" and not key.endswith(b"}*w"):
            data = await client.get(key)
            if isinstance(data, bytes) and unpack(data) is not None:
                left.append(key)
    return left


async def test_warm_loads_the_newest_rows_of_postgresql_into_redis(
    postgres_url: str, redis_server: RedisServer
) -> None:
    # without the change feed: its tombstones revoke leases, so on a loaded machine its
    # catching up after the flush could take warm's leases between lookup and fill (warm
    # then reports those fills as not landed, truthfully; not what this test is about)
    db, backend = tiered(postgres_url, redis_server.url, follow_changes=False)
    user = new_user()
    async with db:
        for n in range(5):
            await db.save_state(StateRecord(user_id=user, session_id=f"s{n}", state="A"))
        client = Redis.from_url(redis_server.url)
        try:
            await client.flushall()
        finally:
            await client.aclose()
        assert await backend.warm("state", owner=user, limit=2) == WarmReport(read=2, landed=2)
        report = await backend.verify("state", owner=user)
        assert (report.checked, report.missing, report.stale) == (5, 3, [])
        hits = backend.tier_stats().hits
        newest = await db.states.get_many([(user, "s3"), (user, "s4")])
        assert [r.session_id for r in newest if r is not None] == ["s3", "s4"]
        assert backend.tier_stats().hits == hits + 2
        await db.delete_user(user)


async def test_a_value_reads_back_the_same_from_the_cache_and_from_postgresql(
    postgres_url: str, redis_server: RedisServer
) -> None:
    """A cache hit and the same read after the cache lost the entry give equal records with
    equal types (jsonb would make 1e20 an int on the second path)."""
    db, backend = tiered(postgres_url, redis_server.url)
    user = new_user()
    data = {"floats": [1e20, 1e16, 1.0, 0.5], "nested": {"x": [1e300, -1e20]}, "n": 7}
    async with db:
        await db.save_state(StateRecord(user_id=user, session_id="s1", state="A", data=data))
        hits = backend.tier_stats().hits
        from_cache = await db.get_state(user, "s1")
        assert backend.tier_stats().hits == hits + 1
        await backend.cache.invalidate([Key("state", (user, "s1"))])
        misses = backend.tier_stats().misses
        from_sql = await db.get_state(user, "s1")
        assert backend.tier_stats().misses == misses + 1
        assert from_cache is not None
        assert from_sql is not None
        assert from_sql == from_cache
        assert from_sql.data == data
        floats = from_sql.data["floats"]
        assert isinstance(floats, list)
        assert [type(x) for x in floats] == [float] * 4
        await db.delete_user(user)
