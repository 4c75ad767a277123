"""The Redis backend as the tiered store's cache: leases, forward-only revisions, tombstones,
and its layout invariants. Runs on fakeredis, the real Redis and the private cluster."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING

import fakeredis
import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis

from backends.base import Entry, utcnow
from backends.redis import build_redis_backend
from backends.redis.format import LEASE_SUFFIX, Layout
from kvstore.errors import CacheLostError
from kvstore.keys import Key, decode_redis_key, redis_key
from tests.conftest import flushed_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from backends.redis import RedisBackend
    from tests.redis_servers import RedisClusterServers

LEASE = 5.0
SPECIALS = "*?[]\\{}:% "


@pytest.fixture(
    params=[
        "fakeredis",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis_cluster", marks=pytest.mark.redis_cluster),
    ]
)
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[RedisBackend]:
    """A fresh, empty Redis backend on each kind of server."""
    fake: fakeredis.FakeAsyncRedis | None = None
    if request.param == "fakeredis":
        fake = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        backend = build_redis_backend(None, {"redis_client": fake})
    elif request.param == "redis":
        url: str = request.getfixturevalue("shared_redis_url")
        await flushed_redis(url)
        backend = build_redis_backend(url, {})
    else:
        servers: RedisClusterServers = request.getfixturevalue("redis_cluster")
        for node in servers.nodes:
            client = Redis(port=node.port)
            try:
                await client.flushall()
            finally:
                await client.aclose()
        backend = build_redis_backend(servers.url, {})
    try:
        await backend.initialize()
        yield backend
    finally:
        await backend.close()
        if fake is not None:
            await fake.aclose()


def entry(version: int, *, revision: int | None = None, value: bytes = b"{}") -> Entry:
    """An entry whose revision is its version unless given."""
    return Entry(
        value=value,
        version=version,
        created_at=BASE,
        updated_at=utcnow(),
        revision=version if revision is None else revision,
    )


BASE = utcnow()
K = Key("state", ("u1", "s1"))


async def test_a_miss_takes_a_lease_that_others_then_lack(cache: RedisBackend) -> None:
    first, second = await cache.lookup([K, K], lease_ttl=LEASE)
    assert first.entry is None
    assert first.lease is not None
    assert second.entry is None
    assert second.lease is None
    [third] = await cache.lookup([K], lease_ttl=LEASE)
    assert third.lease is None


async def test_a_fill_with_the_lease_lands_once(cache: RedisBackend) -> None:
    [miss] = await cache.lookup([K], lease_ttl=LEASE)
    assert miss.lease is not None
    assert await cache.fill([(K, entry(1), "not-the-token")]) == 0
    assert await cache.fill([(K, entry(1), miss.lease)]) == 1
    assert await cache.fill([(K, entry(2), miss.lease)]) == 0  # the lease was consumed
    [hit] = await cache.lookup([K], lease_ttl=LEASE)
    assert hit.entry is not None
    assert hit.entry.version == 1
    assert hit.lease is None


async def test_a_fill_after_a_write_is_dropped(cache: RedisBackend) -> None:
    [miss] = await cache.lookup([K], lease_ttl=LEASE)
    assert miss.lease is not None
    assert await cache.write(K, entry(2, value=b'"new"'))
    assert await cache.fill([(K, entry(1, value=b'"old"'), miss.lease)]) == 0
    [hit] = await cache.lookup([K], lease_ttl=LEASE)
    assert hit.entry is not None
    assert hit.entry.value == b'"new"'


async def test_a_fill_after_invalidate_is_dropped(cache: RedisBackend) -> None:
    [miss] = await cache.lookup([K], lease_ttl=LEASE)
    assert miss.lease is not None
    await cache.invalidate([K])
    assert await cache.fill([(K, entry(1), miss.lease)]) == 0
    [again] = await cache.lookup([K], lease_ttl=LEASE)
    assert again.entry is None
    assert again.lease is not None


async def test_writes_only_move_forward_by_revision(cache: RedisBackend) -> None:
    assert await cache.write(K, entry(3))
    assert not await cache.write(K, entry(2))
    assert not await cache.write(K, entry(3))
    assert await cache.write(K, entry(1, revision=9))  # re-created later: newer
    [hit] = await cache.lookup([K], lease_ttl=LEASE)
    assert hit.entry is not None
    assert (hit.entry.version, hit.entry.revision) == (1, 9)


async def test_a_tombstone_blocks_older_fills_but_not_a_recreated_record(
    cache: RedisBackend,
) -> None:
    assert await cache.write(K, entry(2))
    await cache.tombstones([(K, 3)])  # the delete of version 2, at revision 3
    [miss] = await cache.lookup([K], lease_ttl=LEASE)
    assert miss.entry is None  # a tombstone is never a hit
    assert miss.lease is not None
    assert await cache.fill([(K, entry(2), miss.lease)]) == 0
    assert not await cache.write(K, entry(1))
    assert await cache.write(K, entry(1, revision=5))
    [hit] = await cache.lookup([K], lease_ttl=LEASE)
    assert hit.entry is not None
    assert hit.entry.version == 1


async def test_a_tombstone_never_replaces_something_newer(cache: RedisBackend) -> None:
    assert await cache.write(K, entry(3))
    await cache.tombstones([(K, 2)])
    await cache.tombstones([(K, 3)])  # the feed's "stale below 3": the entry is revision 3
    [hit] = await cache.lookup([K], lease_ttl=LEASE)
    assert hit.entry is not None
    assert hit.entry.version == 3


async def test_a_tombstone_revokes_the_lease(cache: RedisBackend) -> None:
    [miss] = await cache.lookup([K], lease_ttl=LEASE)
    assert miss.lease is not None
    await cache.tombstones([(K, 1)])
    assert await cache.fill([(K, entry(1), miss.lease)]) == 0


async def test_a_feed_tombstone_lets_the_fill_of_its_own_revision_land(
    cache: RedisBackend,
) -> None:
    assert await cache.write(K, entry(1))
    await cache.tombstones([(K, 2)])  # the feed: revision 2 was committed, 1 is stale
    [miss] = await cache.lookup([K], lease_ttl=LEASE)
    assert miss.lease is not None
    assert await cache.fill([(K, entry(1), miss.lease)]) == 0
    [miss] = await cache.lookup([K], lease_ttl=LEASE)
    assert miss.lease is not None
    assert await cache.fill([(K, entry(2), miss.lease)]) == 1


async def test_a_batch_of_tombstones_lands_each_by_its_own_revision(cache: RedisBackend) -> None:
    """The feed's tombstones go many to a script call (more than one call here; on a
    Cluster, a call per owner): each lands by its own revision, in order, revokes its own
    key's lease and is indexed with its owner, as the tombstone of a single key is."""
    owners = [f"user-{n}" for n in range(5)]
    keys = [Key("state", (owner, f"s{n}")) for owner in owners for n in range(30)]
    newer, leased = keys[::7], keys[1::7]
    for key in newer:
        assert await cache.write(key, entry(1, revision=100))
    leases = await cache.lookup(leased, lease_ttl=LEASE)
    await cache.tombstones([(key, 50) for key in keys] + [(keys[2], 40), (keys[3], 60)])

    answers = await cache.lookup(keys, lease_ttl=LEASE)
    assert [a.entry is not None for a in answers] == [key in newer for key in keys]
    for key, revoked in zip(leased, leases, strict=True):
        assert revoked.lease is not None
        assert await cache.fill([(key, entry(1, revision=99), revoked.lease)]) == 0
    by_key = dict(zip(keys, answers, strict=True))
    # keys[3]: 50 then 60 landed; keys[2]: 40 after 50 did not
    assert await cache.fill([(keys[3], entry(1, revision=59), by_key[keys[3]].lease or "")]) == 0
    assert await cache.fill([(keys[2], entry(1, revision=50), by_key[keys[2]].lease or "")]) == 1
    # indexed: erasing the owner's cache entries takes its tombstones
    await cache.invalidate_owner(owners[4])
    gone = keys[-1]
    [miss] = await cache.lookup([gone], lease_ttl=LEASE)
    assert await cache.fill([(gone, entry(1, revision=1), miss.lease or "")]) == 1


