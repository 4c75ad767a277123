"""Load test with chaos: the example coach service on tiered(PostgreSQL + Redis).

    python -m benchmarks.load                        # 1,000 sessions for 30 s
    python -m benchmarks.load --chaos                # ... while Redis is killed, frozen and
                                                     # PostgreSQL connections are terminated
    python -m benchmarks.load --sessions 100 --seconds 5 --chaos
    python -m benchmarks.load --gc-freeze            # ... as a service that calls gc.freeze()

N sessions talk to the service at once, each waiting a random think time (mean ``--think``
seconds, 0 for flat out) between messages; each message reads the session's state and
context and saves both, and now and then adds an identity. The benchmark starts its own
``redis-server`` on a free port (never the machine's shared one) and its own PostgreSQL
database (dropped at the end). With ``--chaos`` a task cycles through killing and restarting
that Redis, freezing it (SIGSTOP) for a few seconds, and ``pg_terminate_backend`` on the
store's connections.

At the end it checks against SQL directly that every acknowledged save is there with at
least its last acknowledged version (exactly it, unless a later attempt failed with an
unknown outcome), and that every read through the tiered store equals SQL. It prints
"acknowledged writes lost: 0, stale reads after recovery: 0" or fails (exit code 1).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import asyncpg

from backends.sql import SQLBackend
from backends.tiered import TieredBackend, TieredStats
from examples.coach import CoachService
from kvstore import (
    ContextRecord,
    DatabaseType,
    Fence,
    IdentityRecord,
    KVStoreError,
    StateRecord,
    UserRecord,
    create_database,
)
from kvstore.store import Store
from tests.postgres import ADMIN_URL, drop_database, unique_name
from tests.postgres import create_database as create_pg_database
from tests.redis_servers import RedisServer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

T = TypeVar("T")

MESSAGES = (
    "Call me Sam.",
    "Sleep better and feel rested.",
    "An early riser",
    "A calm parent",
    "done",
    "Lights out at ten, phone outside the bedroom.",
)
"""A conversation; after it the session keeps chatting in WRAP_UP ("ok")."""


class Latencies:
    """Seconds per operation, by operation name, with when each started."""

    def __init__(self) -> None:
        self.samples: dict[str, list[tuple[float, float]]] = {}
        self.warm_from: float | None = None
        """When every session had sent its first message (``perf_counter``), once known."""

    async def time(self, name: str, call: Awaitable[T]) -> T:
        start = time.perf_counter()
        try:
            return await call
        finally:
            self.samples.setdefault(name, []).append((start, time.perf_counter() - start))

    def table(self, *, warm: bool = False) -> list[str]:
        """p50/p95/p99/max per operation: of every call, or with ``warm`` of the calls that
        started once every session had sent its first message (the start-up burst, when
        every session's first message reads nothing and creates its user, left out)."""
        rows = [
            "| operation | calls | p50 ms | p95 ms | p99 ms | max ms |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        since = self.warm_from if warm else None
        for name, samples in sorted(self.samples.items()):
            values = [took for start, took in samples if since is None or start >= since]
            if not values:
                continue
            cuts = statistics.quantiles(values, n=100) if len(values) > 1 else values * 99
            rows.append(
                f"| {name} | {len(values):,} | {cuts[49] * 1e3:.2f} | {cuts[94] * 1e3:.2f} "
                f"| {cuts[98] * 1e3:.2f} | {max(values) * 1e3:.2f} |"
            )
        return rows


class TimedStore(Store):
    """A Store that records how long each operation the coach service uses takes."""

    def __init__(self, backend: TieredBackend, latencies: Latencies) -> None:
        super().__init__(backend, description="tiered(PostgreSQL + Redis)")
        self.latencies = latencies

    async def get_state(self, user_id: str, session_id: str) -> StateRecord | None:
        return await self.latencies.time("get_state", super().get_state(user_id, session_id))

    async def get_context(self, user_id: str, session_id: str) -> ContextRecord | None:
        return await self.latencies.time("get_context", super().get_context(user_id, session_id))

    async def save_state(
        self,
        record: StateRecord,
        *,
        expected_version: int | None = None,
        fence: Fence | None = None,
    ) -> StateRecord:
        return await self.latencies.time(
            "save_state",
            super().save_state(record, expected_version=expected_version, fence=fence),
        )

    async def save_context(
        self,
        record: ContextRecord,
        *,
        expected_version: int | None = None,
        fence: Fence | None = None,
    ) -> ContextRecord:
        return await self.latencies.time(
            "save_context",
            super().save_context(record, expected_version=expected_version, fence=fence),
        )

    async def save_identity(
        self, record: IdentityRecord, *, expected_version: int | None = None
    ) -> IdentityRecord:
        return await self.latencies.time(
            "save_identity", super().save_identity(record, expected_version=expected_version)
        )

    async def save_user(
        self, record: UserRecord, *, expected_version: int | None = None
    ) -> UserRecord:
        return await self.latencies.time(
            "save_user", super().save_user(record, expected_version=expected_version)
        )


@dataclass
class LoadReport:
    """What a load run measured and found."""

    sessions: int
    seconds: float
    messages: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    chaos_events: Counter[str] = field(default_factory=Counter)
    conflicts: int = 0
    lost: int = 0
    stale: int = 0
    hit_ratio: float = 0.0
    """Reads answered by the cache over every read (bypassed reads included)."""
    warm_hit_ratio: float = 0.0
    """The same, over the reads after every session had sent its first message (a new
    session's first read finds nothing anywhere: a miss in any cache)."""
    misses: int = 0
    bypassed: int = 0
    cache_errors: int = 0
    breaker_open_seconds: float = 0.0
    pool_peak: int = 0
    latencies: Latencies = field(default_factory=Latencies)

    def _warm_latencies(self) -> list[str]:
        if self.latencies.warm_from is None:
            return []
        return [
            "after every session's first message (the start-up burst left out):",
            "",
            *self.latencies.table(warm=True),
            "",
        ]

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.stale == 0 and self.conflicts == 0

    def lines(self) -> list[str]:
        rate = self.messages / self.seconds
        return [
            f"{self.sessions} sessions, {self.seconds:.0f} s: {self.messages:,} messages, "
            f"{rate:,.0f} messages/s; SQL pool peak {self.pool_peak} connections",
            f"reads answered by the cache: {self.warm_hit_ratio:.2%} after every session's "
            f"first message, {self.hit_ratio:.2%} of every read ({self.misses:,} misses, "
            f"{self.bypassed:,} bypassed the cache); cache errors {self.cache_errors:,}; "
            f"breaker open {self.breaker_open_seconds:.2f} s",
            f"chaos: {dict(self.chaos_events) or 'none'}; "
            f"errors (not acknowledged, retried): {dict(self.errors) or 'none'}",
            "",
            *self.latencies.table(),
            "",
            *self._warm_latencies(),
            f"stale reads during the run (version conflicts): {self.conflicts}",
            f"acknowledged writes lost: {self.lost}, stale reads after recovery: {self.stale}",
        ]


async def run_load(
    sessions: int = 1000,
    seconds: float = 30.0,
    *,
    chaos: bool = False,
    chaos_every: float = 3.0,
    think: float = 1.0,
    workdir: Path | None = None,
) -> LoadReport:
    """Drive the coach service and check the store afterwards; see the module docstring."""
    report = LoadReport(sessions, seconds)
    name = unique_name("load")
    url = await create_pg_database(name)
    redis = RedisServer(Path(workdir or tempfile.mkdtemp(prefix="kvstore-load-"))).start()
    try:
        await _drive(report, url, redis, chaos=chaos, chaos_every=chaos_every, think=think)
    finally:
        redis.stop()
        await drop_database(name)
    return report


async def _drive(
    report: LoadReport,
    url: str,
    redis: RedisServer,
    *,
    chaos: bool,
    chaos_every: float,
    think: float,
) -> None:
    database = create_database(
        DatabaseType.TIERED,
        url,
        cache_url=redis.url,
        breaker_reset_after=0.5,
        pool_size=20,
    )
    assert isinstance(database, Store)
    tiered = database.backend
    assert isinstance(tiered, TieredBackend)
    store = TimedStore(tiered, report.latencies)
    service = CoachService(store, context_window=10)
    acked: dict[int, tuple[int, int]] = {}
    uncertain: set[int] = set()
    deadline = time.monotonic() + report.seconds
    warm: list[TieredStats] = []  # the counters once every session has sent a message

    async def session(number: int) -> None:
        await asyncio.sleep(random.random() * max(think, 0.5))  # spread the start
        turn = 0
        while time.monotonic() < deadline:
            message = MESSAGES[turn] if turn < len(MESSAGES) else "ok"
            try:
                reply = await service.handle(f"user-{number}", f"session-{number}", message)
            except KVStoreError as error:
                report.errors[type(error).__name__] += 1
                if type(error).__name__ == "ConflictError":
                    report.conflicts += 1
                uncertain.add(number)
                await asyncio.sleep(0.05)
                continue
            acked[number] = (reply.state_version, reply.context_version)
            uncertain.discard(number)
            report.messages += 1
            if not warm and len(acked) == report.sessions:
                warm.append(tiered.tier_stats())
                report.latencies.warm_from = time.perf_counter()
            turn += 1
            await asyncio.sleep(random.uniform(0, 2 * think))  # the user reads and types

    sql = tiered.record
    assert isinstance(sql, SQLBackend)

    async def pool_watch() -> None:
        while time.monotonic() < deadline:
            report.pool_peak = max(report.pool_peak, _checked_out(sql))
            await asyncio.sleep(0.2)

    async with service:
        tasks: list[Awaitable[None]] = [session(n) for n in range(report.sessions)]
        tasks.append(pool_watch())
        if chaos:
            tasks.append(_chaos(report, url, redis, deadline, chaos_every))
        await asyncio.gather(*tasks)
        stats = tiered.tier_stats()
        report.hit_ratio = stats.hit_ratio
        report.misses = stats.misses
        report.bypassed = stats.bypassed
        report.cache_errors = stats.cache_errors
        report.breaker_open_seconds = stats.breaker_open_seconds
        if warm:  # counted conservatively: a read in flight at the mark that missed counts
            reads = stats.reads - warm[0].reads
            unserved = stats.misses + stats.bypassed - warm[0].misses - warm[0].bypassed
            report.warm_hit_ratio = 1 - unserved / reads if reads else 0.0
        if redis.process is None:
            redis.start()
        await _recovered(store, tiered)
        await _check(report, store, url, acked, uncertain)


async def _chaos(
    report: LoadReport, url: str, redis: RedisServer, deadline: float, every: float
) -> None:
    """Kill and restart Redis, freeze it, terminate PostgreSQL connections, in turn."""
    database = url.rpartition("/")[2]
    events: list[tuple[str, Callable[[], Awaitable[None]]]] = []

    async def kill_redis() -> None:
        assert redis.process is not None
        redis.process.kill()
        redis.process.wait()
        redis.process = None
        await asyncio.sleep(1.0)
        redis.start()

    async def freeze_redis() -> None:
        assert redis.process is not None
        os.kill(redis.process.pid, signal.SIGSTOP)
        await asyncio.sleep(2.0)
        os.kill(redis.process.pid, signal.SIGCONT)

    async def terminate_postgres() -> None:
        admin = await asyncpg.connect(ADMIN_URL, timeout=5)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
        finally:
            await admin.close()

    events = [
        ("redis killed", kill_redis),
        ("redis frozen", freeze_redis),
        ("postgres connections terminated", terminate_postgres),
    ]
    turn = 0
    await asyncio.sleep(min(every, 1.0))
    while time.monotonic() + 2.5 < deadline:
        name, event = events[turn % len(events)]
        await event()
        report.chaos_events[name] += 1
        turn += 1
        await asyncio.sleep(every)


async def _recovered(store: Store, tiered: TieredBackend, within: float = 15.0) -> None:
    """Wait until the breaker has closed again (its probe repairs dirty keys first)."""
    give_up = time.monotonic() + within
    while time.monotonic() < give_up:
        await store.get_state("recovery-probe", "s")
        stats = tiered.tier_stats()
        if stats.breaker == "closed" and stats.dirty == 0:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the cache did not recover within {within} s: {tiered.tier_stats()}")


async def _check(
    report: LoadReport,
    store: Store,
    url: str,
    acked: dict[int, tuple[int, int]],
    uncertain: set[int],
) -> None:
    """Compare acknowledged versions and reads through the store with SQL itself."""
    connection = await asyncpg.connect(url, timeout=10)
    try:
        rows = await connection.fetch(
            "SELECT namespace, owner, version FROM kv_records "
            "WHERE namespace IN ('state', 'context')"
        )
    finally:
        await connection.close()
    in_sql = {(row["namespace"], row["owner"]): row["version"] for row in rows}
    for number, (state_version, context_version) in acked.items():
        owner = f"user-{number}"
        for namespace, version in (("state", state_version), ("context", context_version)):
            stored = in_sql.get((namespace, owner), 0)
            exact = number not in uncertain
            if stored < version or (exact and stored != version):
                report.lost += 1
    for number in range(report.sessions):
        owner, session_id = f"user-{number}", f"session-{number}"
        state = await store.get_state(owner, session_id)
        context = await store.get_context(owner, session_id)
        for namespace, record in (("state", state), ("context", context)):
            if (record.version if record else 0) != in_sql.get((namespace, owner), 0):
                report.stale += 1


def _checked_out(backend: SQLBackend) -> int:
    pool = backend.engine.pool
    checked_out = getattr(pool, "checkedout", None)
    return int(checked_out()) if callable(checked_out) else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--chaos", action="store_true", help="kill, freeze, terminate")
    parser.add_argument("--chaos-every", type=float, default=3.0)
    parser.add_argument(
        "--think", type=float, default=1.0, help="mean seconds between a session's messages"
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() once everything is imported, as a long-running service does: "
        "the collector then leaves start-up's objects out of its full collections",
    )
    arguments = parser.parse_args()
    if arguments.gc_freeze:
        gc.freeze()
    report = asyncio.run(
        run_load(
            arguments.sessions,
            arguments.seconds,
            chaos=arguments.chaos,
            chaos_every=arguments.chaos_every,
            think=arguments.think,
        )
    )
    print("\n".join(report.lines()))
    print(f"gc.freeze() after start-up: {'yes' if arguments.gc_freeze else 'no'}")
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
