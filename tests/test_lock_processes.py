"""Session locks across OS processes, on the tiered store (PostgreSQL + a private Redis):
the lock serializes workers of different processes, and a worker frozen past its lease is
fenced off by PostgreSQL after another process took the lock over (tests/lock_worker.py), and
locks keep working while the cache is frozen."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

from kvstore import DatabaseType, StateRecord, create_database
from tests import postgres
from tests.lock_worker import SESSION, USER

if TYPE_CHECKING:
    from tests.redis_servers import RedisServer

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def worker(mode: str, url: str, cache_url: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.lock_worker",
            mode,
            "--url",
            url,
            "--cache-url",
            cache_url,
            *extra,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 120) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return out


async def empty(postgres_url: str, redis: RedisServer) -> None:
    """A fresh start: no record, lock or fence in PostgreSQL, nothing cached."""
    await postgres.empty(postgres_url)
    client = Redis.from_url(redis.url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


async def saved_state(url: str, cache_url: str) -> tuple[str, int] | None:
    async with create_database(DatabaseType.TIERED, url, cache_url=cache_url) as db:
        record = await db.get_state(USER, SESSION)
        return None if record is None else (record.state, record.version)


async def test_four_processes_under_one_lock_lose_no_increment(
    postgres_url: str, private_redis: RedisServer
) -> None:
    await empty(postgres_url, private_redis)
    workers = [worker("count", postgres_url, private_redis.url, "--times", "15") for _ in range(4)]
    outputs = await asyncio.gather(*(asyncio.to_thread(finish, w) for w in workers))
    assert all(out.strip() == "SAVED 15" for out in outputs)
    # without the lock, concurrent read-increment-save cycles would lose increments
    assert await saved_state(postgres_url, private_redis.url) == ("60", 60)


async def test_a_process_frozen_past_its_lease_is_fenced_off(
    postgres_url: str, private_redis: RedisServer
) -> None:
    await empty(postgres_url, private_redis)
    frozen = worker("hold", postgres_url, private_redis.url)
    try:
        assert frozen.stdout is not None
        assert frozen.stdin is not None
        holding = await asyncio.to_thread(frozen.stdout.readline)
        old_token = int(holding.split()[1])
        os.kill(frozen.pid, signal.SIGSTOP)  # a long GC pause, a frozen container
        await asyncio.sleep(1.0)  # past its 0.5 s lease
        taker = worker("count", postgres_url, private_redis.url, "--times", "1")
        assert (await asyncio.to_thread(finish, taker)).strip() == "SAVED 1"
        os.kill(frozen.pid, signal.SIGCONT)
        frozen.stdin.write("go\n")
        frozen.stdin.flush()
        out = (await asyncio.to_thread(finish, frozen)).split()
    finally:
        if frozen.poll() is None:
            os.kill(frozen.pid, signal.SIGCONT)
            frozen.kill()
    assert out[0] == "FENCED"
    assert int(out[1]) > old_token
    assert await saved_state(postgres_url, private_redis.url) == ("1", 1)


async def test_locks_keep_working_while_the_cache_is_frozen(
    postgres_url: str, redis_server: RedisServer
) -> None:
    """The tiered store keeps its lock queues in SQL: a frozen Redis delays nothing but
    the cache updates, and fenced saves still commit."""
    await postgres.empty(postgres_url)
    db = create_database(
        DatabaseType.TIERED, postgres_url, cache_url=redis_server.url, cache_timeout=0.1
    )
    async with db:
        await db.save_state(StateRecord(user_id=USER, session_id=SESSION, state="0"))
        assert redis_server.process is not None
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            for n in range(1, 4):
                async with db.lock(USER, SESSION, timeout=10) as fence:
                    record = StateRecord(user_id=USER, session_id=SESSION, state=str(n))
                    saved = await db.save_state(record, fence=fence)
                    assert saved.version == n + 1
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        current = await db.get_state(USER, SESSION)
        assert current is not None
        assert (current.state, current.version) == ("3", 4)