async def test_tombstones_in_a_lost_generation_fail_as_lost(cache: RedisBackend) -> None:
    """A batch of tombstones checks the generation marker once for all: gone (flushed,
    evicted), the call fails with ``CacheLostError`` and lands nothing. A Cluster keeps no
    marker, so there they land."""
    cache.use_generation(await cache.incarnation(), 1)
    await cache.claim_generation()
    keys = [Key("state", ("u1", f"s{n}")) for n in range(3)]
    names = [cache.redis.layout.record(key) for key in keys]
    client = cache.redis.ready().client
    if cache.redis.cluster:
        await cache.tombstones([(key, 5) for key in keys])
        assert [await client.exists(name) for name in names] == [1, 1, 1]
    else:
        await client.delete(cache.redis.layout.marker)
        with pytest.raises(CacheLostError):
            await cache.tombstones([(key, 5) for key in keys])
        assert await client.exists(*names) == 0


async def test_invalidate_owner_drops_entries_tombstones_and_leases(cache: RedisBackend) -> None:
    leased, written, dead = (Key("state", ("u1", s)) for s in ("a", "b", "c"))
    other = Key("state", ("u10", "a"))
    [miss] = await cache.lookup([leased], lease_ttl=LEASE)
    assert miss.lease is not None
    assert await cache.write(written, entry(1))
    assert await cache.write(other, entry(1))
    await cache.tombstones([(dead, 4)])
    await cache.invalidate_owner("u1")
    assert await cache.fill([(leased, entry(1), miss.lease)]) == 0
    answers = await cache.lookup([leased, written, dead, other], lease_ttl=LEASE)
    assert [a.entry is None for a in answers] == [True, True, True, False]
    assert all(a.lease is not None for a in answers[:3])
    assert await cache.fill([(dead, entry(1), answers[2].lease or "")]) == 1  # no tombstone


