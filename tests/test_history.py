"""Multi-process histories of the tiered store (PostgreSQL + Redis) under faults.

Each scenario starts a private ``redis-server`` and four worker processes
(:mod:`tests.history.worker`), each with a tiered store of its own on one fresh PostgreSQL
database. For a few seconds they save and read overlapping keys: four keys every worker
writes (some hot, some cold) and one key per worker that only it writes and everyone reads.
Meanwhile the test injects the scenario's fault. Every acknowledged write and every read is
logged with CLOCK_MONOTONIC start and end times; :mod:`tests.history.checker` then finds
stale reads (older than a write acknowledged before the read began), lost acknowledged writes
(against SQL at the end) and errors of types kvstore does not raise.

Every scenario prints its table (``pytest -s``) and merges it into the JSON file named by
``$KVSTORE_HISTORY_REPORT``. The guarantee under test is the design's (DESIGN.md, "The
tiered store"): with no fault no read is stale; after a fault staleness is bounded by the
change feed's lag (:data:`STALENESS_BOUND_MS`), never by the cache TTL; acknowledged writes
are never lost. Scenarios 1, 5 and 8 must show no stale read at all.

Run: ``.venv/bin/pytest tests/test_history.py -s`` (one scenario: ``-k test_5``). Each
test's worker logs (``w*.jsonl``, ``w*.stderr``) and the test's own events
(``test-events.jsonl``) stay in its ``tmp_path``/workers for inspection.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest
from redis import Redis

from kvstore import DatabaseType, create_database
from tests import pg_servers, postgres
from tests.history.checker import (
    Final,
    Report,
    check,
    details,
    load_ops,
    table,
    write_json,
)
from tests.history.runner import Run, WorkerFailedError, WorkerSpec
from tests.history.worker import key_parts
from tests.redis_servers import REDIS_SERVER, RedisServer
from tests.services import unavailable
from tests.tcp_proxy import TcpProxy

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

STALENESS_BOUND_MS = 500
"""The worst staleness a fault may cause: the change feed's lag bounds it. Measured here
(``python -m benchmarks.feed_lag``): p50 30 ms, p99 53 ms; the bound leaves room for a
2-core machine whose cores are both busy."""

NEAR_STALENESS_BOUND_MS = 1500
"""The worst staleness of a read answered by a near cache: it serves only while its change
feed was current within ``near_cache_max_lag`` (0.5 s), and the feed delivers a PostgreSQL
transaction that committed out of revision order within its recheck interval (1 s)."""

WORKERS = ("w0", "w1", "w2", "w3")
SHARED_KEYS = 4
"""Keys every worker writes; listed hot to cold (earlier keys are written more often)."""


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def history_reports() -> Iterator[list[Report]]:
    """Every scenario's report, printed together at the end of the module."""
    reports: list[Report] = []
    yield reports
    if reports:
        print("\n\nhistory scenarios\n" + table(reports))


