"""Backend fixtures. Each backend joins the conformance suite by adding its name to
``BACKENDS`` and a ``make_db_<name>`` fixture returning a synchronous factory of fresh,
empty-enough databases (no I/O until first use)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kvstore import Database, DatabaseType, create_database
from tests import postgres

MakeDb = Callable[[], Database]
T = TypeVar("T")

BACKENDS = ["memory", "sqlite", "postgres", "tiered_memory", "tiered_sqlite_dict"]
_MARKS = {"postgres": pytest.mark.postgres}


@pytest.fixture(params=[pytest.param(name, marks=_MARKS.get(name, ())) for name in BACKENDS])
def backend_name(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test."""
    name: str = request.param
    return name


@pytest.fixture
def make_db(request: pytest.FixtureRequest, backend_name: str) -> MakeDb:
    """A factory of databases on the backend under test."""
    factory: MakeDb = request.getfixturevalue(f"make_db_{backend_name}")
    return factory


@pytest.fixture
async def db(make_db: MakeDb) -> AsyncIterator[Database]:
    """An initialized database on the backend under test, closed afterwards."""
    async with make_db() as database:
        yield database


@pytest.fixture
def make_db_memory() -> MakeDb:
    return lambda: create_database(DatabaseType.MEMORY)


@pytest.fixture
def make_db_sqlite(tmp_path: Path) -> MakeDb:
    """Databases on one fresh SQLite file of this test."""
    url = f"sqlite:///{tmp_path / 'kvstore.db'}"
    return lambda: create_database(DatabaseType.SQL, url)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of this test session on the local PostgreSQL, migrated to the current
    schema; dropped at the end. Skips (failing CI) when the server is not there."""
    if not _blocking(postgres.server_available()):
        pytest.skip(f"no PostgreSQL at {postgres.ADMIN_URL}")
    from backends.sql_migrate import upgrade

    name = postgres.unique_name("test")
    url = _blocking(postgres.create_database(name))
    try:
        _blocking(upgrade(url))
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
    await postgres.execute(postgres_url, "DELETE FROM kv_records")
    return lambda: create_database(DatabaseType.SQL, postgres_url)


@pytest.fixture
def make_db_tiered_memory() -> MakeDb:
    """Tiered: a memory system of record behind the per-process dict cache."""
    return lambda: create_database(DatabaseType.TIERED, "memory://", cache_url="memory://")


@pytest.fixture
def make_db_tiered_sqlite_dict(tmp_path: Path) -> MakeDb:
    """Tiered: SQLite behind the per-process dict cache."""
    url = f"sqlite:///{tmp_path / 'kvstore.db'}"
    return lambda: create_database(DatabaseType.TIERED, url, cache_url="memory://")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI (``KVSTORE_REQUIRE_SERVICES=1``) a skipped test fails the run: a suite that
    skipped its PostgreSQL or Redis tests proved nothing about them."""
    if os.environ.get("KVSTORE_REQUIRE_SERVICES") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if skipped:
        print(f"\nKVSTORE_REQUIRE_SERVICES=1: {skipped} skipped test(s) fail this run")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