async def test_batches_span_owners_and_slots(cache: RedisBackend) -> None:
    keys = [Key("state", (f"user-{i}", "s")) for i in range(40)]
    misses = await cache.lookup(keys, lease_ttl=LEASE)
    items = [
        (k, entry(1, value=str(i).encode()), m.lease or "")
        for i, (k, m) in enumerate(zip(keys, misses, strict=True))
    ]
    assert await cache.fill(items) == 40
    hits = await cache.lookup(keys, lease_ttl=LEASE)
    assert [h.entry.value if h.entry else None for h in hits] == [
        str(i).encode() for i in range(40)
    ]
    assert [e.value if e else None for e in await cache.get_many(keys)] == [
        str(i).encode() for i in range(40)
    ]


async def test_cache_entries_never_outlive_the_record(cache: RedisBackend) -> None:
    short = Entry(b"{}", 1, BASE, BASE, expires_at=utcnow() + timedelta(seconds=0.2))
    assert await cache.write(K, short, ttl=60)
    await asyncio.sleep(0.5)
    [miss] = await cache.lookup([K], lease_ttl=LEASE)
    assert miss.entry is None


async def test_concurrent_writes_and_tombstones_share_round_trips(cache: RedisBackend) -> None:
    """A group commit's cache updates, issued together, go to Redis as one pipeline: the
    first alone (nothing was in flight), the rest as one coalesced call of the ``WRITE``
    script in one more round trip; each gets its own outcome, a stale one included."""
    pipe = cache.redis.ready()
    keys = [Key("state", ("u1", f"s{n}")) for n in range(20)]
    assert await cache.write(keys[5], Entry(b"{}", 1, BASE, BASE, revision=100))
    before, sent, items = pipe.replies(), cache.writes.sent, cache.writes.items
    landed = await asyncio.gather(
        *(
            cache.write(key, Entry(b"{}", 1, BASE, BASE, revision=n + 1))
            for n, key in enumerate(keys)
        ),
        cache.tombstones([(Key("state", ("u1", "gone")), 50)]),
    )
    assert landed == [True] * 5 + [False] + [True] * 14 + [None]  # s5 holds revision 100
    assert pipe.replies() - before <= 3  # a Cluster pipeline answers once per node
    assert (cache.writes.sent - sent, cache.writes.items - items) == (2, 20)
    stale = await cache.write(keys[0], Entry(b"{}", 1, BASE, BASE, revision=0))
    assert stale is False  # an older revision than the entry's does not land
    assert [hit.entry is not None for hit in await cache.lookup(keys, lease_ttl=LEASE)] == [
        True
    ] * 20


