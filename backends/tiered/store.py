"""The tiered store: a versioned cache in write-through in front of a system of record.

The system of record (SQL in production) holds the truth and orders every change: each save
and delete gets a revision there, in the statement that writes. The cache (Redis, or the
per-process :class:`~backends.memory_cache.MemoryCache`) orders entries, fills and
tombstones by revision alone (:func:`backends.base.lands`); no wall clock orders anything.

* Writes commit to the system of record first, then update the cache. A cache update that
  fails, times out or is cancelled marks the key *dirty* before the write is acknowledged;
  dirty keys are read from the system of record until repaired (rewritten from it).
* Fills after a miss are fenced by leases; deletes leave tombstones of their revision.
* **Across processes**, a change feed out of the system of record (:mod:`.feed`) puts a
  tombstone of every committed change's revision in the cache ("anything older is
  stale"): a process that died between commit and cache update, a writer cut off from the
  cache, or a batch job's plain SQL leaves nothing stale for longer than the feed's lag.
* **A cache that rewinds is fenced off.** Cache keys live under a generation kept in the
  system of record per cache incarnation. A cache that shows it lost data (a new server
  ``run_id`` on a new connection, or the generation marker gone) raises
  :class:`~kvstore.errors.CacheLostError`; the store then moves to a new generation
  (compare-and-set in SQL, so processes noticing at once agree), under which nothing older
  is reachable. Write-throughs of revisions committed before the generation began
  (``floor``) only put tombstones in it.
* Every cache call has a deadline (``cache_timeout``) that a stalled event loop, or a
  saturated one while the cache answers other calls, does not use up
  (:mod:`backends.deadline`): a busy caller is not a failing cache. ``breaker_threshold``
  consecutive failures open a circuit breaker: reads are served from the system of record
  alone until a probe after ``breaker_reset_after`` seconds succeeds. Writes' cache updates
  and the change feed still try the cache while it is open (skipping a cache that others
  read would leave them the old version); the first that goes through makes the probe due
  at once, so a cache that comes back is used again within one call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, TypeVar, runtime_checkable

from backends.base import Backend, Capabilities, Entry, Generation
from backends.breaker import BreakerState, CircuitBreaker
from backends.deadline import deadline
from backends.tiered import upkeep
from backends.tiered.feed import FeedFollower
from kvstore.clock import SYSTEM_CLOCK
from kvstore.errors import BackendUnavailableError, CacheLostError, ConfigurationError, KVStoreError
from kvstore.keys import DEFAULT_PAGE_SIZE

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from backends.base import Change, VersionedCache
    from kvstore.clock import Clock
    from kvstore.keys import Key

logger = logging.getLogger("kvstore.tiered")

T = TypeVar("T")

DEFAULT_CACHE_TTL = 900.0
DEFAULT_CACHE_TIMEOUT = 0.1
DEFAULT_LEASE_TTL = 5.0
BUSY_PATIENCE: Final = 10.0
"""Seconds a cache call may go on waiting past ``cache_timeout`` while the cache answers
other calls (a saturated caller: the cache is healthy, the caller is behind). Reading from
the system of record instead would only add load where there is too much already."""
RENEW_PATIENCE: Final = 10.0
"""Seconds upkeep (warm) waits for the move to a new generation; requests wait
``cache_timeout`` and then bypass the cache."""
DEFAULT_BREAKER_THRESHOLD = 5
DEFAULT_BREAKER_RESET_AFTER = 2.0
DEFAULT_FEED_INTERVAL = 0.05
"""Seconds between change-feed reads when the last one found nothing new."""
REPAIR_CHUNK = 64
"""Dirty keys repaired per system-of-record query and cache round trip."""
REPAIR_BATCH = 256
"""Dirty keys one call repairs at most: a long outage's backlog is worked off by the calls
that follow, each waiting a bounded time (dirty keys bypass the cache meanwhile)."""
LANDED_MAX: Final = 100_000
"""Revisions this process wrote to the cache that it remembers, so the change feed does not
write them again (past that the memory is dropped: the feed then writes them, a no-op)."""
FEED_BACKLOG_MAX = 100_000
"""Changes held for a cache that does not answer; past that the cache is presumed to have
missed them and a new generation begins when it answers again."""


class _Failed(Enum):
    FAILED = "failed"


FAILED: Final = _Failed.FAILED
"""What a cache call that failed or timed out returns."""


@dataclass(frozen=True, slots=True)
class TieredStats:
    """Counters since the store was built (see :meth:`TieredBackend.stats`)."""

    reads: int
    """Keys asked for by reads, however they were answered."""
    hits: int
    """Keys answered by the cache."""
    misses: int
    """Keys the cache did not hold (read from the system of record)."""
    bypassed: int
    """Keys read without the cache (breaker open, cache lost, or the key dirty)."""
    fills: int
    """Entries put into the cache after a miss."""
    fill_dropped: int
    """Fills the cache refused: lease lost (a write, eviction or flush came first) or older."""
    cache_errors: int
    """Cache calls that failed or timed out."""
    busy_timeouts: int
    """Of those, calls that timed out while the cache answered others meanwhile (a
    saturated caller, not a failing cache: not counted toward the breaker)."""
    breaker: BreakerState
    """The circuit breaker's state now."""
    breaker_open_seconds: float
    """Seconds the breaker has been open (or probing) in all, the current stretch included."""
    dirty: int
    """Keys and owners waiting for their cache entries to be repaired."""
    generation: int
    """The cache generation in use (0 before the first)."""
    generation_changes: int
    """New generations begun by this process (cache restarted, restored, flushed)."""
    feed_changes: int
    """Changes read from the change feed and applied to the cache."""
    feed_own: int
    """Changes the feed brought back that this process had already written to the cache in
    the same generation (not applied again)."""
    feed_backlog: int
    """Changes read from the feed and not yet applied (the cache did not answer)."""
    feed_errors: int
    """Reads of the change feed that failed (retried)."""

    @property
    def hit_ratio(self) -> float:
        """Hits over every key read (bypassed reads count as not answered by the cache)."""
        return self.hits / self.reads if self.reads else 0.0


