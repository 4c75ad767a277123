"""The tiered store's coherence mechanisms on real servers: revisions from PostgreSQL, the
change feed (plain-SQL writes, out-of-order commits), cache generations (a redis-server
restored from an old snapshot, a flush), and clocks that disagree.

Every wait is bounded (a hang guard or a deadline for something to happen), never a timing
assertion; the measured feed lag lives in tests/test_history.py and the README."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from typing import TYPE_CHECKING

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from backends.base import Backend, Change
from backends.sql import build_sql_backend
from backends.tiered import TieredBackend, changes
from backends.tiered.feed import FeedFollower
from backends.tiered.store import DEFAULT_CACHE_TIMEOUT
from kvstore import DatabaseType, StateRecord, create_database
from kvstore.clock import SYSTEM_CLOCK, SkewedClock
from kvstore.keys import Key
from kvstore.store import Store
from tests.redis_servers import (
    REDIS_CLI,
    REDIS_SERVER,
    RedisClusterServers,
    RedisServer,
    redis_cli,
)
from tests.services import unavailable
from tests.waiting import DEADLINE, eventually, feed_caught_up

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

    from kvstore.clock import Clock

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def tiered(
    postgres_url: str,
    cache_url: str,
    clock: Clock = SYSTEM_CLOCK,
    *,
    follow: bool = True,
    cache_timeout: float = DEFAULT_CACHE_TIMEOUT,
) -> Store:
    db = create_database(
        DatabaseType.TIERED,
        postgres_url,
        cache_url=cache_url,
        breaker_reset_after=0.2,
        feed_interval=0.02,
        follow_changes=follow,
        clock=clock,
        cache_timeout=cache_timeout,
    )
    assert isinstance(db, Store)
    return db


def backend_of(db: Store) -> TieredBackend:
    assert isinstance(db.backend, TieredBackend)
    return db.backend


def new_user() -> str:
    return f"coherent-{uuid.uuid4().hex[:12]}"


async def state_of(db: Store, user: str) -> str | None:
    record = await db.get_state(user, "s1")
    return None if record is None else record.state


async def test_revisions_come_from_postgresql_in_commit_statements(postgres_url: str) -> None:
    db = tiered(postgres_url, "memory://")
    user = new_user()
    async with db:
        first = await db.save_state(StateRecord(user_id=user, session_id="s1", state="A"))
        second = await db.save_state(first.model_copy(update={"state": "B"}))
        other = await db.save_state(StateRecord(user_id=user, session_id="s2", state="A"))
        assert 0 < first.revision < second.revision < other.revision
        read = await db.get_state(user, "s1")
        assert read is not None
        assert read.revision == second.revision
        await db.delete_user(user)


async def test_a_batch_jobs_plain_sql_update_and_delete_reach_the_cache(
    postgres_url: str, redis_server: RedisServer
) -> None:
    """The feed repairs what the cache holds when SQL changes behind the store's back."""
    db = tiered(postgres_url, redis_server.url)
    user = new_user()
    async with db:
        await db.save_state(StateRecord(user_id=user, session_id="s1", state="CACHED"))
        assert await state_of(db, user) == "CACHED"
        connection = await asyncpg.connect(postgres_url)
        try:
            await connection.execute(
                'UPDATE kv_records SET value = value || \'{"state": "BATCH"}\'::jsonb '
                "WHERE namespace = 'state' AND owner = $1",
                user,
            )
            await eventually(lambda: _is(state_of(db, user), "BATCH"))
            await connection.execute("DELETE FROM kv_records WHERE owner = $1", user)
            await eventually(lambda: _is(state_of(db, user), None))
        finally:
            await connection.close()
        assert backend_of(db).tier_stats().feed_changes >= 2


