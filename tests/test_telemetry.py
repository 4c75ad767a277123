"""OpenTelemetry spans and metrics (``telemetry=True``): what a scripted sequence on the
tiered store over PostgreSQL + Redis records, and that no id, value or secret ever
reaches an attribute, on every backend."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import warnings
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased

from backends.base import Entry
from backends.memory.cache import MemoryCache
from backends.telemetry import DURATION
from backends.telemetry.instruments import Instruments
from backends.telemetry.wrappers import TracedCache
from kvstore import ConflictError, DatabaseType, StateRecord, create_database
from kvstore.clock import ManualClock
from kvstore.keys import Key
from tests import postgres
from tests.telemetry_audit import Telemetry, findings

if TYPE_CHECKING:
    from pathlib import Path

    from opentelemetry.trace import Span

    from kvstore import Database
    from tests.conftest import MakeDb
    from tests.redis_servers import RedisServer


def series(system: str, tier: str, operation: str, **more: str) -> dict[str, str]:
    return {
        "db.system.name": system,
        "kvstore.tier": tier,
        "db.operation.name": operation,
        "db.collection.name": "state",
        **more,
    }


async def test_a_scripted_sequence_on_postgres_and_redis(
    postgres_url: str, redis_server: RedisServer
) -> None:
    """Hit, miss and fill, a conflict, the breaker opening while Redis is frozen and
    closing after: each shows in the spans and the metrics."""
    await postgres.empty(postgres_url)
    telemetry = Telemetry()
    clock = ManualClock(datetime.now(UTC))
    db = create_database(
        DatabaseType.TIERED,
        postgres_url,
        cache_url=redis_server.url,
        cache_timeout=0.1,
        breaker_threshold=2,
        breaker_reset_after=0.3,
        # no change feed: its tombstone for the other store's save of s2 could land between
        # the miss's lease and its fill, and (rightly) drop the fill this test counts
        follow_changes=False,
        clock=clock,  # the breaker's: its reset is a step, not a wait
        **telemetry.options(),
    )
    sql_only = create_database(DatabaseType.SQL, postgres_url)
    async with db, sql_only:
        saved = await db.save_state(StateRecord(user_id="u1", session_id="s1", state="A"))
        assert await db.get_state("u1", "s1") is not None  # a hit: written through
        await sql_only.save_state(StateRecord(user_id="u1", session_id="s2", state="B"))
        assert await db.get_state("u1", "s2") is not None  # a miss, read from SQL, filled
        with pytest.raises(ConflictError):
            await db.save_state(saved, expected_version=7)

        assert telemetry.value("kvstore.cache.hits") == 1
        assert telemetry.value("kvstore.cache.misses") == 1
        assert telemetry.value("kvstore.cache.fills") == 1
        assert telemetry.value("kvstore.cache.breaker.open") == 0
        recorded = telemetry.durations()
        for expected in (
            series("tiered", "store", "put"),
            series("postgresql", "record", "put"),
            series("redis", "cache", "write"),
            series("tiered", "store", "get"),
            series("redis", "cache", "lookup"),
            series("postgresql", "record", "get_many"),
            series("redis", "cache", "fill"),
            series("tiered", "store", "put", **{"error.type": "ConflictError"}),
            series("postgresql", "record", "put", **{"error.type": "ConflictError"}),
        ):
            assert expected in recorded, expected

        spans = {span.context.span_id: span for span in telemetry.finished()}
        record_put = next(
            s
            for s in spans.values()
            if s.name == "put state" and s.attributes and s.attributes["kvstore.tier"] == "record"
        )
        assert record_put.parent is not None
        parent = spans[record_put.parent.span_id]
        assert parent.attributes is not None
        assert (parent.name, parent.attributes["kvstore.tier"]) == ("put state", "store")

        assert redis_server.process is not None
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            # s2: s1 is read from SQL until repaired (its conflicting save marked it dirty)
            for _ in range(3):  # each times out; the second opens the breaker
                assert await db.get_state("u1", "s2") is not None  # from SQL
            assert telemetry.value("kvstore.cache.breaker.open") == 1
            assert telemetry.value("kvstore.cache.bypassed") >= 1
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        clock.advance(0.4)  # past breaker_reset_after: the next read probes
        assert await db.get_state("u1", "s2") is not None
        assert telemetry.value("kvstore.cache.breaker.open") == 0
        # the frozen cache's calls were cut off by the tier's deadline (cancelled inside)
        assert series("redis", "cache", "lookup", **{"error.type": "CancelledError"}) in (
            telemetry.durations()
        )


SECRET_USER = "user-7f3a91c2"
SECRET_SESSION = "session-b44e0d17"
SECRET_VALUE = "value-9b2c55aa"


async def exercise(db: Database) -> None:
    """Every kind of operation, with ids and values that must not leave the store."""
    record = StateRecord(
        user_id=SECRET_USER, session_id=SECRET_SESSION, state="S", data={"v": SECRET_VALUE}
    )
    saved = await db.save_state(record)
    await db.get_state(SECRET_USER, SECRET_SESSION)
    await db.get_state(SECRET_USER, "absent-" + SECRET_SESSION)
    await db.list_sessions(SECRET_USER)
    with pytest.raises(ConflictError):
        await db.save_state(saved, expected_version=99)
    async with db.lock(SECRET_USER, SECRET_SESSION) as fence:
        await db.save_state(record, fence=fence)
    await db.delete_state(SECRET_USER, SECRET_SESSION)
    await db.delete_user(SECRET_USER)


def leaks(telemetry: Telemetry, secrets: tuple[str, ...]) -> list[str]:
    """Every place in the spans and metrics where one of ``secrets`` appears."""
    found = []
    for span in telemetry.finished():
        texts = [span.name, str(dict(span.attributes or {})), str(span.status.description)]
        texts += [f"{event.name} {dict(event.attributes or {})}" for event in span.events]
        found += [f"span {span.name}: {text}" for text in texts if any(s in text for s in secrets)]
    for name, attributes, _ in telemetry.points():
        text = f"{name} {attributes}"
        if any(s in text for s in secrets):
            found.append(f"metric {text}")
    return found


async def test_no_id_value_or_secret_reaches_telemetry(make_db: MakeDb) -> None:
    telemetry = Telemetry()
    async with make_db(**telemetry.options()) as db:
        await exercise(db)
    assert telemetry.finished(), "nothing was traced"
    assert telemetry.durations(), "nothing was measured"
    assert leaks(telemetry, (SECRET_USER, SECRET_SESSION, SECRET_VALUE)) == []


async def test_a_sampled_out_operation_takes_its_tiers_spans_with_it(tmp_path: Path) -> None:
    """With a ratio sampler (as services run it), the tiers' spans follow their operation's
    sampling decision: none is sampled on its own as the root of a trace."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.5)))
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    url = f"sqlite:///{tmp_path / 'sampled.db'}"
    db = create_database(
        DatabaseType.TIERED, url, cache_url="memory://", tracer_provider=tracer_provider
    )
    async with db:
        for n in range(200):
            await db.save_state(StateRecord(user_id=f"u{n}", session_id="s", state="A"))
    finished = spans.get_finished_spans()
    by_tier: dict[str, list[ReadableSpan]] = {"store": [], "record": [], "cache": []}
    for span in finished:
        by_tier[str((span.attributes or {})["kvstore.tier"])].append(span)
    assert 0 < len(by_tier["store"]) < 200  # some sampled, some not
    assert [s for s in finished if s.parent is None] == by_tier["store"]
    assert len(by_tier["record"]) == len(by_tier["cache"]) == len(by_tier["store"])


