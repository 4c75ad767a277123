"""Backend fixtures. Each backend joins the conformance suite by adding its name to
``BACKENDS`` and a ``make_db_<name>`` fixture returning a synchronous factory of fresh,
empty-enough databases (no I/O until first use)."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import fakeredis
import pytest
from aiosqlite.core import _connection_worker_thread
from hypothesis import HealthCheck, settings
from redis.asyncio import Redis
from redis.exceptions import RedisError

from kvstore import Database, DatabaseType, create_database
from tests import pg_servers, postgres, telemetry_audit
from tests.redis_servers import REDIS_CLI, REDIS_SERVER, RedisClusterServers, RedisServer
from tests.services import REQUIRED, unavailable

MakeDb = Callable[..., Database]
"""Builds a database on the backend under test; keywords are create_database options."""
T = TypeVar("T")

# Hypothesis checks properties here, not speed: its default 200 ms deadline per example and
# its too-slow health check are timing assertions, which fail when the machine is busy with
# other work (timings belong in benchmarks/).
settings.register_profile("kvstore", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("kvstore")

BACKENDS = [
    "memory",
    "sqlite",
    "postgres",
    "postgres_partitioned",
    "postgres_replica",
    "fakeredis",
    "redis",
    "redis_cluster",
    "tiered_memory",
    "tiered_sqlite_dict",
    "tiered_sqlite_fakeredis",
    "tiered_postgres_redis",
    "tiered_sqlite_near",
    "tiered_postgres_redis_near",
]
_MARKS: dict[str, tuple[pytest.MarkDecorator, ...]] = {
    "postgres": (pytest.mark.postgres,),
    "postgres_partitioned": (pytest.mark.postgres,),
    "postgres_replica": (pytest.mark.postgres,),
    "redis": (pytest.mark.redis,),
    "redis_cluster": (pytest.mark.redis_cluster,),
    "tiered_postgres_redis": (pytest.mark.postgres, pytest.mark.redis),
    "tiered_postgres_redis_near": (pytest.mark.postgres, pytest.mark.redis),
}
NEAR_CACHE_ENTRIES = 1000
"""The near cache of the ``*_near`` configurations."""

REDIS_TEST_URL = os.environ.get("KVSTORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
"""The shared Redis of this machine, on a database number of the tests' own (flushed)."""

SHARED_REDIS_WAIT = 60.0
"""Seconds a test waits for another test run to finish its test on ``REDIS_TEST_URL``."""


SQLITE_THREADS_GRACE = 10.0
"""Seconds a test's aiosqlite worker threads get to end after its fixtures are torn down."""


def _sqlite_workers() -> set[threading.Thread]:
    """The live aiosqlite worker threads: one per connection, ending after its close (or
    after a failed connect). ``_target`` is cleared once the thread's function returns."""
    return {
        thread
        for thread in threading.enumerate()
        if getattr(thread, "_target", None) is _connection_worker_thread
    }


@pytest.fixture(autouse=True)
async def sqlite_threads_end_with_the_test() -> AsyncIterator[None]:
    """Every aiosqlite worker thread a test starts ends before the test's event loop closes.

    A worker's last act is a call into the loop of the connection's future. aiosqlite does
    not wait for it after a failed connect (it queues ``stop()`` and raises) nor after
    SQLAlchemy terminates a connection, so on a busy machine the test's loop can close
    first: the thread then raises "Event loop is closed", and pytest fails whichever test
    runs next. This waits for those threads. One still alive after the grace period is a
    connection the test left open, and fails this test, not a later one. Async, so that it
    is torn down after every other fixture of the test and before its loop closes."""
    before = _sqlite_workers()
    yield
    left = _sqlite_workers() - before
    deadline = time.monotonic() + SQLITE_THREADS_GRACE
    while left and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        left = {thread for thread in left if thread.is_alive()}
    if left:
        pytest.fail(
            f"{len(left)} SQLite connection(s) left open by this test (aiosqlite worker "
            f"threads still running {SQLITE_THREADS_GRACE:.0f} s after its teardown)",
            pytrace=False,
        )


