"""The tiered store (PostgreSQL + Redis) against the raw drivers doing the same work.

python -m benchmarks.tiered [--seconds 2] [--postgres ADMIN_URL] [--redis URL]

* cache-hit ``get_state`` vs raw redis-py ``GET`` + ``StateRecord.model_validate_json``
  (redis-py at its fastest: hiredis, ``socket_timeout=None``), from Redis and from a near
  cache in the process (``near_cache_entries``); the same keys are read again and again,
  so the store copies records it validated before (``kvstore.recent``), and a store with
  ``recent_reads=0`` shows what a read costs that validates, as when records change
  between reads;
* ``save_state`` vs a raw asyncpg upsert (pool without reset, the SQL backend's own
  statement) followed by a raw redis-py ``SET`` of the serialized record; and for scale,
  each step alone: the raw upsert, the raw ``SET``, the SQL backend's ``put`` and the
  cache's ``WRITE`` script (to keys of their own);

each with one task and with 32 concurrent tasks, over 1000 keys of a ~1.2 KB session
record, contenders interleaved in rounds (the machine is shared): medians are reported as
ratios to the raw drivers. PostgreSQL runs in a throwaway database; Redis keys live under a
unique prefix on the given database number (default 12) and are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from typing import TYPE_CHECKING

import asyncpg
from redis.asyncio import Redis

from backends.base import Entry, utcnow
from backends.tiered import TieredBackend
from benchmarks.common import delete_prefix, measure, session_record, throwaway_database
from kvstore import DatabaseType, StateRecord, create_database
from kvstore.keys import Key
from kvstore.recent import DEFAULT_ENTRIES as DEFAULT_RECENT_READS
from kvstore.store import Store

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/12"
KEYS = 1000
TASKS = 32

RECORDS = [session_record(f"user-{i % 100}", f"session-{i}") for i in range(KEYS)]


class Cycle:
    """Each call returns the next index over the keys."""

    def __init__(self) -> None:
        self._next = 0

    def __call__(self) -> int:
        index = self._next
        self._next = (index + 1) % KEYS
        return index


async def _noreset(_connection: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (the fair pool baseline of BASELINES.md)."""


RAW_TABLE = """
CREATE TABLE raw_records (LIKE kv_records INCLUDING DEFAULTS INCLUDING CONSTRAINTS
                          INCLUDING INDEXES)"""
"""The raw baseline's table: kv_records' shape without its revision triggers (a plain
upsert is what the raw driver does at its best)."""

RAW_UPSERT = """
INSERT INTO raw_records AS r
    (namespace, owner, key, value, version, created_at, updated_at, expires_at, revision)
VALUES ($1, $2, $3, $4, 1, $5, $5, $6, 0)
ON CONFLICT (namespace, owner, key) DO UPDATE SET
    value = excluded.value, version = r.version + 1, updated_at = excluded.updated_at,
    expires_at = excluded.expires_at
RETURNING version, created_at"""
KV_UPSERT = RAW_UPSERT.replace("raw_records", "kv_records")
"""The raw upsert into kvstore's own table, whose triggers draw revisions for the change
feed: what those cost a save. The keys are the tiered store's; the change feed carries
these writes to its cache, as it does a batch job's."""


def tiered(
    url: str,
    redis_url: str,
    prefix: str,
    *,
    invalidate_before_write: bool = False,
    follow_changes: bool = True,
    near_cache_entries: int = 0,
    group_commit: bool = True,
    recent_reads: int = DEFAULT_RECENT_READS,
) -> Store:
    db = create_database(
        DatabaseType.TIERED,
        url,
        cache_url=redis_url,
        key_prefix=prefix,
        pool_size=10,
        max_overflow=0,
        invalidate_before_write=invalidate_before_write,
        follow_changes=follow_changes,
        near_cache_entries=near_cache_entries,
        group_commit=group_commit,
        recent_reads=recent_reads,
    )
    assert isinstance(db, Store)
    return db


