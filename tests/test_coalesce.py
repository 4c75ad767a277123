"""Coalesced calls: concurrent single-key reads share one read of many keys (and a tiered
store's concurrent cache writes one script call), each caller gets its own answer, and a
cancelled or failing call affects only whom it must. First the coalescer alone (a read
function the test controls), then the Redis store and the tiered store on a
``redis-server`` of the test's own, whose command counts show the sharing."""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING, Any

import pytest
from redis.asyncio import Redis

from backends.breaker import BreakerState
from backends.coalesce import MAX_ITEMS, Coalesced
from backends.redis.cache import RedisCache
from backends.tiered import TieredBackend
from kvstore import BackendUnavailableError, DatabaseType, StateRecord, create_database
from kvstore.store import Store

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tests.redis_servers import RedisServer


class Reads:
    """A read function that records each call's keys and answers when let go."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.go = asyncio.Event()
        self.go.set()
        self.error: Exception | None = None

    async def __call__(self, keys: Sequence[str]) -> list[str]:
        self.calls.append(list(keys))
        await self.go.wait()
        if self.error is not None:
            raise self.error
        return [f"value of {key}" for key in keys]


async def one_in_flight() -> tuple[Reads, Coalesced[str, str], asyncio.Task[str]]:
    """A coalescer whose first read (of "a") is in flight, held until ``go`` is set."""
    reads = Reads()
    reads.go.clear()
    coalesced: Coalesced[str, str] = Coalesced(reads)
    first = asyncio.create_task(coalesced.call("a"))
    await asyncio.sleep(0)
    return reads, coalesced, first


async def test_a_lone_read_goes_alone_and_at_once() -> None:
    reads = Reads()
    coalesced = Coalesced(reads)
    assert await coalesced.call("a") == "value of a"
    assert await coalesced.call("b") == "value of b"
    assert reads.calls == [["a"], ["b"]]


async def test_reads_that_meet_a_read_in_flight_share_the_next_one() -> None:
    reads, coalesced, first = await one_in_flight()
    rest = [asyncio.create_task(coalesced.call(key)) for key in ("b", "c", "b")]
    await asyncio.sleep(0)
    reads.go.set()
    assert await first == "value of a"
    assert await asyncio.gather(*rest) == ["value of b", "value of c", "value of b"]
    assert reads.calls == [["a"], ["b", "c", "b"]]
    assert (coalesced.sent, coalesced.items) == (2, 4)


async def test_a_caller_cancelled_while_queued_is_left_out() -> None:
    reads, coalesced, first = await one_in_flight()
    gone = asyncio.create_task(coalesced.call("gone"))
    kept = asyncio.create_task(coalesced.call("kept"))
    await asyncio.sleep(0)  # both queued; the flush comes at the next iteration
    gone.cancel()
    reads.go.set()
    assert await kept == "value of kept"
    assert await first == "value of a"
    assert gone.cancelled()
    assert reads.calls == [["a"], ["kept"]]


async def test_a_caller_cancelled_in_flight_does_not_cut_the_others_off() -> None:
    reads, coalesced, first = await one_in_flight()
    gone = asyncio.create_task(coalesced.call("gone"))
    kept = asyncio.create_task(coalesced.call("kept"))
    for _ in range(3):  # until the shared read of "gone" and "kept" is in flight
        await asyncio.sleep(0)
    assert reads.calls[-1] == ["gone", "kept"]
    gone.cancel()
    await asyncio.sleep(0)
    reads.go.set()
    assert await kept == "value of kept"
    assert await first == "value of a"
    assert gone.cancelled()
    await coalesced.aclose()


async def test_a_failing_read_fails_every_caller_it_carried() -> None:
    reads, coalesced, first = await one_in_flight()
    shared = [asyncio.create_task(coalesced.call(key)) for key in ("b", "c")]
    for _ in range(3):
        await asyncio.sleep(0)
    reads.error = BackendUnavailableError("the server went away")
    reads.go.set()
    outcomes = await asyncio.gather(first, *shared, return_exceptions=True)
    assert all(isinstance(outcome, BackendUnavailableError) for outcome in outcomes)
    reads.error = None
    assert await coalesced.call("d") == "value of d"  # the next read is a fresh one


async def test_a_read_carries_at_most_max_keys() -> None:
    reads, coalesced, first = await one_in_flight()
    keys = [f"k{n}" for n in range(MAX_ITEMS + 10)]
    rest = [asyncio.create_task(coalesced.call(key)) for key in keys]
    await asyncio.sleep(0)
    reads.go.set()
    assert await asyncio.gather(first, *rest) == [f"value of {k}" for k in ["a", *keys]]
    assert [len(call) for call in reads.calls] == [1, MAX_ITEMS, 10]


# -- on a real server ---------------------------------------------------------------------


async def mget_calls(url: str) -> int:
    """How many MGET commands the server has run since it started."""
    async with Redis.from_url(url) as client:
        stats = await client.info("commandstats")
    return int(stats.get("cmdstat_mget", {}).get("calls", 0))


TASKS = 64


def tiered(postgres_url: str, redis_url: str, **options: Any) -> tuple[Store, TieredBackend]:
    """A tiered store on PostgreSQL and the test's ``redis-server`` (no change feed: the
    test's own writes are the only ones), and its tier."""
    db = create_database(
        DatabaseType.TIERED, postgres_url, cache_url=redis_url, follow_changes=False, **options
    )
    assert isinstance(db, Store)
    backend = db.backend
    assert isinstance(backend, TieredBackend)
    return db, backend


