"""How long a change made behind the store's back stays invisible to a tiered store's
readers: the change feed's lag, end to end.

python -m benchmarks.feed_lag [--rounds 200] [--postgres ADMIN_URL] [--redis URL]

Each round a batch job (another connection, plain SQL) updates a record the store has
cached; a reader then reads it through the tiered store (PostgreSQL + Redis) in a tight
loop until the new value shows. The lag is from the UPDATE's commit to the first read that
returns it; reported as p50/p99/max over the rounds with the load average. The store runs
with its defaults (``feed_interval`` 50 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

import asyncpg

from benchmarks.common import throwaway_database
from kvstore import DatabaseType, StateRecord, create_database

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/12"


async def run(url: str, redis_url: str, rounds: int) -> list[float]:
    db = create_database(
        DatabaseType.TIERED, url, cache_url=redis_url, key_prefix=f"lag-{uuid.uuid4().hex[:8]}:"
    )
    batch = await asyncpg.connect(url)
    lags: list[float] = []
    try:
        async with db:
            await db.save_state(StateRecord(user_id="lag", session_id="s", state="0"))
            for n in range(1, rounds + 1):
                assert await db.get_state("lag", "s") is not None  # cached
                await batch.execute(
                    "UPDATE kv_records SET value = jsonb_set(value, '{state}', to_jsonb($1::text))"
                    " WHERE namespace = 'state' AND owner = 'lag' AND key = 's'",
                    str(n),
                )
                committed = time.perf_counter()
                async with asyncio.timeout(10):
                    while True:
                        record = await db.get_state("lag", "s")
                        if record is not None and record.state == str(n):
                            break
                        await asyncio.sleep(0.001)
                lags.append(time.perf_counter() - committed)
                await asyncio.sleep(0.02)
            await db.delete_user("lag")
    finally:
        await batch.close()
    return lags


async def main_async(rounds: int, admin_url: str, redis_url: str) -> None:
    async with throwaway_database(admin_url, "lag") as url:
        lags = sorted(await run(url, redis_url, rounds))
    ms = [lag * 1000 for lag in lags]
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    print(f"change-feed lag over {len(ms)} rounds (load average {os.getloadavg()[0]:.2f}):")
    print(f"p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--postgres", default=ADMIN_URL, help="admin URL (creates a database)")
    parser.add_argument("--redis", default=REDIS_URL, help="Redis URL, on a database of its own")
    args = parser.parse_args()
    asyncio.run(main_async(args.rounds, args.postgres, args.redis))


if __name__ == "__main__":
    main()
