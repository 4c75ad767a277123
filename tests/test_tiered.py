"""The tiered store's guarantees, on a memory system of record and the dict cache (wrapped
in a fault injector). The same guarantees on PostgreSQL/SQLite and real Redis processes are
in ``test_tiered_services.py``."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from backends.breaker import BreakerState
from backends.memory import MemoryBackend, MemoryCache
from backends.tiered import REPAIR_BATCH, TieredBackend, WarmReport
from kvstore import ConfigurationError, DatabaseType, StateRecord, create_database
from kvstore.clock import ManualClock
from kvstore.keys import Key
from kvstore.store import Store
from tests.tiered_faults import FaultyCache, JitteryBackend
from tests.tiered_stress import run_stress

if TYPE_CHECKING:
    from pathlib import Path

KEY = Key("state", ("u1", "s1"))


@dataclass
class Rig:
    """A tiered store and its parts."""

    db: Store
    backend: TieredBackend
    record: MemoryBackend
    cache: MemoryCache
    faults: FaultyCache
    clock: ManualClock
    """Every part's clock: TTLs, leases and the breaker's timer move only when told."""


def rig(**options: float) -> Rig:
    clock = ManualClock()
    record, cache = MemoryBackend(clock=clock), MemoryCache(clock=clock)
    faults = FaultyCache(cache)
    settings: dict[str, float] = {
        "cache_timeout": 0.05,
        "breaker_threshold": 2,
        "breaker_reset_after": 0.05,
    }
    settings.update(options)
    backend = TieredBackend(
        record,
        faults,
        cache_timeout=settings["cache_timeout"],
        breaker_threshold=int(settings["breaker_threshold"]),
        breaker_reset_after=settings["breaker_reset_after"],
        lease_ttl=settings.get("lease_ttl", 5.0),
        clock=clock,
    )
    return Rig(Store(backend), backend, record, cache, faults, clock)


def state(name: str, session_id: str = "s1") -> StateRecord:
    return StateRecord(user_id="u1", session_id=session_id, state=name)


async def read_state(db: Store, session_id: str = "s1") -> str | None:
    record = await db.get_state("u1", session_id)
    return None if record is None else record.state


async def test_hot_reads_come_from_the_cache_and_verify_repairs_a_difference() -> None:
    r = rig()
    await r.db.save_state(state("CACHED"))
    changed = state("CHANGED_BEHIND_THE_STORES_BACK")
    value = r.db.serializer.dumps(changed, exclude={"version", "created_at", "updated_at"})
    await r.record.put(KEY, value)  # straight into the system of record
    assert await read_state(r.db) == "CACHED"
    assert r.backend.tier_stats().hits == 1
    report = await r.backend.verify("state", owner="u1")
    assert report.stale == [KEY]
    assert report.checked == 1
    assert not report.repaired
    assert await read_state(r.db) == "CACHED"  # verify without repair changes nothing
    repaired = await r.backend.verify("state", repair=True)
    assert repaired.stale == [KEY]
    assert repaired.repaired
    assert await read_state(r.db) == "CHANGED_BEHIND_THE_STORES_BACK"
    assert (await r.backend.verify("state")).stale == []


async def test_verify_finds_entries_the_system_of_record_lacks() -> None:
    r = rig()
    await r.db.save_state(state("A"))
    await r.record.delete(KEY)  # behind the store's back
    report = await r.backend.verify("state", owner="u1", repair=True)
    assert report.extra == [KEY]
    assert await read_state(r.db) is None


async def test_stats_count_hits_misses_and_fills() -> None:
    r = rig()
    await r.db.save_state(state("A"))
    await r.cache.invalidate([KEY])
    assert await read_state(r.db) == "A"  # miss, filled
    assert await read_state(r.db) == "A"  # hit
    assert await r.db.get_state("u1", "nothing") is None  # miss, nothing to fill
    stats = r.backend.tier_stats()
    assert (stats.hits, stats.misses, stats.fills, stats.fill_dropped) == (1, 2, 1, 0)
    assert (stats.cache_errors, stats.bypassed, stats.dirty) == (0, 0, 0)
    assert stats.breaker is BreakerState.CLOSED


async def test_get_many_reads_the_cache_once_and_the_record_once() -> None:
    r = rig()
    for name in ["a", "b", "c"]:
        await r.db.save_state(state(name.upper(), session_id=name))
    await r.cache.invalidate([Key("state", ("u1", "b")), Key("state", ("u1", "c"))])
    calls_before = r.faults.calls
    got = await r.db.states.get_many([("u1", "a"), ("u1", "b"), ("u1", "x"), ("u1", "c")])
    assert [g.state if g else None for g in got] == ["A", "B", None, "C"]
    assert r.faults.calls - calls_before == 2  # one lookup, one fill
    assert r.backend.tier_stats().fills == 2
    assert len(r.cache) == 4  # a, b, c and the lease on x


async def test_a_slow_fill_never_overwrites_a_newer_write_even_after_a_flush() -> None:
    r = rig()
    await r.db.save_state(state("V1"))
    await r.cache.close()  # flush
    [lookup] = await r.cache.lookup([KEY], lease_ttl=5)
    assert lookup.lease is not None
    stale = await r.record.get(KEY)  # the slow reader read v1 ...
    assert stale is not None
    await r.db.save_state(state("V2"))  # ... a write revokes its lease ...
    await r.cache.close()  # ... and a flush empties the cache
    assert await r.cache.fill([(KEY, stale, lookup.lease)]) == 0
    assert await read_state(r.db) == "V2"


async def test_a_late_write_never_resurrects_a_deleted_record() -> None:
    r = rig()
    first = await r.db.save_state(state("V1"))
    assert first.created_at is not None
    old = await r.record.get(KEY)
    assert old is not None
    await r.db.delete_state("u1", "s1")
    assert not await r.cache.write(KEY, old)  # a writer's cache update landing late
    assert await read_state(r.db) is None


async def test_a_failing_cache_never_fails_a_write_and_is_bypassed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r = rig(breaker_reset_after=60)
    await r.db.save_state(state("V1"))
    r.faults.mode = "down"
    with caplog.at_level(logging.INFO, logger="kvstore.tiered"):
        for n in range(2, 6):
            await r.db.save_state(state(f"V{n}"))
            assert await read_state(r.db) == f"V{n}"
    stats = r.backend.tier_stats()
    assert stats.breaker is BreakerState.OPEN
    # reads skip the open breaker (and V2's dirty key before it opened); every write
    # (V2..V5) still tried to update the cache
    assert stats.cache_errors >= 4
    assert stats.reads == stats.bypassed == 4
    assert stats.dirty == 1
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "circuit breaker open" in warnings[0].getMessage()


async def save_v1_then_v2_v3_while_the_cache_is_down(r: Rig) -> None:
    """V1 reaches the cache; V2 and V3 are saved while it is down (the breaker opens, the
    key is dirty); then the cache answers again, still holding V1."""
    await r.db.save_state(state("V1"))
    r.faults.mode = "down"
    await r.db.save_state(state("V2"))
    await r.db.save_state(state("V3"))
    assert r.backend.tier_stats().breaker is BreakerState.OPEN
    r.faults.mode = "ok"


async def test_the_breaker_probes_repairs_dirty_keys_then_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r = rig()
    await save_v1_then_v2_v3_while_the_cache_is_down(r)
    assert (await r.cache.lookup([KEY], lease_ttl=1))[0].entry is not None  # still v1 cached
    r.clock.advance(0.06)  # past breaker_reset_after
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kvstore.tiered"):
        assert await read_state(r.db) == "V3"
    assert r.backend.tier_stats().breaker is BreakerState.CLOSED
    assert await r.backend.repaired() == 0  # in the background, after the probe
    assert [rec.getMessage() for rec in caplog.records] == [
        "cache answers again; circuit breaker closed"
    ]
    [cached] = await r.cache.lookup([KEY], lease_ttl=1)
    assert cached.entry is not None
    assert cached.entry.version == 3  # repaired by rewriting from the system of record


async def test_a_write_that_reaches_the_cache_while_the_breaker_is_open_closes_it_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An open breaker does not keep a cache that is back out of use for
    ``breaker_reset_after``: writes still try it, and the first that lands makes the probe
    due, so the next read repairs the dirty keys and closes the breaker."""
    r = rig(breaker_reset_after=60)
    await save_v1_then_v2_v3_while_the_cache_is_down(r)
    await r.db.save_state(state("V4", session_id="s2"))  # lands in the cache
    [written] = await r.cache.lookup([Key("state", ("u1", "s2"))], lease_ttl=1)
    assert written.entry is not None
    with caplog.at_level(logging.INFO, logger="kvstore.tiered"):
        assert await read_state(r.db) == "V3"
    assert r.backend.tier_stats().breaker is BreakerState.CLOSED
    assert await r.backend.repaired() == 0
    assert "cache answers again; circuit breaker closed" in caplog.messages
    [cached] = await r.cache.lookup([KEY], lease_ttl=1)
    assert cached.entry is not None
    assert cached.entry.version == 3


