"""SQL backend specifics on real PostgreSQL and SQLite: schema for batch jobs, streaming,
expiry purges, concurrency and persistence across processes."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
import sqlalchemy as sa

from backends.base import utcnow
from backends.sql import SQLBackend, build_sql_backend
from kvstore import (
    DatabaseClosedError,
    DatabaseType,
    IdentityRecord,
    SerializationError,
    StateRecord,
    UserRecord,
    create_database,
)
from kvstore.keys import MAX_KEY_BYTES, Key, encode_key
from kvstore.store import Store
from tests import postgres

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Coroutine
    from pathlib import Path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty SQL database: a fresh SQLite file, or the session's PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kv.db'}"
    url: str = request.getfixturevalue("postgres_url")
    await postgres.empty(url)
    return url


@pytest.fixture
async def backend(sql_url: str) -> AsyncIterator[SQLBackend]:
    """An initialized SQL backend, closed afterwards."""
    sql = build_sql_backend(sql_url)
    try:
        await sql.initialize()
        yield sql
    finally:
        await sql.close()


async def rows(backend: SQLBackend, sql: str) -> list[tuple[object, ...]]:
    """Run plain SQL the way a batch job would."""
    async with backend.engine.connect() as connection:
        result = await connection.execute(sa.text(sql))
        return [tuple(row) for row in result.all()]


async def test_tables_answer_plain_sql_for_batch_jobs(sql_url: str, backend: SQLBackend) -> None:
    async with Store(backend) as db:
        for session, state in [("s1", "CHAT"), ("s2", "CHAT"), ("s3", "INTRODUCTION")]:
            await db.save_state(StateRecord(user_id="u1", session_id=session, state=state))
        await db.save_identity(
            IdentityRecord(user_id="u1", identity_id="i1", category="career", name="Coach")
        )
        await db.save_user(UserRecord(user_id="u1", display_name="Ann"))
        per_state = await rows(
            backend,
            "SELECT value->>'state' AS state, count(*) FROM kv_records"
            " WHERE namespace = 'state' GROUP BY 1 ORDER BY 1",
        )
        assert per_state == [("CHAT", 2), ("INTRODUCTION", 1)]
        identities = await rows(
            backend,
            "SELECT key, value->>'name' FROM kv_records"
            " WHERE namespace = 'identity' AND owner = 'u1'",
        )
        assert identities == [("i1", "Coach")]
        user = await rows(backend, "SELECT key, version FROM kv_records WHERE namespace = 'user'")
        assert user == [("", 1)]
        recent = await rows(
            backend,
            "SELECT count(*) FROM kv_records WHERE namespace = 'state' AND updated_at >= "
            + (
                "now() - interval '1 day'"
                if "postgresql" in sql_url
                else "strftime('%Y-%m-%d %H:%M:%f', 'now', '-1 day')"
            ),
        )
        assert recent == [(3,)]


async def test_every_write_gets_a_new_revision_plain_sql_and_restore_included(
    sql_url: str, backend: SQLBackend
) -> None:
    """kvstore's statements draw their revision themselves; a batch job's INSERT or UPDATE
    that leaves the column alone, and a restore, get one from the database's triggers. All
    of them come after every revision before and reach the change feed."""
    now = "now()" if "postgresql" in sql_url else "strftime('%Y-%m-%d %H:%M:%f000', 'now')"
    saved = await backend.put(Key("state", ("u1", "a")), b'{"n": 1}')
    head, _ = await backend.head()
    assert head == saved.revision
    async with backend.engine.begin() as connection:
        await connection.execute(
            sa.text(
                "INSERT INTO kv_records (namespace, owner, key, value, version, created_at,"
                f" updated_at) VALUES ('state', 'u1', 'b', '{{\"n\": 2}}', 1, {now}, {now})"
            )
        )
        await connection.execute(
            sa.text("UPDATE kv_records SET version = version + 1 WHERE key = 'a'")
        )
    inserted, updated = await backend.get_many([Key("state", ("u1", k)) for k in "ba"])
    assert inserted is not None
    assert updated is not None
    assert head < inserted.revision < updated.revision
    await backend.restore([(Key("state", ("u1", "b")), dataclasses.replace(inserted, version=9))])
    restored = await backend.get(Key("state", ("u1", "b")))
    assert restored is not None
    assert (restored.version, restored.revision > updated.revision) == (9, True)
    again = await backend.put(Key("state", ("u1", "a")), b'{"n": 3}')
    assert again.revision > restored.revision
    changes, _ = await backend.read_changes(head, 100)
    assert [(c.key.rest, c.revision) for c in changes] == [
        (("b",), restored.revision),
        (("a",), again.revision),
    ]


async def test_one_keys_revisions_grow_with_its_versions_under_concurrent_saves(
    backend: SQLBackend,
) -> None:
    """Concurrent saves of one key queue on its row lock in some order; each must draw its
    revision once it holds the lock, or the cache (which orders by revision) would keep an
    older version."""
    key = Key("state", ("u1", "hot"))
    saved = await asyncio.gather(*(backend.put(key, b'{"n": %d}' % i) for i in range(200)))
    by_version = sorted(saved, key=lambda entry: entry.version)
    assert [entry.version for entry in by_version] == list(range(1, 201))
    revisions = [entry.revision for entry in by_version]
    assert revisions == sorted(revisions)
    assert len(set(revisions)) == len(revisions)


async def test_the_largest_key_allowed_is_stored(backend: SQLBackend) -> None:
    """A key of exactly ``MAX_KEY_BYTES`` of incompressible four-byte characters fits
    PostgreSQL's primary-key index (and its tombstone's, on delete)."""
    room = MAX_KEY_BYTES - len("deep") - 3
    ids = [
        "".join(chr(0x20000 + 7 * (i + 300 * n)) for i in range(size))
        for n, size in enumerate((255, 255, room // 4 - 510))
    ]
    ids[2] += "x" * (room % 4)
    key = Key("deep", tuple(ids))
    assert len(encode_key(key)) - 1 == MAX_KEY_BYTES
    await backend.put(key, b'{"n": 1}')
    stored = await backend.get(key)
    assert stored is not None
    assert await backend.delete(key)


async def test_multi_component_keys_are_separate_columns_and_list_by_prefix(
    backend: SQLBackend,
) -> None:
    for rest in [("a", "b"), ("a", "b", "c"), ("a:b",), ("a",), ("ab", "c")]:
        await backend.put(Key("notes", ("u1", *rest)), b'{"n": 1}')
    listed = await backend.list("notes", ("u1", "a"))
    assert [key.components for key, _ in listed] == [
        ("u1", "a"),
        ("u1", "a", "b"),
        ("u1", "a", "b", "c"),
    ]
    everything = await backend.list("notes", ("u1",))
    assert [key.rest for key, _ in everything] == sorted(
        [("a", "b"), ("a", "b", "c"), ("a:b",), ("a",), ("ab", "c")]
    )
    after = await backend.list("notes", ("u1",), after=("u1", "a", "b"), limit=2)
    assert [key.rest for key, _ in after] == [("a", "b", "c"), ("a:b",)]


async def test_get_many_keeps_order_and_duplicates(backend: SQLBackend) -> None:
    keys = [Key("notes", ("u1", f"n{i}")) for i in range(3)]
    for key in keys[:2]:
        await backend.put(key, b"{}")
    entries = await backend.get_many([keys[1], keys[2], keys[0], keys[1]])
    assert [entry.version if entry else None for entry in entries] == [1, None, 1, 1]


async def test_stored_value_reads_back_as_the_same_json(backend: SQLBackend) -> None:
    key = Key("notes", ("u1", "n1"))
    value = b'{"z":1,"a":[1.5,"\\u00e9",null,true],"big":18446744073709551615}'
    await backend.put(key, value)
    entry = await backend.get(key)
    assert entry is not None
    import orjson

    assert orjson.loads(entry.value) == orjson.loads(value)


@pytest.mark.postgres
async def test_a_nul_character_jsonb_cannot_hold_is_a_serialization_error(
    postgres_url: str,
) -> None:
    await postgres.execute(postgres_url, "DELETE FROM kv_records")
    async with create_database(DatabaseType.SQL, postgres_url) as db:
        saved = await db.save_state(StateRecord(user_id="u1", session_id="s1", state="A"))
        with pytest.raises(SerializationError):
            await db.save_state(StateRecord(user_id="u1", session_id="s1", state="A\x00B"))
        assert await db.get_state("u1", "s1") == saved


async def test_stream_reads_every_live_entry_in_key_order(backend: SQLBackend) -> None:
    for owner in ["u1", "u2", "u10"]:
        for session in range(5):
            await backend.put(Key("state", (owner, f"s{session}")), b"{}")
        await backend.put(Key("user", (owner,)), b"{}")
    await backend.put(Key("state", ("u1", "gone")), b"{}", ttl=0.05)
    await asyncio.sleep(0.1)
    streamed = [key async for key, _ in backend.stream("state", batch_size=4)]
    expected = sorted(
        (Key("state", (owner, f"s{s}")) for owner in ["u1", "u2", "u10"] for s in range(5)),
        key=lambda k: k.components,
    )
    assert streamed == expected
    assert [key async for key, _ in backend.stream("state", "u2", batch_size=2)] == [
        Key("state", ("u2", f"s{s}")) for s in range(5)
    ]
    everything = [key async for key, _ in backend.stream(batch_size=3)]
    assert len(everything) == 18
    assert everything == sorted(everything, key=lambda k: (k.namespace, k.components))


async def test_stream_filters_by_a_time_window(backend: SQLBackend) -> None:
    await backend.put(Key("state", ("u1", "old")), b"{}")
    await asyncio.sleep(0.02)
    middle = utcnow()
    await asyncio.sleep(0.02)
    await backend.put(Key("state", ("u1", "new")), b"{}")
    newer = [k.rest async for k, _ in backend.stream("state", updated_since=middle)]
    older = [k.rest async for k, _ in backend.stream("state", updated_before=middle)]
    assert (newer, older) == ([("new",)], [("old",)])
    window = backend.stream(
        "state", updated_since=middle - timedelta(days=1), updated_before=middle
    )
    assert [k.rest async for k, _ in window] == [("old",)]


async def test_recent_lists_newest_first_per_namespace_and_owner(backend: SQLBackend) -> None:
    for n in range(6):
        await backend.put(Key("state", (f"u{n % 2}", f"s{n}")), b"{}")
        await backend.put(Key("user", (f"u{n}",)), b"{}")
    await backend.put(Key("state", ("u0", "s0")), b"{}")  # now the newest
    newest = await backend.recent("state", limit=3)
    assert [key.rest for key, _ in newest] == [("s0",), ("s5",), ("s4",)]
    of_u1 = await backend.recent("state", owner="u1", limit=10)
    assert [key.rest for key, _ in of_u1] == [("s5",), ("s3",), ("s1",)]


async def test_purge_expired_deletes_only_expired_rows_in_batches(backend: SQLBackend) -> None:
    for i in range(7):
        await backend.put(Key("notes", ("u1", f"short{i}")), b"{}", ttl=0.05)
    await backend.put(Key("notes", ("u1", "long")), b"{}", ttl=60)
    await backend.put(Key("notes", ("u1", "forever")), b"{}")
    await asyncio.sleep(0.1)
    assert await backend.purge_expired(batch_size=3) == 7
    assert await backend.purge_expired() == 0
    remaining = await rows(backend, "SELECT key FROM kv_records ORDER BY key")
    assert remaining == [("forever",), ("long",)]


async def test_expired_rows_count_as_absent_for_deletes(backend: SQLBackend) -> None:
    key = Key("notes", ("u1", "n1"))
    await backend.put(key, b"{}", ttl=0.05)
    await asyncio.sleep(0.1)
    assert await backend.delete(key, expected_version=0) == 0  # no revision: nothing removed
    assert await backend.delete(key) == 0
    assert await backend.delete_owner("u1") == 0


async def test_many_concurrent_writers_on_one_file_never_see_a_lock_error(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    async with create_database(DatabaseType.SQL, url) as db:
        saves = [
            db.save_state(StateRecord(user_id=f"u{i % 8}", session_id=f"s{i}", state="A"))
            for i in range(64)
        ] + [
            db.save_state(StateRecord(user_id="hot", session_id="s", state="B")) for _ in range(64)
        ]
        results = await asyncio.gather(*saves)
        assert sorted(r.version for r in results if r.user_id == "hot") == list(range(1, 65))
        deletes = [db.delete_user(f"u{i}") for i in range(8)]
        assert sum(await asyncio.gather(*deletes)) == 64


WRITE = """
import asyncio, sys
from kvstore import DatabaseType, StateRecord, create_database
async def main():
    async with create_database(DatabaseType.SQL, sys.argv[1]) as db:
        saved = await db.save_state(StateRecord(user_id="u1", session_id="s1", state="GOALS"))
        print(saved.version)
