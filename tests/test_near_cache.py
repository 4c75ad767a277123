"""The near cache: what it keeps, what it refuses, when it serves; and the tiered store with
one over SQLite and over PostgreSQL + Redis (the conformance suite runs both too; the
cross-process bound is ``tests/test_history.py::test_11_near_caches_in_every_worker``)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, ClassVar

import pytest
from pydantic import PrivateAttr

from backends.base import Change, Entry
from backends.tiered import TieredBackend
from backends.tiered.near import NOTE_WINDOW, NearCache
from kvstore import ConfigurationError, DatabaseType, StateRecord, create_database
from kvstore.clock import ManualClock
from kvstore.collection import Collection
from kvstore.keys import Key
from kvstore.models.base import Id, Record
from kvstore.store import Store
from tests import postgres
from tests.waiting import eventually

if TYPE_CHECKING:
    from pathlib import Path

    from tests.redis_servers import RedisServer

KEY = Key("state", ("u1", "s1"))


def entry(clock: ManualClock, revision: int, *, ttl: float | None = None) -> Entry:
    now = clock.now()
    expires = None if ttl is None else now + timedelta(seconds=ttl)
    return Entry(b"{}", revision, now, now, expires, revision)


def serving(clock: ManualClock, size: int = 10) -> NearCache:
    near = NearCache(size, clock, max_lag=0.5)
    near.feed_current()
    return near


# -- the near cache alone --------------------------------------------------------------------


def test_it_serves_only_while_the_change_feed_is_current() -> None:
    clock = ManualClock()
    near = NearCache(10, clock, max_lag=0.5)
    near.offer(KEY, entry(clock, 1), near.stamp())
    assert near.get(KEY) is None  # the feed never caught up
    assert not near.serving
    near.feed_current()
    assert near.serving
    assert near.get(KEY) == entry(clock, 1)
    clock.advance(0.6)
    assert near.get(KEY) is None  # the feed fell behind: nothing is served
    assert not near.serving
    near.feed_current()
    assert near.get(KEY) is not None  # current again: what it holds is coherent again


def test_an_entry_only_moves_forward() -> None:
    clock = ManualClock()
    near = serving(clock)
    near.wrote(KEY, entry(clock, 5))
    near.offer(KEY, entry(clock, 4), near.stamp())
    near.wrote(KEY, entry(clock, 3))
    found = near.get(KEY)
    assert found is not None
    assert found.revision == 5


def test_a_read_that_saw_an_older_revision_than_a_change_since_offers_nothing() -> None:
    clock = ManualClock()
    near = serving(clock)
    stamp = near.stamp()  # a read begins
    near.changed([Change(KEY, 7, deleted=False)])  # another process's save arrives
    near.offer(KEY, entry(clock, 6), stamp)  # the read found the version before it
    assert near.get(KEY) is None
    near.offer(KEY, entry(clock, 7), stamp)  # the change itself is fine
    assert near.get(KEY) is not None


def test_a_change_drops_older_entries_and_keeps_newer_ones() -> None:
    clock = ManualClock()
    near = serving(clock)
    near.wrote(KEY, entry(clock, 7))
    near.changed([Change(KEY, 7, deleted=False)])  # our own write, back from the feed
    assert near.get(KEY) is not None
    near.changed([Change(KEY, 8, deleted=True)])
    assert near.get(KEY) is None


def test_changes_are_remembered_for_reads_no_longer_than_one_window() -> None:
    clock = ManualClock()
    near = serving(clock, size=10)
    other = Key("state", ("u2", "s1"))
    stamp = near.stamp()
    near.changed([Change(KEY, 9, deleted=False)])
    clock.advance(NOTE_WINDOW * 1.5)
    near.offer(other, entry(clock, 1), near.stamp())  # the note moves to the older window
    near.offer(KEY, entry(clock, 8), stamp)
    assert near.get(KEY) is None
    clock.advance(NOTE_WINDOW * 1.5)  # the note is forgotten: so is any read that old
    near.feed_current()
    near.offer(KEY, entry(clock, 8), stamp)
    assert near.get(KEY) is None
    near.offer(KEY, entry(clock, 8), near.stamp())  # a read that began now is trusted
    assert near.get(KEY) is not None


def test_a_write_of_unknown_outcome_and_an_erasure_refuse_reads_in_flight() -> None:
    clock = ManualClock()
    near = serving(clock)
    other = Key("state", ("u1", "s2"))
    near.wrote(KEY, entry(clock, 1))
    near.wrote(other, entry(clock, 2))
    stamp = near.stamp()
    near.forget(KEY)
    near.offer(KEY, entry(clock, 3), stamp)
    assert near.get(KEY) is None
    near.forget_owner("u1")
    assert near.get(other) is None
    near.offer(other, entry(clock, 2), stamp)
    assert near.get(other) is None
    clock.advance(0.001)
    near.offer(other, entry(clock, 2), near.stamp())  # read after the erasure: trusted
    assert near.get(other) is not None


def test_it_holds_at_most_max_entries_dropping_the_least_recently_used() -> None:
    clock = ManualClock()
    near = serving(clock, size=2)
    keys = [Key("state", ("u1", f"s{i}")) for i in range(3)]
    near.wrote(keys[0], entry(clock, 1))
    near.wrote(keys[1], entry(clock, 2))
    assert near.get(keys[0]) is not None  # used: keys[1] is now the least recent
    near.wrote(keys[2], entry(clock, 3))
    assert len(near) == 2
    assert near.get(keys[1]) is None
    assert near.get(keys[0]) is not None


def test_a_held_entry_carries_a_memo_that_replace_leaves_behind() -> None:
    clock = ManualClock()
    near = serving(clock)
    near.wrote(KEY, entry(clock, 1))
    held = near.get(KEY)
    assert held is not None
    assert held.memo == {}
    assert held == entry(clock, 1)  # the memo is not part of the value
    assert dataclasses.replace(held, revision=2).memo is None


def test_an_expired_entry_is_not_served() -> None:
    clock = ManualClock()
    near = serving(clock)
    near.wrote(KEY, entry(clock, 1, ttl=0.2))
    assert near.get(KEY) is not None
    clock.advance(0.3)
    near.feed_current()
    assert near.get(KEY) is None
    assert len(near) == 0


def test_a_near_cache_needs_the_change_feed() -> None:
    with pytest.raises(ConfigurationError, match="change feed"):
        create_database(
            DatabaseType.TIERED, "memory://", cache_url="memory://", near_cache_entries=10
        )
    with pytest.raises(ConfigurationError, match="near_cache_entries"):
        create_database(
            DatabaseType.TIERED, "sqlite:///x.db", cache_url="memory://", near_cache_entries=-1
        )


# -- the tiered store with a near cache -------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres_redis"])
def near_db(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        db = create_database(
            DatabaseType.TIERED,
            f"sqlite:///{tmp_path / 'near.db'}",
            cache_url="memory://",
            near_cache_entries=100,
            feed_interval=0.01,
        )
    else:
        url: str = request.getfixturevalue("postgres_url")
        redis: RedisServer = request.getfixturevalue("private_redis")
        db = create_database(
            DatabaseType.TIERED,
            url,
            cache_url=redis.url,
            near_cache_entries=100,
            feed_interval=0.01,
        )
    assert isinstance(db, Store)
    return db


def tier(db: Store) -> TieredBackend:
    backend = db.backend
    assert isinstance(backend, TieredBackend)
    return backend


async def near_serving(db: Store) -> None:
    """Until the near cache serves (its change feed has caught up once)."""

    async def serving() -> bool:
        return tier(db).tier_stats().near_serving

    await eventually(serving)


async def test_reads_your_writes_from_the_near_cache(near_db: Store) -> None:
    user = f"near-{uuid.uuid4().hex[:8]}"
    async with near_db as db:
        await near_serving(db)
        saved = await db.save_state(StateRecord(user_id=user, session_id="s1", state="A"))
        before = tier(db).tier_stats()
        for state in ["B", "C"]:
            saved = await db.save_state(saved.model_copy(update={"state": state}))
            found = await db.get_state(user, "s1")
            assert found is not None
            assert (found.state, found.version) == (state, saved.version)
        after = tier(db).tier_stats()
        assert after.near_hits - before.near_hits == 2
        assert after.hits - before.hits == 2  # near hits count as cache hits
        assert after.near_entries >= 1
        assert await db.delete_state(user, "s1") is True
        assert await db.get_state(user, "s1") is None


async def test_each_near_cache_hit_gets_a_copy_of_the_record_validated_twice(
    near_db: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A near-cache entry is validated on its first two reads; later reads get copies
    (``kvstore.models.copies``). What one caller changes in its record never reaches
    another's. A record without a copier (here: one with a private attribute) is
    validated on every read."""

    class Note(Record):
        KEY_FIELDS: ClassVar[tuple[str, ...]] = ("user_id", "note_id")
        user_id: Id
        note_id: Id
        lines: list[str]
        _drafts: list[str] = PrivateAttr(default_factory=list)

    validated: list[str] = []
    decode = Collection._decode

    def counted(self: Collection[Record], entry: Entry) -> Record:
        validated.append(self.namespace)
        return decode(self, entry)

    monkeypatch.setattr(Collection, "_decode", counted)
    user = f"near-{uuid.uuid4().hex[:8]}"
    async with near_db as db:
        await near_serving(db)
        notes = db.collection(Note, "notes")
        saved_state = await db.save_state(
            StateRecord(user_id=user, session_id="s1", state="A", data={"turns": [1]})
        )
        saved_note = await notes.save(Note(user_id=user, note_id="n1", lines=["a"]))
        hits = tier(db).tier_stats().near_hits
        for _ in range(4):
            state = await db.get_state(user, "s1")
            note = await notes.get(user, "n1")
            assert (state, note) == (saved_state, saved_note)
            assert state is not None
            assert note is not None
            state.data["turns"].append(2)  # type: ignore[union-attr]
            state.state = "CHANGED"
            note.lines.append("b")
        assert tier(db).tier_stats().near_hits == hits + 8
        assert validated.count("state") == 2
        assert validated.count("notes") == 4
        await db.delete_user(user)