async def test_a_sampled_out_operation_starts_no_span_for_its_tiers(tmp_path: Path) -> None:
    """The tiers of a sampled-out operation would be sampled out with it: they start no
    span at all (each costs the SDK ~5 µs), and their durations are still measured."""
    telemetry = Telemetry()
    telemetry.tracer_provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    started: list[str] = []
    tracer = telemetry.tracer_provider.get_tracer("kvstore")
    real_start = tracer.start_span

    def start_span(name: str, *args: Any, **kwargs: Any) -> Span:
        started.append(name)
        return real_start(name, *args, **kwargs)

    tracer.start_span = start_span  # type: ignore[method-assign]
    telemetry.tracer_provider.get_tracer = lambda *_, **__: tracer  # type: ignore[method-assign]
    url = f"sqlite:///{tmp_path / 'unsampled.db'}"
    async with create_database(
        DatabaseType.TIERED, url, cache_url="memory://", **telemetry.options()
    ) as db:
        for n in range(20):
            await db.save_state(StateRecord(user_id=f"u{n}", session_id="s", state="A"))
    assert started == ["put state"] * 20
    recorded = telemetry.durations()
    for tier in (series("tiered", "store", "put"), series("sqlite", "record", "put")):
        assert tier in recorded, tier
    assert any(a["kvstore.tier"] == "cache" for a in recorded)