async def test_closing_sends_and_waits_for_the_coalesced_writes(cache: RedisBackend) -> None:
    """Writes queued for one coalesced call when the backend closes are still sent, and
    their callers get their outcomes: no round of writes is left holding a connection."""
    keys = [Key("state", ("u1", f"c{n}")) for n in range(10)]
    writes = [
        asyncio.create_task(cache.write(key, Entry(b"{}", 1, BASE, BASE, revision=1)))
        for key in keys
    ]
    await asyncio.sleep(0)  # the first goes alone; the rest wait for the next iteration
    await cache.close()
    assert await asyncio.gather(*writes) == [True] * len(keys)


async def test_the_store_and_the_cache_read_the_same_values(cache: RedisBackend) -> None:
    stored = await cache.put(K, b'{"a":1}')
    [hit] = await cache.lookup([K], lease_ttl=LEASE)
    assert hit.entry == stored
    await cache.tombstones([(K, stored.revision + 1)])
    assert await cache.get(K) is None
    again = await cache.put(K, b'{"a":2}', expected_version=0)  # a tombstone is absent
    assert again.version == 1


async def test_ping_answers(cache: RedisBackend) -> None:
    await cache.ping()


component = st.text(alphabet=st.sampled_from("ab:%{}*?[]\\ é-_l"), min_size=1, max_size=6)


@given(
    owner=component,
    rest=st.lists(component, max_size=3),
    prefix=st.sampled_from(["", "kv:", "app.1-x:"]),
)
def test_lease_and_index_keys_never_equal_a_record_key(
    owner: str, rest: list[str], prefix: str
) -> None:
    layout = Layout(prefix)
    key = Key("state", (owner, *rest))
    record = layout.record(key)
    assert "*" not in record[len(prefix) :]  # escaping removes every '*' from components
    assert decode_redis_key(record, prefix) == key
    for other in (
        layout.lease(record),
        layout.index(owner, "state"),
        layout.namespaces(owner),
    ):
        assert "*" in other[len(prefix) :]
        assert other != redis_key(key, prefix)
    assert layout.lease(record).endswith(LEASE_SUFFIX)


async def test_misses_never_grow_the_owners_index(cache: RedisBackend) -> None:
    """Reads of ids that do not exist take leases (which expire) and write nothing else:
    the owner's index stays empty however many there are, and delete_user stays small."""
    keys = [Key("state", ("u1", f"missing-{n}")) for n in range(2000)]
    for start in range(0, len(keys), 200):
        answers = await cache.lookup(keys[start : start + 200], lease_ttl=0.2)
        assert all(a.entry is None and a.lease is not None for a in answers)
    client = cache.redis.ready().client
    assert await client.zcard(cache.redis.layout.index("u1", "state")) == 0
    assert await client.scard(cache.redis.layout.namespaces("u1")) == 0
    await asyncio.sleep(0.3)  # the leases are gone
    [again] = await cache.lookup([keys[0]], lease_ttl=LEASE)
    assert again.lease is not None
    await cache.invalidate_owner("u1")


async def test_a_lease_taken_before_an_erase_of_its_owner_cannot_fill(
    cache: RedisBackend,
) -> None:
    """Leases are not indexed, so an erase cannot delete them: it starts a new epoch
    instead, and a lease of the old one neither fills nor blocks a new lease."""
    [before] = await cache.lookup([K], lease_ttl=LEASE)
    assert before.lease is not None
    await cache.invalidate_owner("u1")  # nothing indexed for u1 at all
    assert await cache.fill([(K, entry(1), before.lease)]) == 0
    [after] = await cache.lookup([K], lease_ttl=LEASE)
    assert after.lease is not None
    assert after.lease != before.lease
    assert await cache.fill([(K, entry(2), after.lease)]) == 1
    [hit] = await cache.lookup([K], lease_ttl=LEASE)
    assert hit.entry is not None
    assert hit.entry.version == 2
