"""The tiered store: a versioned cache in write-through in front of a system of record.

The system of record (SQL in production) holds the truth and orders every change: each save
and delete gets a revision there, in the statement that writes. The cache (Redis, or the
per-process :class:`~backends.memory.MemoryCache`) orders entries, fills and tombstones by
revision alone (:func:`backends.base.lands`); no wall clock orders anything.

* Writes commit to the system of record first, then update the cache. A cache update that
  fails, times out or is cancelled marks the key *dirty* before the write is acknowledged;
  dirty keys are read from the system of record until repaired (:mod:`.repair`).
* Fills after a miss are fenced by leases; deletes leave tombstones of their revision.
* **Across processes**, the change feed out of the system of record (:mod:`.feed`,
  applied by :mod:`.changes`) puts a tombstone of every committed change's revision in the
  cache, so nothing stays stale for longer than the feed's lag.
* **A cache that rewinds is fenced off** by cache generations, and every cache call runs
  under a deadline a busy caller does not use up and a circuit breaker only a failing cache
  trips (:mod:`.guard`). While the breaker is open, reads are served from the system of
  record alone until a probe after ``breaker_reset_after`` seconds succeeds. Writes' cache
  updates and the change feed still try the cache while it is open (skipping a cache that
  others read would leave them the old version); the first that goes through makes the
  probe due at once, so a cache that comes back is used again within one call.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, ClassVar, Final, TypeVar

from backends.base import Backend, Capabilities, Change, Entry
from backends.reports import Stats, TieredStats
from backends.tiered import upkeep
from backends.tiered.changes import DEFAULT_FEED_INTERVAL, FeedApplier
from backends.tiered.feed import FeedFollower
from backends.tiered.guard import FAILED, CacheGuard
from backends.tiered.near import DEFAULT_MAX_LAG, NearCache
from backends.tiered.repair import REPAIR_CHUNK, DirtyKeys, Repairer
from backends.tiered.writes import WritesInFlight
from kvstore.clock import SYSTEM_CLOCK
from kvstore.errors import BackendUnavailableError, CacheLostError, ConfigurationError
from kvstore.keys import DEFAULT_PAGE_SIZE

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from backends.base import VersionedCache
    from backends.reports import VerifyReport, WarmReport
    from backends.tiered.writes import KeyWrites
    from kvstore.clock import Clock
    from kvstore.keys import Key

T = TypeVar("T")

DEFAULT_CACHE_TTL = 900.0
DEFAULT_CACHE_TIMEOUT = 0.1
DEFAULT_LEASE_TTL = 5.0
DEFAULT_BREAKER_THRESHOLD = 5
DEFAULT_BREAKER_RESET_AFTER = 2.0
RENEW_PATIENCE: Final = 10.0
"""Seconds upkeep (warm) waits for the move to a new generation; requests wait
``cache_timeout`` and then bypass the cache."""


class TieredBackend(Backend):
    """A :class:`VersionedCache` in write-through in front of a system-of-record
    :class:`Backend`. Owns both: :meth:`close` closes them."""

    kind: ClassVar[str] = "tiered"
    capabilities = Capabilities(persistent=True, shared=True)

    def __init__(
        self,
        record: Backend,
        cache: VersionedCache,
        *,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        cache_timeout: float = DEFAULT_CACHE_TIMEOUT,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD,
        breaker_reset_after: float = DEFAULT_BREAKER_RESET_AFTER,
        invalidate_before_write: bool = False,
        follow: bool = True,
        feed_interval: float = DEFAULT_FEED_INTERVAL,
        cache_name: str = "kv:",
        near_entries: int = 0,
        near_max_lag: float = DEFAULT_MAX_LAG,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """``near_entries`` > 0 puts a near cache of that many entries in the process
        (:mod:`.near`); it needs the change feed (``follow`` and a system of record that
        has one)."""
        if cache_ttl <= 0 or cache_timeout <= 0 or lease_ttl <= 0 or feed_interval <= 0:
            raise ConfigurationError(
                "cache_ttl, cache_timeout, lease_ttl and feed_interval must be > 0"
            )
        if near_entries < 0 or near_max_lag <= 0:
            raise ConfigurationError("near_cache_entries must be >= 0 and near_cache_max_lag > 0")
        self.record = record
        self.cache = cache
        self.cache_ttl = cache_ttl
        self.cache_timeout = cache_timeout
        self.lease_ttl = lease_ttl
        self.invalidate_before_write = invalidate_before_write
        self.clock = clock
        self.capabilities = Capabilities(
            persistent=record.capabilities.persistent,
            shared=record.capabilities.shared,
            bulk=record.capabilities.bulk,
            cache=True,
        )
        self._guard = CacheGuard(
            cache,
            record,
            cache_timeout=cache_timeout,
            breaker_threshold=breaker_threshold,
            breaker_reset_after=breaker_reset_after,
            cache_name=cache_name,
            clock=clock,
        )
        follower = FeedFollower(record, clock) if follow and record.capabilities.feed else None
        if near_entries and follower is None:
            raise ConfigurationError(
                "the near cache is kept coherent by the change feed: it needs a SQL system "
                "of record and follow_changes=True"
            )
        self._near = NearCache(near_entries, clock, max_lag=near_max_lag) if near_entries else None
        self._feed = FeedApplier(
            follower,
            cache,
            self._guard,
            usable=lambda: self._usable(writing=True),
            cache_ttl=cache_ttl,
            interval=feed_interval,
            near=self._near,
        )
        self._follow_task: asyncio.Task[None] | None = None
        self._dirty = DirtyKeys()
        self._writes = WritesInFlight(self._dirty)
        self._repairer = Repairer(
            self._dirty,
            self._writes,
            record,
            cache,
            self._guard,
            head=lambda: follower.cursor if follower is not None else 0,
            ttl_for=self._ttl_for,
            cache_ttl=cache_ttl,
        )
        self._reads = self._hits = self._misses = self._fills = self._fill_dropped = 0
        self._bypassed = self._near_hits = 0

    def __repr__(self) -> str:
        state = self._guard.breaker.state.value
        return f"TieredBackend({self.record!r}, {self.cache!r}, breaker={state})"

    # -- lifecycle -------------------------------------------------------------------------

    async def initialize(self) -> None:
        """Initialize the system of record (errors propagate), then the cache generation
        (a cache that does not answer opens the breaker instead: the store starts without
        it), then the change feed."""
        await self.record.initialize()
        if self._guard.generation is None and not await self._guard.renew(replacing=None):
            self._guard.breaker.open_at_start()
        follower = self._feed.follower
        if follower is not None and self._follow_task is None:
            await follower.start()
            self._follow_task = asyncio.get_running_loop().create_task(self._feed.run())

    async def close(self) -> None:
        task, self._follow_task = self._follow_task, None
        self._feed.stop()
        if task is not None:
            task.cancel()
        await asyncio.gather(self._repairer.close(), self._guard.close())
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.cache.close()
        finally:
            await self.record.close()

    # -- observability ---------------------------------------------------------------------

    def stats(self) -> Stats:
        return Stats(backend=self.kind, tier=self.tier_stats(), sql=self.record.stats().sql)

    def tier_stats(self) -> TieredStats:
        """The cache tier's counters now."""
        guard, feed = self._guard, self._feed
        return TieredStats(
            reads=self._reads,
            hits=self._hits,
            misses=self._misses,
            bypassed=self._bypassed,
            fills=self._fills,
            fill_dropped=self._fill_dropped,
            cache_errors=guard.cache_errors,
            busy_timeouts=guard.busy_timeouts,
            breaker=guard.breaker.state,
            breaker_open_seconds=guard.breaker.open_seconds(),
            dirty=len(self._dirty),
            generation=guard.generation.number if guard.generation else 0,
            generation_changes=guard.generation_changes,
            feed_changes=feed.applied,
            feed_own=feed.own,
            feed_backlog=len(feed.backlog),
            feed_errors=feed.errors,
            near_hits=self._near_hits,
            near_entries=len(self._near) if self._near is not None else 0,
            near_serving=self._near is not None and self._near.serving,
        )

    @property
    def feed(self) -> FeedFollower | None:
        """The change-feed follower (``None`` when not following)."""
        return self._feed.follower

    async def repaired(self) -> int:
        """Wait for the background repair under way (if any) to finish; return how many
        keys and owners are still dirty."""
        return await self._repairer.repaired()

    # -- reads -----------------------------------------------------------------------------

    async def get(self, key: Key) -> Entry | None:
        return (await self.get_many((key,)))[0]

    async def get_many(self, keys: Sequence[Key]) -> list[Entry | None]:
        if not keys:
            return []
        near = self._near
        if near is None:
            return await self._get_many(keys)
        stamp = near.stamp()
        found = [near.get(key) for key in keys]
        rest = [i for i, entry in enumerate(found) if entry is None]
        hits = len(keys) - len(rest)
        self._reads += hits
        self._hits += hits
        self._near_hits += hits
        if rest:
            fetched = await self._get_many([keys[i] for i in rest])
            for i, entry in zip(rest, fetched, strict=True):
                found[i] = entry
                if entry is not None:
                    near.offer(keys[i], entry, stamp)
        return found

    async def _get_many(self, keys: Sequence[Key]) -> list[Entry | None]:
        """Keys from the shared cache, misses from the system of record (and filled)."""
        self._reads += len(keys)
        if not await self._usable():
            self._bypassed += len(keys)
            return await self.record.get_many(keys)
        dirty = self._dirty
        if dirty:
            self._repairer.soon()
        cached = [i for i, key in enumerate(keys) if key not in dirty]
        self._bypassed += len(keys) - len(cached)
        if not cached:
            return await self.record.get_many(keys)
        wanted = [keys[i] for i in cached]
        busy = self._guard.busy_timeouts
        lookups = await self._guard.call(self.cache.lookup(wanted, lease_ttl=self.lease_ttl))
        if lookups is FAILED and self._guard.busy_timeouts > busy:
            # it timed out while the cache answered others: the caller is what is behind,
            # so ask the cache once more rather than add reads to the system of record
            lookups = await self._guard.call(self.cache.lookup(wanted, lease_ttl=self.lease_ttl))
        if lookups is FAILED:
            self._bypassed += len(cached)
            return await self.record.get_many(keys)
        results: list[Entry | None] = [None] * len(keys)
        leases: dict[int, str | None] = {}
        now = self.clock.now()
        for index, answer in zip(cached, lookups, strict=True):
            entry = answer.entry
            if entry is not None and (entry.expires_at is None or entry.expires_at > now):
                results[index] = entry
            else:
                leases[index] = answer.lease
        self._hits += len(cached) - len(leases)
        self._misses += len(leases)
        missing = [i for i in range(len(keys)) if i in leases or i not in cached]
        if not missing:
            return results
        fetched = await self.record.get_many([keys[i] for i in missing])
        fills: dict[Key, tuple[Key, Entry, str]] = {}
        for index, entry in zip(missing, fetched, strict=True):
            results[index] = entry
            lease = leases.get(index)
            if entry is not None and lease is not None:
                fills.setdefault(keys[index], (keys[index], entry, lease))
        if fills:
            await self._fill(list(fills.values()))
        return results

    async def _fill(self, items: list[tuple[Key, Entry, str]]) -> int | None:
        """Fill ``items`` through their leases; how many landed, ``None`` if the cache
        did not answer."""
        ttl = min(self._ttl_for(entry) for _, entry, _ in items)
        landed = await self._guard.call(self.cache.fill(items, ttl=ttl))
        if landed is FAILED:
            return None
        self._fills += landed
        self._fill_dropped += len(items) - landed
        return landed

    async def list(
        self,
        namespace: str,
        prefix: tuple[str, ...],
        *,
        after: tuple[str, ...] | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> list[tuple[Key, Entry]]:
        """Listings come from the system of record; they are not cached."""
        return await self.record.list(namespace, prefix, after=after, limit=limit)

    def scan(
        self,
        *,
        namespace: str | None = None,
        owner: str | None = None,
        batch_size: int = 1000,
    ) -> AsyncIterator[tuple[Key, Entry]]:
        """The system of record's entries (the cache holds only a subset)."""
        return self.record.scan(namespace=namespace, owner=owner, batch_size=batch_size)

    async def restore(self, items: Sequence[tuple[Key, Entry]]) -> int:
        """Restore into the system of record, then drop the keys from the cache (restored
        entries get new revisions; the feed fences older ones out too)."""
        keys = [key for key, _ in items]
        if self._near is not None:
            for key in keys:
                self._near.forget(key)
        try:
            written = await self.record.restore(items)
        except BaseException:
            for key in keys:
                self._dirty.mark(key)
            raise
        for start in range(0, len(keys), REPAIR_CHUNK):
            chunk = keys[start : start + REPAIR_CHUNK]
            if not await self._usable(writing=True) or (
                await self._guard.call(self.cache.invalidate(chunk)) is FAILED
            ):
                for key in chunk:
                    self._dirty.mark(key)
        return written

    # -- writes ----------------------------------------------------------------------------

    async def put(
        self,
        key: Key,
        value: bytes,
        *,
        expected_version: int | None = None,
        ttl: float | None = None,
    ) -> Entry:
        writes = self._writes.begin(key)
        try:
            if self.invalidate_before_write and await self._usable():
                await self._guard.call(self.cache.invalidate([key]))
            entry = await self._committed(
                key, self.record.put(key, value, expected_version=expected_version, ttl=ttl)
            )
            if self._near is not None:
                self._near.wrote(key, entry)
            await self._update_cache(key, writes, entry.revision, entry)
        finally:
            self._writes.end(key, writes)
        return entry

    async def delete(self, key: Key, *, expected_version: int | None = None) -> int:
        writes = self._writes.begin(key)
        try:
            revision = await self._committed(
                key, self.record.delete(key, expected_version=expected_version)
            )
            if revision:
                if self._near is not None:
                    self._near.changed([Change(key, revision, deleted=True)])
                await self._update_cache(key, writes, revision, None)
        finally:
            self._writes.end(key, writes)
        return revision

    async def delete_owner(self, owner: str) -> int:
        self._writes.begin_wipe(owner)
        near = self._near
        if near is not None:
            near.forget_owner(owner)
        try:
            try:
                removed = await self.record.delete_owner(owner)
            except BackendUnavailableError:
                self._dirty.mark_owner(owner)  # the outcome is unknown: repair the cache
                raise
            before = self._repairer.passes()
            if not await self._usable(writing=True) or (
                await self._guard.call(self.cache.invalidate_owner(owner)) is FAILED
            ):
                self._dirty.mark_owner(owner)
            elif before[1] or self._repairer.passes() != (before[0], False):
                # a repair pass ran meanwhile: it may have read the owner's keys before the
                # erasure and write them after it; the next pass erases the owner again
                self._dirty.mark_owner(owner)
        finally:
            self._writes.end_wipe(owner)
            if near is not None:
                near.forget_owner(owner)  # and what reads offered while the erasure ran
        return removed

    async def _committed(self, key: Key, operation: Awaitable[T]) -> T:
        """Run a system-of-record write. If it conflicts (the caller read something old) or
        its outcome is unknown, the key is repaired from the system of record before the
        cache serves it again."""
        try:
            return await operation
        except BaseException:
            self._dirty.mark(key)
            if self._near is not None:
                self._near.forget(key)
            raise

    async def _update_cache(
        self, key: Key, writes: KeyWrites, revision: int, entry: Entry | None
    ) -> None:
        """Apply a committed write of ``revision`` (``entry``, or a delete) to the cache.
        It is tried even while the breaker is open (a write that skipped a cache other
        processes read would leave them the old version); a cache found lost moves to a new
        generation and the write is tried there once more. Any other failure (error,
        timeout, cancellation) marks the key dirty before the write is acknowledged. A
        revision from before the cache generation began only tombstones."""
        guard = self._guard
        for last_try in (False, True):
            generation = guard.generation
            answered = guard.answered
            try:
                if not await self._usable(writing=True):
                    self._dirty.mark(key, revision)
                    return
                generation = guard.generation
                async with guard.deadline(), writes.lock:
                    if revision <= writes.applied:
                        return  # a newer write of this key is in the cache already
                    if entry is None or generation is None or revision <= generation.floor:
                        await self.cache.tombstones([(key, revision)], ttl=self.cache_ttl)
                    else:
                        await self.cache.write(key, entry, ttl=self._ttl_for(entry))
                    writes.applied = revision
            except CacheLostError:
                guard.cache_errors += 1
                guard.mark_lost(generation)
                if last_try:
                    self._dirty.mark(key, revision)
            except BaseException as exc:
                self._dirty.mark(key, revision)
                if not isinstance(exc, Exception):
                    raise
                guard.failure(exc, generation, answered)
                return
            else:
                guard.succeeded()
                if generation is not None:
                    self._feed.landed(revision, generation)
                return

    def _ttl_for(self, entry: Entry) -> float:
        if entry.expires_at is None:
            return self.cache_ttl
        remaining = (entry.expires_at - self.clock.now()).total_seconds()
        return max(0.001, min(self.cache_ttl, remaining))

    # -- whether to use the cache: the breaker's probe -----------------------------------------

    async def _usable(self, *, writing: bool = False, patient: bool = False) -> bool:
        """Whether to use the cache now; runs the probe when the breaker is due for one, and
        the move to a new generation when the cache was lost. A ``writing`` caller uses the
        cache even while the breaker is open (its update is what keeps other processes from
        reading the old version); reads skip it. A ``patient`` caller (upkeep: warm, not a
        request) waits up to :data:`RENEW_PATIENCE` for a new generation, not
        ``cache_timeout``."""
        breaker = self._guard.breaker
        if not breaker.closed:
            if breaker.probe_due():
                return await self._probe()
            if not writing:
                return False
        if self._guard.lost:
            return await self._guard.renewed(RENEW_PATIENCE if patient else self.cache_timeout)
        return True

    async def _probe(self) -> bool:
        """Ping the cache (moving to a new generation first if it was lost) and apply the
        change feed's backlog (what other processes wrote while the cache was out of use);
        the breaker closes if both succeed, and this process's dirty keys are then repaired
        in the background (they are read from the system of record until then)."""
        guard = self._guard
        guard.breaker.start_probe()
        healthy = False
        try:
            if guard.generation is None or guard.lost:
                await guard.renewed(self.cache_timeout)
            healthy = (
                guard.generation is not None
                and not guard.lost
                and await guard.call(self.cache.ping(), count=False) is not FAILED
                and not guard.lost
                and await self._feed.apply()
            )
            if not healthy and guard.lost:
                # the ping met a new incarnation: move now, then the probe holds
                healthy = await guard.renewed(self.cache_timeout) and await self._feed.apply()
        finally:
            guard.breaker.finish_probe(healthy)
        if healthy and self._dirty:
            self._repairer.soon()
        return healthy

    # -- warm and verify (backends.tiered.upkeep) ---------------------------------------------

    async def warm(
        self,
        namespace: str,
        *,
        owner: str | None = None,
        limit: int = 1000,
        progress: Callable[[int], None] | None = None,
    ) -> WarmReport:
        """Through leases, as misses fill (see :func:`upkeep.warm`)."""
        return await upkeep.warm(self, namespace, owner, limit, progress)

    async def verify(
        self,
        namespace: str,
        *,
        owner: str | None = None,
        repair: bool = False,
        limit: int = 10_000,
        progress: Callable[[int], None] | None = None,
    ) -> VerifyReport:
        """Reading the cache with leases that never fill (see :func:`upkeep.verify`)."""
        return await upkeep.verify(
            self, namespace, owner, repair=repair, limit=limit, progress=progress
        )

    async def fill_keys(self, keys: Sequence[Key]) -> int:
        """Fill ``keys`` from the system of record through leases (as misses do); return how
        many landed. Dirty keys and keys held by other leases are skipped. Raises
        :class:`BackendUnavailableError` if the cache does not answer."""
        keys = [key for key in keys if key not in self._dirty]
        if not keys:
            return 0
        for _ in range(2):  # once more if the cache turns out lost and a new generation begins
            if not await self._usable(patient=True):
                raise BackendUnavailableError("the cache is out of use (breaker open)")
            lookups = await self._guard.call(self.cache.lookup(keys, lease_ttl=self.lease_ttl))
            if lookups is not FAILED:
                break
        else:
            raise BackendUnavailableError("the cache did not answer")
        leased = [(k, a.lease) for k, a in zip(keys, lookups, strict=True) if a.lease]
        if not leased:
            return 0
        entries = await self.record.get_many([key for key, _ in leased])
        items = [
            (key, entry, lease)
            for (key, lease), entry in zip(leased, entries, strict=True)
            if entry is not None and lease is not None
        ]
        if not items:
            return 0
        landed = await self._fill(items)
        if landed is None:
            raise BackendUnavailableError("the cache did not answer")
        return landed

    async def cache_call(self, operation: Awaitable[T]) -> T | None:
        """``operation`` on the cache under its deadline and breaker; ``None`` if it failed."""
        result = await self._guard.call(operation)
        return None if result is FAILED else result

    async def cache_done(self, operation: Awaitable[None]) -> bool:
        """``operation`` on the cache under its deadline and breaker; whether it succeeded."""
        return await self._guard.call(operation) is not FAILED
