"""What OpenTelemetry costs the tiered store's hot paths (PostgreSQL + Redis).

python -m benchmarks.telemetry [--seconds 2] [--postgres ADMIN_URL] [--redis URL]

Four stores over the same tables and cache, contenders interleaved in rounds: without
telemetry; ``telemetry=True`` with only the API (no SDK configured: OpenTelemetry's no-op
providers); and with an SDK configured as a service would (spans batched to an exporter
that drops them, metrics aggregated for a reader), keeping 1% of the traces (a sampler, as
services with many requests run it) or every trace. Cache-hit ``get_state`` and
``save_state``, one task and 32; then the reads again on in-process tiers (no I/O: the
telemetry's own CPU per hit). The issue's targets: with an SDK at least 95% of the
ops/s without telemetry, without an SDK 99%.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import timeit
import uuid
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from backends.telemetry import DURATION
from benchmarks.common import close_stores, measure, session_record, throwaway_database
from kvstore import DatabaseType, create_database

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from opentelemetry.sdk.trace import ReadableSpan

    from kvstore import Database

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/12"
KEYS = 1000
TASKS = 32
RECORDS = [session_record(f"user-{i % 100}", f"session-{i}") for i in range(KEYS)]


class DropSpans(SpanExporter):
    """An exporter that drops what it is given: the SDK's work without a collector's."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def sdk(sampled: float = 1.0) -> dict[str, Any]:
    """An SDK as a service configures one: ``sampled`` of the traces kept (parent-based,
    by trace id), spans batched to an exporter, metrics aggregated for a reader."""
    tracer_provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(sampled)))
    tracer_provider.add_span_processor(BatchSpanProcessor(DropSpans()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return {"tracer_provider": tracer_provider, "meter_provider": meter_provider}


def contenders(tiered: Callable[..., Database]) -> dict[str, Database]:
    """The four stores of every table, by name, made by ``tiered(**options)``."""
    return {
        "no telemetry": tiered(),
        "telemetry, API only": tiered(telemetry=True),
        "telemetry, SDK, 1% of traces": tiered(**sdk(0.01)),
        "telemetry, SDK, every trace": tiered(**sdk()),
    }


def getter(db: Database) -> Callable[[], Awaitable[object]]:
    turn = 0

    async def get() -> object:
        nonlocal turn
        record = RECORDS[turn % KEYS]
        turn += 1
        return await db.get_state(record.user_id, record.session_id)

    return get


def saver(db: Database) -> Callable[[], Awaitable[object]]:
    turn = 0

    async def save() -> object:
        nonlocal turn
        record = RECORDS[turn % KEYS]
        turn += 1
        return await db.save_state(record)

    return save


async def run(url: str, redis_url: str, seconds: float) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"

    def tiered(**options: Any) -> Database:
        # no change-feed follower: one would read every other store's saves as changes
        # from elsewhere and write their tombstones, on the CPU of whichever is timed
        return create_database(
            DatabaseType.TIERED,
            url,
            cache_url=redis_url,
            key_prefix=prefix,
            follow_changes=False,
            **options,
        )

    stores = contenders(tiered)
    plain = stores["no telemetry"]
    try:
        for db in stores.values():
            await db.initialize()
        for record in RECORDS:
            await plain.save_state(record)
        for db in stores.values():
            for record in RECORDS:  # every key cached: gets are cache hits
                await db.get_state(record.user_id, record.session_id)
        for tasks in (1, TASKS):
            await measure(
                f"cache-hit get_state, {tasks} task(s)",
                seconds,
                [(name, getter(db)) for name, db in stores.items()],
                tasks,
            )
        for tasks in (1, TASKS):
            await measure(
                f"save_state, {tasks} task(s)",
                seconds,
                [(name, saver(db)) for name, db in stores.items()],
                tasks,
            )
    finally:
        await close_stores(stores.values(), redis_url, prefix)
    await in_process(seconds)
    record_cost()


def record_cost() -> None:
    """What the SDK takes for one duration measurement with a store's attributes, with
    its default exemplar filter and with exemplars off (median of 5 rounds)."""
    attributes = {
        "db.system.name": "redis",
        "db.operation.name": "lookup",
        "kvstore.tier": "cache",
        "db.collection.name": "state",
    }
    print("\n### one SDK histogram measurement (µs, median of 5 rounds of 20,000)\n")
    filters: dict[str, dict[str, Any]] = {
        "default exemplar filter": {},
        "exemplars off": {"exemplar_filter": AlwaysOffExemplarFilter()},
    }
    for name, options in filters.items():
        provider = MeterProvider(metric_readers=[InMemoryMetricReader()], **options)
        histogram = provider.get_meter("bench").create_histogram(DURATION, unit="s")
        record = functools.partial(histogram.record, 0.001, attributes)
        rounds = timeit.repeat(record, number=20_000, repeat=5)
        print(f"- {name}: {statistics.median(rounds) / 20_000 * 1e6:.1f} µs")
        provider.shutdown()


async def in_process(seconds: float) -> None:
    """The same four on in-process tiers (a dict for each): no I/O, so the table shows
    the telemetry's own CPU per cache hit, without the network's noise."""

    def tiered(**options: Any) -> Database:
        return create_database(DatabaseType.TIERED, "memory://", cache_url="memory://", **options)

    stores = contenders(tiered)
    try:
        for db in stores.values():
            for record in RECORDS:
                await db.save_state(record)
                await db.get_state(record.user_id, record.session_id)
        await measure(
            "cache-hit get_state on in-process tiers, 1 task",
            seconds,
            [(name, getter(db)) for name, db in stores.items()],
            1,
        )
    finally:
        for db in stores.values():
            await db.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per contender and table")
    parser.add_argument("--postgres", default=ADMIN_URL, help="admin URL (creates a database)")
    parser.add_argument("--redis", default=REDIS_URL, help="Redis URL, on a database of its own")
    args = parser.parse_args()
    async with throwaway_database(args.postgres, "otel") as url:
        await run(url, args.redis, args.seconds)


if __name__ == "__main__":
    asyncio.run(main())