async def test_the_feed_does_not_write_again_what_this_process_wrote(
    postgres_url: str, redis_server: RedisServer
) -> None:
    """A process's own writes come back on the feed; their revisions are already in the
    cache, so they are counted and skipped. Another process's write is applied."""
    db = tiered(postgres_url, redis_server.url)
    user = new_user()
    async with db:
        backend = backend_of(db)
        feed = backend.feed
        assert feed is not None
        saved = [
            await db.save_state(StateRecord(user_id=user, session_id=f"s{i}", state="A"))
            for i in range(5)
        ]

        async def caught_up() -> bool:
            return feed.cursor >= saved[-1].revision and not backend.tier_stats().feed_backlog

        await eventually(caught_up)
        stats = backend.tier_stats()
        assert (stats.feed_own, stats.feed_changes) == (5, 0)
        async with tiered(postgres_url, redis_server.url, follow=False) as other:
            elsewhere = await other.save_state(saved[0].model_copy(update={"state": "B"}))

        async def applied() -> bool:
            return backend.tier_stats().feed_changes == 1

        await eventually(applied)
        assert backend.tier_stats().feed_own == 5
        assert feed.cursor >= elsewhere.revision
        await db.delete_user(user)


async def test_the_feed_waits_for_a_write_it_reads_before_its_cache_update(
    postgres_url: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feed can read a save's row between its commit and its cache update: the change
    is held back until the save says it landed, and is then counted as this process's own
    instead of written to the cache a second time. The test holds the save's cache update
    until the feed has read the change: neither the update's deadline nor the hold's limit
    may run out meanwhile, however slowly a busy machine gets there."""
    monkeypatch.setattr(changes, "HOLD_MAX", DEADLINE)
    db = tiered(postgres_url, redis_server.url, cache_timeout=DEADLINE)
    user = new_user()
    async with db:
        backend = backend_of(db)
        feed = backend.feed
        assert feed is not None
        committed = asyncio.Event()
        release = asyncio.Event()
        write = backend.cache.write

        async def write_after_release(*args: object, **kwargs: object) -> object:
            committed.set()
            await release.wait()
            return await write(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(backend.cache, "write", write_after_release)
        save = asyncio.create_task(
            db.save_state(StateRecord(user_id=user, session_id="s", state="A"))
        )
        await asyncio.wait_for(committed.wait(), DEADLINE)
        head = (await backend.record.head())[0]

        async def read_by_the_feed() -> bool:
            return feed.cursor >= head and backend.tier_stats().feed_backlog == 1

        await eventually(read_by_the_feed)
        assert (backend.tier_stats().feed_own, backend.tier_stats().feed_changes) == (0, 0)
        release.set()
        saved = await asyncio.wait_for(save, DEADLINE)
        assert saved.revision == head

        async def counted_as_own() -> bool:
            return backend.tier_stats().feed_own == 1

        await eventually(counted_as_own)
        assert backend.tier_stats().feed_changes == 0
        await db.delete_user(user)


async def _is(value: Awaitable[str | None], expected: str | None) -> bool:
    return await value == expected


async def test_the_feed_delivers_a_revision_that_commits_after_a_newer_one(
    postgres_url: str,
) -> None:
    """Sequence values commit out of order: T1 draws revision r, T2 draws r' > r and commits
    first; the follower reads r' and must still deliver r when T1 commits."""
    backend = build_sql_backend(postgres_url)
    user = new_user()
    try:
        await backend.initialize()
        await backend.put(Key("state", (user, "a")), b"{}")
        await backend.put(Key("state", (user, "b")), b"{}")
        follower = FeedFollower(backend, SYSTEM_CLOCK, recheck_interval=60.0)
        await follower.start()
        slow = await asyncpg.connect(postgres_url)
        try:
            transaction = slow.transaction()
            await transaction.start()
            await slow.execute(
                "UPDATE kv_records SET value = '{\"n\": 1}' WHERE owner = $1 AND key = 'a'", user
            )
            fast = await backend.put(Key("state", (user, "b")), b'{"n": 2}')
            seen = await _changes(follower, until=lambda c: fast.revision in c)
            assert all(change.key.rest == ("b",) for change in seen)
            await transaction.commit()
        finally:
            await slow.close()
        late = await _changes(follower, until=lambda c: any(r < fast.revision for r in c))
        assert [change.key.rest for change in late] == [("a",)]
        assert late[0].revision < fast.revision
        await backend.delete_owner(user)
    finally:
        await backend.close()


async def _changes(follower: FeedFollower, *, until: Callable[[set[int]], bool]) -> list[Change]:
    """The changes polled until ``until`` holds of their revisions."""
    found: list[Change] = []
    revisions: set[int] = set()
    async with asyncio.timeout(DEADLINE):
        while not until(revisions):
            for change in await follower.poll():
                found.append(change)
                revisions.add(change.revision)
            await asyncio.sleep(0.01)
    return found


@pytest.mark.parametrize("follow", [False, True], ids=["generation alone", "with the feed"])
async def test_a_redis_restored_from_an_older_snapshot_never_serves_it(
    postgres_url: str, redis_server: RedisServer, follow: bool
) -> None:
    """Save v1, snapshot, save v2, kill Redis and restart it from the snapshot: neither the
    writing process nor a fresh one reads v1 (the new run_id starts a new generation; the
    change feed is not needed for it)."""
    db = tiered(postgres_url, redis_server.url, follow=follow)
    user = new_user()
    admin = Redis.from_url(redis_server.url)
    async with db:
        saved = await db.save_state(StateRecord(user_id=user, session_id="s1", state="V1"))
        assert await state_of(db, user) == "V1"
        await admin.save()
        await db.save_state(saved.model_copy(update={"state": "V2"}))
        assert await state_of(db, user) == "V2"
        await admin.aclose()
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGKILL)
        redis_server.process.wait()
        redis_server.start()  # loads dump.rdb: the cache has gone back to V1
        for _ in range(50):
            assert await state_of(db, user) == "V2"
        async with tiered(postgres_url, redis_server.url, follow=follow) as fresh:
            for _ in range(50):
                assert await state_of(fresh, user) == "V2"
        stats = backend_of(db).tier_stats()
        assert stats.generation_changes >= 1
        await db.delete_user(user)


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    """Three masters of this test alone."""
    yield from private_cluster(tmp_path, replicas=0)


