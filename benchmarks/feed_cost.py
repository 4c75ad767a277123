"""What following the change feed costs a worker for each change other workers make.

python -m benchmarks.feed_cost [--rounds 5] [--seconds 3] [--postgres ADMIN_URL] [--redis URL]

Every tiered store follows the feed (``follow_changes``, the default) and puts a tombstone
of each change it did not write itself in the shared cache: with N workers, each save is
followed by N - 1 other workers.

* **End to end:** a writer process saves flat out (8 tasks, 1,000 keys, not following)
  for ``--seconds``; this process runs a tiered store with its defaults that does nothing
  but follow. Its CPU per change the writer made (less its idle polling over as long),
  beside the writer's own CPU per save, median and range over the rounds.
* **The cache's part alone:** the follower's tombstones for 1,000 keys in chunks of 64, as
  ``RedisCache.tombstones`` sends them (one ``TOMBSTONES`` script call a chunk) and as one
  ``WRITE`` script call a tombstone (before 2026-12-07), interleaved: client and Redis CPU
  (``INFO cpu``) per tombstone, half of them no-ops (the cache holds a newer revision, as
  for a change the writer put in the cache itself) and half landing.

Redis keys live under unique prefixes on the given database number (default 12); the load
average is printed beside each table.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import sys
import time
import uuid
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from backends.base import Entry, utcnow
from backends.redis import build_redis_backend, lua
from backends.redis.cache import DEFAULT_TOMBSTONE_TTL
from backends.redis.format import pack_tombstone
from benchmarks.common import delete_prefix, session_record, throwaway_database
from kvstore import DatabaseType, create_database
from kvstore.keys import Key

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from backends.redis import RedisBackend

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/12"
KEYS = 1000
TASKS = 8
CHUNK = 64


async def write(url: str, redis_url: str, prefix: str, seconds: float) -> None:
    """The writer process: save flat out for ``seconds``; print saves and CPU seconds."""
    records = [session_record(f"user-{i % 100}", f"session-{i}") for i in range(KEYS)]
    db = create_database(
        DatabaseType.TIERED, url, cache_url=redis_url, key_prefix=prefix, follow_changes=False
    )
    saves = 0
    async with db:
        await db.get_state("warm", "up")
        deadline = time.monotonic() + seconds
        started = time.process_time()

        async def loop(task: int) -> None:
            nonlocal saves
            turn = task
            while True:  # at least one save a task, however late the loop starts
                await db.save_state(records[turn % KEYS])
                turn += TASKS
                saves += 1
                if time.monotonic() >= deadline:
                    return

        await asyncio.gather(*(loop(task) for task in range(TASKS)))
        cpu = time.process_time() - started
    print(json.dumps({"saves": saves, "cpu": cpu}))


async def writer(url: str, redis_url: str, prefix: str, seconds: float) -> tuple[int, float]:
    """Run :func:`write` in a process of its own: (saves, its CPU seconds)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.feed_cost",
        "--write",
        url,
        "--redis",
        redis_url,
        "--prefix",
        prefix,
        "--seconds",
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"the writer failed ({process.returncode})")
    report = json.loads(out.decode().strip().splitlines()[-1])
    return int(report["saves"]), float(report["cpu"])


async def redis_cpu(redis: Redis) -> float:
    """Redis's CPU seconds so far (user and system, all its threads)."""
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def end_to_end(
    url: str, redis_url: str, count: int, seconds: float
) -> dict[str, list[float]]:
    prefix = f"feedcost-{uuid.uuid4().hex[:8]}:"
    follower = create_database(DatabaseType.TIERED, url, cache_url=redis_url, key_prefix=prefix)
    redis = Redis.from_url(redis_url)
    found: dict[str, list[float]] = {"follower": [], "writer": [], "saves/s": []}
    try:
        async with follower:
            await follower.get_state("warm", "up")  # starts following
            for _ in range(count):
                idle_from, wall_from = time.process_time(), time.monotonic()
                await asyncio.sleep(seconds)
                idle = (time.process_time() - idle_from) / (time.monotonic() - wall_from)
                busy_from, wall_from = time.process_time(), time.monotonic()
                saves, writer_cpu = await writer(url, redis_url, prefix, seconds)
                await asyncio.sleep(0.5)  # the last polls
                busy = time.process_time() - busy_from - idle * (time.monotonic() - wall_from)
                found["follower"].append(busy / saves * 1e6)
                found["writer"].append(writer_cpu / saves * 1e6)
                found["saves/s"].append(saves / seconds)
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()
    return found