async def run(url: str, redis_url: str, seconds: float) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    db = tiered(url, redis_url, prefix)
    # a second store in the same process: one change-feed follower per process, as deployed
    db_ibw = tiered(url, redis_url, prefix, invalidate_before_write=True, follow_changes=False)
    # a third with a near cache (it follows the change feed: the near cache needs it)
    db_near = tiered(url, redis_url, prefix, near_cache_entries=KEYS)
    # and one whose saves each go alone (no group commit), for comparison
    db_alone = tiered(url, redis_url, prefix, follow_changes=False, group_commit=False)
    # and one that validates every read, as when a record changes between reads
    db_validating = tiered(url, redis_url, prefix, follow_changes=False, recent_reads=0)
    redis = Redis.from_url(redis_url, socket_timeout=None)  # the raw driver at its fastest
    pool = await asyncpg.create_pool(url, min_size=10, max_size=10, reset=_noreset)
    to_json = StateRecord.__pydantic_serializer__.to_json

    def serialize(record: StateRecord) -> bytes:
        return to_json(record, exclude={"schema_version"})  # what model_validate_json takes

    raw_keys = [f"{prefix}raw:{i}" for i in range(KEYS)]
    try:
        await db.initialize()
        await db_ibw.initialize()
        await db_near.initialize()
        await db_alone.initialize()
        await db_validating.initialize()
        await pool.execute(RAW_TABLE)
        saved = [await db.save_state(record) for record in RECORDS]
        for key, record in zip(raw_keys, saved, strict=True):
            await redis.set(key, serialize(record))
        for record in RECORDS:  # every key cached: gets below are cache hits
            await db.get_state(record.user_id, record.session_id)
        backend = db.backend
        assert isinstance(backend, TieredBackend)
        near = db_near.backend
        assert isinstance(near, TieredBackend)
        for _ in range(1000):  # until its change feed has caught up (10 s at most)
            if near.tier_stats().near_serving:
                break
            await asyncio.sleep(0.01)
        for record in RECORDS:
            await db_near.get_state(record.user_id, record.session_id)
        before = backend.tier_stats()
        near_before = near.tier_stats()

        def raw_get(cycle: Cycle) -> Callable[[], Awaitable[object]]:
            async def get() -> object:
                raw = await redis.get(raw_keys[cycle()])
                assert raw is not None
                return StateRecord.model_validate_json(raw)

            return get

        def tiered_get(store: Store, cycle: Cycle) -> Callable[[], Awaitable[object]]:
            async def get() -> object:
                record = RECORDS[cycle()]
                return await store.get_state(record.user_id, record.session_id)

            return get

        def raw_save(cycle: Cycle, upsert: str = RAW_UPSERT) -> Callable[[], Awaitable[object]]:
            async def save() -> object:
                index = cycle()
                record = RECORDS[index]
                value = serialize(record)
                async with pool.acquire() as connection:
                    await connection.fetch(
                        upsert,
                        "state",
                        record.user_id,
                        record.session_id,
                        value.decode(),
                        utcnow(),
                        None,
                    )
                return await redis.set(raw_keys[index], value)

            return save

        def record_put(cycle: Cycle) -> Callable[[], Awaitable[object]]:
            record_backend = backend.record

            async def put() -> object:
                record = RECORDS[cycle()]
                key = db.states.key(record.user_id, record.session_id)
                return await record_backend.put(key, serialize(record))

            return put

        def raw_upsert(cycle: Cycle) -> Callable[[], Awaitable[object]]:
            async def upsert() -> object:
                record = RECORDS[cycle()]
                async with pool.acquire() as connection:
                    return await connection.fetch(
                        RAW_UPSERT,
                        "state",
                        record.user_id,
                        record.session_id,
                        serialize(record).decode(),
                        utcnow(),
                        None,
                    )

            return upsert

        def raw_set(cycle: Cycle) -> Callable[[], Awaitable[object]]:
            async def set_value() -> object:
                index = cycle()
                return await redis.set(raw_keys[index], serialize(RECORDS[index]))

            return set_value

        def cache_write(cycle: Cycle) -> Callable[[], Awaitable[object]]:
            # keys no other contender reads, each write a newer revision (so it lands)
            cache, revisions = backend.cache, iter(range(1, 1 << 62))
            keys = [Key("state", (f"phase-{i}", "s")) for i in range(KEYS)]

            async def write() -> object:
                index = cycle()
                now = utcnow()
                value = serialize(RECORDS[index])
                entry = Entry(value, 1, now, now, revision=next(revisions))
                return await cache.write(keys[index], entry)

            return write

        def tiered_save(store: Store, cycle: Cycle) -> Callable[[], Awaitable[object]]:
            async def save() -> object:
                return await store.save_state(RECORDS[cycle()])

            return save

        for tasks in (1, TASKS):
            await measure(
                f"cache-hit get_state, {tasks} task(s)",
                seconds,
                [
                    ("raw redis-py GET + model_validate_json", raw_get(Cycle())),
                    ("tiered get_state", tiered_get(db, Cycle())),
                    (
                        "tiered get_state, recent_reads=0 (validates every read)",
                        tiered_get(db_validating, Cycle()),
                    ),
                    ("tiered get_state, near cache", tiered_get(db_near, Cycle())),
                ],
                tasks,
            )
        hits = backend.tier_stats().hits - before.hits
        misses = backend.tier_stats().misses - before.misses
        near_hits = near.tier_stats().near_hits - near_before.near_hits
        near_reads = near.tier_stats().reads - near_before.reads
        print(
            f"\n(cache hits during the get runs: {hits}, misses: {misses}; near cache: "
            f"{near_hits} of {near_reads} reads)"
        )
        # its change-feed follower would read every save below and write its tombstone to
        # the cache, on this process's CPU: a second store no deployed process runs
        await db_near.close()
        for tasks in (1, TASKS):
            await measure(
                f"save_state, {tasks} task(s)",
                seconds,
                [
                    ("raw asyncpg upsert + redis-py SET", raw_save(Cycle())),
                    ("tiered save_state", tiered_save(db, Cycle())),
                    ("tiered save_state, group_commit=False", tiered_save(db_alone, Cycle())),
                    ("tiered, invalidate_before_write", tiered_save(db_ibw, Cycle())),
                    ("(for scale) SQL backend put alone, no cache", record_put(Cycle())),
                    ("(for scale) cache WRITE script alone", cache_write(Cycle())),
                    ("(for scale) raw asyncpg upsert alone", raw_upsert(Cycle())),
                    ("(for scale) raw redis-py SET alone", raw_set(Cycle())),
                    (
                        "(for scale) raw, into kv_records (its triggers)",
                        raw_save(Cycle(), KV_UPSERT),
                    ),
                ],
                tasks,
            )
    finally:
        await db.close()  # first: their change-feed followers write to the cache until then
        await db_ibw.close()
        await db_near.close()
        await db_alone.close()
        await db_validating.close()
        await delete_prefix(redis, prefix)
        await redis.aclose()
        await pool.close()


async def main_async(seconds: float, admin_url: str, redis_url: str) -> None:
    async with throwaway_database(admin_url, "tiered") as url:
        await run(url, redis_url, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per contender and table")
    parser.add_argument("--postgres", default=ADMIN_URL, help="admin URL (creates a database)")
    parser.add_argument("--redis", default=REDIS_URL, help="Redis URL, on a database of its own")
    args = parser.parse_args()
    asyncio.run(main_async(args.seconds, args.postgres, args.redis))


if __name__ == "__main__":
    main()