def private_cluster(tmp_path: Path, *, replicas: int) -> Iterator[RedisClusterServers]:
    """A cluster of this test alone (its nodes get killed): three masters with ``replicas``
    replicas each."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        unavailable("redis-server and redis-cli are needed for the cluster tests")
    servers = RedisClusterServers(tmp_path / "cluster", replicas=replicas)
    try:
        yield servers.start()
    finally:
        servers.stop()


def wait_for_cluster(servers: RedisClusterServers) -> None:
    """Until every live node reports ``cluster_state:ok`` (a restarted node rejoins)."""
    give_up = time.monotonic() + DEADLINE
    for node in servers.nodes:
        while node.process is not None and "cluster_state:ok" not in redis_cli(
            node.port, "cluster", "info"
        ):
            assert time.monotonic() < give_up, "the cluster did not become ready"
            time.sleep(0.05)


async def test_a_cluster_node_restored_from_an_older_snapshot_is_fenced_off(
    postgres_url: str, own_cluster: RedisClusterServers
) -> None:
    """The cluster analogue of the snapshot test: the node holding the user's keys saves a
    snapshot holding V1, V2 is saved, the node is killed and restarted from the snapshot.
    Its new run_id fails the first new connection to it, so every process moves to a new
    generation; neither the writer nor a fresh process reads V1."""
    db = tiered(postgres_url, own_cluster.url, follow=False)
    user = new_user()
    async with db:
        saved = await db.save_state(StateRecord(user_id=user, session_id="s1", state="V1"))
        assert await state_of(db, user) == "V1"
        hits = backend_of(db).tier_stats().hits
        assert await state_of(db, user) == "V1"
        assert backend_of(db).tier_stats().hits == hits + 1  # V1 is in the cache
        holder = next(
            node
            for node in own_cluster.nodes
            if int(redis_cli(node.port, "cluster", "countkeysinslot", slot_of(user)))
        )
        redis_cli(holder.port, "save")
        await db.save_state(saved.model_copy(update={"state": "V2"}))
        assert holder.process is not None
        holder.process.send_signal(signal.SIGKILL)
        holder.process.wait()
        holder.start()  # loads dump.rdb (V1) and nodes.conf: the same node, in the past
        wait_for_cluster(own_cluster)
        for _ in range(20):
            assert await state_of(db, user) == "V2"
        assert backend_of(db).tier_stats().generation_changes >= 1
        async with tiered(postgres_url, own_cluster.url, follow=False) as fresh:
            for _ in range(20):
                assert await state_of(fresh, user) == "V2"
        await db.delete_user(user)


@pytest.fixture
def cluster_with_replicas(tmp_path: Path) -> Iterator[RedisClusterServers]:
    """Three masters with a replica each, of this test alone."""
    yield from private_cluster(tmp_path, replicas=1)


def shard_of(servers: RedisClusterServers, slot: int) -> tuple[RedisServer, RedisServer]:
    """The master serving ``slot`` and its replica, from ``CLUSTER NODES``."""
    lines = [
        line.split() for line in redis_cli(servers.nodes[0].port, "cluster", "nodes").splitlines()
    ]
    by_port = {node.port: node for node in servers.nodes}
    master_id = next(
        fields[0]
        for fields in lines
        if "master" in fields[2]
        and any(
            int(low) <= slot <= int(high or low)
            for low, _, high in (part.partition("-") for part in fields[8:])
        )
    )
    port_of = {fields[0]: int(fields[1].split("@")[0].rsplit(":", 1)[1]) for fields in lines}
    replica_id = next(fields[0] for fields in lines if fields[3] == master_id)
    return by_port[port_of[master_id]], by_port[port_of[replica_id]]


async def test_a_cluster_failover_to_a_replica_that_lagged_is_fenced_off(
    postgres_url: str, cluster_with_replicas: RedisClusterServers
) -> None:
    """V1 is cached and replicated; the replica is frozen and cut off while V2 is saved (so
    it misses V2's cache write), then the master is killed and the replica, thawed, takes
    over with V1.
    A node the incarnation in use does not know starts a new generation: the cache serves
    V2 again, never V1."""
    servers = cluster_with_replicas
    db = tiered(postgres_url, servers.url, follow=False)
    user = new_user()
    async with db:
        saved = await db.save_state(StateRecord(user_id=user, session_id="s1", state="V1"))
        assert await state_of(db, user) == "V1"
        master, replica = shard_of(servers, slot_of(user))
        assert redis_cli(master.port, "wait", 1, 5000).strip() == "1"
        assert master.process is not None
        assert replica.process is not None
        replica.process.send_signal(signal.SIGSTOP)
        redis_cli(master.port, "client", "kill", "type", "replica")  # nothing more reaches it
        await db.save_state(saved.model_copy(update={"state": "V2"}))
        master.process.send_signal(signal.SIGKILL)
        master.process.wait()
        master.process = None
        replica.process.send_signal(signal.SIGCONT)
        give_up = time.monotonic() + 30
        while redis_cli(replica.port, "role").split()[0] != "master":
            assert time.monotonic() < give_up, "the replica did not take over"
            await asyncio.sleep(0.1)
        backend = backend_of(db)
        while True:  # reads go to PostgreSQL until the store uses the cache again
            assert await state_of(db, user) == "V2"
            stats = backend.tier_stats()
            if stats.breaker.value == "closed" and stats.generation_changes >= 1:
                break
            assert time.monotonic() < give_up, f"the cache was not used again: {stats}"
            await asyncio.sleep(0.05)
        hits = backend.tier_stats().hits
        for _ in range(20):
            assert await state_of(db, user) == "V2"
        assert backend.tier_stats().hits > hits  # served by the cache, from the new generation
        async with tiered(postgres_url, servers.url, follow=False) as fresh:
            for _ in range(20):
                assert await state_of(fresh, user) == "V2"
        await db.delete_user(user)


def slot_of(user: str) -> int:
    """The hash slot of ``user``'s keys (they share the ``{owner}`` hash tag)."""
    return int(key_slot(f"{{{user}}}".encode()))


async def test_a_write_that_meets_a_restarted_redis_lands_in_the_new_generation(
    postgres_url: str, redis_server: RedisServer
) -> None:
    """The first call after Redis came back from a snapshot is a save: it finds the new
    incarnation, moves to a new generation and writes there before it is acknowledged (a
    write left only in SQL would let another process fill the old version meanwhile)."""
    db = tiered(postgres_url, redis_server.url, follow=False)
    user = new_user()
    admin = Redis.from_url(redis_server.url)
    async with db:
        saved = await db.save_state(StateRecord(user_id=user, session_id="s1", state="V1"))
        key = Key("state", (user, "s1"))
        v1 = await backend_of(db).record.get(key)
        assert v1 is not None
        await admin.save()
        await admin.aclose()
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGKILL)
        redis_server.process.wait()
        redis_server.start()
        await db.save_state(saved.model_copy(update={"state": "V2"}))
        stats = backend_of(db).tier_stats()
        assert (stats.generation_changes, stats.dirty, stats.breaker.value) == (1, 0, "closed")
        # V2 committed before the new generation began, so the write left its tombstone
        # there: a fill of V1 read from SQL before the commit cannot land
        cache = backend_of(db).cache
        [answer] = await cache.lookup([key], lease_ttl=1)
        assert answer.entry is None
        assert answer.lease is not None
        assert await cache.fill([(key, v1, answer.lease)]) == 0
        async with tiered(postgres_url, redis_server.url, follow=False) as other:
            assert await state_of(other, user) == "V2"
        await db.delete_user(user)