async def test_a_long_outage_backlog_is_repaired_in_the_background() -> None:
    """The probe closes the breaker without waiting for the repair of 600 dirty keys
    (REPAIR_BATCH at a time, in the background); until its repair, a key is read from the
    system of record, and the others are read from the cache at once."""
    r = rig()
    sessions = [f"s{n}" for n in range(600)]
    for session in sessions:
        await r.db.save_state(state("V1", session_id=session))
    r.faults.mode = "down"
    for session in sessions:
        await r.db.save_state(state("V2", session_id=session))
    assert r.backend.tier_stats().dirty == 600
    r.faults.mode = "ok"
    r.clock.advance(0.06)  # past breaker_reset_after
    assert await read_state(r.db, "s599") == "V2"  # the probe closes the breaker
    assert r.backend.tier_stats().breaker is BreakerState.CLOSED
    assert r.backend.tier_stats().dirty > 600 - REPAIR_BATCH  # the repair has just begun
    await r.db.save_state(state("V1", session_id="clean"))
    hits = r.backend.tier_stats().hits
    assert await read_state(r.db, "clean") == "V1"
    assert r.backend.tier_stats().hits == hits + 1  # a clean key: from the cache meanwhile
    for session in sessions:  # dirty ones are never read from the cache before repair
        assert await read_state(r.db, session) == "V2"
    assert await r.backend.repaired() == 0
    assert (await r.backend.verify("state", owner="u1")).stale == []


