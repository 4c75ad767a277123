"""Backup and restore at scale: export a PostgreSQL store to gzip JSON Lines and import it
into an empty one, reporting records per second and peak memory growth of each phase.

    python -m benchmarks.transfer                       # 1,000,000 records
    python -m benchmarks.transfer --records 100000

Uses two throwaway PostgreSQL databases (dropped at the end) and the same functions as
``kvstore export`` / ``kvstore import`` (:mod:`kvstore.transfer`), without the progress bar.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from backends.base import Entry
from backends.sql import SQLBackend, build_sql_backend
from benchmarks.common import session_record
from kvstore.keys import Key
from kvstore.models.base import METADATA_FIELDS
from kvstore.transfer import export_lines, import_lines, open_text
from serializers import JSONSerializer
from tests.postgres import create_database, drop_database, unique_name

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    """Resident memory of this process now, MiB."""
    with Path("/proc/self/statm").open() as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


class PeakMemory:
    """Samples RSS every 20 ms while a phase runs; reports the growth over the start."""

    def __init__(self) -> None:
        self.start = rss_mib()
        self.peak = self.start
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mib())
            await asyncio.sleep(0.02)

    def __enter__(self) -> PeakMemory:
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self.peak = max(self.peak, rss_mib())


async def fill(backend: SQLBackend, records: int) -> None:
    serializer, now = JSONSerializer(), datetime.now(UTC)
    for first in range(0, records, 5000):
        items = []
        for n in range(first, min(first + 5000, records)):
            user_id, session_id = f"user-{n // 4}", f"session-{n % 4}"
            value = serializer.dumps(session_record(user_id, session_id), exclude=METADATA_FIELDS)
            items.append((Key("state", (user_id, session_id)), Entry(value, 1, now, now)))
        await backend.restore(items)


async def run(records: int, directory: Path) -> None:
    source_name, target_name = unique_name("export"), unique_name("import")
    source = build_sql_backend(await create_database(source_name))
    target = build_sql_backend(await create_database(target_name))
    path = directory / "backup.jsonl.gz"
    try:
        started = time.perf_counter()
        await fill(source, records)
        print(f"filled {records:,} records in {time.perf_counter() - started:.0f} s")

        with PeakMemory() as export_memory:
            started = time.perf_counter()
            exported = 0
            with open_text(path, "wb") as sink:
                async for line in export_lines(source):
                    sink.write(line)
                    exported += 1
            export_seconds = time.perf_counter() - started

        await target.initialize()
        with PeakMemory() as import_memory, open_text(path, "rb") as lines:
            started = time.perf_counter()
            report = await import_lines(target, iter(lines), batch_size=2000)
            import_seconds = time.perf_counter() - started
        if report.written != records or report.rejected:
            raise RuntimeError(
                f"import wrote {report.written} of {records}; {len(report.rejected)} rejected, "
                f"first: {report.rejected[:1]}"
            )

        size = path.stat().st_size / 2**20
        print(f"\n### Export and import of {records:,} records (PostgreSQL, {size:.0f} MiB gzip)\n")
        print("| phase | records/s | RSS growth (MiB) |")
        print("|---|---:|---:|")
        for phase, count, seconds, memory in (
            ("export (scan + gzip JSON Lines)", exported, export_seconds, export_memory),
            ("import (validate + restore)", report.written, import_seconds, import_memory),
        ):
            growth = memory.peak - memory.start
            print(f"| {phase} | {count / seconds:,.0f} | {growth:+.1f} |")
    finally:
        await source.close()
        await target.close()
        await drop_database(source_name)
        await drop_database(target_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kvstore-transfer-") as directory:
        asyncio.run(run(arguments.records, Path(directory)))


if __name__ == "__main__":
    main()
