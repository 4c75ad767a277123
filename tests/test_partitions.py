"""``kv_records`` hash-partitioned by owner on PostgreSQL: per-user statements read one
partition, a populated table converts keeping every row and revision (reads go on, writes
wait), and the option refuses what it must. The conformance suite runs on a partitioned
table too (the ``postgres_partitioned`` configuration of tests/conftest.py)."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, cast

import asyncpg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy import event
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect

from backends.base import utcnow
from backends.sql import build_sql_backend, queries
from backends.sql.config import create_engine, parse_sql_url
from backends.sql.migrate import partition, upgrade
from backends.sql.partition import build_copy, partition_count, swap_in_copy
from backends.sql.statements import POSTGRES_SQL
from backends.tiered.feed import FeedFollower
from kvstore import (
    BackendUnavailableError,
    ConfigurationError,
    Database,
    DatabaseType,
    StateRecord,
    create_database,
)
from kvstore.cli.app import main
from kvstore.clock import SYSTEM_CLOCK
from kvstore.keys import Key
from tests import postgres
from tests.conftest import PARTITIONS
from tests.waiting import DEADLINE, eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from click.testing import Result
    from sqlalchemy.sql.compiler import SQLCompiler

pytestmark = pytest.mark.postgres


@pytest.fixture
async def fresh_url() -> AsyncIterator[str]:
    """A new database of this test, not migrated."""
    async with postgres.fresh_database("partitions") as url:
        yield url


async def _cli(*args: str) -> Result:
    """``kvstore ARGS`` in a thread (the command runs its own event loop)."""
    return await asyncio.to_thread(CliRunner().invoke, main, list(args))


def _partitions_in(plan: Any, *, ran: bool = False) -> set[str]:
    """The partitions of kv_records that an EXPLAIN (FORMAT JSON) plan reads; with ``ran``,
    of an EXPLAIN ANALYZE plan, those its run read (nodes that ran at least once)."""
    found: set[str] = set()
    if isinstance(plan, dict):
        name = plan.get("Relation Name", "")
        if name.startswith("kv_records_p") and (not ran or plan.get("Actual Loops", 0) > 0):
            found.add(name)
        for value in plan.values():
            found |= _partitions_in(value, ran=ran)
    elif isinstance(plan, list):
        for value in plan:
            found |= _partitions_in(value, ran=ran)
    return found


async def _plan(connection: asyncpg.Connection, sql: str, *args: object) -> set[str]:
    (row,) = await connection.fetch("EXPLAIN (FORMAT JSON) " + sql, *args)
    return _partitions_in(json.loads(row[0]))


def _compiled(statement: sa.Executable) -> tuple[str, list[object]]:
    """``statement`` as the asyncpg dialect sends it: text and positional arguments."""
    element = cast("sa.ClauseElement", statement)
    dialect = asyncpg_dialect()  # type: ignore[no-untyped-call]
    compiled = cast("SQLCompiler", element.compile(dialect=dialect))
    return compiled.string, [compiled.params[name] for name in compiled.positiontup or ()]


async def test_every_per_user_statement_reads_one_partition(postgres_partitioned_url: str) -> None:
    """The hot statements (with the owner as a parameter, as the backend sends them) and
    the listings and erasure of one user are planned on that user's partition alone."""
    async with create_database(DatabaseType.SQL, postgres_partitioned_url) as db:
        for n in range(40):  # every partition holds rows
            await db.save_state(StateRecord(user_id=f"plan-{n}", session_id="s", state="A"))
    now = utcnow()
    key = ("state", "plan-7", "s")
    statements: dict[str, tuple[str, list[object]]] = {
        "get": (POSTGRES_SQL["get"], [*key, now]),
        "version": (POSTGRES_SQL["version"], [*key, now]),
        "put_if": (POSTGRES_SQL["put_if"], [*key, "{}", now, None, 1]),
        "delete": (POSTGRES_SQL["delete"], [*key]),
        "delete_if": (POSTGRES_SQL["delete_if"], [*key, 1, now]),
        "list": (POSTGRES_SQL["list"], ["state", "plan-7", "", now, 100]),
    }
    listing = queries.select_listing("state", ("plan-7", "s"), None, 100, now)
    assert listing is not None
    statements["listing under a longer prefix"] = _compiled(listing)
    statements["recent"] = _compiled(queries.select_recent("state", "plan-7", 10, now))
    statements["delete_owner"] = _compiled(queries.delete_owner("plan-7"))
    connection = await asyncpg.connect(postgres_partitioned_url)
    try:
        plans = {
            name: await _plan(connection, sql, *args) for name, (sql, args) in statements.items()
        }
        everyone = await _plan(connection, "SELECT count(*) FROM kv_records")
    finally:
        await connection.close()
    assert all(len(partitions) == 1 for partitions in plans.values()), plans
    assert len({p for partitions in plans.values() for p in partitions}) == 1  # the same one
    assert len(everyone) == PARTITIONS