async def test_a_frozen_cache_holding_v1_never_serves_it_after_v2_was_acknowledged() -> None:
    r = rig(breaker_threshold=100)
    await r.db.save_state(state("V1"))
    assert await read_state(r.db) == "V1"
    r.faults.mode = "frozen"
    await r.db.save_state(state("V2"))  # acknowledged after the cache deadline
    assert await read_state(r.db) == "V2"  # the key is dirty: straight from the record
    await r.faults.thaw()  # the queued write lands late, after the thaw
    for _ in range(3):
        assert await read_state(r.db) == "V2"
    assert await r.backend.repaired() == 0


async def test_commands_landing_late_after_a_thaw_never_resurrect_older_data() -> None:
    r = rig(breaker_threshold=100)
    r.faults.mode = "frozen"
    await r.db.save_state(state("V1"))  # its cache write is queued in the frozen cache
    await r.db.delete_state("u1", "s1")  # so is the tombstone
    r.faults.mode = "ok"
    assert await read_state(r.db) is None  # the repair runs first: tombstone
    await r.faults.thaw()  # now the queued write(v1) lands: fenced by the tombstone
    assert await read_state(r.db) is None
    assert (await r.backend.verify("state", owner="u1")).extra == []


async def test_a_dirty_key_is_never_read_from_the_cache_while_its_repair_fails() -> None:
    r = rig(breaker_threshold=100)
    await r.db.save_state(state("V1"))
    r.faults.plan = [True]  # the cache write after the commit fails: v1 stays cached
    await r.db.save_state(state("V2"))
    r.faults.plan = [True]  # the repair fails; a lookup would answer (with v1)
    assert await read_state(r.db) == "V2"
    assert await r.backend.repaired() == 1
    assert r.backend.tier_stats().bypassed == 1
    assert await read_state(r.db) == "V2"  # from the record again; repaired after it
    assert await r.backend.repaired() == 0
    assert await read_state(r.db) == "V2"  # from the cache
    assert r.backend.tier_stats().hits == 1


