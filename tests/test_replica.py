"""Listings, exports and counts from a streaming replica (``replica_url``), on a private
primary and a replica that this module starts (``initdb``, ``pg_basebackup -R``): this
process reads its own writes there, a replica that lags (replay paused) or is stopped
sends the read to the primary, and other processes' writes show up there with the
replica's lag. The conformance suite also runs with a replica (``postgres_replica``)."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import asyncpg
import pytest

from backends.sql.config import parse_sql_url
from backends.sql.replica import ReplicaReads, replica_config
from kvstore import ConfigurationError, Database, DatabaseType, StateRecord, create_database
from kvstore.store import Store
from tests import pg_servers
from tests.redis_servers import RedisServer, free_port
from tests.services import unavailable
from tests.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import Iterator

    from backends.reports import SQLStats

pytestmark = pytest.mark.postgres

Pair = tuple[pg_servers.PostgresServer, pg_servers.PostgresServer]


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    """A primary (migrated by the first store) and its streaming replica, for this module."""
    if why := pg_servers.available():
        unavailable(why)
    with pg_servers.primary_and_replica() as servers:
        yield servers


def store(primary: str, replica: str | None = None, **options: float) -> Store:
    extra = {} if replica is None else {"replica_url": replica}
    db = create_database(DatabaseType.SQL, primary, **extra, **options)  # type: ignore[arg-type]
    assert isinstance(db, Store)
    return db


def counters(db: Store) -> SQLStats:
    stats = db.stats().sql
    assert stats is not None
    return stats


def new_user() -> str:
    return f"replica-{uuid.uuid4().hex[:10]}"


async def _set_replay(replica: pg_servers.PostgresServer, *, paused: bool) -> None:
    connection = await asyncpg.connect(replica.url)
    try:
        if paused:
            await connection.execute("SELECT pg_wal_replay_pause()")

            async def paused_now() -> bool:
                state = await connection.fetchval("SELECT pg_get_wal_replay_pause_state()")
                return bool(state == "paused")

            await eventually(paused_now)
        else:
            await connection.execute("SELECT pg_wal_replay_resume()")
    finally:
        await connection.close()


async def test_listings_and_exports_come_from_the_replica_with_this_process_s_writes(
    pair: Pair,
) -> None:
    primary, replica = pair
    user = new_user()
    async with store(primary.url, replica.url) as db, store(primary.url) as elsewhere:
        for n in range(3):
            await db.save_state(StateRecord(user_id=user, session_id=f"s{n}", state="A"))
        assert [r.session_id for r in await db.list_sessions(user)] == ["s0", "s1", "s2"]
        backend = db.backend
        exported = [key async for key, _ in backend.scan(owner=user)]
        assert len(exported) == 3
        assert counters(db).replica_reads == 2
        assert (counters(db).replica_fallbacks, counters(db).replica_errors) == (0, 0)

        # the reads really are the replica's: with replay paused, another process's write
        # is not there yet (within the replica's lag), and this process wrote nothing since
        await _set_replay(replica, paused=True)
        try:
            await elsewhere.save_state(StateRecord(user_id=user, session_id="s3", state="B"))
            assert len(await db.list_sessions(user)) == 3
            assert counters(db).replica_reads == 3
        finally:
            await _set_replay(replica, paused=False)

        async def replayed() -> bool:
            return len(await db.list_sessions(user)) == 4

        await eventually(replayed)
        await db.delete_user(user)


async def test_a_lagging_replica_sends_this_process_s_read_to_the_primary(pair: Pair) -> None:
    """Replay paused: the read waits ``replica_wait`` for this process's write, then the
    primary answers it, with the write. Replay resumed: the replica answers again."""
    primary, replica = pair
    user = new_user()
    async with store(primary.url, replica.url, replica_wait=0.2) as db:
        await _set_replay(replica, paused=True)
        try:
            await db.save_state(StateRecord(user_id=user, session_id="s", state="A"))
            assert [r.state for r in await db.list_sessions(user)] == ["A"]
            assert counters(db).replica_fallbacks == 1
            assert counters(db).replica_reads == 0
        finally:
            await _set_replay(replica, paused=False)
        await db.save_state(StateRecord(user_id=user, session_id="s", state="B"))
        assert [r.state for r in await db.list_sessions(user)] == ["B"]
        assert counters(db).replica_reads == 1
        assert counters(db).replica_fallbacks == 1
        await db.delete_user(user)


@pytest.mark.redis
async def test_a_tiered_store_verifies_its_cache_against_a_lagging_replica(
    pair: Pair, private_redis: RedisServer
) -> None:
    """``verify_cache`` reads the system of record's side from the replica. Another
    process's save reached the shared cache and the primary, not yet the paused replica:
    the newer cache entry is checked against the primary, not reported stale."""
    primary, replica = pair
    user = new_user()
    prefix = f"{user}:"

    def tiered(**options: str) -> Database:
        return create_database(
            DatabaseType.TIERED,
            primary.url,
            cache_url=private_redis.url,
            key_prefix=prefix,
            **options,  # type: ignore[arg-type]
        )

    async with tiered(replica_url=replica.url) as db, tiered() as elsewhere:
        await db.save_state(StateRecord(user_id=user, session_id="s", state="A"))
        assert len(await db.list_sessions(user)) == 1  # the replica has it
        await _set_replay(replica, paused=True)
        try:
            await elsewhere.save_state(StateRecord(user_id=user, session_id="s", state="B"))
            report = await db.verify_cache(owner=user)
        finally:
            await _set_replay(replica, paused=False)
        assert (report.checked, report.stale, report.extra) == (1, [], [])
        await db.delete_user(user)


async def test_the_option_is_for_postgresql_and_the_wait_must_be_positive(pair: Pair) -> None:
    primary, replica = pair
    with pytest.raises(ConfigurationError, match="PostgreSQL option"):
        create_database(DatabaseType.SQL, "sqlite:///never.db", replica_url=replica.url)
    with pytest.raises(ConfigurationError, match="replica_wait"):
        create_database(DatabaseType.SQL, primary.url, replica_url=replica.url, replica_wait=0)
    with pytest.raises(ConfigurationError, match="must be a postgresql"):
        create_database(DatabaseType.SQL, primary.url, replica_url="sqlite:///never.db")


async def test_a_replica_that_is_down_sends_reads_to_the_primary(pair: Pair) -> None:
    """Nothing listening on the replica's port, then the module's replica stopped: every
    read is answered by the primary, none fails."""
    primary, replica = pair
    user = new_user()
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    async with store(primary.url, nowhere) as db:
        await db.save_state(StateRecord(user_id=user, session_id="s", state="A"))
        assert len(await db.list_sessions(user)) == 1
        assert counters(db).replica_errors == 1
    replica.stop()  # the last test of the module: the replica stays down
    async with store(primary.url, replica.url) as db:
        assert len(await db.list_sessions(user)) == 1
        assert [key async for key, _ in db.backend.scan(owner=user)] != []
        assert counters(db).replica_errors == 2
        assert counters(db).replica_reads == 0
        await db.delete_user(user)


async def test_concurrent_reads_each_wait_for_the_position_they_asked_for() -> None:
    """A read that asked the primary before a write ended may get its answer after a read
    that asked after it: each waits for its own position, and the newest is kept for the
    reads that follow without asking."""
    answers: list[asyncio.Future[str]] = []

    async def primary_position() -> str:
        answers.append(asyncio.get_running_loop().create_future())
        return await answers[-1]

    config = parse_sql_url("postgresql://u@127.0.0.1/db", {"replica_url": "postgresql://r/db"})
    reads = ReplicaReads(replica_config(config), primary_position, wait=1.0)
    assert await reads.position_for(0) is None  # nothing written: nothing to ask
    early = asyncio.create_task(reads.position_for(1))
    late = asyncio.create_task(reads.position_for(2))
    await asyncio.sleep(0)
    answers[1].set_result("0/200")  # the later read's answer comes first
    assert await late == "0/200"
    answers[0].set_result("0/100")
    assert await early == "0/100"
    assert await reads.position_for(2) == "0/200"  # the newest, without asking again
    assert len(answers) == 2