async def test_get_many_reads_only_its_owners_partitions(fresh_url: str) -> None:
    """The batch read joins the keys to the table, so its partitions are pruned as it runs,
    in the generic plan the backend's sessions keep (``plan_cache_mode``): one owner's keys
    read one partition, two owners' at most two."""
    async with create_database(DatabaseType.SQL, fresh_url, partitions=16):
        pass  # the schema, partitioned
    connection = await asyncpg.connect(
        fresh_url, server_settings={"plan_cache_mode": "force_generic_plan"}
    )
    try:
        await connection.execute(
            "INSERT INTO kv_records (namespace, owner, key, value, version, created_at, "
            "updated_at) SELECT 'batch', 'owner-' || (n % 1000), 'k' || n, '{}', 1, now(), "
            "now() FROM generate_series(1, 50000) AS n"
        )
        await connection.execute("ANALYZE kv_records")
        await connection.execute(
            "PREPARE get_batch(text[], text[], text[], timestamptz) AS " + POSTGRES_SQL["get_batch"]
        )
        read: list[set[str]] = []
        for owners, keys in (
            ("{owner-7,owner-7}", "{k7,k1007}"),
            ("{owner-7,owner-8}", "{k7,k8}"),
        ):  # the test's own constants, written into the EXECUTE (it takes no parameters)
            (row,) = await connection.fetch(
                "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE get_batch"
                f"('{{batch,batch}}', '{owners}', '{keys}', now())"
            )
            read.append(_partitions_in(json.loads(row[0]), ran=True))
    finally:
        await connection.close()
    assert len(read[0]) == 1
    assert read[0] <= read[1]
    assert len(read[1]) <= 2


async def _rows(url: str) -> list[tuple[Any, ...]]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT * FROM kv_records ORDER BY namespace, owner, key")
        return [tuple(row) for row in rows]
    finally:
        await connection.close()


async def test_a_populated_table_converts_keeping_rows_revisions_and_the_change_feed(
    fresh_url: str,
) -> None:
    """``kvstore db partition`` copies every row as it was (versions, times, revisions);
    afterwards kvstore's writes, a batch job's plain SQL and deletes still draw revisions,
    leave tombstones and reach the change feed."""
    async with create_database(DatabaseType.SQL, fresh_url) as db:
        for n in range(60):
            user = f"convert-{n % 20}"
            await db.save_state(StateRecord(user_id=user, session_id=f"s{n}", state="A"))
        await db.delete_state("convert-3", "s3")
        before = await _rows(fresh_url)

    result = await _cli("db", "partition", "--url", fresh_url, "--partitions", "8")
    assert result.exit_code == 0, result.output
    assert "8 partitions by owner (59 records copied" in result.output
    assert await _rows(fresh_url) == before
    again = await _cli("db", "partition", "--url", fresh_url, "--partitions", "8")
    assert again.exit_code == 0
    assert "(already)" in again.output

    backend = build_sql_backend(fresh_url)
    try:
        await backend.initialize()
        follower = FeedFollower(backend, SYSTEM_CLOCK, recheck_interval=0.05)
        await follower.start()
        head = follower.cursor
        saved = await backend.put(Key("state", ("convert-1", "new")), b'{"n": 1}')
        await postgres.execute(
            fresh_url, "UPDATE kv_records SET value = '{\"n\": 2}' WHERE owner = 'convert-2'"
        )
        await backend.delete(Key("state", ("convert-4", "s4")))
        seen: list[Any] = []

        async def delivered() -> bool:
            seen.extend(await follower.poll())
            return len(seen) >= 1 + 3 + 1

        await eventually(delivered)
        assert saved.revision > head
        assert all(change.revision > head for change in seen)
        assert {change.key.owner for change in seen} == {"convert-1", "convert-2", "convert-4"}
    finally:
        await backend.close()
    connection = await asyncpg.connect(fresh_url)
    try:
        where = await connection.fetch(
            "SELECT DISTINCT tableoid::regclass::text AS part, owner FROM kv_records"
        )
    finally:
        await connection.close()
    by_owner: dict[str, set[str]] = {}
    for row in where:
        by_owner.setdefault(row["owner"], set()).add(row["part"])
    assert all(len(parts) == 1 for parts in by_owner.values())  # one user, one partition
    assert len({p for parts in by_owner.values() for p in parts}) > 1  # users spread out