async def test_readers_of_near_cached_records_take_turns(near_db: Store) -> None:
    """A near-cache hit needs no I/O; reads still yield now and then, so 32 tasks reading
    in loops all make progress (each within 2x of the others), not the first one alone."""
    user = f"near-{uuid.uuid4().hex[:8]}"
    async with near_db as db:
        await near_serving(db)
        await db.save_state(StateRecord(user_id=user, session_id="s1", state="A"))
        assert await db.get_state(user, "s1") is not None
        before = tier(db).tier_stats()
        reads = [0] * 32
        total = 32 * 200

        async def reader(index: int) -> None:
            while sum(reads) < total:
                assert await db.get_state(user, "s1") is not None
                reads[index] += 1

        await asyncio.gather(*(reader(index) for index in range(32)))
        assert tier(db).tier_stats().near_hits - before.near_hits == sum(reads)
        assert min(reads) * 2 >= max(reads), reads
        await db.delete_user(user)


async def test_delete_user_leaves_nothing_in_the_near_cache(near_db: Store) -> None:
    user = f"near-{uuid.uuid4().hex[:8]}"
    async with near_db as db:
        await near_serving(db)
        for session in ["s1", "s2"]:
            await db.save_state(StateRecord(user_id=user, session_id=session, state="A"))
            assert await db.get_state(user, session) is not None
        assert await db.delete_user(user) == 2
        assert await db.get_state(user, "s1") is None
        assert await db.get_state(user, "s2") is None


async def test_a_plain_sql_update_reaches_the_near_cache_by_the_change_feed(
    postgres_url: str, private_redis: RedisServer
) -> None:
    db = create_database(
        DatabaseType.TIERED,
        postgres_url,
        cache_url=private_redis.url,
        near_cache_entries=100,
        feed_interval=0.01,
    )
    assert isinstance(db, Store)
    user = f"near-{uuid.uuid4().hex[:8]}"
    async with db:
        await near_serving(db)
        await db.save_state(StateRecord(user_id=user, session_id="s1", state="A"))
        hits = tier(db).tier_stats().near_hits
        found = await db.get_state(user, "s1")
        assert found is not None
        assert found.state == "A"
        assert tier(db).tier_stats().near_hits == hits + 1
        await postgres.execute(
            postgres_url,
            "UPDATE kv_records SET value = jsonb_set(value, '{state}', '\"BATCH\"'), "
            "version = version + 1 WHERE owner = $1",
            user,
        )

        async def batch_seen() -> bool:
            record = await db.get_state(user, "s1")
            return record is not None and record.state == "BATCH"

        await eventually(batch_seen)
