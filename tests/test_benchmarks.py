"""The benchmarks still run: each table a benchmark prints has a row per contender with
its numbers (a few hundredths of a second per slice: this checks that they work, not what
they measure)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import pytest

from tests import postgres
from tests.redis_servers import RedisServer
from tests.services import unavailable

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROW = re.compile(
    r"^\| (.+?) \| [\d,]+ \([\d,]+-[\d,]+\) \| [\d.]+x \| [\d.]+ \| [\d.]+ \| [\d,]+ \| \d+-\d+ \|$"
)


def tables(*args: str) -> dict[str, list[str]]:
    """Run ``python -m benchmarks.<args>``; the contenders of each table it printed."""
    return parse_tables(output(*args))


def output(*args: str) -> str:
    """What ``python -m benchmarks.<args>`` printed (it must succeed)."""
    done = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=300, check=True
    )
    return done.stdout


async def on_services(module: str, redis: RedisServer, *args: str) -> str:
    """What ``python -m <module> <args>`` printed, run on the shared PostgreSQL (it makes
    a throwaway database) and on ``redis``."""
    if not await postgres.server_available():
        unavailable(f"no PostgreSQL at {postgres.ADMIN_URL}")
    return await asyncio.to_thread(
        output, module, *args, "--postgres", postgres.ADMIN_URL, "--redis", redis.url
    )


def parse_tables(output: str) -> dict[str, list[str]]:
    """The contenders of each table in a benchmark's ``output``, by title."""
    found: dict[str, list[str]] = {}
    title = ""
    for line in output.splitlines():
        if line.startswith("### "):
            title = line[4:]
            found[title] = []
        elif (row := ROW.match(line)) is not None:
            found[title].append(row.group(1))
    return found


async def test_the_sql_benchmark_compares_every_contender() -> None:
    if not await postgres.server_available():
        unavailable(f"no PostgreSQL at {postgres.ADMIN_URL}")
    found = await asyncio.to_thread(
        tables, "benchmarks.sql_backend", "--seconds", "0.1", "--postgres", postgres.ADMIN_URL
    )
    assert len(found) == 12
    for table in (
        "PostgreSQL listing (a user's 10), 32 tasks",
        "PostgreSQL get_many (10 keys), one task",
    ):
        assert found[table] == [
            "raw asyncpg pool (no reset)",
            "SQL backend",
            "SQLAlchemy Core, engine.connect()",
        ]
    assert found["PostgreSQL save (upsert), 32 tasks"] == [
        "raw asyncpg pool (no reset)",
        "SQL backend",
        "SQL backend, group_commit=False",
        "SQLAlchemy Core, engine.begin()",
    ]
    assert found["SQLite get (by key), one task"] == [
        "raw aiosqlite, one connection",
        "SQL backend",
    ]


async def test_the_tiered_benchmark_compares_every_contender(private_redis: RedisServer) -> None:
    found = parse_tables(await on_services("benchmarks.tiered", private_redis, "--seconds", "0.1"))
    assert len(found) == 4
    assert found["save_state, 32 task(s)"][:3] == [
        "raw asyncpg upsert + redis-py SET",
        "tiered save_state",
        "tiered save_state, group_commit=False",
    ]
    assert found["cache-hit get_state, 1 task(s)"] == [
        "raw redis-py GET + model_validate_json",
        "tiered get_state",
        "tiered get_state, recent_reads=0 (validates every read)",
        "tiered get_state, near cache",
    ]


@pytest.mark.redis
async def test_the_redis_benchmark_compares_every_contender(private_redis: RedisServer) -> None:
    own_database = private_redis.url.removesuffix("/0") + "/7"  # the benchmark flushes it
    found = await asyncio.to_thread(
        tables, "benchmarks.redis_backend", "--seconds", "0.1", "--url", own_database
    )
    assert len(found) == 10
    assert found["bytes get, 32 task(s)"] == [
        "raw redis-py GET / SET",
        "RedisBackend",
        "RedisBackend, no autopipeline",
    ]
    assert found["records save, 1 task(s)"][:2] == [
        "raw redis-py + pydantic",
        "kvstore Database (Redis)",
    ]
    assert found["100 keys, one task: get_many vs 100 single gets (records, the Database)"] == [
        "100 single gets",
        "get_many of 100",
    ]


async def test_the_scale_benchmark_exports_and_imports_every_layout() -> None:
    """``--transfer`` at a tiny size: every record of each layout is exported and imported
    (a shortfall or a rejected line would fail the run), and every table has one row."""
    if not await postgres.server_available():
        unavailable(f"no PostgreSQL at {postgres.ADMIN_URL}")
    out = await asyncio.to_thread(
        output,
        "benchmarks.scale",
        *("--sizes", "2000", "--partitions", "0,2", "--seconds", "0.05", "--convert", "0"),
        *("--transfer", "--import-records", "1500"),
    )
    assert re.search(r"^\| 2,000 \| [\d,]+ \(1,500\) \| [\d,]+ \(1,500\) \|$", out, re.M), out
    assert re.search(r"^\| 2,000 \| [\d,]+ / [\d,]+ / [\d,]+ / [\d,]+ \| ", out, re.M), out
    assert "exported 2,000 records" in out


async def test_the_telemetry_benchmark_compares_every_contender(
    private_redis: RedisServer,
) -> None:
    out = await on_services("benchmarks.telemetry", private_redis, "--seconds", "0.1")
    found = parse_tables(out)
    contenders = [
        "no telemetry",
        "telemetry, API only",
        "telemetry, SDK, 1% of traces",
        "telemetry, SDK, every trace",
    ]
    assert list(found) == [
        "cache-hit get_state, 1 task(s)",
        "cache-hit get_state, 32 task(s)",
        "save_state, 1 task(s)",
        "save_state, 32 task(s)",
        "cache-hit get_state on in-process tiers, 1 task",
        "one SDK histogram measurement (µs, median of 5 rounds of 20,000)",
    ]
    assert all(rows == contenders for rows in list(found.values())[:5])
    assert re.search(r"^- default exemplar filter: [\d.]+ µs$", out, re.MULTILINE)
    assert re.search(r"^- exemplars off: [\d.]+ µs$", out, re.MULTILINE)


async def test_the_feed_cost_benchmark_measures_the_follower_and_both_ways(
    private_redis: RedisServer,
) -> None:
    out = await on_services(
        "benchmarks.feed_cost", private_redis, "--rounds", "1", "--seconds", "0.3"
    )
    number = r"-?[\d,.]+ \(-?[\d,.]+--?[\d,.]+\)"
    assert re.search(rf"^writer: {number} saves/s, {number} µs CPU a save$", out, re.M), out
    assert re.search(rf"^a follower's CPU per change made elsewhere: {number} µs$", out, re.M)
    for way in ("TOMBSTONES, a call per 64", "WRITE, a call each"):
        assert re.search(rf"^{way} +{number} +{number}$", out, re.M), out