async def test_a_flushed_redis_starts_a_new_generation(
    postgres_url: str, redis_server: RedisServer
) -> None:
    db = tiered(postgres_url, redis_server.url)
    user = new_user()
    admin = Redis.from_url(redis_server.url)
    try:
        async with db:
            await db.save_state(StateRecord(user_id=user, session_id="s1", state="A"))
            before = backend_of(db).tier_stats().generation
            await admin.flushall()
            await eventually(lambda: _is(state_of(db, user), "A"))
            await eventually(lambda: _generation_above(db, before))
            # the change feed may still bring the save (made before the flush): applied
            # after the next read took its lease, it revokes that lease and the read's
            # fill is dropped, as it must be. Let it land first.
            await feed_caught_up(backend_of(db))
            hits = backend_of(db).tier_stats().hits
            assert await state_of(db, user) == "A"
            assert await state_of(db, user) == "A"
            assert backend_of(db).tier_stats().hits > hits  # served from the cache again
            await db.delete_user(user)
    finally:
        await admin.aclose()


async def _generation_above(db: Store, before: int) -> bool:
    await db.get_state("nobody", "s1")
    return backend_of(db).tier_stats().generation > before


async def test_generations_advance_by_compare_and_set_one_winner_at_a_time(
    postgres_url: str,
) -> None:
    backends: list[Backend] = [build_sql_backend(postgres_url) for _ in range(6)]
    name = f"cache-{uuid.uuid4().hex[:8]}"
    try:
        assert await backends[0].read_generation(name) is None
        created = await asyncio.gather(
            *(b.advance_generation(name, "run-1", current=None, to=1) for b in backends)
        )
        assert sorted(created) == [False] * 5 + [True]
        assert await backends[1].read_generation(name) == (1, "run-1")
        moved = await asyncio.gather(
            *(b.advance_generation(name, "run-2", current=1, to=2) for b in backends)
        )
        assert sorted(moved) == [False] * 5 + [True]
        assert await backends[2].read_generation(name) == (2, "run-2")
        assert not await backends[3].advance_generation(name, "run-3", current=1, to=2)
    finally:
        await asyncio.gather(*(backend.close() for backend in backends))


@pytest.mark.parametrize("skew", [0.5, -0.5, 2.0])
async def test_clocks_that_disagree_never_resurrect_a_deleted_record(
    postgres_url: str, redis_server: RedisServer, skew: float
) -> None:
    """A record created by a process whose clock is off by ``skew`` seconds, deleted by one
    with a correct clock: after the delete is acknowledged neither reads it."""
    creator = tiered(postgres_url, redis_server.url, SkewedClock(skew))
    deleter = tiered(postgres_url, redis_server.url)
    async with creator, deleter:
        for round_ in range(20):
            user = new_user()
            await creator.save_state(StateRecord(user_id=user, session_id="s1", state="A"))
            assert await state_of(deleter, user) == "A"
            assert await state_of(creator, user) == "A"
            assert await deleter.delete_state(user, "s1"), round_
            assert await state_of(deleter, user) is None
            assert await state_of(creator, user) is None
