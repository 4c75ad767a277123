"""The dict cache tier on its own: bounds, LRU order, TTL, leases, tombstones."""

from __future__ import annotations

import pytest

from backends.base import Entry, utcnow
from backends.memory.cache import SLOT_OVERHEAD, MemoryCache
from kvstore import ConfigurationError
from kvstore.clock import ManualClock
from kvstore.keys import Key

NOW = utcnow()


def key(n: int, owner: str = "u1") -> Key:
    return Key("state", (owner, f"s{n}"))


def entry(version: int = 1, size: int = 10, revision: int | None = None) -> Entry:
    """An entry whose revision is its version unless given."""
    return Entry(b"x" * size, version, NOW, NOW, revision=version if revision is None else revision)


async def test_the_entry_bound_evicts_the_least_recently_used() -> None:
    cache = MemoryCache(max_entries=3)
    for n in range(3):
        assert await cache.write(key(n), entry())
    await cache.lookup([key(0)], lease_ttl=1)  # 0 becomes the most recently used
    await cache.write(key(3), entry())
    hits = await cache.lookup([key(n) for n in range(4)], lease_ttl=0.001)
    assert [h.entry is not None for h in hits] == [True, False, True, True]
    assert len(cache) <= 3
    assert cache.evictions >= 1


async def test_the_byte_bound_holds() -> None:
    cache = MemoryCache(max_bytes=3 * (SLOT_OVERHEAD + 1000))
    for n in range(10):
        await cache.write(key(n), entry(size=1000))
        assert cache.size_bytes <= cache.max_bytes
    assert len(cache) == 3


async def test_entries_expire_after_their_ttl() -> None:
    clock = ManualClock()
    cache = MemoryCache(clock=clock)
    await cache.write(key(1), entry(), ttl=0.05)
    assert (await cache.lookup([key(1)], lease_ttl=0.001))[0].entry is not None
    clock.advance(0.049)
    assert (await cache.lookup([key(1)], lease_ttl=0.001))[0].entry is not None
    clock.advance(0.002)
    assert (await cache.lookup([key(1)], lease_ttl=0.001))[0].entry is None


async def test_one_lease_per_miss_and_fills_need_it() -> None:
    cache = MemoryCache()
    [first] = await cache.lookup([key(1)], lease_ttl=5)
    [second] = await cache.lookup([key(1)], lease_ttl=5)
    assert first.lease is not None
    assert second.lease is None  # someone else fills
    assert await cache.fill([(key(1), entry(), "not-the-lease")]) == 0
    assert await cache.fill([(key(1), entry(), first.lease)]) == 1
    assert await cache.fill([(key(1), entry(2), first.lease)]) == 0  # consumed


async def test_writes_revoke_leases_and_only_move_forward() -> None:
    cache = MemoryCache()
    [miss] = await cache.lookup([key(1)], lease_ttl=5)
    assert miss.lease is not None
    assert await cache.write(key(1), entry(2))
    assert not await cache.write(key(1), entry(1))
    assert await cache.fill([(key(1), entry(3), miss.lease)]) == 0
    [hit] = await cache.lookup([key(1)], lease_ttl=5)
    assert hit.entry is not None
    assert hit.entry.version == 2


async def test_tombstones_fence_older_entries_but_not_a_re_creation() -> None:
    cache = MemoryCache()
    await cache.write(key(1), entry(3))
    await cache.tombstones([(key(1), 5)])
    assert not await cache.write(key(1), entry(4))  # the deleted record's late write
    [miss] = await cache.lookup([key(1)], lease_ttl=5)
    assert miss.entry is None
    assert miss.lease is not None
    assert await cache.write(key(1), entry(1, revision=6))  # re-created later


async def test_invalidate_owner_drops_only_that_owner() -> None:
    cache = MemoryCache()
    await cache.write(key(1, "u1"), entry())
    await cache.write(key(1, "u10"), entry())
    await cache.invalidate_owner("u1")
    assert await cache.cached_keys("state") == [key(1, "u10")]


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ConfigurationError):
        MemoryCache(max_entries=0)