async def test_concurrent_traced_reads_keep_their_own_lookup_spans(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Concurrent single-key reads share one cache lookup, except those whose span is
    recorded: each of those shows its own lookup span under its own operation, and no
    lookup span is left without one."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.5)))
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    db = create_database(
        DatabaseType.TIERED,
        f"sqlite:///{tmp_path / 'shared.db'}",
        cache_url=redis_server.url,
        follow_changes=False,
        tracer_provider=tracer_provider,
    )
    users = [f"u{n}" for n in range(64)]
    async with db:
        for user in users:
            await db.save_state(StateRecord(user_id=user, session_id="s", state=user))
        spans.clear()
        for _ in range(3):
            found = await asyncio.gather(*(db.get_state(user, "s") for user in users))
            assert [record.state if record else None for record in found] == users
    finished = spans.get_finished_spans()
    gets = {s.context.span_id: s for s in finished if s.name == "get state"}
    lookups = [s for s in finished if s.name == "lookup state"]
    assert 0 < len(gets) < 3 * len(users)  # some sampled, some not
    assert sorted(s.parent.span_id for s in lookups if s.parent) == sorted(gets)
    assert all(s.parent is not None for s in lookups)


async def test_a_traced_call_cancelled_before_it_runs_leaves_no_coroutine_behind() -> None:
    """A traced cache call run as a task (the repair's writes are gathered) and cancelled
    before its first step: the inner cache's coroutine was never made, so nothing is left
    that "was never awaited" (the GC would report it from whatever runs next)."""
    telemetry = Telemetry()
    now = datetime.now(UTC)
    cache = TracedCache(MemoryCache(), Instruments(**telemetry.options()))
    key = Key("state", ("u1", "s1"))
    calls = [cache.tombstones([(key, 1)]), cache.write(key, Entry(b"{}", 1, now, now, revision=1))]
    tasks = [asyncio.ensure_future(call) for call in calls]
    for task in tasks:
        task.cancel()  # before the loop ran it
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(result, asyncio.CancelledError) for result in results)
    del calls, tasks, results
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []


def test_the_audit_finds_anything_outside_the_vocabulary() -> None:
    """What ``KVSTORE_TEST_TELEMETRY_AUDIT=1`` checks after every conformance test: planted
    ids, values, secrets and unknown attributes are each found."""
    telemetry = Telemetry()
    tracer = telemetry.tracer_provider.get_tracer("planted")
    clean = {"db.operation.name": "get", "db.collection.name": "state", "kvstore.tier": "store"}
    with tracer.start_as_current_span("get state", attributes=clean):
        pass
    planted = [
        ("get " + SECRET_USER, {}),
        ("get state", {"user_id": SECRET_USER}),
        ("put state", {"db.collection.name": "Session " + SECRET_SESSION}),
        ("put state", {"error.type": f"value {SECRET_VALUE}"}),
        ("delete state", {"db.system.name": "postgresql://u:pw-3c8d1f0e@host/db"}),
    ]
    for name, attributes in planted:
        with tracer.start_as_current_span(name, attributes=attributes) as span:
            span.add_event("saved", {"value": SECRET_VALUE})
    histogram = telemetry.meter_provider.get_meter("planted").create_histogram("h")
    histogram.record(1.0, {"db.operation.name": SECRET_VALUE})

    found = findings(telemetry)
    assert sum("event 'saved'" in f for f in found) == len(planted)
    for expected in (
        f"span 'get {SECRET_USER}': the name is outside the vocabulary",
        "span 'get state': unknown attribute 'user_id'",
        f"db.collection.name='Session {SECRET_SESSION}' is outside the vocabulary",
        f"error.type='value {SECRET_VALUE}' is outside the vocabulary",
        "db.system.name='postgresql://u:pw-3c8d1f0e@host/db' is outside the vocabulary",
        f"metric h: db.operation.name='{SECRET_VALUE}' is outside the vocabulary",
    ):
        assert any(expected in f for f in found), (expected, found)
    assert not any("'get state': kvstore.tier" in f for f in found)  # the clean span


async def test_a_traced_database_exports_only_the_vocabulary(make_db: MakeDb) -> None:
    telemetry = Telemetry()
    async with make_db(**telemetry.options()) as db:
        await exercise(db)
    assert telemetry.finished()
    assert findings(telemetry) == []


async def test_no_password_reaches_telemetry(postgres_url: str) -> None:
    password = "pw-3c8d1f0e"  # trust auth ignores it; it must still show nowhere
    scheme, _, rest = postgres_url.partition("://")
    user, _, host = rest.partition("@")
    url = f"{scheme}://{user.partition(':')[0]}:{password}@{host}"
    telemetry = Telemetry()
    async with create_database(DatabaseType.SQL, url, **telemetry.options()) as db:
        await exercise(db)
    assert leaks(telemetry, (password, SECRET_USER, SECRET_VALUE)) == []