@pytest.mark.redis
async def test_concurrent_gets_on_the_redis_store_share_mgets(redis_server: RedisServer) -> None:
    async with create_database(DatabaseType.REDIS, redis_server.url) as db:
        users = [f"user-{n}" for n in range(TASKS)]
        for user in users:
            await db.save_state(StateRecord(user_id=user, session_id="s", state=user))
        before = await mget_calls(redis_server.url)
        for _ in range(5):
            found = await asyncio.gather(*(db.get_state(user, "s") for user in users))
            assert [record.state if record else None for record in found] == users
        sent = await mget_calls(redis_server.url) - before
        assert 0 < sent < 5 * TASKS / 4, sent  # about one MGET per loop iteration


@pytest.mark.postgres
@pytest.mark.redis
async def test_concurrent_tiered_gets_share_cache_lookups(
    postgres_url: str, redis_server: RedisServer
) -> None:
    """Each of 64 concurrent readers gets its own record (or ``None`` for a missing one,
    whose lease and fill still work); the reads took a fraction of one MGET each."""
    db, backend = tiered(postgres_url, redis_server.url)
    async with db:
        users = [f"coalesce-{n}" for n in range(TASKS)]
        for user in users[: TASKS // 2]:
            await db.save_state(StateRecord(user_id=user, session_id="s", state=user))
        expected = [user if n < TASKS // 2 else None for n, user in enumerate(users)]
        before = await mget_calls(redis_server.url)
        for _ in range(5):
            found = await asyncio.gather(*(db.get_state(user, "s") for user in users))
            assert [record.state if record else None for record in found] == expected
        sent = await mget_calls(redis_server.url) - before
        assert 0 < sent < 5 * TASKS / 4, sent
        stats = backend.tier_stats()
        assert stats.hits >= 5 * TASKS // 2 - TASKS // 2  # at most the first round missed
        for user in users:
            await db.delete_user(user)


@pytest.mark.postgres
@pytest.mark.redis
async def test_a_frozen_cache_fails_coalesced_readers_over_to_sql_and_opens_the_breaker(
    postgres_url: str, redis_server: RedisServer
) -> None:
    """Readers of a frozen cache all get their records from SQL; a shared lookup that
    fails counts once toward the breaker, so two rounds of 16 concurrent readers open a
    breaker of threshold 2."""
    db, backend = tiered(
        postgres_url,
        redis_server.url,
        cache_timeout=0.1,
        breaker_threshold=2,
        breaker_reset_after=30.0,
    )
    assert redis_server.process is not None
    async with db:
        users = [f"frozen-{n}" for n in range(16)]
        for user in users:
            await db.save_state(StateRecord(user_id=user, session_id="s", state=user))
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            for _ in range(2):
                async with asyncio.timeout(10):  # a hang guard
                    found = await asyncio.gather(*(db.get_state(user, "s") for user in users))
                assert [record.state if record else None for record in found] == users
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        stats = backend.tier_stats()
        assert stats.breaker is BreakerState.OPEN, stats
        assert stats.bypassed >= len(users), stats
        for user in users:
            await db.delete_user(user)


@pytest.mark.postgres
@pytest.mark.redis
async def test_concurrent_tiered_saves_share_cache_writes_and_a_frozen_cache_fails_no_save(
    postgres_url: str, redis_server: RedisServer
) -> None:
    """The cache writes of 64 concurrent saves go as a few coalesced ``WRITE`` calls. With
    the cache frozen, a shared write that times out fails only the cache: every save is
    acknowledged (PostgreSQL committed it), every key is read back new, and each of the
    shared write's keys is repaired once the cache thaws."""
    db, backend = tiered(postgres_url, redis_server.url, cache_timeout=0.1, breaker_threshold=1000)
    cache = backend.cache
    assert isinstance(cache, RedisCache)
    assert redis_server.process is not None
    users = [f"write-{n}" for n in range(TASKS)]

    async def save_all(state: str) -> list[int]:
        async with asyncio.timeout(10):  # a hang guard
            saved = await asyncio.gather(
                *(
                    db.save_state(StateRecord(user_id=user, session_id="s", state=state))
                    for user in users
                )
            )
        return [record.version for record in saved]

    async def states() -> list[str | None]:
        found = await asyncio.gather(*(db.get_state(user, "s") for user in users))
        return [record.state if record else None for record in found]

    async with db:
        assert await save_all("one") == [1] * TASKS
        assert cache.writes.items == TASKS
        assert cache.writes.sent <= TASKS / 8, cache.writes.sent
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            assert await save_all("two") == [2] * TASKS
            assert backend.tier_stats().dirty == TASKS
            assert await states() == ["two"] * TASKS  # dirty keys are read from SQL
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        for _ in range(20):
            if await backend.repaired() == 0:
                break
        assert backend.tier_stats().dirty == 0
        hits = backend.tier_stats().hits
        assert await states() == ["two"] * TASKS
        assert backend.tier_stats().hits == hits + TASKS  # the repaired cache answers
        for user in users:
            await db.delete_user(user)
