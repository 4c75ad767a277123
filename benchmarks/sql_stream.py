"""Streaming a whole namespace for batch jobs: records per second and resident memory.

python -m benchmarks.sql_stream [--records 100000] [--batch 1000] [--skip-sqlite]
python -m benchmarks.sql_stream --records 1000000

Fills a throwaway PostgreSQL database (and a SQLite file) with ``--records`` session
records of ~1.2 KB, then reads them all back through ``SQLBackend.stream`` (keyset pages of
``--batch`` rows on short queries). Memory is sampled after every page: a flat stream ends
about where it started, whatever the record count. For scale, the same rows through a raw
asyncpg server-side cursor.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from backends.base import utcnow
from backends.sql import build_sql_backend
from backends.sql.migrate import upgrade
from backends.sql.schema import sqlite_time
from benchmarks.common import session_record, throwaway_database
from kvstore.models.base import METADATA_FIELDS
from serializers import JSONSerializer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from backends.sql import SQLBackend

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CHUNK = 10_000
TEXT = JSONSerializer().dumps(session_record(), exclude=METADATA_FIELDS).decode()
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    """Resident memory of this process now, in MiB."""
    with Path("/proc/self/statm").open() as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


def rows(start: int, count: int) -> list[tuple[str, str, str, str, int]]:
    return [
        ("state", f"user-{i // 10:07d}", f"session-{i % 10}", TEXT, 1)
        for i in range(start, min(start + count, start + CHUNK))
    ]


async def fill_postgres(url: str, total: int) -> None:
    connection = await asyncpg.connect(url)
    try:
        now = utcnow()
        for start in range(0, total, CHUNK):
            chunk = [(*row, now, now) for row in rows(start, min(CHUNK, total - start))]
            await connection.copy_records_to_table(
                "kv_records",
                records=chunk,
                columns=[
                    "namespace",
                    "owner",
                    "key",
                    "value",
                    "version",
                    "created_at",
                    "updated_at",
                ],
            )
        await connection.execute("VACUUM ANALYZE kv_records")  # hint bits: fair to the first reader
    finally:
        await connection.close()


async def fill_sqlite(path: Path, total: int) -> None:
    import aiosqlite

    async with aiosqlite.connect(path) as connection:
        now = sqlite_time(utcnow())
        for start in range(0, total, CHUNK):
            chunk = [(*row, now, now) for row in rows(start, min(CHUNK, total - start))]
            await connection.executemany(
                "INSERT INTO kv_records (namespace, owner, key, value, version, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                chunk,
            )
            await connection.commit()


async def timed(name: str, stream: AsyncIterator[object], total: int) -> None:
    """Drain ``stream``; print records/s and memory before, at peak and after."""
    before = peak = rss_mib()
    count = 0
    start = time.perf_counter()
    async for _ in stream:
        count += 1
        if count % 1000 == 0:
            peak = max(peak, rss_mib())
    elapsed = time.perf_counter() - start
    assert count == total, (count, total)
    print(
        f"| {name} | {total:,} | {count / elapsed:,.0f} | {before:.0f} | {peak:.0f} |"
        f" {peak - before:+.1f} |"
    )


async def backend_stream(backend: SQLBackend, batch: int) -> AsyncIterator[object]:
    async for key, entry in backend.stream("state", batch_size=batch):
        yield key, entry


async def cursor_stream(url: str, batch: int) -> AsyncIterator[object]:
    connection = await asyncpg.connect(url)
    try:
        async with connection.transaction():
            query = (
                "SELECT namespace, owner, key, value, version, created_at, updated_at,"
                " expires_at FROM kv_records WHERE namespace = 'state'"
                " ORDER BY namespace, owner, key"
            )
            async for row in connection.cursor(query, prefetch=batch):
                yield row
    finally:
        await connection.close()


async def postgres(total: int, batch: int, admin_url: str) -> None:
    async with throwaway_database(admin_url, "stream") as url:
        await fill_postgres(url, total)
        backend = build_sql_backend(url)
        await backend.initialize()
        try:
            await timed("PostgreSQL, SQLBackend.stream", backend_stream(backend, batch), total)
        finally:
            await backend.close()
        await timed("PostgreSQL, raw asyncpg server-side cursor", cursor_stream(url, batch), total)


async def sqlite(total: int, batch: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "stream.db"
        url = f"sqlite:///{path}"
        await upgrade(url)
        await fill_sqlite(path, total)
        backend = build_sql_backend(url)
        await backend.initialize()
        try:
            await timed("SQLite, SQLBackend.stream", backend_stream(backend, batch), total)
        finally:
            await backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--postgres", default=ADMIN_URL, help="server to create a database on")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    print(f"{len(TEXT)} byte records, pages of {args.batch}\n")
    print("| reader | records | records/s | RSS before (MiB) | RSS peak (MiB) | growth (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    if not args.skip_postgres:
        asyncio.run(postgres(args.records, args.batch, args.postgres))
    if not args.skip_sqlite:
        asyncio.run(sqlite(args.records, args.batch))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nprocess peak RSS (getrusage, including the fill): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