def test_without_telemetry_nothing_of_opentelemetry_is_imported() -> None:
    import subprocess
    import sys

    code = (
        "import sys, asyncio\n"
        "from kvstore import create_database, DatabaseType, StateRecord\n"
        "async def main():\n"
        "    async with create_database(DatabaseType.MEMORY) as db:\n"
        "        await db.save_state(StateRecord(user_id='u', session_id='s', state='A'))\n"
        "asyncio.run(main())\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
        "assert 'backends.telemetry' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


GLOBAL_SDK_LATER = """
import asyncio
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from backends.telemetry import instruments
from kvstore import DatabaseType, StateRecord, create_database

instruments.RECHECK = 0.0  # every call looks for an SDK (else once a second)

async def main():
    async with create_database(DatabaseType.MEMORY, telemetry=True) as db:
        await db.save_state(StateRecord(user_id="u", session_id="before", state="A"))
        spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        await db.save_state(StateRecord(user_id="u", session_id="after", state="A"))
        names = [span.name for span in spans.get_finished_spans()]
        assert names == ["put state"], names
        data = reader.get_metrics_data()
        assert data is not None and data.resource_metrics, "no metric recorded"

asyncio.run(main())
"""


def test_a_global_sdk_set_after_the_store_was_built_is_used() -> None:
    """A store built with ``telemetry=True`` before the application set its SDK skips the
    work while there is none, and records once the global providers are set (within
    ``RECHECK`` seconds; at once here). A process of its own: they can be set once."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", GLOBAL_SDK_LATER], check=True, timeout=60)


def test_the_grafana_dashboard_queries_only_metrics_kvstore_exports() -> None:
    import json
    import re
    from pathlib import Path

    from backends.telemetry import DURATION, SQL_COUNTERS, SQL_GAUGES, TIER_COUNTERS, TIER_GAUGES

    exported = {DURATION, "kvstore.cache.breaker.open"}
    exported |= {f"kvstore.cache.{name}" for name in (*TIER_COUNTERS, *TIER_GAUGES)}
    exported |= {f"kvstore.sql.{name}" for name in (*SQL_COUNTERS, *SQL_GAUGES)}
    prometheus = {name.replace(".", "_") for name in exported}
    dashboard = json.loads(Path("docs/grafana/kvstore.json").read_text())
    queried = {
        re.sub(r"_(total|bucket|count|sum)$", "", name).removesuffix("_seconds")
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(?:kvstore|db)_[a-z_]+", target["expr"])
    }
    labels = {"db_system_name", "db_operation_name", "db_collection_name", "kvstore_tier"}
    assert queried - labels
    assert queried - labels <= prometheus, queried - labels - prometheus


REDIS_POOL_METRICS = """
import asyncio, json, sys
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from redis.observability import MetricGroup, OTelConfig, get_observability_instance

from kvstore import DatabaseType, StateRecord, create_database

reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
get_observability_instance().init(
    OTelConfig(metric_groups=[MetricGroup.CONNECTION_BASIC, MetricGroup.CONNECTION_ADVANCED])
)


def points():
    return [
        [metric.name, dict(point.attributes or {}), getattr(point, "value", None)]
        for resource in reader.get_metrics_data().resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    ]


async def main():
    async with create_database(DatabaseType.REDIS, sys.argv[1], telemetry=True) as db:
        await asyncio.gather(*(
            db.save_state(StateRecord(user_id=f"u{n}", session_id="s", state="A"))
            for n in range(50)
        ))
        await asyncio.gather(*(db.get_state(f"u{n}", "s") for n in range(50)))
        print(json.dumps(points()))  # every command answered: no connection in use


asyncio.run(main())
"""


def test_redis_pool_metrics_come_from_redis_py_itself(redis_server: RedisServer) -> None:
    """redis-py (8.x) measures its own pool: connections in use and idle, and how long a
    command waited for a connection. kvstore's Redis paths take connections through the
    pool's public calls, so an application that turns redis-py's metrics on sees them."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", REDIS_POOL_METRICS, redis_server.url],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    points = json.loads(done.stdout.splitlines()[-1])
    names = {name for name, _, _ in points}
    assert {"db.client.connection.count", "db.client.connection.wait_time"} <= names, names
    assert DURATION in names  # kvstore's own, beside redis-py's
    count = {a["db.client.connection.state"]: v for n, a, v in points if n.endswith(".count")}
    assert count["used"] == 0, count  # every connection taken was given back, and counted
    assert count["idle"] >= 1, count
