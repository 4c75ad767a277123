"""Shared benchmark helpers: a realistic session record and a side-by-side timer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg
from redis.asyncio import Redis

from backends.sql.migrate import upgrade
from kvstore import StateRecord

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

    from kvstore import Database


def session_record(user_id: str = "user-1", session_id: str = "session-1") -> StateRecord:
    """A ~1.2 KB session state record with nested data, like the coach service keeps."""
    return StateRecord(
        user_id=user_id,
        session_id=session_id,
        state="IDENTITY_BRAINSTORMING",
        data={
            "turn": 17,
            "goal": "Feel confident speaking up in meetings at work",
            "scores": {"confidence": 0.62, "clarity": 0.71, "energy": 0.55},
            "candidates": [
                {"id": f"identity-{i}", "name": f"Candidate identity {i}", "votes": i * 3}
                for i in range(8)
            ],
            "last_messages": [
                {"role": "coach" if i % 2 else "user", "text": "x" * 60} for i in range(6)
            ],
            "flags": {"onboarded": True, "paused": False, "locale": "en-GB"},
        },
    )


@dataclass(frozen=True, slots=True)
class Measurement:
    """Operations per second of one contender."""

    name: str
    ops_per_second: float


def time_sync(name: str, operation: Callable[[], object], *, seconds: float = 1.0) -> Measurement:
    """Run ``operation`` repeatedly for about ``seconds``; report operations per second."""
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while (now := time.perf_counter()) < deadline:
        for _ in range(100):
            operation()
        count += 100
    return Measurement(name, count / (now - start))


@dataclass(frozen=True, slots=True)
class Slice:
    """One timed run of one contender."""

    ops: int
    seconds: float
    cpu_seconds: float
    """CPU time of the whole process meanwhile (background tasks included)."""
    latencies: list[float]
    per_task: list[int]
    """Operations each task finished."""

    @property
    def ops_per_second(self) -> float:
        return self.ops / self.seconds


async def time_async(
    operation: Callable[[], Awaitable[object]], *, seconds: float = 1.0, tasks: int = 1
) -> Slice:
    """Run ``operation`` in ``tasks`` concurrent loops for about ``seconds``."""
    latencies: list[float] = []
    per_task = [0] * tasks
    clock = time.perf_counter
    start, cpu = clock(), time.process_time()
    deadline = start + seconds

    async def loop(index: int) -> None:
        while (began := clock()) < deadline:
            await operation()
            latencies.append(clock() - began)
            per_task[index] += 1

    await asyncio.gather(*(loop(i) for i in range(tasks)))
    elapsed, cpu = clock() - start, time.process_time() - cpu
    return Slice(len(latencies), elapsed, cpu, latencies, per_task)


async def measure(
    title: str,
    seconds: float,
    contenders: list[tuple[str, Callable[[], Awaitable[object]]]],
    tasks: int,
    rounds: int = 5,
) -> dict[str, float]:
    """Time every contender in ``rounds`` interleaved slices (the machine is shared and
    drifts) and print one table: per contender the median ops/s and its range over the
    slices, the ratio of medians to the first contender, p50/p99 latency over every
    operation, process CPU per operation, and the fewest and most operations one task
    finished in a slice (fairness). Returns the median ops/s by contender."""
    for _, operation in contenders:
        await operation()  # warm up: connections, prepared statements
    load = os.getloadavg()[0]
    slices: dict[str, list[Slice]] = {name: [] for name, _ in contenders}
    for _ in range(rounds):
        for name, operation in contenders:
            slices[name].append(await time_async(operation, seconds=seconds / rounds, tasks=tasks))
    medians = {
        name: statistics.median(s.ops_per_second for s in got) for name, got in slices.items()
    }
    baseline = medians[contenders[0][0]]
    print(f"\n### {title}\n")
    print(f"load average {load:.2f} (1 min) before; {rounds} interleaved slices\n")
    print(
        "| contender | ops/s, median (range) | ratio | p50 ms | p99 ms | CPU µs/op"
        " | ops/task min-max |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, got in slices.items():
        rates = [s.ops_per_second for s in got]
        latencies = sorted(latency for s in got for latency in s.latencies)
        p50, p99 = (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] for q in (0.5, 0.99)
        )
        cpu = sum(s.cpu_seconds for s in got) / sum(s.ops for s in got)
        fewest = min(min(s.per_task) for s in got)
        most = max(max(s.per_task) for s in got)
        print(
            f"| {name} | {medians[name]:,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) "
            f"| {medians[name] / baseline:.2f}x | {p50 * 1000:.2f} | {p99 * 1000:.2f} "
            f"| {cpu * 1e6:,.0f} | {fewest}-{most} |"
        )
    return medians


def print_ratios(title: str, baseline: Measurement, others: list[Measurement]) -> None:
    """A markdown table of ops/s and ratio to ``baseline``."""
    print(f"\n### {title}\n")
    print("| contender | ops/s | ratio |")
    print("|---|---:|---:|")
    for measurement in [baseline, *others]:
        ratio = measurement.ops_per_second / baseline.ops_per_second
        print(f"| {measurement.name} | {measurement.ops_per_second:,.0f} | {ratio:.2f}x |")


@contextlib.asynccontextmanager
async def throwaway_database(admin_url: str, what: str) -> AsyncIterator[str]:
    """A new PostgreSQL database on the server of ``admin_url`` with kvstore's tables (its
    URL), dropped afterwards whatever happens."""
    name = f"kvstore_bench_{what}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rpartition("/")[0] + f"/{name}"
    try:
        await upgrade(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def close_stores(stores: Iterable[Database], redis_url: str, prefix: str) -> None:
    """Close ``stores`` (their change-feed followers write to the cache until then), then
    delete the benchmark's keys under ``prefix`` from the Redis at ``redis_url``."""
    for db in stores:
        await db.close()
    redis = Redis.from_url(redis_url)
    try:
        await delete_prefix(redis, prefix)
    finally:
        await redis.aclose()


async def delete_prefix(redis: Redis, prefix: str) -> None:
    """Delete every key under ``prefix`` (a benchmark's own keys), 1,000 per command."""
    keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]
    for start in range(0, len(keys), 1000):
        await redis.delete(*keys[start : start + 1000])