asyncio.run(main())
"""
READ = """
import asyncio, sys
from kvstore import DatabaseType, create_database
async def main():
    async with create_database(DatabaseType.SQL, sys.argv[1]) as db:
        state = await db.get_state("u1", "s1")
        print(state.state, state.version)
asyncio.run(main())
"""


def python(code: str, url: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, url], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


async def test_a_session_survives_a_process_restart(sql_url: str) -> None:
    assert await asyncio.to_thread(python, WRITE, sql_url) == "1"
    assert await asyncio.to_thread(python, WRITE, sql_url) == "2"
    assert await asyncio.to_thread(python, READ, sql_url) == "GOALS 2"


async def test_hot_calls_and_listings_share_a_small_pool(sql_url: str) -> None:
    async with create_database(DatabaseType.SQL, sql_url, pool_size=2, max_overflow=0) as db:
        await db.save_state(StateRecord(user_id="u1", session_id="s1", state="A"))
        calls: list[Coroutine[Any, Any, object]] = [db.get_state("u1", "s1") for _ in range(20)]
        calls += [db.list_sessions("u1") for _ in range(10)]
        calls += [
            db.save_state(StateRecord(user_id="u1", session_id=f"s{i}", state="B"))
            for i in range(2, 12)
        ]
        results = await asyncio.gather(*calls)
        assert all(result is not None for result in results)
        assert len(await db.list_sessions("u1")) == 11


@pytest.mark.parametrize("tasks", [32, 128])
async def test_concurrent_statements_take_turns_first_come_first_served(
    sql_url: str, tasks: int
) -> None:
    """More tasks than connections: each gets its turn in order, so every task makes
    progress (ops per task within 2x of each other), whatever the pool size."""
    async with create_database(DatabaseType.SQL, sql_url, pool_size=4, max_overflow=0) as db:
        done = [0] * tasks
        total = tasks * 10

        async def worker(index: int) -> None:
            record = StateRecord(user_id=f"fair-{index}", session_id="s1", state="A")
            while sum(done) < total:
                await db.save_state(record)
                await db.get_state(record.user_id, "s1")
                done[index] += 1

        await asyncio.gather(*(worker(i) for i in range(tasks)))
        assert min(done) * 2 >= max(done), sorted(done)


async def test_purge_expired_drops_tombstones_past_their_retention(backend: SQLBackend) -> None:
    owner = f"purge-{uuid.uuid4().hex[:8]}"  # the session's database is shared
    mine = f"SELECT key FROM kv_tombstones WHERE owner = '{owner}' ORDER BY key"
    for name in ("a", "b"):
        await backend.put(Key("notes", (owner, name)), b"{}")
        assert await backend.delete(Key("notes", (owner, name)))
    assert await rows(backend, mine) == [("a",), ("b",)]
    await backend.purge_expired()  # a week's retention: both stay
    assert len(await rows(backend, mine)) == 2
    await backend.purge_expired(tombstones_older_than=0)  # every tombstone of the database
    assert await rows(backend, mine) == []


@pytest.mark.postgres
async def test_postgresql_sessions_keep_one_plan_and_no_jit(postgres_url: str) -> None:
    """kvstore's sessions run with generic plans and without JIT (docs/scale.md: at ten
    million partitioned rows an export page's generic plan was compiled with LLVM)."""
    backend = build_sql_backend(postgres_url)
    try:
        await backend.initialize()
        async with backend.engine.connect() as connection:
            settings = [
                (await connection.execute(sa.text(f"SHOW {name}"))).scalar_one()
                for name in ("plan_cache_mode", "jit")
            ]
    finally:
        await backend.close()
    assert settings == ["force_generic_plan", "off"]


