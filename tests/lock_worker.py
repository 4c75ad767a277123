"""A worker process for tests/test_lock_processes.py: takes one session's lock, as a
service worker would, on a tiered store (PostgreSQL + Redis).

``count N``: N times, under the lock, read the session's state (a counter) and save it plus
one with the fence; prints how many saves it made.

``hold``: take the lock with a short lease, print ``HOLDING <token>``, wait for a line on
stdin (the test freezes the process meanwhile, past its lease, and lets another worker take
the lock), then save with the old fence; prints ``FENCED <newest>`` or ``WROTE``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from kvstore import ConflictError, DatabaseType, FencedError, StateRecord, create_database

USER, SESSION = "u-locks", "s-locks"


async def count(url: str, cache_url: str, times: int) -> None:
    """Under the lock, read and save with the fence and ``expected_version``: the cache may
    answer with a version older than one another process saved just before (its cache
    update timed out: staleness bounded by the change feed's lag), and the version check
    turns that stale read into a ConflictError and a read again, never a lost update."""
    async with create_database(DatabaseType.TIERED, url, cache_url=cache_url) as db:
        for _ in range(times):
            async with db.lock(USER, SESSION, ttl=30, timeout=60) as fence:
                while True:
                    current = await db.get_state(USER, SESSION)
                    value = int(current.state) if current is not None else 0
                    record = StateRecord(user_id=USER, session_id=SESSION, state=str(value + 1))
                    try:
                        await db.save_state(
                            record,
                            fence=fence,
                            expected_version=current.version if current is not None else 0,
                        )
                        break
                    except FencedError:
                        raise
                    except ConflictError:
                        await asyncio.sleep(0.01)  # a stale read: read again
    print(f"SAVED {times}", flush=True)


async def hold(url: str, cache_url: str) -> None:
    db = create_database(DatabaseType.TIERED, url, cache_url=cache_url)
    async with db, db.lock(USER, SESSION, ttl=0.5, timeout=10) as fence:
        print(f"HOLDING {fence.token}", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        record = StateRecord(user_id=USER, session_id=SESSION, state="LATE")
        try:
            await db.save_state(record, fence=fence)
        except FencedError as refused:
            print(f"FENCED {refused.actual}", flush=True)
        else:
            print("WROTE", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["count", "hold"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--cache-url", required=True)
    parser.add_argument("--times", type=int, default=10)
    args = parser.parse_args()
    if args.mode == "count":
        asyncio.run(count(args.url, args.cache_url, args.times))
    else:
        asyncio.run(hold(args.url, args.cache_url))


if __name__ == "__main__":
    main()