async def test_lost_replies_mark_keys_dirty_and_are_repaired() -> None:
    r = rig(breaker_threshold=100)
    await r.db.save_state(state("V1"))
    r.faults.mode = "lost_reply"
    await r.db.save_state(state("V2"))
    assert r.backend.tier_stats().dirty == 1
    r.faults.mode = "ok"
    assert await read_state(r.db) == "V2"
    assert await r.backend.repaired() == 0


async def test_a_cancelled_save_after_the_commit_leaves_the_key_dirty() -> None:
    r = rig(cache_timeout=5, breaker_threshold=100)
    await r.db.save_state(state("V1"))
    r.faults.mode = "frozen"
    save = asyncio.create_task(r.db.save_state(state("V2")))
    await r.faults.stuck.wait()  # committed; its cache write hangs
    save.cancel()
    with pytest.raises(asyncio.CancelledError):
        await save
    assert r.backend.tier_stats().dirty == 1
    r.faults.mode = "ok"
    assert await read_state(r.db) == "V2"


async def test_a_cache_unreachable_at_start_up() -> None:
    r = rig(breaker_reset_after=60)
    r.faults.mode = "down"
    async with r.db:
        assert await read_state(r.db) is None
        saved = await r.db.save_state(state("V1"))
        assert saved.version == 1
        assert await read_state(r.db) == "V1"
        assert r.backend.tier_stats().breaker is BreakerState.OPEN


async def test_delete_user_while_the_cache_is_down_is_repaired_per_owner() -> None:
    r = rig(breaker_threshold=100)
    await r.db.save_state(state("V1"))
    await r.db.save_state(state("V1", session_id="s2"))
    r.faults.mode = "down"
    assert await r.db.delete_user("u1") == 2
    assert await read_state(r.db) is None
    r.faults.mode = "ok"
    assert await read_state(r.db, "s2") is None  # the owner is dirty: from the record
    assert await r.backend.repaired() == 0
    assert len(r.cache) == 0  # the owner's entries are gone
    assert await read_state(r.db, "s2") is None
    assert len(r.cache) == 1  # only the lease the miss took


async def test_a_write_overlapping_delete_user_is_repaired() -> None:
    r = rig(cache_timeout=5, breaker_threshold=100)
    r.faults.mode = "frozen"
    save = asyncio.create_task(r.db.save_state(state("V1")))
    await r.faults.stuck.wait()  # committed; its cache write hangs
    r.faults.mode = "ok"
    assert await r.db.delete_user("u1") == 1
    await r.faults.thaw()  # the save's cache write lands after the owner was invalidated
    await save
    assert await read_state(r.db) is None


async def test_invalidate_before_write_keeps_the_same_results() -> None:
    record, cache = MemoryBackend(), MemoryCache()
    db = Store(TieredBackend(record, cache, invalidate_before_write=True))
    await db.save_state(state("V1"))
    await db.save_state(state("V2"))
    assert await read_state(db) == "V2"
    assert (await cache.lookup([KEY], lease_ttl=1))[0].entry is not None


async def test_warm_loads_the_most_recently_updated_records() -> None:
    r = rig()
    for n in range(5):
        await r.db.save_state(state("S", session_id=f"s{n}"))
        r.clock.advance(1)  # one update after another
    await r.cache.close()
    assert await r.backend.warm("state", limit=2) == WarmReport(read=2, landed=2)
    keys = [Key("state", ("u1", f"s{n}")) for n in range(5)]
    hits = await r.cache.lookup(keys, lease_ttl=0.001)
    assert [h.entry is not None for h in hits] == [False, False, False, True, True]
    r.clock.advance(0.01)  # the leases just taken expire
    assert await r.backend.warm("state", owner="u1", limit=10) == WarmReport(read=5, landed=3)


async def test_entries_expire_from_the_cache_with_the_record() -> None:
    r = rig()
    await r.db.states.save(state("SHORT"), ttl=0.2)
    assert await read_state(r.db) == "SHORT"
    r.clock.advance(0.3)
    assert await read_state(r.db) is None


