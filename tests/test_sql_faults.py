"""Failures of the SQL server: typed errors without passwords, and recovery."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

import asyncpg
import pytest

from backends.sql import build_sql_backend
from kvstore import BackendUnavailableError, DatabaseType, StateRecord, create_database
from kvstore.keys import Key
from tests import postgres
from tests.services import unavailable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.postgres


def state(name: str = "A") -> StateRecord:
    return StateRecord(user_id="u1", session_id="s1", state=name)


async def test_unreachable_server_is_backend_unavailable_without_the_password() -> None:
    db = create_database(DatabaseType.SQL, "postgresql://coach:s3cret@127.0.0.1:1/coach")
    try:
        with pytest.raises(BackendUnavailableError) as error:
            await db.get_state("u1", "s1")
    finally:
        await db.close()
    assert "s3cret" not in str(error.value)
    assert "***" in str(error.value)
    assert isinstance(error.value.__cause__, OSError)


async def test_a_server_that_never_answers_times_out_at_the_connect_timeout() -> None:
    with socket.socket() as silent:  # accepts TCP connections, never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        url = f"postgresql://coach:s3cret@127.0.0.1:{port}/coach"
        db = create_database(DatabaseType.SQL, url, connect_timeout=0.3)
        try:
            with pytest.raises(BackendUnavailableError, match="timed out") as error:
                await db.get_state("u1", "s1")
        finally:
            await db.close()
        assert "s3cret" not in str(error.value)


@pytest.fixture
async def own_database() -> AsyncIterator[tuple[str, str]]:
    """A database of this test alone, so terminating its sessions hits no one else."""
    if not await postgres.server_available():
        unavailable(f"no PostgreSQL at {postgres.ADMIN_URL}")
    name = postgres.unique_name("fault")
    url = await postgres.create_database(name)
    try:
        yield name, url
    finally:
        await postgres.drop_database(name)


async def terminate_sessions(admin: asyncpg.Connection, name: str) -> int:
    count: int = await admin.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = $1 AND pid <> pg_backend_pid()",
        name,
    )
    return count


async def wait_until_blocked(admin: asyncpg.Connection, name: str) -> None:
    """Poll the server until a session of database ``name`` waits for a lock."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'"
    for _ in range(500):
        if await admin.fetchval(query, name):
            return
        await asyncio.sleep(0.02)
    pytest.fail("the save never waited for the row lock")


async def test_terminated_connections_recover_on_the_next_call(
    own_database: tuple[str, str],
) -> None:
    name, url = own_database
    admin = await asyncpg.connect(url)
    try:
        async with create_database(DatabaseType.SQL, url) as db:
            saved = await db.save_state(state())
            await asyncio.gather(*(db.get_state("u1", "s1") for _ in range(8)))
            assert await terminate_sessions(admin, name) >= 1
            assert await db.get_state("u1", "s1") == saved
            again = await db.save_state(state("B"))
            assert again.version == 2
    finally:
        await admin.close()


async def test_a_connection_killed_mid_statement_fails_typed_then_recovers(
    own_database: tuple[str, str],
) -> None:
    name, url = own_database
    admin = await asyncpg.connect(url)
    try:
        async with create_database(DatabaseType.SQL, url) as db:
            await db.save_state(state())
            locker = admin.transaction()
            await locker.start()
            await admin.execute("SELECT 1 FROM kv_records FOR UPDATE")  # the save will wait
            blocked = asyncio.create_task(db.save_state(state("B")))
            await wait_until_blocked(admin, name)
            await terminate_sessions(admin, name)
            with pytest.raises(BackendUnavailableError):
                await blocked
            await locker.rollback()
            fetched = await db.get_state("u1", "s1")
            assert fetched is not None
            assert fetched.state == "A"
            assert (await db.save_state(state("C"))).version == 2
    finally:
        await admin.close()


async def test_statement_timeout_is_backend_unavailable(own_database: tuple[str, str]) -> None:
    _, url = own_database
    admin = await asyncpg.connect(url)
    try:
        async with create_database(DatabaseType.SQL, url, statement_timeout=0.3) as db:
            await db.save_state(state())
            async with admin.transaction():
                await admin.execute("SELECT 1 FROM kv_records FOR UPDATE")
                with pytest.raises(BackendUnavailableError, match="timed out"):
                    await db.save_state(state("B"))
            assert (await db.save_state(state("C"))).version == 2
    finally:
        await admin.close()


