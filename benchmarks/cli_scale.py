"""The command line at a million records: each command a new process, as an operator runs
it, on a tiered store (PostgreSQL + a private ``redis-server``) holding ``--records`` notes
of a record class of the user's own. Prints records/s and the peak memory (max RSS) of each
command's process.

    python -m benchmarks.cli_scale                      # 1,000,000 records
    python -m benchmarks.cli_scale --records 20000

Uses a throwaway PostgreSQL database (``--database``, default ``kvstore_bench_cli_<pid>``;
dropped at the end; vacuumed and analyzed after the fill, as autovacuum would) and a
``redis-server`` of its own on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson

from backends.base import Entry
from backends.sql import build_sql_backend
from backends.sql.migrate import upgrade
from kvstore.keys import Key
from tests.postgres import create_database, drop_database
from tests.redis_servers import RedisServer

NOTES_V2 = """
from typing import ClassVar

from kvstore import Id, Record


class Note(Record):
    SCHEMA_VERSION: ClassVar[int] = 2
    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("user_id", "note_id")
    user_id: Id
    note_id: Id
    title: str
    text: str


@Note.upgrade(from_version=1)
def _title(data):
    data["title"] = data["text"][:20]
    return data
"""
"""The user's record class after a schema change: what ``records migrate --model`` takes."""


@dataclass(frozen=True, slots=True)
class Run:
    """One command: its wall time, its process's peak RSS, what it printed."""

    seconds: float
    max_rss_mib: float
    output: str


def kvstore(args: list[str], env: dict[str, str], cwd: Path) -> Run:
    """Run the console script; raise with its output if it fails."""
    script = str(Path(sys.executable).with_name("kvstore"))
    started = time.perf_counter()
    process = subprocess.Popen(
        [script, *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert process.stdout is not None
    output = process.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"kvstore {' '.join(args)} exited {process.returncode}:\n{output}")
    return Run(seconds, usage.ru_maxrss / 1024, output)


async def fill(url: str, records: int) -> None:
    """``records`` notes of schema version 1, ~300 bytes each, 10 per user."""
    backend = build_sql_backend(url)
    now = datetime.now(UTC)
    try:
        for first in range(0, records, 5000):
            items = []
            for n in range(first, min(first + 5000, records)):
                user_id, note_id = f"user-{n // 10:07}", f"note-{n % 10}"
                value = orjson.dumps(
                    {
                        "user_id": user_id,
                        "note_id": note_id,
                        "text": f"note {n}: " + "breathe first, then answer. " * 8,
                        "schema_version": 1,
                    }
                )
                items.append((Key("notes", (user_id, note_id)), Entry(value, 1, now, now)))
            await backend.restore(items)
    finally:
        await backend.close()


async def analyze(url: str) -> None:
    """VACUUM ANALYZE the table, as autovacuum does after a bulk load: query plans then
    know how many rows a namespace holds (a server with autovacuum off, as this machine's
    is, would otherwise plan every batched read of 500 keys with a scan of the namespace's
    whole index)."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("VACUUM ANALYZE kv_records")
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--database", default=f"kvstore_bench_cli_{os.getpid()}")
    arguments = parser.parse_args()
    records: int = arguments.records
    with tempfile.TemporaryDirectory(prefix="kvstore-cli-scale-") as directory:
        work = Path(directory)
        (work / "my_notes.py").write_text(NOTES_V2)
        redis = RedisServer(work / "redis").start()
        url = asyncio.run(create_database(arguments.database))
        try:
            asyncio.run(upgrade(url))
            started = time.perf_counter()
            asyncio.run(fill(url, records))
            asyncio.run(analyze(url))
            print(f"filled {records:,} records in {time.perf_counter() - started:.0f} s")
            env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
            env |= {"KVSTORE_URL": url, "KVSTORE_CACHE_URL": redis.url}
            commands = [
                ("kvstore stats --json", ["stats", "--json"], 0),
                ("kvstore cache warm --all", ["cache", "warm", "--namespace", "notes", "--all"], 1),
                (
                    "kvstore cache verify --all",
                    ["cache", "verify", "--namespace", "notes", "--all", "--json"],
                    1,
                ),
                ("kvstore export", ["export", "--namespace", "notes", "-o", "notes.jsonl.gz"], 1),
                ("kvstore import --dry-run", ["import", "notes.jsonl.gz", "--dry-run"], 1),
                (
                    "kvstore records migrate --model",
                    ["records", "migrate", "--model", "my_notes:Note", "--namespace", "notes"],
                    1,
                ),
            ]
            print(f"\n### The command line at {records:,} records (tiered: PostgreSQL + Redis)\n")
            print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs\n")
            print("| command | seconds | records/s | peak RSS MiB | says |")
            print("|---|---:|---:|---:|---|")
            for name, args, per_record in commands:
                run = kvstore(args, env, work)
                rate = f"{records / run.seconds:,.0f}" if per_record else "-"
                said = run.output.strip().splitlines()[-1][:70].replace("|", "/")
                print(
                    f"| `{name}` | {run.seconds:.1f} | {rate} | {run.max_rss_mib:.0f} | {said} |",
                    flush=True,
                )
        finally:
            redis.stop()
            asyncio.run(drop_database(arguments.database))


if __name__ == "__main__":
    main()
