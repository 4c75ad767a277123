"""The tiered store: a versioned cache in write-through in front of a system of record.

The system of record (SQL in production) holds the truth and orders every change: each save
and delete gets a revision there, in the statement that writes. The cache (Redis, or the
per-process :class:`~backends.memory.MemoryCache`) orders entries, fills and tombstones by
revision alone (:func:`backends.cache_base.lands`); no wall clock orders anything.

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
from typing import TYPE_CHECKING, ClassVar, TypeVar

from backends.base import Backend, Capabilities, Change, Entry, check_fence
from backends.reports import Stats, TieredStats
from backends.tiered import upkeep
from backends.tiered.changes import DEFAULT_FEED_INTERVAL
from backends.tiered.guard import FAILED
from backends.tiered.near import DEFAULT_MAX_LAG
from backends.tiered.parts import TierSettings, assemble
from backends.tiered.repair import REPAIR_CHUNK
from kvstore.clock import SYSTEM_CLOCK
from kvstore.errors import BackendUnavailableError
from kvstore.keys import DEFAULT_PAGE_SIZE

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from backends.cache_base import VersionedCache
    from backends.reports import VerifyReport, WarmReport
    from backends.tiered.feed import FeedFollower
    from kvstore.clock import Clock
    from kvstore.keys import Fence, Key

T = TypeVar("T")

DEFAULT_CACHE_TTL = 900.0
DEFAULT_CACHE_TIMEOUT = 0.1
DEFAULT_LEASE_TTL = 5.0
DEFAULT_BREAKER_THRESHOLD = 5
DEFAULT_BREAKER_RESET_AFTER = 2.0


class TieredBackend(Backend):
    """A :class:`VersionedCache` in write-through in front of a system-of-record
    :class:`Backend`. Owns both: :meth:`close` closes them."""

    kind: ClassVar[str] = "tiered"
    system = "tiered"
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
        coalesce_reads: bool | Callable[[], bool] = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """``near_entries`` > 0 puts a near cache of that many entries in the process
        (:mod:`.near`); it needs the change feed (``follow`` and a system of record that
        has one). ``coalesce_reads``: whether concurrent single-key reads share one cache
        lookup (:mod:`.reads`); a function is asked per read."""
        settings = TierSettings(
            cache_ttl,
            cache_timeout,
            lease_ttl,
            breaker_threshold,
            breaker_reset_after,
            follow,
            feed_interval,
            cache_name,
            near_entries,
            near_max_lag,
            coalesce_reads,
        )
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
        self._parts = parts = assemble(record, cache, settings, clock)
        self._guard, self._gate, self._feed = parts.guard, parts.gate, parts.feed
        self._dirty, self._writes, self._repairer = parts.dirty, parts.writes, parts.repairer
        self._read, self._update, self._near = parts.read, parts.update, parts.near
        self._follow_task: asyncio.Task[None] | None = None

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
        await asyncio.gather(self._repairer.close(), self._guard.close(), self._read.close())
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
        return self._parts.stats()

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
        return await self._read.get(key)

    async def get_many(self, keys: Sequence[Key]) -> list[Entry | None]:
        if not keys:
            return []
        return await self._read.get_many(keys)

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
            if not await self._gate.usable(writing=True) or (
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
        fence: Fence | None = None,
    ) -> Entry:
        check_fence(key, fence)
        writes = self._writes.begin(key)
        try:
            if self.invalidate_before_write and await self._gate.usable():
                await self._guard.call(self.cache.invalidate([key]))
            entry = await self._committed(
                key,
                self.record.put(
                    key, value, expected_version=expected_version, ttl=ttl, fence=fence
                ),
            )
            if self._near is not None:
                self._near.wrote(key, entry)
            await self._update.apply(key, writes, entry.revision, entry)
        finally:
            self._writes.end(key, writes)
        return entry

    async def delete(
        self, key: Key, *, expected_version: int | None = None, fence: Fence | None = None
    ) -> int:
        check_fence(key, fence)
        writes = self._writes.begin(key)
        try:
            revision = await self._committed(
                key, self.record.delete(key, expected_version=expected_version, fence=fence)
            )
            if revision:
                if self._near is not None:
                    self._near.changed([Change(key, revision, deleted=True)])
                await self._update.apply(key, writes, revision, None)
        finally:
            self._writes.end(key, writes)
        return revision

    # -- session locks: in the system of record, so they outlive a failing cache ----------

    async def lock_ticket(self, owner: str, name: str, *, hold: float) -> int:
        return await self.record.lock_ticket(owner, name, hold=hold)

    async def lock_turn(
        self, owner: str, name: str, ticket: int, *, hold: float, lease: float
    ) -> bool | None:
        return await self.record.lock_turn(owner, name, ticket, hold=hold, lease=lease)

    async def lock_release(self, owner: str, name: str, ticket: int) -> None:
        await self.record.lock_release(owner, name, ticket)

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
            if not await self._gate.usable(writing=True) or (
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
        return await upkeep.warm(
            self.record, self._read.fill_keys, namespace, owner, limit, progress
        )

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
            self.record,
            self.cache,
            self._guard,
            namespace,
            owner,
            repair=repair,
            limit=limit,
            progress=progress,
        )