async def test_a_wait_for_a_connection_is_bounded_and_typed(
    own_database: tuple[str, str],
) -> None:
    """With every connection busy past ``connect_timeout + statement_timeout``, a waiting
    statement gets ``BackendUnavailableError`` instead of waiting on; the store works on
    once they are free."""
    _, url = own_database
    admin = await asyncpg.connect(url)
    try:
        async with create_database(
            DatabaseType.SQL,
            url,
            pool_size=1,
            max_overflow=0,
            statement_timeout=1.0,
            connect_timeout=0.2,
        ) as db:
            await db.save_state(state())
            async with admin.transaction():
                await admin.execute("SELECT 1 FROM kv_records FOR UPDATE")
                # the first two saves each hold the one connection for the 1 s statement
                # timeout; the third waits for its turn from the start and gives up at 1.2 s
                results = await asyncio.gather(
                    *(db.save_state(state(f"B{i}")) for i in range(3)), return_exceptions=True
                )
            assert all(isinstance(result, BackendUnavailableError) for result in results)
            messages = [str(result) for result in results]
            assert sum("no connection free within 1.2 s" in m for m in messages) == 1, messages
            assert (await db.save_state(state("C"))).version == 2
    finally:
        await admin.close()


async def test_the_change_feed_is_read_while_every_turn_is_taken(
    own_database: tuple[str, str],
) -> None:
    """The tiered store's upkeep (feed, generations) takes no turn: with every turn held by
    saves blocked on a row lock and more queued, the head revision is read at once."""
    name, url = own_database
    admin = await asyncpg.connect(url)
    backend = build_sql_backend(url, {"pool_size": 3, "max_overflow": 0})
    try:
        await backend.initialize()
        key = Key("state", ("u1", "s1"))
        await backend.put(key, b"{}")
        async with admin.transaction():
            await admin.execute("SELECT 1 FROM kv_records FOR UPDATE")
            blocked = [asyncio.create_task(backend.put(key, b"{}")) for _ in range(6)]
            await wait_until_blocked(admin, name)
            async with asyncio.timeout(5):  # a hang guard: the saves wait 30 s for the lock
                head, _ = await backend.head()
            assert head >= 1
            assert not any(task.done() for task in blocked)
        await asyncio.gather(*blocked)
    finally:
        await admin.close()
        await backend.close()


async def test_recycled_connections_are_replaced_transparently(
    own_database: tuple[str, str],
) -> None:
    _, url = own_database
    async with create_database(DatabaseType.SQL, url, pool_recycle=0.05, pool_size=2) as db:
        await asyncio.gather(*(db.save_state(state(f"S{i}")) for i in range(4)))
        await asyncio.sleep(0.1)  # every pooled connection is now due for recycling
        fetched = await asyncio.gather(*(db.get_state("u1", "s1") for _ in range(4)))
        assert {f.version for f in fetched if f is not None} == {4}
        assert (await db.save_state(state("T"))).version == 5


FAILURES = """
CREATE SEQUENCE kv_failures;
CREATE TABLE kv_failure_limit (n int NOT NULL);
INSERT INTO kv_failure_limit VALUES (0);
CREATE FUNCTION kv_fail() RETURNS trigger AS $$
BEGIN
    IF nextval('kv_failures') <= (SELECT n FROM kv_failure_limit) THEN
        RAISE EXCEPTION 'injected by the test' USING ERRCODE = '{sqlstate}';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER kv_fail BEFORE INSERT OR UPDATE ON kv_records
    FOR EACH ROW EXECUTE FUNCTION kv_fail();
"""
"""Makes the next ``n`` writes fail with ``sqlstate`` (the sequence survives rollbacks)."""


async def fail_next_writes(url: str, times: int) -> None:
    await postgres.execute(url, "SELECT setval('kv_failures', 1, false)")
    await postgres.execute(url, f"UPDATE kv_failure_limit SET n = {times}")


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"], ids=["serialization", "deadlock"])
async def test_serialization_failures_and_deadlocks_are_retried(
    own_database: tuple[str, str], sqlstate: str
) -> None:
    _, url = own_database
    async with create_database(DatabaseType.SQL, url) as db:
        await db.save_state(state())
        await postgres.execute(url, FAILURES.format(sqlstate=sqlstate))
        await fail_next_writes(url, 2)
        assert (await db.save_state(state("B"))).version == 2  # the third try lands
        await fail_next_writes(url, 3)
        with pytest.raises(BackendUnavailableError, match="transient"):
            await db.save_state(state("C"))
        fetched = await db.get_state("u1", "s1")
        assert fetched is not None
        assert (fetched.state, fetched.version) == ("B", 2)