@pytest.mark.postgres
async def test_close_with_saves_in_flight_leaves_no_server_connection() -> None:
    """close() refuses new statements, waits for those in flight, then closes every
    connection: after it returns, PostgreSQL shows none of the store's (five cycles)."""
    name = postgres.unique_name("close")
    url = await postgres.create_database(name)
    try:
        for cycle in range(5):
            db = create_database(DatabaseType.SQL, url, pool_size=8)
            await db.save_state(StateRecord(user_id="u", session_id="s0", state="A"))
            saves = [
                asyncio.create_task(
                    db.save_state(StateRecord(user_id="u", session_id=f"s{n}", state="B"))
                )
                for n in range(40)
            ]
            await asyncio.sleep(0.001 * cycle)
            await db.close()
            outcomes = await asyncio.gather(*saves, return_exceptions=True)
            escaped = [o for o in outcomes if isinstance(o, BaseException)]
            assert all(isinstance(e, DatabaseClosedError) for e in escaped), escaped
            assert await connections_to(name) == 0, f"cycle {cycle}"
    finally:
        await postgres.drop_database(name)


async def connections_to(database: str) -> int:
    """Server connections to ``database`` (other than the one asking)."""
    connection = await asyncpg.connect(postgres.ADMIN_URL, timeout=10)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
        return count
    finally:
        await connection.close()


