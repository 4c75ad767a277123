"""What a session lock costs, where it can live: PostgreSQL (the SQL and tiered stores) or
Redis (the Redis store).

python -m benchmarks.locks [--seconds 2] [--postgres ADMIN_URL] [--redis URL]

* uncontended: ``async with db.lock(user, session)`` and nothing else, one task, a new
  session each time (the common case: one message of a session at a time);
* a turn: lock, read the state, save it with the fence, release; one task;
* contended: 8 tasks taking turns on one session (a hand-over every time).

Contenders interleaved in rounds; median ops/s, p50/p99 and CPU per operation.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import uuid
from typing import TYPE_CHECKING

from benchmarks.common import close_stores, measure, throwaway_database
from kvstore import DatabaseType, StateRecord, create_database

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from kvstore import Database

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/12"


def uncontended(db: Database) -> Callable[[], Awaitable[object]]:
    sessions = itertools.count()

    async def lock() -> object:
        async with db.lock("bench-user", f"s{next(sessions)}"):
            return None

    return lock


def turn(db: Database, session: str | None = None) -> Callable[[], Awaitable[object]]:
    sessions = itertools.count()

    async def one() -> object:
        name = session or f"t{next(sessions) % 100}"
        async with db.lock("bench-user", name, timeout=30) as fence:
            current = await db.get_state("bench-user", name)
            count = int(current.state) + 1 if current is not None else 1
            record = StateRecord(user_id="bench-user", session_id=name, state=str(count))
            return await db.save_state(record, fence=fence)

    return one


async def run(url: str, redis_url: str, seconds: float) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    stores = {
        "PostgreSQL (SQL store)": create_database(DatabaseType.SQL, url),
        "Redis (Redis store)": create_database(DatabaseType.REDIS, redis_url, key_prefix=prefix),
        "tiered (lock in PostgreSQL)": create_database(
            DatabaseType.TIERED, url, cache_url=redis_url, key_prefix=prefix + "t:"
        ),
    }
    try:
        for db in stores.values():
            await db.initialize()
        await measure(
            "lock and release, uncontended, 1 task",
            seconds,
            [(name, uncontended(db)) for name, db in stores.items()],
            1,
        )
        await measure(
            "a turn (lock, read, fenced save, release), 1 task",
            seconds,
            [(name, turn(db)) for name, db in stores.items()],
            1,
        )
        await measure(
            "a turn on one session, 8 tasks taking turns",
            seconds,
            [(name, turn(db, "contended")) for name, db in stores.items()],
            8,
        )
    finally:
        await close_stores(stores.values(), redis_url, prefix)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per contender and table")
    parser.add_argument("--postgres", default=ADMIN_URL, help="admin URL (creates a database)")
    parser.add_argument("--redis", default=REDIS_URL, help="Redis URL, on a database of its own")
    args = parser.parse_args()
    async with throwaway_database(args.postgres, "locks") as url:
        await run(url, args.redis, args.seconds)


if __name__ == "__main__":
    asyncio.run(main())