async def test_reads_go_on_and_writes_wait_while_the_copy_is_built(fresh_url: str) -> None:
    """While the partitioned copy is built, another session reads the table and a write
    waits (a lock timeout shows it waiting); a kvstore save that waits through the swap
    lands in the partitioned table."""
    async with create_database(DatabaseType.SQL, fresh_url) as db:
        await db.save_state(StateRecord(user_id="during", session_id="s", state="A"))
        config = parse_sql_url(fresh_url)
        engine = create_engine(config)
        try:
            async with engine.connect() as converting:
                copied = await build_copy(converting, 4)
                assert copied == 1
                other = await asyncpg.connect(fresh_url)
                try:
                    assert await other.fetchval("SELECT count(*) FROM kv_records") == 1
                    await other.execute("SET lock_timeout = '100ms'")
                    with pytest.raises(asyncpg.LockNotAvailableError):
                        await other.execute("UPDATE kv_records SET version = version")
                    save = asyncio.create_task(
                        db.save_state(StateRecord(user_id="during", session_id="t", state="B"))
                    )

                    async def save_waits() -> bool:
                        waiting = await other.fetchval(
                            "SELECT count(*) FROM pg_locks WHERE NOT granted "
                            "AND relation = 'kv_records'::regclass"
                        )
                        return bool(waiting)

                    await eventually(save_waits)
                    assert not save.done()
                finally:
                    await other.close()
                await swap_in_copy(converting)
                await converting.commit()
            saved = await asyncio.wait_for(save, DEADLINE)
            assert saved.version == 1
            async with engine.connect() as connection:
                assert await partition_count(connection) == 4
        finally:
            await engine.dispose()
        assert {r.session_id for r in await db.list_sessions("during")} == {"s", "t"}


async def _initialize(db: Database) -> None:
    try:
        await db.initialize()
    finally:
        await db.close()


async def test_the_option_partitions_a_new_table_and_refuses_the_rest(fresh_url: str) -> None:
    """``partitions=N`` partitions an empty table at initialize; a populated plain table
    and a table with another count are refused with a ConfigurationError and left as they
    are; SQLite refuses the option."""
    async with create_database(DatabaseType.SQL, fresh_url) as db:  # a plain table
        await db.save_state(StateRecord(user_id="u", session_id="s", state="A"))
    with pytest.raises(ConfigurationError, match="kvstore db partition --partitions 4"):
        await _initialize(create_database(DatabaseType.SQL, fresh_url, partitions=4))
    assert len(await _rows(fresh_url)) == 1
    await postgres.execute(fresh_url, "DELETE FROM kv_records")
    async with create_database(DatabaseType.SQL, fresh_url, partitions=4) as db:
        await db.save_state(StateRecord(user_id="u", session_id="s", state="A"))
    with pytest.raises(ConfigurationError, match="has 4 partitions, the partitions option asks"):
        await _initialize(create_database(DatabaseType.SQL, fresh_url, partitions=8))
    with pytest.raises(ConfigurationError, match="has 4 partitions"):
        await partition(fresh_url, 8)
    for bad in (1, 0, 1025, True, "4"):
        with pytest.raises(ConfigurationError, match="partitions must be"):
            create_database(DatabaseType.SQL, fresh_url, partitions=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="PostgreSQL option"):
        create_database(DatabaseType.SQL, "sqlite:///never.db", partitions=4)
    assert await upgrade(fresh_url + "?partitions=4") is not None