async def test_concurrent_readers_writers_and_a_flusher_never_read_the_past() -> None:
    rng = random.Random(3)
    cache = MemoryCache()
    backend = TieredBackend(JitteryBackend(rng), FaultyCache(cache, jitter=rng))

    async def flush() -> None:
        await cache.close()

    assert await run_stress(Store(backend), flush, seconds=1.5) > 1000
    assert backend.tier_stats().fill_dropped > 0  # the race happened, and the fence held


def test_factory_builds_a_tiered_store_and_refuses_bad_options() -> None:
    db = create_database(
        DatabaseType.TIERED, "memory://", cache_url="memory://", cache_max_entries=10
    )
    assert "tiered(memory:// + memory://)" in repr(db)
    with pytest.raises(ConfigurationError):
        create_database(DatabaseType.TIERED, "memory://")  # no cache
    with pytest.raises(ConfigurationError):
        create_database(DatabaseType.TIERED, cache_url="memory://")  # no system of record
    with pytest.raises(ConfigurationError):
        create_database(DatabaseType.TIERED, "memory://", cache_url="ftp://x")
    with pytest.raises(ConfigurationError):
        create_database(DatabaseType.TIERED, "memory://", cache_url="memory://", cache_ttl=0)
    with pytest.raises(ConfigurationError):
        create_database(DatabaseType.TIERED, "memory://", cache_url="memory://", key_prefix="x")
    with pytest.raises(ConfigurationError) as refused:
        create_database(DatabaseType.TIERED, "memory://", cache_url="memcached://u:s3cret@h")
    assert "s3cret" not in str(refused.value)
    with pytest.raises(ConfigurationError):
        create_database(DatabaseType.TIERED, "memory://", cache_url="redis://h", cache_max_bytes=1)


def test_the_description_of_a_tiered_store_carries_no_password() -> None:
    db = create_database(
        DatabaseType.TIERED,
        "postgresql://coach:pg-s3cret@db:5432/coach",
        cache_url="redis://:redis-s3cret@cache:6379/0",
        cache_ttl=60,
        breaker_threshold=3,
        invalidate_before_write=True,
    )
    assert "s3cret" not in repr(db)
    assert "s3cret" not in repr(db.backend)  # type: ignore[attr-defined]
    assert "tiered(postgresql" in repr(db)


async def test_a_read_that_timed_out_while_the_cache_answered_others_asks_the_cache_again() -> None:
    """A lookup stuck past its deadline while another read was answered: the caller is
    behind, not the cache, so the read goes to the cache once more (a hit), not to the
    system of record, and the breaker hears nothing of it."""
    r = rig(breaker_threshold=1)
    await r.db.save_state(state("A", "s1"))
    await r.db.save_state(state("B", "s2"))
    original = r.faults.lookup
    calls = 0

    async def lookup(keys: list[Key], *, lease_ttl: float) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.Event().wait()  # this one never answers; the deadline ends it
        return await original(keys, lease_ttl=lease_ttl)

    r.faults.lookup = lookup  # type: ignore[assignment,method-assign]
    before = r.backend.tier_stats()
    slow = asyncio.create_task(read_state(r.db, "s1"))
    await asyncio.sleep(0)  # its lookup is in flight
    assert await read_state(r.db, "s2") == "B"  # answered meanwhile
    assert await slow == "A"
    after = r.backend.tier_stats()
    assert calls == 3
    assert (after.hits - before.hits, after.bypassed - before.bypassed) == (2, 0)
    assert after.busy_timeouts - before.busy_timeouts == 1
    assert after.breaker is BreakerState.CLOSED


@pytest.mark.parametrize(
    ("record_url", "follow", "following"),
    [("sqlite", True, True), ("sqlite", False, False), ("memory://", True, False)],
    ids=["sql, following", "sql, follow_changes=False", "no change feed"],
)
async def test_stats_say_whether_the_store_follows_the_change_feed(
    tmp_path: Path, record_url: str, follow: bool, following: bool
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/feed.db" if record_url == "sqlite" else record_url
    async with create_database(
        DatabaseType.TIERED, url, cache_url="memory://", follow_changes=follow
    ) as db:
        tier = db.stats().tier
        assert tier is not None
        assert tier.following is following