async def one_call_a_tombstone(cache: RedisBackend, items: Sequence[tuple[Key, int]]) -> None:
    """The tombstones as they went before ``TOMBSTONES``: a ``WRITE`` call each."""
    px = round(DEFAULT_TOMBSTONE_TTL * 1000)  # what tombstones() sends without a TTL
    calls = [
        cache._call(lua.WRITE, key, "", pack_tombstone(revision), px, revision)
        for key, revision in items
    ]
    await cache._scripts("tombstones", calls)


async def cache_part(redis_url: str, count: int) -> dict[str, list[tuple[float, float]]]:
    """Client and Redis CPU per tombstone (µs), each way, ``count`` interleaved rounds."""
    prefix = f"feedcost-{uuid.uuid4().hex[:8]}:"
    cache = build_redis_backend(redis_url, {"key_prefix": prefix})
    redis = Redis.from_url(redis_url)
    keys = [Key("state", (f"user-{i % 100}", f"session-{i}")) for i in range(KEYS)]
    now = utcnow()
    ways: dict[str, Callable[[Sequence[tuple[Key, int]]], Awaitable[None]]] = {
        "TOMBSTONES, a call per 64": cache.tombstones,
        "WRITE, a call each": functools.partial(one_call_a_tombstone, cache),
    }
    found: dict[str, list[tuple[float, float]]] = {way: [] for way in ways}
    try:
        await cache.initialize()
        for key in keys:
            await cache.write(key, Entry(b"{}", 1, now, now, revision=1_000_000))
        revision = 1_000_000
        for _ in range(count):
            for way, send in ways.items():
                revision += 1
                client, server = time.process_time(), await redis_cpu(redis)
                for below in (1, revision):  # no-ops, then landing
                    for start in range(0, KEYS, CHUNK):
                        await send([(key, below) for key in keys[start : start + CHUNK]])
                tombstones = 2 * KEYS
                found[way].append(
                    (
                        (time.process_time() - client) / tombstones * 1e6,
                        (await redis_cpu(redis) - server) / tombstones * 1e6,
                    )
                )
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()
        await cache.close()
    return found


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):,.1f} ({min(values):,.1f}-{max(values):,.1f})"


async def main_async(count: int, seconds: float, admin_url: str, redis_url: str) -> None:
    async with throwaway_database(admin_url, "feedcost") as url:
        found = await end_to_end(url, redis_url, count, seconds)
    print(
        f"following the change feed, end to end: {count} rounds of {seconds:g} s"
        f" (load average {os.getloadavg()[0]:.2f}), median (range)"
    )
    print(f"writer: {summary(found['saves/s'])} saves/s, {summary(found['writer'])} µs CPU a save")
    print(f"a follower's CPU per change made elsewhere: {summary(found['follower'])} µs")
    ways = await cache_part(redis_url, count)
    print(
        f"\nthe cache's part alone, {count} interleaved rounds of {2 * KEYS} tombstones"
        f" (load average {os.getloadavg()[0]:.2f}): CPU µs per tombstone, median (range)"
    )
    print(f"{'':28} {'client':>20} {'Redis':>20}")
    for way, rounds in ways.items():
        client = summary([c for c, _ in rounds])
        server = summary([r for _, r in rounds])
        print(f"{way:28} {client:>20} {server:>20}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--postgres", default=ADMIN_URL, help="admin URL (creates a database)")
    parser.add_argument("--redis", default=REDIS_URL, help="Redis URL, on a database of its own")
    parser.add_argument("--write", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        asyncio.run(write(args.write, args.redis, args.prefix, args.seconds))
    else:
        asyncio.run(main_async(args.rounds, args.seconds, args.postgres, args.redis))


if __name__ == "__main__":
    main()