async def test_expired_records_are_purged_partition_by_partition(
    postgres_partitioned_url: str,
) -> None:
    """``purge_expired`` deletes from one partition at a time (each batch's DELETE names a
    partition), every expired record of every partition; ``delete_user`` then erases what
    is left of an owner."""
    user = "expiring-"  # fixed names: which partitions they land in does not vary
    backend = build_sql_backend(postgres_partitioned_url)
    deletes: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM KV_RECORDS"):
            deletes.append(statement.split()[2])

    try:
        await backend.initialize()
        event.listen(backend.engine.sync_engine, "before_cursor_execute", seen)
        for n in range(40):
            await backend.put(Key("state", (f"{user}{n}", "s")), b"{}", ttl=60.0)
        await postgres.execute(
            postgres_partitioned_url,
            "UPDATE kv_records SET expires_at = now() - interval '1 second' WHERE owner LIKE $1",
            f"{user}%",
        )
        holding = await _scalar(
            postgres_partitioned_url,
            "SELECT count(DISTINCT tableoid) FROM kv_records WHERE owner LIKE $1",
            f"{user}%",
        )
        assert holding == PARTITIONS  # the 40 owners land in every partition
        assert await backend.purge_expired(batch_size=3) == 40
        assert set(deletes) == {f"kv_records_p{i:03d}" for i in range(PARTITIONS)}
        await backend.put(Key("state", (user, "kept")), b"{}")
        assert await backend.delete_owner(user) == 1
    finally:
        await backend.close()


async def _scalar(url: str, sql: str, *args: object) -> object:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetchval(sql, *args)
    finally:
        await connection.close()


async def test_a_conversion_that_cannot_lock_the_table_gives_up_and_changes_nothing(
    fresh_url: str,
) -> None:
    """A transaction left open on the table holds its lock: the conversion gives up after
    its lock timeout (statements queue behind a waiting lock, so it must not wait long)
    with BackendUnavailableError, and the plain table is as it was."""
    async with create_database(DatabaseType.SQL, fresh_url) as db:
        await db.save_state(StateRecord(user_id="locked", session_id="s", state="A"))
    before = await _rows(fresh_url)
    holder = await asyncpg.connect(fresh_url)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("UPDATE kv_records SET version = version")
        with pytest.raises(BackendUnavailableError, match="LockNotAvailableError"):
            await partition(fresh_url, 4, lock_timeout=0.2)
        await transaction.rollback()
    finally:
        await holder.close()
    assert await _rows(fresh_url) == before
    assert await partition(fresh_url, 4) == 1


async def test_a_partitioned_table_has_the_plain_table_s_keys_indexes_and_triggers(
    postgres_url: str, postgres_partitioned_url: str
) -> None:
    """backends/sql/partition.py restates the migrations' indexes and triggers: the two
    layouts must not drift apart."""

    async def layout(url: str) -> tuple[set[str], set[str], set[tuple[str, str]]]:
        connection = await asyncpg.connect(url)
        try:
            indexes = await connection.fetch(
                "SELECT indexname, regexp_replace(indexdef, ' ON (ONLY )?public\\.\\w+', '')"
                " FROM pg_indexes WHERE tablename = 'kv_records'"
            )
            triggers = await connection.fetch(
                "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger"
                " WHERE tgrelid = 'kv_records'::regclass AND NOT tgisinternal"
            )
            columns = await connection.fetch(
                "SELECT column_name, data_type || coalesce(collation_name, '')"
                " FROM information_schema.columns WHERE table_name = 'kv_records'"
            )
        finally:
            await connection.close()
        return (
            {f"{name}: {definition}" for name, definition in indexes},
            {definition.replace("ON public.", "ON ") for _, definition in triggers},
            {(name, kind) for name, kind in columns},
        )

    plain, partitioned = await layout(postgres_url), await layout(postgres_partitioned_url)
    assert partitioned == plain
