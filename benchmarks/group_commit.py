"""Group commit on PostgreSQL: the SQL backend's saves with and without it, side by side.

python -m benchmarks.group_commit [--seconds 1] [--postgres ADMIN_URL]

At 4, 8, 16 and 32 concurrent tasks, each saving its own keys (~1 KB of JSON) on a pool of
10 connections, in a throwaway database: ops/s (median and range of interleaved slices),
p50/p99, CPU per save, the fewest and most saves one task made in a slice, and the rows
each statement carried.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING

from backends.sql import build_sql_backend
from benchmarks.common import measure, throwaway_database
from kvstore.keys import Key

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from backends.sql import SQLBackend

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
VALUE = b'{"state": "CHAT", "data": {"text": "' + b"x" * 1000 + b'"}}'
KEYS_PER_TASK = 50


def saves(backend: SQLBackend) -> Callable[[], Awaitable[object]]:
    """Each task (told apart by its asyncio task) cycles over keys of its own."""
    counters: dict[int, int] = {}

    async def save() -> object:
        task = id(asyncio.current_task())
        n = counters[task] = counters.get(task, -1) + 1
        return await backend.put(Key("state", (f"u{task}", f"s{n % KEYS_PER_TASK}")), VALUE)

    return save


async def run(url: str, seconds: float) -> None:
    grouped = build_sql_backend(url, {"pool_size": 10})
    alone = build_sql_backend(url, {"pool_size": 10, "group_commit": False})
    await grouped.initialize()
    await alone.initialize()
    try:
        for tasks in (4, 8, 16, 32):
            before = grouped.sql_stats()
            await measure(
                f"SQL backend save, {tasks} tasks",
                seconds,
                [("group_commit=False", saves(alone)), ("group commit", saves(grouped))],
                tasks,
            )
            after = grouped.sql_stats()
            rows = (after.saves - before.saves) / max(
                1, after.save_statements - before.save_statements
            )
            print(f"\n(group commit: {rows:.1f} saves per statement)")
    finally:
        await grouped.close()
        await alone.close()


async def main_async(seconds: float, admin_url: str) -> None:
    async with throwaway_database(admin_url, "group") as url:
        await run(url, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per contender and table")
    parser.add_argument("--postgres", default=ADMIN_URL, help="admin URL (creates a database)")
    args = parser.parse_args()
    asyncio.run(main_async(args.seconds, args.postgres))


if __name__ == "__main__":
    main()