async def test_a_lock_ticket_that_commits_after_a_larger_one_was_granted_does_not_block(
    backend: SQLBackend,
) -> None:
    """Tickets are drawn in one order and may commit in another: a ticket below the lock's
    fence (as if its INSERT committed late) is dropped at its turn instead of holding the
    head of the queue with a grant that could never raise the fence."""
    first = await backend.lock_ticket("u1", "s1", hold=5)
    assert await backend.lock_turn("u1", "s1", first, hold=5, lease=5)
    second = await backend.lock_ticket("u1", "s1", hold=5)
    await backend.lock_release("u1", "s1", first)
    assert await backend.lock_turn("u1", "s1", second, hold=5, lease=5)  # fence = second
    await backend.lock_release("u1", "s1", second)
    late = second - 1  # drawn before the grant of `second`, committed only now
    async with backend.engine.begin() as connection:
        await connection.execute(
            sa.text(
                "INSERT INTO kv_lock_tickets (ticket, owner, name, expires_at) "
                "VALUES (:ticket, 'u1', 's1', 4e9)"
            ),
            {"ticket": late},
        )
    waiting = await backend.lock_ticket("u1", "s1", hold=5)
    assert await backend.lock_turn("u1", "s1", late, hold=5, lease=5) is None
    assert await backend.lock_turn("u1", "s1", waiting, hold=5, lease=5)


@pytest.mark.postgres
async def test_connection_waits_are_counted(postgres_url: str) -> None:
    """stats().sql counts statements that found every pooled connection taken, and how
    long they waited; none is left in use afterwards."""
    await postgres.empty(postgres_url)
    async with create_database(DatabaseType.SQL, postgres_url, pool_size=2) as db:
        await db.save_state(StateRecord(user_id="u1", session_id="s1", state="A"))
        await asyncio.gather(*(db.get_state("u1", "s1") for _ in range(32)))
        stats = db.stats().sql
    assert stats is not None
    assert stats.connection_waits > 0
    assert stats.connection_wait_seconds > 0
    assert stats.connections_in_use == 0
