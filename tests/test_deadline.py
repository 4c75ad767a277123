"""Deadlines that a stalled event loop does not use up, and a tiered store whose breaker a
busy caller cannot trip while a frozen cache still does.

Stalls are real: ``time.sleep`` blocks the loop, as a long GC or CPU-heavy request does."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from typing import TYPE_CHECKING

import pytest

from backends.breaker import BreakerState
from backends.deadline import TICK, _Watch, deadline
from backends.tiered import TieredBackend
from kvstore import DatabaseType, StateRecord, create_database
from kvstore.store import Store
from tests.redis_servers import RedisServer

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


async def test_a_reply_that_arrived_during_a_stall_is_not_a_timeout() -> None:
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[str] = loop.create_future()
    loop.call_later(0.01, reply.set_result, "answer")

    async def stall() -> None:
        await asyncio.sleep(0)
        time.sleep(0.15)  # noqa: ASYNC251 - the stall is the point: the reply is ready

    staller = asyncio.create_task(stall())
    async with deadline(0.05):
        assert await reply == "answer"
    await staller


async def test_a_call_that_never_answers_times_out_on_a_free_loop() -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        async with deadline(0.05):
            await never


async def test_a_nested_deadline_due_later_is_covered_by_the_enclosing_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The inner deadline is not watched; the enclosing one still ends the block. An inner
    deadline due sooner is watched too."""
    loop = asyncio.get_running_loop()
    watched: list[deadline] = []
    add = _Watch.add

    def counted(watch: _Watch, item: deadline, due: float) -> None:
        watched.append(item)
        add(watch, item, due)

    monkeypatch.setattr(_Watch, "add", counted)

    async def nested() -> None:
        async with deadline(0.05), deadline(5.0):
            await loop.create_future()

    with pytest.raises(TimeoutError):
        await nested()
    assert len(watched) == 1
    async with deadline(5.0):
        with pytest.raises(TimeoutError):
            async with deadline(0.05):
                await loop.create_future()
    assert len(watched) == 3


class _ManualLoop:
    """What a watch uses of its loop: the time, set by hand, and timers, recorded."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[asyncio.TimerHandle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., object]) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(when, callback, (), self)  # type: ignore[arg-type]
        self.timers.append(handle)
        return handle

    def get_debug(self) -> bool:
        return False

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        pass


def test_a_deadline_due_before_the_next_tick_moves_the_check_up() -> None:
    loop = _ManualLoop()
    watch = _Watch(loop)  # type: ignore[arg-type]
    watch.add(deadline(5.0), 105.0)
    assert [t.when() for t in loop.timers] == [100.0 + TICK]
    watch.add(deadline(TICK / 10), 100.0 + TICK / 10)
    assert [t.when() for t in loop.timers] == [100.0 + TICK, 100.0 + TICK / 10]
    assert loop.timers[0].cancelled()
    watch.add(deadline(1.0), 101.0)
    assert len(loop.timers) == 2  # due after the next check: that check covers it


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    """Only the deadline's own cancellation becomes a TimeoutError."""
    started = asyncio.Event()

    async def waiting() -> None:
        async with deadline(5.0):
            started.set()
            await asyncio.get_running_loop().create_future()

    task = asyncio.create_task(waiting())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_many_deadlines_in_flight_expire_and_answer_independently() -> None:
    """One watch serves every deadline of the loop: those whose call answers leave it, those
    whose call never answers time out."""
    loop = asyncio.get_running_loop()

    async def call(answer_after: float | None) -> str:
        reply: asyncio.Future[str] = loop.create_future()
        if answer_after is not None:
            loop.call_later(answer_after, reply.set_result, "answered")
        try:
            async with deadline(0.05):
                return await reply
        except TimeoutError:
            return "timed out"

    plan = [None if n % 3 == 0 else 0.001 * n for n in range(30)]
    results = await asyncio.gather(*(call(after) for after in plan))
    assert results == ["timed out" if after is None else "answered" for after in plan]


async def test_a_task_started_inside_a_deadline_keeps_its_own_deadlines() -> None:
    """The enclosing deadline bounds its own task only: a task started inside it and left
    running is not covered by it."""
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def background() -> str:
        try:
            async with deadline(0.1):
                await never
        except TimeoutError:
            return "timed out"
        return "answered"

    async with deadline(0.05):
        task = asyncio.create_task(background())
    assert await asyncio.wait_for(task, 5.0) == "timed out"


async def test_stalls_are_granted_back_only_up_to_max_extra() -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def stall_often() -> None:
        for _ in range(20):
            await asyncio.sleep(0.01)
            time.sleep(0.06)  # noqa: ASYNC251 - a stall

    staller = asyncio.create_task(stall_often())
    with pytest.raises(TimeoutError):
        async with deadline(0.05, max_extra=0.1):
            await never
    staller.cancel()