@pytest.fixture
def sql_url() -> Iterator[str]:
    """A fresh database of this test on the shared PostgreSQL, with the store's tables;
    dropped afterwards."""
    if not asyncio.run(postgres.server_available()):
        unavailable(f"no PostgreSQL at {postgres.ADMIN_URL}")
    name = postgres.unique_name("history")
    url = asyncio.run(postgres.create_database(name))
    try:
        asyncio.run(_create_tables(url))
        yield url
    finally:
        asyncio.run(postgres.drop_database(name))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` of this test (no automatic snapshots; ``SAVE`` writes dump.rdb in
    its directory, which a restart loads)."""
    if REDIS_SERVER is None:
        unavailable("redis-server is needed for the history tests")
    server = RedisServer(tmp_path / "redis", extra=("--dbfilename", "dump.rdb")).start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.process.send_signal(signal.SIGCONT)
            server.process.kill()
            server.process.wait(timeout=10)
            server.process = None


async def _create_tables(url: str) -> None:
    async with create_database(DatabaseType.SQL, url) as db:
        await db.initialize()


# -- the scenario frame ------------------------------------------------------------------


@dataclass
class Keys:
    """The keys of one scenario: unique to it, ``user/session``."""

    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def key(self, name: str) -> str:
        return f"h{self.run}-{name}/s1"

    @property
    def shared(self) -> list[str]:
        return [self.key(f"k{i}") for i in range(SHARED_KEYS)]

    def owned(self, worker: str) -> str:
        return self.key(f"own-{worker}")

    @property
    def load(self) -> list[str]:
        return [*self.shared, *(self.owned(w) for w in WORKERS)]


PAUSES_MS = {"w0": 2.0, "w1": 2.0, "w2": 5.0, "w3": 100.0}
"""The most each worker pauses between operations: busy processes and a quiet one (whose
cache breaker, after a fault, opens and probes later than the others')."""


def default_specs(keys: Keys, *, extra_reads: Iterable[str] = ()) -> list[WorkerSpec]:
    """Four workers: each reads every key and writes the shared keys and its own."""
    reads = [*keys.load, *extra_reads]
    return [
        WorkerSpec(
            name=w, keys=reads, write_keys=[keys.owned(w), *keys.shared], pause_ms=PAUSES_MS[w]
        )
        for w in WORKERS
    ]


@dataclass
class Outcome:
    """A finished scenario: its report and how each worker process ended."""

    report: Report
    exit_codes: dict[str, int | None]


def run_scenario(
    name: str,
    *,
    reports: list[Report],
    tmp_path: Path,
    sql_url: str,
    cache_url: str,
    specs: list[WorkerSpec],
    faults: Callable[[Run], None],
    prepare: Callable[[Run], None] | None = None,
    afterwards: Callable[[Run], None] | None = None,
    dead: Iterable[str] = (),
    sequential_keys: Iterable[str] = (),
    allowed_errors: Iterable[str] | None = None,
    seed: int = 1,
) -> Outcome:
    """Start the workers, ``prepare``, run the load while ``faults`` runs (it returns when
    the load is to stop), then ``afterwards`` (sequential steps), stop every worker, read
    every key from SQL and judge the history. The report is published before any assertion
    of the caller."""
    dead = set(dead)
    sequential_keys = list(sequential_keys)
    keys = sorted({*(k for spec in specs for k in spec.keys), *sequential_keys})
    run = Run(tmp_path / "workers", sql_url, cache_url, specs, seed=seed)
    try:
        with run:
            if prepare is not None:
                prepare(run)
            run.start_load()
            faults(run)
            run.stop_load(dead=dead)
            if afterwards is not None:
                afterwards(run)
            exit_codes = run.quit()
    except BaseException as exc:  # a worker that failed, a harness check, a timeout
        reason = str(exc) if isinstance(exc, WorkerFailedError) else f"{type(exc).__name__}: {exc}"
        publish(reports, Report(name, notes=[f"ABORTED: {reason}"]))
        raise
    final = asyncio.run(read_final(sql_url, keys))
    ops, stats = load_ops(run.logs(), run.events, killed=dead)
    report = check(
        name,
        ops,
        final,
        sequential_keys=sequential_keys,
        allowed_errors=allowed_errors,
        origin=run.started_ns,
        stats=stats,
    )
    report.notes[:0] = [
        f"{event['what']} at {(event['start'] - run.started_ns) / 1e9:.2f} s"
        + "".join(f", {k}={v}" for k, v in event.items() if k not in NOTE_FIELDS)
        for event in run.events
        if event["op"] == "note"
    ]
    for worker, code in exit_codes.items():
        expected = -signal.SIGKILL if worker in dead else 0
        if code != expected:
            said = run.workers[worker].stderr_tail(300).strip()
            report.notes.append(f"worker {worker} ended with {code}, not {expected}: {said}")
    publish(reports, report)
    return Outcome(report, exit_codes)


NOTE_FIELDS = frozenset({"w", "op", "what", "start", "end"})


def publish(reports: list[Report], report: Report) -> None:
    reports.append(report)
    print(f"\n{table([report])}\n{details(report)}")
    path = os.environ.get("KVSTORE_HISTORY_REPORT")
    if path:
        write_json(Path(path), report)


async def read_final(sql_url: str, keys: Iterable[str]) -> dict[str, Final | None]:
    """Each key's record as the system of record holds it, through a SQL-only store."""
    final: dict[str, Final | None] = {}
    async with create_database(DatabaseType.SQL, sql_url) as db:
        for key in keys:
            record = await db.get_state(*key_parts(key))
            final[key] = None
            if record is not None:
                marker, batch = record.data.get("w"), record.data.get("batch")
                final[key] = Final(
                    record.version,
                    marker if isinstance(marker, str) else None,
                    batch if isinstance(batch, str) else None,
                )
    return final


def assert_sound(outcome: Outcome) -> None:
    """What every scenario must show, first that the harness itself worked (every worker
    ran and ended as planned, the cache was used), then that nothing acknowledged was lost,
    no version was given twice or read with another value, and no error of a type kvstore
    does not raise appeared. (Plain values in the asserts keep pytest's messages short.)"""
    r = outcome.report
    unexpected = [n for n in r.notes if n.startswith("worker ") or "still not closed" in n]
    assert not unexpected, f"harness: {unexpected}"
    workers, reads, writes, hits = r.workers, r.reads, r.writes, r.cache_hits
    assert workers == len(WORKERS), f"harness: only {workers} workers logged"
    assert reads > 100, f"harness: only {reads} reads"
    assert writes > 50, f"harness: only {writes} writes"
    assert hits is None or hits > 0, "harness: no read was served by the cache"
    lost, duplicates, inconsistent = r.lost_writes, r.duplicate_versions, r.inconsistent_reads
    assert lost == 0, f"lost acknowledged writes: {r.samples.get('lost_writes')}"
    assert duplicates == 0, f"one version given twice: {r.samples.get('duplicate_versions')}"
    assert inconsistent == 0, f"reads contradict writes: {r.samples.get('inconsistent_reads')}"
    disallowed = r.disallowed_errors
    assert not disallowed, f"errors kvstore must not raise here: {disallowed} (all: {r.errors})"


def assert_never_stale(report: Report) -> None:
    stale, worst = report.stale_reads, report.worst_staleness_ms
    assert stale == 0, (
        f"{stale} stale reads, worst {worst} ms: {report.samples.get('worst_stale_read')} "
        f"{report.samples.get('sequential_violations') or ''}"
    )


def assert_staleness_bounded(report: Report) -> None:
    stale, worst = report.stale_reads, report.worst_staleness_ms
    assert worst <= STALENESS_BOUND_MS, (
        f"{stale} stale reads, worst {worst} ms > {STALENESS_BOUND_MS} ms: "
        f"{report.samples.get('worst_stale_read')}"
    )


def sleep_for(seconds: float) -> Callable[[Run], None]:
    return lambda run: run.sleep_until(seconds)


def redis_client(server: RedisServer) -> Redis:
    return Redis(port=server.port, socket_timeout=5, socket_connect_timeout=5)


def kill_redis(server: RedisServer) -> None:
    """SIGKILL the server (no snapshot is written on the way down)."""
    assert server.process is not None
    server.process.send_signal(signal.SIGCONT)
    server.process.kill()
    server.process.wait(timeout=10)
    server.process = None


def keys_loaded(server: RedisServer) -> int:
    """How many keys the server loaded from its snapshot when it started (the workers may
    have written more since)."""
    with redis_client(server) as client:
        return int(client.info("persistence")["rdb_last_load_keys_loaded"])


# -- the scenarios -----------------------------------------------------------------------


def test_1_no_fault(
    history_reports: list[Report], tmp_path: Path, sql_url: str, redis_server: RedisServer
) -> None:
    keys = Keys()
    outcome = run_scenario(
        "1 no fault",
        reports=history_reports,
        tmp_path=tmp_path,
        sql_url=sql_url,
        cache_url=redis_server.url,
        specs=default_specs(keys),
        faults=sleep_for(3.0),
    )
    assert_sound(outcome)
    assert_never_stale(outcome.report)


def test_2_flushall_every_50ms(
    history_reports: list[Report], tmp_path: Path, sql_url: str, redis_server: RedisServer
) -> None:
    keys = Keys()
    flushes = 0

    def faults(run: Run) -> None:
        nonlocal flushes
        stop = threading.Event()

        def flush() -> None:
            nonlocal flushes
            with redis_client(redis_server) as client:
                while not stop.wait(0.05):
                    client.flushall()
                    flushes += 1

        flusher = threading.Thread(target=flush, daemon=True)
        run.sleep_until(0.5)
        run.note("flushing every 50 ms")
        flusher.start()
        try:
            run.sleep_until(3.0)
        finally:
            stop.set()
            flusher.join(timeout=10)
        run.note("flushing stopped", flushes=flushes)
        run.sleep_until(3.5)

    outcome = run_scenario(
        "2 flushall every 50 ms",
        reports=history_reports,
        tmp_path=tmp_path,
        sql_url=sql_url,
        cache_url=redis_server.url,
        specs=default_specs(keys),
        faults=faults,
        seed=2,
    )
    assert flushes >= 20, f"harness: only {flushes} FLUSHALLs"
    assert_sound(outcome)
    assert_staleness_bounded(outcome.report)


def test_3_redis_sigstop_3s(
    history_reports: list[Report], tmp_path: Path, sql_url: str, redis_server: RedisServer
) -> None:
    keys = Keys()

    def faults(run: Run) -> None:
        assert redis_server.process is not None
        run.sleep_until(1.0)
        redis_server.process.send_signal(signal.SIGSTOP)
        run.note("redis SIGSTOP")
        try:
            run.sleep_until(4.0)
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        run.note("redis SIGCONT")
        run.sleep_until(6.5)

    outcome = run_scenario(
        "3 redis SIGSTOP 3 s",
        reports=history_reports,
        tmp_path=tmp_path,
        sql_url=sql_url,
        cache_url=redis_server.url,
        specs=default_specs(keys),
        faults=faults,
        seed=3,
    )
    assert_sound(outcome)
    assert_staleness_bounded(outcome.report)


def test_4_redis_killed_restarted_empty(
    history_reports: list[Report], tmp_path: Path, sql_url: str, redis_server: RedisServer
) -> None:
    keys = Keys()
    restored = -1

    def faults(run: Run) -> None:
        nonlocal restored
        run.sleep_until(1.0)
        kill_redis(redis_server)
        (redis_server.directory / "dump.rdb").unlink(missing_ok=True)
        run.note("redis SIGKILL")
        run.sleep_until(2.0)
        redis_server.start()
        restored = keys_loaded(redis_server)
        run.note("redis restarted empty", keys=restored)
        run.sleep_until(4.0)

    outcome = run_scenario(
        "4 redis killed, empty",
        reports=history_reports,
        tmp_path=tmp_path,
        sql_url=sql_url,
        cache_url=redis_server.url,
        specs=default_specs(keys),
        faults=faults,
        seed=4,
    )
    assert restored == 0, f"harness: the restarted Redis held {restored} keys"
    assert_sound(outcome)
    assert_staleness_bounded(outcome.report)


def test_5_redis_restarted_from_an_old_snapshot(
    history_reports: list[Report], tmp_path: Path, sql_url: str, redis_server: RedisServer
) -> None:
    """Redis comes back in the past: it loads a dump.rdb taken a second before it died,
    while SQL kept every write of that second. Nothing from before must be served."""
    keys = Keys()
    saved = restored = -1

    def faults(run: Run) -> None:
        nonlocal saved, restored
        run.sleep_until(1.0)
        with redis_client(redis_server) as client:
            client.save()
            saved = int(client.dbsize())
        run.note("redis SAVE", keys=saved)
        run.sleep_until(2.0)
        kill_redis(redis_server)
        run.note("redis SIGKILL")
        redis_server.start()
        restored = keys_loaded(redis_server)
        run.note("redis restarted from the snapshot", keys=restored)
        run.sleep_until(4.0)

    outcome = run_scenario(
        "5 redis from old snapshot",
        reports=history_reports,
        tmp_path=tmp_path,
        sql_url=sql_url,
        cache_url=redis_server.url,
        specs=default_specs(keys),
        faults=faults,
        seed=5,
    )
    assert saved > 0, "harness: the snapshot was empty"
    assert restored > 0, "harness: the restarted Redis did not load the snapshot"
    assert_sound(outcome)
    # Nothing from the snapshot is served, and a worker whose breaker opened during the
    # restart's outage still writes through to the cache it reaches again.
    assert_never_stale(outcome.report)


CRASH_AFTER = 100
"""The crashing worker's cache update (hence save) in which it SIGKILLs itself."""


def test_6_writer_killed_between_commit_and_cache_update(
    history_reports: list[Report], tmp_path: Path, sql_url: str, redis_server: RedisServer
) -> None:
    """w0 alone writes its key (everyone reads it) and SIGKILLs itself inside its 100th
    cache update, after the SQL commit. Once the test has read that committed version from
    SQL, the others must read it within the feed's lag: the cache holds the previous one."""
    keys = Keys()
    specs = default_specs(keys)
    crasher = specs[0]
    crasher.write_keys = [keys.owned(crasher.name)]
    crasher.crash_after = CRASH_AFTER
    crasher.read_ratio = 0.5
    committed: int | None = None

    def faults(run: Run) -> None:
        nonlocal committed
        process = run.workers[crasher.name].process
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"harness: {crasher.name} did not reach its crash point in 30 s")
        run.note(f"{crasher.name} died", code=process.returncode)
        start = time.monotonic_ns()
        key = keys.owned(crasher.name)
        record = asyncio.run(read_final(sql_url, [key]))[key]
        committed = None if record is None else record.version
        if record is not None:
            run.observed(key, start, record.version, record.marker)
        run.note("SQL read", version=committed)
        run.sleep_until(run.elapsed() + 2.0)

    outcome = run_scenario(
        "6 writer killed mid-write",
        reports=history_reports,
        tmp_path=tmp_path,
        sql_url=sql_url,
        cache_url=redis_server.url,
        specs=specs,
        faults=faults,
        dead={crasher.name},
        seed=6,
    )
    acknowledged = [
        op
        for op in load_ops([tmp_path / "workers" / f"{crasher.name}.jsonl"])[0]
        if op.op == "write" and op.ok
    ]
    last = max((op.version or 0 for op in acknowledged), default=0)
    assert committed is not None, "harness: the crashing worker's key is not in SQL"
    assert committed > last, (
        f"harness: SQL holds version {committed}, the last acknowledged was {last}: the kill "
        "did not land between the commit and the cache update"
    )
    assert_sound(outcome)
    assert_staleness_bounded(outcome.report)


def test_7_one_writer_cut_off_from_redis(
    history_reports: list[Report], tmp_path: Path, sql_url: str, redis_server: RedisServer
) -> None:
    """w0 reaches Redis through a proxy that is cut for 2 s (connections closed, new ones
    hang); the other workers still reach Redis and read what w0's writes did not update."""
    keys = Keys()
    specs = default_specs(keys)
    with TcpProxy(redis_server.port) as proxy:
        specs[0].cache_url = f"redis://127.0.0.1:{proxy.port}/0"
        severed = 0

        def faults(run: Run) -> None:
            nonlocal severed
            run.sleep_until(1.0)
            severed = proxy.cut("hang")
            run.note("w0 cut off from redis", severed=severed)
            try:
                run.sleep_until(3.0)
            finally:
                proxy.restore()
            run.note("w0 reconnected")
            run.sleep_until(5.0)

        outcome = run_scenario(
            "7 one writer cut off",
            reports=history_reports,
            tmp_path=tmp_path,
            sql_url=sql_url,
            cache_url=redis_server.url,
            specs=specs,
            faults=faults,
            seed=7,
        )
    assert severed > 0, "harness: w0 had no connection through the proxy to cut"
    assert_sound(outcome)
    assert_staleness_bounded(outcome.report)


SKEWS = {"w0": 2.0, "w1": -2.0, "w2": 0.0, "w3": 0.5}
"""Wall clock offsets (seconds) of the workers of scenario 8."""
ROUNDS = (("w3", "w2"), ("w2", "w3"), ("w0", "w1"), ("w1", "w0"), ("w3", "w2"), ("w0", "w2"))
"""(creator, deleter) of each round of scenario 8's sequential history of one key."""


def test_8_skewed_clocks(
    history_reports: list[Report], tmp_path: Path, sql_url: str, redis_server: RedisServer
) -> None:
    """Wall clocks of +2, -2, 0 and +0.5 s. After the load, one key goes through rounds, one
    operation at a time: a worker creates it, both read it, another deletes it, both read
    it. Each read must see exactly the last acknowledged save, or nothing after a delete."""
    keys = Keys()
    specs = default_specs(keys)
    for spec in specs:
        spec.skew = SKEWS[spec.name]
    seq_key = keys.key("seq")

    def rounds(run: Run) -> None:
        run.note("sequential rounds")
        for creator, deleter in ROUNDS:
            pair = (run.workers[creator], run.workers[deleter])
            pair[0].call({"cmd": "save", "key": seq_key})
            for worker in (*pair, *pair):
                worker.call({"cmd": "get", "key": seq_key})
            pair[1].call({"cmd": "delete", "key": seq_key})
            for worker in (*pair, *pair):
                worker.call({"cmd": "get", "key": seq_key})

    outcome = run_scenario(
        "8 skewed clocks",
        reports=history_reports,
        tmp_path=tmp_path,
        sql_url=sql_url,
        cache_url=redis_server.url,
        specs=specs,
        faults=sleep_for(3.0),
        afterwards=rounds,
        sequential_keys=[seq_key],
        seed=8,
    )
    assert_sound(outcome)
    violations = outcome.report.sequential_violations
    assert violations == 0, (
        f"{violations} reads after a save or delete did not see it: "
        f"{outcome.report.samples.get('sequential_violations')}"
    )
    assert_never_stale(outcome.report)


def test_9_postgres_restarted_under_load(
    history_reports: list[Report],
    tmp_path: Path,
    private_postgres: pg_servers.PostgresServer,
    redis_server: RedisServer,
) -> None:
    """``pg_ctl restart -m fast`` of the system of record mid-run: calls may fail with
    BackendUnavailableError (and nothing else) while it restarts; nothing acknowledged is
    lost."""
    keys = Keys()
    restart_took = 0.0

    def faults(run: Run) -> None:
        nonlocal restart_took
        run.sleep_until(1.5)
        run.note("postgres restarting")
        began = time.monotonic()
        private_postgres.restart("fast")
        restart_took = time.monotonic() - began
        run.note("postgres restarted", seconds=round(restart_took, 2))
        run.sleep_until(run.elapsed() + 2.5)

    outcome = run_scenario(
        "9 postgres restarted",
        reports=history_reports,
        tmp_path=tmp_path,
        sql_url=private_postgres.url,
        cache_url=redis_server.url,
        specs=default_specs(keys),
        faults=faults,
        allowed_errors=["BackendUnavailableError"],
        seed=9,
    )
    assert restart_took > 0, "harness: PostgreSQL was not restarted"
    assert_sound(outcome)
    assert_staleness_bounded(outcome.report)


BATCH_WAIT = 5.0
"""Seconds the workers keep reading after the batch job's UPDATE."""


def test_10_batch_job_updates_a_cached_record(
    history_reports: list[Report], tmp_path: Path, sql_url: str, redis_server: RedisServer
) -> None:
    """A batch job changes a cached record with plain SQL. The change feed must bring it to
    every reader within its lag; without one the cache serves the old value for its TTL."""
    keys = Keys()
    batch_key = keys.key("batch")
    marker = f"batch-{uuid.uuid4().hex[:6]}"

    def prepare(run: Run) -> None:
        saved = run.workers["w0"].call({"cmd": "save", "key": batch_key})
        assert saved.get("version") == 1, f"harness: could not create the batch key: {saved}"

    def faults(run: Run) -> None:
        run.sleep_until(1.0)
        start = time.monotonic_ns()
        status = asyncio.run(batch_update(sql_url, batch_key, marker))
        run.batch_updated(batch_key, start, marker)
        run.note("batch UPDATE", status=status)
        assert status == "UPDATE 1", f"harness: the batch job's UPDATE said {status!r}"
        run.sleep_until(1.0 + BATCH_WAIT)

    outcome = run_scenario(
        "10 batch job UPDATE",
        reports=history_reports,
        tmp_path=tmp_path,
        sql_url=sql_url,
        cache_url=redis_server.url,
        specs=default_specs(keys, extra_reads=[batch_key]),
        prepare=prepare,
        faults=faults,
        seed=10,
    )
    assert_sound(outcome)
    converged = outcome.report.feed_converged
    assert converged, f"the batch job's update did not reach every reader in {BATCH_WAIT} s"
    assert_staleness_bounded(outcome.report)


async def batch_update(sql_url: str, key: str, marker: str) -> str:
    """What a batch job does: plain SQL on ``kv_records``, the value kept a valid
    StateRecord (``data.batch`` set), nothing else touched."""
    user, session = key_parts(key)
    connection = await asyncpg.connect(sql_url, timeout=10)
    try:
        status: str = await connection.execute(
            "UPDATE kv_records SET value = jsonb_set(value, '{data,batch}', to_jsonb($3::text)) "
            "WHERE namespace = 'state' AND owner = $1 AND key = $2",
            user,
            session,
            marker,
        )
    finally:
        await connection.close()
    return status


def test_11_near_caches_in_every_worker(
    history_reports: list[Report], tmp_path: Path, sql_url: str, redis_server: RedisServer
) -> None:
    """Every worker keeps a near cache in its process: its hits are kept coherent by the
    change feed alone, so a read may trail another process's write by the feed's lag (the
    bound), and never trails the worker's own writes (sequential_violations)."""
    keys = Keys()
    specs = default_specs(keys)
    for spec in specs:
        spec.options = {"near_cache_entries": 1000}
    outcome = run_scenario(
        "11 near caches",
        reports=history_reports,
        tmp_path=tmp_path,
        sql_url=sql_url,
        cache_url=redis_server.url,
        specs=specs,
        faults=sleep_for(3.0),
        seed=11,
    )
    assert_sound(outcome)
    report = outcome.report
    assert report.near_hits, "harness: no read was answered by a near cache"
    assert report.sequential_violations == 0, report.samples.get("sequential_violations")
    stale, worst = report.stale_reads, report.worst_staleness_ms
    assert worst <= NEAR_STALENESS_BOUND_MS, (
        f"{stale} stale reads, worst {worst} ms > {NEAR_STALENESS_BOUND_MS} ms: "
        f"{report.samples.get('worst_stale_read')}"
    )