@pytest.fixture(params=[pytest.param(name, marks=_MARKS.get(name, ())) for name in BACKENDS])
def backend_name(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test."""
    name: str = request.param
    return name


@pytest.fixture
def make_db(request: pytest.FixtureRequest, backend_name: str) -> Iterator[MakeDb]:
    """A factory of databases on the backend under test. With
    ``KVSTORE_TEST_TELEMETRY_AUDIT=1`` each is traced into an SDK of the test's own, and the
    test fails if anything it exported is outside kvstore's vocabulary (user data)."""
    factory: MakeDb = request.getfixturevalue(f"make_db_{backend_name}")
    if not telemetry_audit.AUDIT:
        yield factory
        return
    telemetry = telemetry_audit.Telemetry()
    yield lambda **options: factory(**(telemetry.options() | options))
    if found := telemetry_audit.findings(telemetry):
        pytest.fail("telemetry carries user data:\n" + "\n".join(found[:20]), pytrace=False)


@pytest.fixture
async def db(make_db: MakeDb) -> AsyncIterator[Database]:
    """An initialized database on the backend under test, closed afterwards."""
    async with make_db() as database:
        yield database


@pytest.fixture
def make_db_memory() -> MakeDb:
    return lambda **options: create_database(DatabaseType.MEMORY, **options)


@pytest.fixture
def make_db_sqlite(tmp_path: Path) -> MakeDb:
    """Databases on one fresh SQLite file of this test."""
    url = f"sqlite:///{tmp_path / 'kvstore.db'}"
    return lambda **options: create_database(DatabaseType.SQL, url, **options)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of this test session on the local PostgreSQL, migrated to the current
    schema; dropped at the end. Skips (fails in CI) when the server is not there."""
    yield from _session_database("test")


PARTITIONS = 4
"""Hash partitions of ``kv_records`` in the ``postgres_partitioned`` configuration."""


@pytest.fixture(scope="session")
def postgres_partitioned_url() -> Iterator[str]:
    """Like ``postgres_url``, with ``kv_records`` hash-partitioned by owner into
    :data:`PARTITIONS` parts."""
    yield from _session_database("partitioned", f"?partitions={PARTITIONS}")


def _session_database(purpose: str, options: str = "") -> Iterator[str]:
    if not _blocking(postgres.server_available()):
        unavailable(f"no PostgreSQL at {postgres.ADMIN_URL}")
    from backends.sql.migrate import upgrade

    name = postgres.unique_name(purpose)
    url = _blocking(postgres.create_database(name))
    try:
        _blocking(upgrade(url + options))
        yield url
    finally:
        _blocking(postgres.drop_database(name))


def _blocking(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to completion on a loop of its own (callers may be inside a loop)."""
    with ThreadPoolExecutor(1) as executor:
        return executor.submit(asyncio.run, work).result()


@pytest.fixture
async def make_db_postgres(postgres_url: str) -> MakeDb:
    """Databases on the session's PostgreSQL database, emptied for each test."""
    await postgres.empty(postgres_url)
    return lambda **options: create_database(DatabaseType.SQL, postgres_url, **options)


@pytest.fixture
async def make_db_postgres_partitioned(postgres_partitioned_url: str) -> MakeDb:
    """Databases on the session's partitioned PostgreSQL database, emptied for each test."""
    await postgres.empty(postgres_partitioned_url)
    url = postgres_partitioned_url
    return lambda **options: create_database(
        DatabaseType.SQL, url, **({"partitions": PARTITIONS} | options)
    )


@pytest.fixture(scope="session")
def replicated_postgres() -> Iterator[tuple[pg_servers.PostgresServer, pg_servers.PostgresServer]]:
    """A private primary (migrated) and a streaming replica of it, for the whole session."""
    if why := pg_servers.available():
        unavailable(why)
    from backends.sql.migrate import upgrade

    with pg_servers.primary_and_replica() as (primary, replica):
        _blocking(upgrade(primary.url))
        yield primary, replica


@pytest.fixture
async def make_db_postgres_replica(
    replicated_postgres: tuple[pg_servers.PostgresServer, pg_servers.PostgresServer],
) -> MakeDb:
    """SQL databases on the private primary whose listings, exports and counts read from
    its streaming replica (emptied for each test)."""
    primary, replica = replicated_postgres
    await postgres.empty(primary.url)
    return lambda **options: create_database(
        DatabaseType.SQL, primary.url, **({"replica_url": replica.url} | options)
    )


@pytest.fixture
async def make_db_fakeredis() -> AsyncIterator[MakeDb]:
    """Databases on one fresh in-process fake server (injected clients, closed here)."""
    server = fakeredis.FakeServer()
    clients: list[fakeredis.FakeAsyncRedis] = []

    def make(**options: Any) -> Database:
        client = fakeredis.FakeAsyncRedis(server=server)
        clients.append(client)
        return create_database(DatabaseType.REDIS, redis_client=client, **options)

    yield make
    for client in clients:
        await client.aclose()


async def flushed_redis(url: str) -> None:
    """FLUSHDB the test database of the shared server (only that number), or skip (fail in
    CI)."""
    client = Redis.from_url(url, socket_connect_timeout=1, socket_timeout=5)
    try:
        await client.flushdb()
    except (RedisError, OSError) as exc:
        unavailable(f"no Redis server for the tests: {type(exc).__name__}")
    finally:
        await client.aclose()


@pytest.fixture
def shared_redis_url() -> Iterator[str]:
    """``REDIS_TEST_URL``, held by this test alone while it runs.

    Every run of this suite on the machine (CI, each developer's worktree) uses and flushes
    that one database, so two runs at once wiped each other's data mid-test. A test that
    uses it holds an exclusive lock on a file named after the URL; a test of another run
    waits for it (at most ``SHARED_REDIS_WAIT`` seconds, then fails saying why)."""
    digest = hashlib.sha256(REDIS_TEST_URL.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"kvstore-tests-redis-{digest}.lock"
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + SHARED_REDIS_WAIT
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"another test run held the shared Redis test database for "
                        f"{SHARED_REDIS_WAIT:.0f} s (lock file {path})",
                        pytrace=False,
                    )
                time.sleep(0.05)
        yield REDIS_TEST_URL
    finally:
        os.close(descriptor)  # releases the lock


@pytest.fixture
async def make_db_redis(shared_redis_url: str) -> MakeDb:
    """Databases on the real Redis, database 13 (``$KVSTORE_TEST_REDIS_URL``), flushed."""
    await flushed_redis(shared_redis_url)
    return lambda **options: create_database(DatabaseType.REDIS, shared_redis_url, **options)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A private three-master Redis Cluster on free loopback ports, for the whole session."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        unavailable("redis-server and redis-cli are needed for the cluster tests")
    directory: Path = tmp_path_factory.mktemp("redis-cluster")
    servers = RedisClusterServers(directory)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture
async def make_db_redis_cluster(redis_cluster: RedisClusterServers) -> MakeDb:
    """Databases on the private cluster, FLUSHALLed on every node first."""
    for node in redis_cluster.nodes:
        client = Redis(port=node.port)
        try:
            await client.flushall()
        finally:
            await client.aclose()
    return lambda **options: create_database(DatabaseType.REDIS, redis_cluster.url, **options)


@pytest.fixture
def make_db_tiered_memory() -> MakeDb:
    """Tiered: a memory system of record behind the per-process dict cache."""
    return lambda **options: create_database(
        DatabaseType.TIERED, "memory://", cache_url="memory://", **options
    )


@pytest.fixture
def make_db_tiered_sqlite_dict(tmp_path: Path) -> MakeDb:
    """Tiered: SQLite behind the per-process dict cache."""
    url = f"sqlite:///{tmp_path / 'kvstore.db'}"
    return lambda **options: create_database(
        DatabaseType.TIERED, url, cache_url="memory://", **options
    )


@pytest.fixture
def make_db_tiered_sqlite_near(tmp_path: Path) -> MakeDb:
    """Tiered: SQLite behind the per-process dict cache, with a near cache in front."""
    url = f"sqlite:///{tmp_path / 'kvstore.db'}"
    return lambda **options: create_database(
        DatabaseType.TIERED,
        url,
        cache_url="memory://",
        near_cache_entries=NEAR_CACHE_ENTRIES,
        **options,
    )


@pytest.fixture
async def make_db_tiered_sqlite_fakeredis(tmp_path: Path) -> AsyncIterator[MakeDb]:
    """Tiered: SQLite behind a fake Redis cache (injected clients, closed here)."""
    url = f"sqlite:///{tmp_path / 'kvstore.db'}"
    server = fakeredis.FakeServer()
    clients: list[fakeredis.FakeAsyncRedis] = []

    def make(**options: Any) -> Database:
        client = fakeredis.FakeAsyncRedis(server=server)
        clients.append(client)
        return create_database(DatabaseType.TIERED, url, redis_client=client, **options)

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture(scope="session")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A ``redis-server`` of this test session on a free loopback port (flushed freely)."""
    if REDIS_SERVER is None:
        unavailable("redis-server is needed for the tiered tests on real Redis")
    server = RedisServer(tmp_path_factory.mktemp("redis-tiered"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[pg_servers.PostgresServer]:
    """A PostgreSQL cluster of this test alone (to restart, freeze, stop), with the store's
    tables. Stopped and removed afterwards; its log is kept in ``tmp_path``."""
    missing = pg_servers.available()
    if missing is not None:
        unavailable(missing)
    server = pg_servers.PostgresServer()
    try:
        server.start()
        asyncio.run(_create_tables(server.url))
        yield server
    finally:
        server.thaw()
        server.stop()
        if server.log.exists():
            shutil.copyfile(server.log, tmp_path / "postgres.log")
        server.remove()


async def _create_tables(url: str) -> None:
    async with create_database(DatabaseType.SQL, url) as db:
        await db.initialize()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` of this test alone, to kill, freeze (SIGSTOP) and restart; ``SAVE``
    writes its snapshot to its directory, which a restart loads."""
    if REDIS_SERVER is None:
        unavailable("redis-server is needed for tests that stop or freeze their own Redis")
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.process.send_signal(signal.SIGCONT)
        server.stop()


@pytest.fixture
async def make_db_tiered_postgres_redis(postgres_url: str, private_redis: RedisServer) -> MakeDb:
    """Tiered: the session's PostgreSQL database behind the private Redis, both emptied."""
    await postgres.empty(postgres_url)
    client = Redis.from_url(private_redis.url)
    try:
        await client.flushall()
    finally:
        await client.aclose()
    return lambda **options: create_database(
        DatabaseType.TIERED, postgres_url, cache_url=private_redis.url, **options
    )


@pytest.fixture
async def make_db_tiered_postgres_redis_near(
    make_db_tiered_postgres_redis: MakeDb,
) -> MakeDb:
    """Tiered: PostgreSQL behind the private Redis, with a near cache in front."""
    return lambda **options: make_db_tiered_postgres_redis(
        near_cache_entries=NEAR_CACHE_ENTRIES, **options
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Where services are required, any skip that got past :func:`unavailable` (a marker,
    a plugin) still fails the run."""
    if not REQUIRED:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if skipped:
        print(f"\nKVSTORE_REQUIRE_SERVICES=1: {skipped} skipped test(s) fail this run")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