@runtime_checkable
class Closable(Protocol):
    """A cache that holds resources to release."""

    async def close(self) -> None:
        """Release them."""
        ...


@dataclass(slots=True)
class _KeyWrites:
    """Writes of one key in flight: their cache updates run one at a time, and one older
    than an update already applied is skipped."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    count: int = 0
    applied: int = 0


@dataclass(slots=True)
class _OwnerWrites:
    """Writes of one owner in flight, and whether a ``delete_owner`` overlapped them."""

    count: int = 0
    wiped: bool = False


class TieredBackend(Backend):
    """A :class:`VersionedCache` in write-through in front of a system-of-record
    :class:`Backend`. Owns both: :meth:`close` closes them."""

    capabilities: ClassVar[Capabilities] = Capabilities(persistent=True, shared=True)

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
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if cache_ttl <= 0 or cache_timeout <= 0 or lease_ttl <= 0 or feed_interval <= 0:
            raise ConfigurationError(
                "cache_ttl, cache_timeout, lease_ttl and feed_interval must be > 0"
            )
        self.record = record
        self.cache = cache
        self.cache_ttl = cache_ttl
        self.cache_timeout = cache_timeout
        self.lease_ttl = lease_ttl
        self.invalidate_before_write = invalidate_before_write
        self.feed_interval = feed_interval
        self.cache_name = cache_name
        self.clock = clock
        self._breaker = CircuitBreaker(
            breaker_threshold, breaker_reset_after, logger=logger, clock=clock
        )
        self.capabilities = Capabilities(  # type: ignore[misc]  # per instance: from the record
            persistent=record.capabilities.persistent,
            shared=record.capabilities.shared,
            bulk=record.capabilities.bulk,
        )
        self._follower = (
            FeedFollower(record, clock) if follow and record.capabilities.feed else None
        )
        self._follow_task: asyncio.Task[None] | None = None
        self._closing = False
        self._feed_backlog: list[Change] = []
        self._feed_lock = asyncio.Lock()
        self._generation: Generation | None = None
        self._local_generation: tuple[int, str] | None = None
        self._renewing: asyncio.Task[bool] | None = None
        self._lost_at = -1.0
        self._lost_count = 0
        self._seq = 0
        self._dirty: dict[Key, tuple[int, int]] = {}
        self._dirty_owners: dict[str, int] = {}
        self._repairing = False
        self._repair_task: asyncio.Task[None] | None = None
        self._writes: dict[str, _OwnerWrites] = {}
        self._key_writes: dict[Key, _KeyWrites] = {}
        self._wiping: dict[str, int] = {}
        self._reads = self._hits = self._misses = self._fills = self._fill_dropped = 0
        self._cache_errors = self._bypassed = self._generation_changes = 0
        self._answered = self._busy_timeouts = 0
        self._feed_changes = self._feed_errors = self._feed_own = 0
        self._landed: dict[int, Generation] = {}
        """Revisions whose cache update this process made, and in which generation."""

    def __repr__(self) -> str:
        return (
            f"TieredBackend({self.record!r}, {self.cache!r}, breaker={self._breaker.state.value})"
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def initialize(self) -> None:
        """Initialize the system of record (errors propagate), then the cache generation
        (a cache that does not answer opens the breaker instead: the store starts without
        it), then the change feed."""
        await self.record.initialize()
        if self._generation is None and not await self._renew(replacing=None):
            self._breaker.open_at_start()
        if self._follower is not None and self._follow_task is None:
            await self._follower.start()
            self._follow_task = asyncio.get_running_loop().create_task(self._follow())

    async def close(self) -> None:
        self._closing = True
        tasks: list[asyncio.Task[Any]] = [
            task
            for task in (self._follow_task, self._renewing, self._repair_task)
            if task is not None
        ]
        self._follow_task = self._renewing = self._repair_task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            if isinstance(self.cache, Closable):
                await self.cache.close()
        finally:
            await self.record.close()

    # -- observability ---------------------------------------------------------------------

    def stats(self) -> TieredStats:
        """The counters now."""
        return TieredStats(
            reads=self._reads,
            hits=self._hits,
            misses=self._misses,
            bypassed=self._bypassed,
            fills=self._fills,
            fill_dropped=self._fill_dropped,
            cache_errors=self._cache_errors,
            busy_timeouts=self._busy_timeouts,
            breaker=self._breaker.state,
            breaker_open_seconds=self._breaker.open_seconds(),
            dirty=len(self._dirty) + len(self._dirty_owners),
            generation=self._generation.number if self._generation else 0,
            generation_changes=self._generation_changes,
            feed_changes=self._feed_changes,
            feed_own=self._feed_own,
            feed_backlog=len(self._feed_backlog),
            feed_errors=self._feed_errors,
        )

    @property
    def feed(self) -> FeedFollower | None:
        """The change-feed follower (``None`` when not following)."""
        return self._follower

    # -- reads -----------------------------------------------------------------------------

    async def get(self, key: Key) -> Entry | None:
        return (await self.get_many((key,)))[0]

    async def get_many(self, keys: Sequence[Key]) -> list[Entry | None]:
        if not keys:
            return []
        self._reads += len(keys)
        if not await self._usable():
            self._bypassed += len(keys)
            return await self.record.get_many(keys)
        if self._dirty or self._dirty_owners:
            self._repair_soon()
        cached = [i for i, key in enumerate(keys) if not self._is_dirty(key)]
        self._bypassed += len(keys) - len(cached)
        if not cached:
            return await self.record.get_many(keys)
        wanted = [keys[i] for i in cached]
        busy = self._busy_timeouts
        lookups = await self._call(self.cache.lookup(wanted, lease_ttl=self.lease_ttl))
        if lookups is FAILED and self._busy_timeouts > busy:
            # it timed out while the cache answered others: the caller is what is behind,
            # so ask the cache once more rather than add reads to the system of record
            lookups = await self._call(self.cache.lookup(wanted, lease_ttl=self.lease_ttl))
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
        landed = await self._call(self.cache.fill(items, ttl=ttl))
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
        try:
            written = await self.record.restore(items)
        except BaseException:
            for key in keys:
                self._mark_dirty(key)
            raise
        for start in range(0, len(keys), REPAIR_CHUNK):
            chunk = keys[start : start + REPAIR_CHUNK]
            if not await self._usable(writing=True) or (
                await self._call(self.cache.invalidate(chunk)) is FAILED
            ):
                for key in chunk:
                    self._mark_dirty(key)
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
        writes = self._begin_write(key)
        try:
            if self.invalidate_before_write and await self._usable():
                await self._call(self.cache.invalidate([key]))
            entry = await self._committed(
                key, self.record.put(key, value, expected_version=expected_version, ttl=ttl)
            )
            await self._update_cache(key, writes, entry.revision, entry)
        finally:
            self._end_write(key, writes)
        return entry

    async def delete(self, key: Key, *, expected_version: int | None = None) -> int:
        writes = self._begin_write(key)
        try:
            revision = await self._committed(
                key, self.record.delete(key, expected_version=expected_version)
            )
            if revision:
                await self._update_cache(key, writes, revision, None)
        finally:
            self._end_write(key, writes)
        return revision

    async def delete_owner(self, owner: str) -> int:
        self._wiping[owner] = self._wiping.get(owner, 0) + 1
        writes = self._writes.get(owner)
        if writes is not None:
            writes.wiped = True
        try:
            try:
                removed = await self.record.delete_owner(owner)
            except BackendUnavailableError:
                self._mark_owner_dirty(owner)  # the outcome is unknown: repair the cache
                raise
            if not await self._usable(writing=True) or (
                await self._call(self.cache.invalidate_owner(owner)) is FAILED
            ):
                self._mark_owner_dirty(owner)
        finally:
            self._wiping[owner] -= 1
            if not self._wiping[owner]:
                del self._wiping[owner]
        return removed

    async def _committed(self, key: Key, operation: Awaitable[T]) -> T:
        """Run a system-of-record write. If it conflicts (the caller read something old) or
        its outcome is unknown, the key is repaired from the system of record before the
        cache serves it again."""
        try:
            return await operation
        except BaseException:
            self._mark_dirty(key)
            raise

    async def _update_cache(
        self, key: Key, writes: _KeyWrites, revision: int, entry: Entry | None
    ) -> None:
        """Apply a committed write of ``revision`` (``entry``, or a delete) to the cache.
        It is tried even while the breaker is open (a write that skipped a cache other
        processes read would leave them the old version); a cache found lost moves to a new
        generation and the write is tried there once more. Any other failure (error,
        timeout, cancellation) marks the key dirty before the write is acknowledged. A
        revision from before the cache generation began only tombstones."""
        for last_try in (False, True):
            generation = self._generation
            answered = self._answered
            try:
                if not await self._usable(writing=True):
                    self._mark_dirty(key, revision)
                    return
                generation = self._generation
                async with self._cache_deadline(), writes.lock:
                    if revision <= writes.applied:
                        return  # a newer write of this key is in the cache already
                    if entry is None or generation is None or revision <= generation.floor:
                        await self.cache.tombstones([(key, revision)], ttl=self.cache_ttl)
                    else:
                        await self.cache.write(key, entry, ttl=self._ttl_for(entry))
                    writes.applied = revision
            except CacheLostError:
                self._cache_errors += 1
                self._lost(generation)
                if last_try:
                    self._mark_dirty(key, revision)
            except BaseException as exc:
                self._mark_dirty(key, revision)
                if not isinstance(exc, Exception):
                    raise
                self._failure(exc, generation, answered)
                return
            else:
                self._succeeded()
                if generation is not None and self._follower is not None:
                    self._remember_landed(revision, generation)
                return

    def _ttl_for(self, entry: Entry) -> float:
        if entry.expires_at is None:
            return self.cache_ttl
        remaining = (entry.expires_at - self.clock.now()).total_seconds()
        return max(0.001, min(self.cache_ttl, remaining))

    # -- writes in flight: ordering per key, overlap with delete_owner --------------

    def _begin_write(self, key: Key) -> _KeyWrites:
        owner = self._writes.get(key.owner)
        if owner is None:
            owner = self._writes[key.owner] = _OwnerWrites()
        owner.count += 1
        if key.owner in self._wiping:
            owner.wiped = True
        writes = self._key_writes.get(key)
        if writes is None:
            writes = self._key_writes[key] = _KeyWrites()
        writes.count += 1
        return writes

    def _end_write(self, key: Key, writes: _KeyWrites) -> None:
        """A write whose cache update may have landed after an overlapping
        ``delete_owner`` invalidated the owner is repaired from the system of record."""
        owner = self._writes[key.owner]
        if owner.wiped:
            self._mark_dirty(key)
        owner.count -= 1
        if not owner.count:
            del self._writes[key.owner]
        writes.count -= 1
        if not writes.count:
            del self._key_writes[key]

    # -- dirty keys and their repair ---------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _mark_dirty(self, key: Key, revision: int = 0) -> None:
        held = self._dirty.get(key)
        self._dirty[key] = (self._next_seq(), max(revision, held[1] if held else 0))

    def _mark_owner_dirty(self, owner: str) -> None:
        self._dirty_owners[owner] = self._next_seq()

    def _is_dirty(self, key: Key) -> bool:
        return key in self._dirty or key.owner in self._dirty_owners

    def _repair_soon(self) -> None:
        """Repair the dirty keys in the background (never on a caller's path: dirty keys
        are read from the system of record meanwhile, the others from the cache)."""
        if self._repair_task is None and not self._closing:
            self._repair_task = asyncio.get_running_loop().create_task(self._repair_all())

    async def _repair_all(self) -> None:
        """Repair batch after batch while the cache is in use; stop at a failure, or when
        only keys with writes in flight are left (the next read that finds dirty keys
        starts again)."""
        try:
            while (self._dirty or self._dirty_owners) and self._breaker.closed:
                before = len(self._dirty) + len(self._dirty_owners)
                if self._lost_at >= 0 or not await self._repair():
                    return
                if len(self._dirty) + len(self._dirty_owners) >= before:
                    return
        finally:
            self._repair_task = None

    async def repaired(self) -> int:
        """Wait for the background repair under way (if any) to finish; return how many
        keys and owners are still dirty."""
        task = self._repair_task
        if task is not None:
            await asyncio.shield(task)
        return len(self._dirty) + len(self._dirty_owners)

    async def _repair(self) -> bool:
        """Bring dirty keys' cache entries up to the system of record (every dirty owner and
        up to :data:`REPAIR_BATCH` keys), then forget the marks that did not change meanwhile.
        Returns whether the cache answered every call.

        Keys are rewritten, not just invalidated: a cache command that timed out may still
        run later (a frozen server thaws), and only a newer entry or tombstone fences it.
        """
        if self._repairing:
            return False
        self._repairing = True
        try:
            owners = dict(self._dirty_owners)
            for owner, seq in owners.items():
                if await self._call(self.cache.invalidate_owner(owner)) is FAILED:
                    return False
                if self._dirty_owners.get(owner) == seq:
                    del self._dirty_owners[owner]
            # A key with writes in flight stays dirty: their cache updates are ordered among
            # themselves. The rest is repaired a bounded batch per call, oldest marks first.
            idle = ((k, m) for k, m in self._dirty.items() if k not in self._key_writes)
            marks = list(itertools.islice(idle, REPAIR_BATCH))
            for start in range(0, len(marks), REPAIR_CHUNK):
                if not await self._repair_keys(marks[start : start + REPAIR_CHUNK]):
                    return False
            return True
        finally:
            self._repairing = False

    async def _repair_keys(self, marks: Sequence[tuple[Key, tuple[int, int]]]) -> bool:
        try:
            entries = await self.record.get_many([key for key, _ in marks])
            head = self._follower.cursor if self._follower is not None else 0
        except KVStoreError:
            return False  # the system of record fails too: stay dirty, try again later
        writes: list[Awaitable[object]] = []
        tombstones: list[tuple[Key, int]] = []
        for (key, (_, revision)), entry in zip(marks, entries, strict=True):
            if entry is not None:
                writes.append(self.cache.write(key, entry, ttl=self._ttl_for(entry)))
            else:
                # absent: a tombstone at least as new as anything this process wrote; too new
                # a tombstone only costs misses (fills below it are refused), never staleness
                tombstones.append((key, max(revision + 1, head)))
        if tombstones:
            writes.append(self.cache.tombstones(tombstones, ttl=self.cache_ttl))
        if await self._call(asyncio.gather(*writes)) is FAILED:
            return False
        for key, (seq, _) in marks:
            current = self._dirty.get(key)
            if current is not None and current[0] == seq:
                del self._dirty[key]
        return True

    # -- warm and verify (backends.tiered.upkeep) ---------------------------------------------

    async def warm(
        self,
        namespace: str = "state",
        *,
        owner: str | None = None,
        limit: int = 1000,
        progress: Callable[[int], None] | None = None,
    ) -> upkeep.WarmReport:
        """Load the ``limit`` most recently updated records of ``namespace`` (of ``owner``
        if given) into the cache through leases (see :func:`upkeep.warm`)."""
        return await upkeep.warm(self, namespace, owner, limit, progress)

    async def verify(
        self,
        namespace: str,
        owner: str | None = None,
        *,
        repair: bool = False,
        limit: int = 10_000,
        progress: Callable[[int], None] | None = None,
    ) -> upkeep.VerifyReport:
        """Compare the cache with the system of record (see :func:`upkeep.verify`)."""
        return await upkeep.verify(
            self, namespace, owner, repair=repair, limit=limit, progress=progress
        )

    async def fill_keys(self, keys: Sequence[Key]) -> int:
        """Fill ``keys`` from the system of record through leases (as misses do); return how
        many landed. Dirty keys and keys held by other leases are skipped. Raises
        :class:`BackendUnavailableError` if the cache does not answer."""
        keys = [key for key in keys if not self._is_dirty(key)]
        if not keys:
            return 0
        for _ in range(2):  # once more if the cache turns out lost and a new generation begins
            if not await self._usable(patient=True):
                raise BackendUnavailableError("the cache is out of use (breaker open)")
            lookups = await self._call(self.cache.lookup(keys, lease_ttl=self.lease_ttl))
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
        result = await self._call(operation)
        return None if result is FAILED else result

    async def cache_done(self, operation: Awaitable[None]) -> bool:
        """``operation`` on the cache under its deadline and breaker; whether it succeeded."""
        return await self._call(operation) is not FAILED

    # -- the change feed ------------------------------------------------------------------

    async def _follow(self) -> None:
        """Read the change feed and put a tombstone of each change's revision in the cache
        (a no-op where the cache holds that revision or newer). Runs until closed."""
        follower = self._follower
        assert follower is not None
        failing = False
        while not self._closing:
            try:
                changes = await follower.poll()
                failing = False
            except Exception as exc:
                if not failing:  # logged once per outage, counted always
                    logger.warning(
                        "change feed read failed (%s); retrying",
                        type(exc).__name__,
                        exc_info=not isinstance(exc, KVStoreError),
                    )
                failing = True
                self._feed_errors += 1
                await asyncio.sleep(min(1.0, self.feed_interval * 10))
                continue
            self._feed_backlog.extend(self._news(changes, follower.watermark))
            if len(self._feed_backlog) > FEED_BACKLOG_MAX:
                # the cache has been out of use too long to catch up: begin anew instead
                self._feed_backlog = []
                self._lost(self._generation)
            if self._feed_backlog and await self._usable(writing=True):
                await self._apply_feed()
            if len(changes) < follower.batch:
                await asyncio.sleep(self.feed_interval)

    def _remember_landed(self, revision: int, generation: Generation) -> None:
        if len(self._landed) >= LANDED_MAX:
            self._landed.clear()  # only costs writes the feed then repeats
        self._landed[revision] = generation

    def _news(self, changes: Sequence[Change], watermark: int) -> Sequence[Change]:
        """The changes the cache may not hold yet: not those this process wrote to the
        cache itself in the current generation (the cache holds that revision or a newer
        one). Forgets what the feed will not deliver again (at or below ``watermark``)."""
        landed = self._landed
        if not landed:
            return changes
        news = [c for c in changes if landed.pop(c.revision, None) is not self._generation]
        self._feed_own += len(changes) - len(news)
        if landed and min(landed) <= watermark:
            for revision in [r for r in landed if r <= watermark]:
                del landed[revision]
        return news

    async def _apply_feed(self) -> bool:
        """Put the backlog's tombstones in the cache; whether all of it landed. Changes stay
        in the backlog until they do (at most :data:`FEED_BACKLOG_MAX`: past that the cache
        is presumed to have missed them and a new generation begins)."""
        async with self._feed_lock:
            backlog = self._feed_backlog
            while backlog:
                chunk = backlog[:REPAIR_CHUNK]
                items = [(change.key, change.revision) for change in chunk]
                if await self._call(self.cache.tombstones(items, ttl=self.cache_ttl)) is FAILED:
                    return False
                del backlog[: len(chunk)]
                self._feed_changes += len(chunk)
            return True

    # -- cache generations ------------------------------------------------------------------

    async def _renew(self, *, replacing: int | None) -> bool:
        """Move to the generation of the cache's current incarnation: the one on record if
        it belongs to that incarnation, is not ``replacing`` and its marker is in the cache;
        otherwise a new one. Returns whether the cache and the system of record answered.

        A new generation's marker is put in the cache *before* the generation is recorded
        (compare-and-set), so a generation on record without its marker means the cache
        lost keys (flushed) and is replaced too; processes that notice a loss at once agree
        on one new generation."""
        incarnation = self.cache.seen_incarnation if replacing is not None else None
        if incarnation is None:
            asked = await self._call(self.cache.incarnation(), count=False)
            if asked is FAILED:
                return False
            incarnation = asked
        try:
            for _ in range(8):
                number = await self._settle_generation(incarnation, replacing)
                if number is not None:
                    head = await self._head()
                    break
            else:
                return False
        except KVStoreError:
            return False
        if self._generation is not None and number != self._generation.number:
            self._generation_changes += 1
            logger.warning(
                "cache lost what it held (restart, restore, failover or flush); now using "
                "cache generation %d",
                number,
            )
        self._generation = Generation(number=number, floor=head)
        return True

    async def _settle_generation(self, incarnation: str, replacing: int | None) -> int | None:
        """One attempt of :meth:`_renew`: the generation to use, or ``None`` to try again
        (another process moved first). Raises :class:`KVStoreError` if a tier fails."""
        on_record = await self._read_generation()
        if on_record is not None:
            number, owner = on_record
            if owner == incarnation and number != replacing:
                self.cache.use_generation(incarnation, number)
                if await self._cache_step(self.cache.claim_generation()):
                    return number  # the marker was there: the generation is intact
                replacing = number  # on record, marker gone: the cache lost keys
        current = on_record[0] if on_record is not None else None
        target = (current or 0) + 1
        self.cache.use_generation(incarnation, target)
        await self._cache_step(self.cache.claim_generation())
        if await self._advance_generation(incarnation, current, target):
            return target
        return None

    async def _cache_step(self, operation: Awaitable[T]) -> T:
        result = await self._call(operation, count=False)
        if result is FAILED:
            raise BackendUnavailableError("the cache did not answer")
        return result

    async def _read_generation(self) -> tuple[int, str] | None:
        if self.record.capabilities.feed:
            return await self.record.read_generation(self.cache_name)
        return self._local_generation

    async def _advance_generation(self, incarnation: str, current: int | None, to: int) -> bool:
        if self.record.capabilities.feed:
            return await self.record.advance_generation(
                self.cache_name, incarnation, current=current, to=to
            )
        self._local_generation = (to, incarnation)  # one process: no one to agree with
        return True

    async def _head(self) -> int:
        if self.record.capabilities.feed:
            head, _ = await self.record.head()
            return head
        return 0

    def _lost(self, generation: Generation | None) -> None:
        """The cache showed it lost what it held during a call made in ``generation``: stop
        using it until a new generation (unless one began since that call started)."""
        if generation is not self._generation:
            return
        if self._lost_at < 0:
            self._lost_at = self.clock.monotonic()
            self._lost_count += 1

    # -- cache calls and the circuit breaker -------------------------------------------------

    async def _usable(self, *, writing: bool = False, patient: bool = False) -> bool:
        """Whether to use the cache now; runs the probe when the breaker is due for one, and
        the move to a new generation when the cache was lost. A ``writing`` caller uses the
        cache even while the breaker is open (its update is what keeps other processes from
        reading the old version); reads skip it. A ``patient`` caller (upkeep: warm, not a
        request) waits up to :data:`RENEW_PATIENCE` for a new generation, not
        ``cache_timeout``."""
        if not self._breaker.closed:
            if self._breaker.probe_due():
                return await self._probe()
            if not writing:
                return False
        if self._lost_at >= 0:
            return await self._renewed(RENEW_PATIENCE if patient else self.cache_timeout)
        return True

    async def _renewed(self, wait: float) -> bool:
        """Move to a new generation (the first caller to find the cache lost starts it; the
        others wait for it, up to ``wait`` seconds, then bypass the cache). Whether the
        cache is usable again."""
        losses = self._lost_count
        task = self._renewing
        if task is None:
            replacing = self._generation.number if self._lost_at >= 0 and self._generation else None
            task = self._renewing = asyncio.get_running_loop().create_task(
                self._renew(replacing=replacing)
            )
        try:
            async with deadline(wait):
                renewed = await asyncio.shield(task)
        except TimeoutError:
            return False
        if self._renewing is task:
            self._renewing = None
        if renewed and self._lost_count == losses:
            self._lost_at = -1.0
        return self._lost_at < 0 and self._generation is not None

    async def _probe(self) -> bool:
        """Ping the cache (moving to a new generation first if it was lost) and apply the
        change feed's backlog (what other processes wrote while the cache was out of use);
        the breaker closes if both succeed, and this process's dirty keys are then repaired
        in the background (they are read from the system of record until then)."""
        self._breaker.start_probe()
        healthy = False
        try:
            if self._generation is None or self._lost_at >= 0:
                await self._renewed(self.cache_timeout)
            healthy = (
                self._generation is not None
                and self._lost_at < 0
                and await self._call(self.cache.ping(), count=False) is not FAILED
                and self._lost_at < 0
                and await self._apply_feed()
            )
            if not healthy and self._lost_at >= 0:
                # the ping met a new incarnation: move now, then the probe holds
                healthy = await self._renewed(self.cache_timeout) and await self._apply_feed()
        finally:
            self._breaker.finish_probe(healthy)
        if healthy and (self._dirty or self._dirty_owners):
            self._repair_soon()
        return healthy

    async def _call(self, operation: Awaitable[T], *, count: bool = True) -> T | _Failed:
        """``operation`` under the cache deadline; ``FAILED`` if it failed or timed out (the
        failure is counted toward the breaker; a lost cache starts a new generation instead).
        Cancellation propagates."""
        generation = self._generation
        answered = self._answered
        try:
            async with self._cache_deadline():
                result = await operation
        except CacheLostError:
            self._cache_errors += 1
            self._lost(generation)
            return FAILED
        except Exception as exc:  # noqa: BLE001 - a failing cache never fails the store
            if count:
                self._failure(exc, generation, answered)
            else:
                self._cache_errors += 1
            return FAILED
        self._succeeded()
        return result

    def _cache_deadline(self) -> deadline:
        """The deadline of one cache call: ``cache_timeout`` of loop time, extended by stalls
        (up to ten times) and while the cache answers others (up to :data:`BUSY_PATIENCE`)."""
        return deadline(self.cache_timeout, progress=self._answers, busy_extra=BUSY_PATIENCE)

    def _succeeded(self) -> None:
        self._answered += 1
        self._breaker.succeeded()

    def _answers(self) -> int:
        """Cache calls answered so far (the progress a cache deadline watches)."""
        return self._answered

    def _failure(self, exc: Exception, generation: Generation | None, answered: int) -> None:
        """Count a failed cache call. A call that timed out while the cache answered other
        calls (``answered`` is the count of answers when it began) met a saturated caller,
        not a failing cache: it does not count toward the breaker."""
        if isinstance(exc, CacheLostError):
            self._lost(generation)
            return
        self._cache_errors += 1
        if isinstance(exc, TimeoutError) and self._answered > answered:
            self._busy_timeouts += 1
            return
        self._breaker.failed(exc)
