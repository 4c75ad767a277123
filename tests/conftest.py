"""Backend fixtures. Each backend joins the conformance suite by adding its name to
``BACKENDS`` and a ``make_db_<name>`` fixture returning a synchronous factory of fresh,
empty-enough databases (no I/O until first use)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable

import pytest

from kvstore import Database, DatabaseType, create_database

MakeDb = Callable[[], Database]

BACKENDS = ["memory", "tiered_memory"]


@pytest.fixture(params=BACKENDS)
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
def make_db_tiered_memory() -> MakeDb:
    """Tiered: a memory system of record behind the per-process dict cache."""
    return lambda: create_database(DatabaseType.TIERED, "memory://", cache_url="memory://")


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