async def test_a_dependency_that_answers_others_extends_the_deadline_up_to_busy_extra() -> None:
    """While other calls get answers, a call still waiting is queued behind them, not
    facing a dead dependency: its deadline is extended, within ``busy_extra`` (by default
    ``max_extra``), a budget of its own."""
    loop = asyncio.get_running_loop()
    answers = 0

    def answer_others() -> None:
        nonlocal answers
        answers += 1

    ticker = [loop.call_later(0.01 * n, answer_others) for n in range(1, 150)]
    reply: asyncio.Future[str] = loop.create_future()
    loop.call_later(0.15, reply.set_result, "late answer")
    async with deadline(0.05, progress=lambda: answers):
        assert await reply == "late answer"  # 3x the deadline: others were answered

    started = loop.time()
    with pytest.raises(TimeoutError):
        async with deadline(0.05, max_extra=0.1, progress=lambda: answers):
            await loop.create_future()
    assert loop.time() - started < 0.3
    late: asyncio.Future[str] = loop.create_future()
    loop.call_later(0.3, late.set_result, "answered after 6 deadlines")
    async with deadline(0.05, max_extra=0.1, busy_extra=1.0, progress=lambda: answers):
        assert await late == "answered after 6 deadlines"  # past max_extra, within busy_extra
    for handle in ticker:
        handle.cancel()
    with pytest.raises(TimeoutError):  # nobody answered anyone: it expires on time
        async with deadline(0.05, progress=lambda: answers):
            await loop.create_future()


def tiered(tmp_path: Path, cache_url: str, **options: float) -> tuple[Store, TieredBackend]:
    db = create_database(
        DatabaseType.TIERED,
        f"sqlite:///{tmp_path / 'kv.db'}",
        cache_url=cache_url,
        key_prefix=f"stall-{uuid.uuid4().hex[:8]}:",
        cache_timeout=0.1,
        breaker_threshold=int(options.get("breaker_threshold", 5)),
        breaker_reset_after=10.0,
    )
    assert isinstance(db, Store)
    assert isinstance(db.backend, TieredBackend)
    return db, db.backend


async def saved_users(db: Store, prefix: str, count: int) -> list[str]:
    """``count`` users, each with a state record of session ``s`` saved (and cached)."""
    users = [f"{prefix}{n}" for n in range(count)]
    for user in users:
        await db.save_state(StateRecord(user_id=user, session_id="s", state="A"))
    return users


@pytest.mark.redis
async def test_a_stalled_loop_keeps_the_breaker_closed_and_the_cache_serving(
    tmp_path: Path, shared_redis_url: str
) -> None:
    """64 readers of cached records while the loop is blocked 150 ms every 300 ms: every
    read in flight during a stall misses a 100 ms deadline on the loop's clock."""
    db, backend = tiered(tmp_path, shared_redis_url)
    async with db:
        users = await saved_users(db, "u", 64)
        before = backend.tier_stats()
        stop = asyncio.Event()

        async def read(user: str) -> None:
            while not stop.is_set():
                assert await db.get_state(user, "s") is not None

        async def stall() -> None:
            for _ in range(8):
                await asyncio.sleep(0.3)
                time.sleep(0.15)  # noqa: ASYNC251 - a stall, as a long GC
            stop.set()

        await asyncio.gather(stall(), *(read(user) for user in users))
        after = backend.tier_stats()
        reads = after.reads - before.reads
        hits = after.hits - before.hits
        assert after.breaker is BreakerState.CLOSED
        assert reads > 1000
        assert hits / reads >= 0.99, (hits, reads, after)
        await db.delete_user("u0")


READERS = 1000
"""Readers in the saturation tests: far more than the cache's 64 connections."""


async def saturate(db: Store, users: list[str], stop: asyncio.Event) -> None:
    """``READERS`` tasks reading flat out, each burning 0.1 ms of CPU per read (the
    request's own work), until ``stop`` is set."""

    async def read(user: str) -> None:
        while not stop.is_set():
            await db.get_state(user, "s")
            busy_until = time.perf_counter() + 0.0001
            while time.perf_counter() < busy_until:
                pass

    await asyncio.gather(*(read(users[n % len(users)]) for n in range(READERS)))


@pytest.mark.redis
async def test_a_saturated_caller_keeps_the_breaker_closed_and_the_cache_serving(
    tmp_path: Path, shared_redis_url: str
) -> None:
    """A caller at 100% CPU with 1,000 tasks: a cache call waits behind the others' work
    far longer than its deadline, though the cache answers every call in microseconds.
    Timeouts while the cache answers other calls are not cache failures."""
    db, backend = tiered(tmp_path, shared_redis_url)
    async with db:
        users = await saved_users(db, "sat", 100)
        before = backend.tier_stats()
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(3.0, stop.set)
        await saturate(db, users, stop)
        after = backend.tier_stats()
        reads = after.reads - before.reads
        assert after.breaker_open_seconds == 0.0, after
        assert reads > 1000
        assert (after.hits - before.hits) / reads >= 0.99, after
        for user in users:
            await db.delete_user(user)


@pytest.mark.redis
async def test_a_frozen_cache_opens_the_breaker_under_saturation(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    db, backend = tiered(tmp_path, redis_server.url)
    async with db:
        users = await saved_users(db, "sat", 100)
        assert redis_server.process is not None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, redis_server.process.send_signal, signal.SIGSTOP)
        loop.call_later(2.0, stop.set)
        try:
            await saturate(db, users, stop)
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        stats = backend.tier_stats()
        assert stats.breaker is BreakerState.OPEN, stats
        assert stats.breaker_open_seconds > 0.5, stats


@pytest.mark.redis
async def test_a_frozen_cache_still_opens_the_breaker(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    db, backend = tiered(tmp_path, redis_server.url, breaker_threshold=3)
    async with db:
        await db.save_state(StateRecord(user_id="u1", session_id="s", state="A"))
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGSTOP)
        for _ in range(5):
            async with asyncio.timeout(5):
                assert await db.get_state("u1", "s") is not None  # served from SQL
        assert backend.tier_stats().breaker is BreakerState.OPEN
        redis_server.process.send_signal(signal.SIGCONT)
