"""The tiered store: a versioned cache in write-through in front of a system of record.

The system of record (SQL in production) holds the truth; the cache (Redis, or the
per-process :class:`~backends.memory_cache.MemoryCache`) only ever moves forward by
:attr:`Entry.stamp`, fences fills after a miss with leases, and keeps tombstones of deletes
(:class:`~backends.base.VersionedCache`). On top of that this module guarantees, within one
process: no read that starts after a write was acknowledged returns anything older, whatever
the cache does (fails, times out, freezes, restarts, evicts).

* Writes commit to the system of record first, then update the cache. A cache update that
  fails, times out or is cancelled marks the key *dirty* before the write is acknowledged.
* Reads of dirty keys bypass the cache. Dirty keys are repaired (rewritten from the system of
  record, forward-only, or tombstoned) as soon as the cache answers again, and only then stop
  being dirty; a repair never forgets a key dirtied again while it ran.
* Every cache call has a deadline (``cache_timeout``); ``breaker_threshold`` consecutive
  failures open a circuit breaker: reads and writes then use the system of record alone.
  After ``breaker_reset_after`` seconds one caller probes (``ping``, then the repair) and
  closes it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, ClassVar, Final, Protocol, TypeVar, cast, runtime_checkable

import orjson

from backends.base import Backend, Capabilities, Entry, utcnow
from backends.breaker import BreakerState, CircuitBreaker
from kvstore.errors import BackendUnavailableError, ConfigurationError, KVStoreError
from kvstore.keys import DEFAULT_PAGE_SIZE
from kvstore.urls import mask_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
    from datetime import datetime

    from backends.base import VersionedCache
    from kvstore.keys import Key
    from kvstore.options import DatabaseOptions, RedisOptions, SQLOptions

logger = logging.getLogger("kvstore.tiered")

T = TypeVar("T")

DEFAULT_CACHE_TTL = 900.0
DEFAULT_CACHE_TIMEOUT = 0.1
DEFAULT_LEASE_TTL = 5.0
DEFAULT_BREAKER_THRESHOLD = 5
DEFAULT_BREAKER_RESET_AFTER = 2.0
VERIFY_LEASE_TTL = 0.001
"""``verify`` reads the cache with leases that expire at once: it never fills."""
REPAIR_CHUNK = 64
"""Dirty keys repaired per system-of-record query and cache round trip."""
REPAIR_BATCH = 256
"""Dirty keys one call repairs at most: a long outage's backlog is worked off by the calls
that follow, each waiting a bounded time (dirty keys bypass the cache meanwhile)."""


class _Failed(Enum):
    FAILED = "failed"


FAILED: Final = _Failed.FAILED
"""What a cache call that failed or timed out returns."""


@dataclass(frozen=True, slots=True)
class TieredStats:
    """Counters since the store was built (see :meth:`TieredBackend.stats`)."""

    hits: int
    """Keys answered by the cache."""
    misses: int
    """Keys the cache did not hold (read from the system of record)."""
    fills: int
    """Entries put into the cache after a miss."""
    fill_dropped: int
    """Fills the cache refused: lease lost (a write, eviction or flush came first) or older."""
    cache_errors: int
    """Cache calls that failed or timed out."""
    bypassed: int
    """Keys read or written without the cache (breaker open, or the key dirty)."""
    breaker: BreakerState
    """The circuit breaker's state now."""
    dirty: int
    """Keys and owners waiting for their cache entries to be repaired."""


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What :meth:`TieredBackend.verify` found."""

    checked: int
    """Keys of the system of record that were compared."""
    stale: list[Key] = field(default_factory=list)
    """Cached with another version or value than the system of record holds."""
    extra: list[Key] = field(default_factory=list)
    """Cached, but absent from the system of record (only found if the cache can scan)."""
    missing: int = 0
    """In the system of record but not cached: normal for a cache."""
    repaired: bool = False
    """Whether stale and extra keys were invalidated."""


@runtime_checkable
class RecentSource(Protocol):
    """A system of record that lists a namespace by most recent update (SQL provides it)."""

    async def recent(
        self, namespace: str, *, owner: str | None = None, limit: int = DEFAULT_PAGE_SIZE
    ) -> list[tuple[Key, Entry]]:
        """Live entries of ``namespace`` (of ``owner`` if given), newest ``updated_at``
        first, at most ``limit``."""
        ...


@runtime_checkable
class ScannableCache(Protocol):
    """A cache that can list the keys it holds (lets ``verify`` find extra entries)."""

    async def cached_keys(self, namespace: str, owner: str | None = None) -> list[Key]:
        """Keys with a live entry in ``namespace`` (of ``owner`` if given)."""
        ...


@runtime_checkable
class Closable(Protocol):
    """A cache that holds resources to release."""

    async def close(self) -> None:
        """Release them."""
        ...


@dataclass(slots=True)
class _KeyWrites:
    """Writes of one key in flight. Their cache updates run one at a time, and an update
    older than one already applied is skipped: otherwise a slow writer's older entry could
    land after the newer one was evicted or flushed."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    count: int = 0
    applied: tuple[datetime, int] | None = None


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
    ) -> None:
        if cache_ttl <= 0 or cache_timeout <= 0 or lease_ttl <= 0:
            raise ConfigurationError("cache_ttl, cache_timeout and lease_ttl must be > 0")
        self.record = record
        self.cache = cache
        self.cache_ttl = cache_ttl
        self.cache_timeout = cache_timeout
        self.lease_ttl = lease_ttl
        self._breaker = CircuitBreaker(breaker_threshold, breaker_reset_after, logger=logger)
        self.invalidate_before_write = invalidate_before_write
        self.capabilities = Capabilities(  # type: ignore[misc]  # per instance: from the record
            persistent=record.capabilities.persistent,
            shared=record.capabilities.shared,
            bulk=record.capabilities.bulk,
        )
        self._cache_ready = not isinstance(cache, Backend)
        self._seq = 0
        self._dirty: dict[Key, tuple[int, tuple[datetime, int] | None]] = {}
        self._dirty_owners: dict[str, int] = {}
        self._repairing = False
        self._writes: dict[str, _OwnerWrites] = {}
        self._key_writes: dict[Key, _KeyWrites] = {}
        self._wiping: dict[str, int] = {}
        self._hits = self._misses = self._fills = self._fill_dropped = 0
        self._cache_errors = self._bypassed = 0

    def __repr__(self) -> str:
        return (
            f"TieredBackend({self.record!r}, {self.cache!r}, breaker={self._breaker.state.value})"
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def initialize(self) -> None:
        """Initialize the system of record (errors propagate) and the cache (a cache that
        does not answer opens the breaker instead: the store starts without it)."""
        await self.record.initialize()
        if not self._cache_ready and not await self._init_cache():
            self._breaker.open_at_start()

    async def close(self) -> None:
        try:
            if isinstance(self.cache, Closable):
                await self.cache.close()
        finally:
            await self.record.close()

    # -- observability ---------------------------------------------------------------------

    def stats(self) -> TieredStats:
        """The counters now."""
        return TieredStats(
            hits=self._hits,
            misses=self._misses,
            fills=self._fills,
            fill_dropped=self._fill_dropped,
            cache_errors=self._cache_errors,
            bypassed=self._bypassed,
            breaker=self._breaker.state,
            dirty=len(self._dirty) + len(self._dirty_owners),
        )

    # -- reads -----------------------------------------------------------------------------

    async def get(self, key: Key) -> Entry | None:
        return (await self.get_many((key,)))[0]

    async def get_many(self, keys: Sequence[Key]) -> list[Entry | None]:
        if not keys:
            return []
        if not self._breaker.closed and not await self._usable():
            self._bypassed += len(keys)
            return await self.record.get_many(keys)
        if self._dirty or self._dirty_owners:
            await self._repair()
        cached = [i for i, key in enumerate(keys) if not self._is_dirty(key)]
        self._bypassed += len(keys) - len(cached)
        if not cached:
            return await self.record.get_many(keys)
        lookups = await self._call(
            self.cache.lookup([keys[i] for i in cached], lease_ttl=self.lease_ttl)
        )
        if lookups is FAILED:
            return await self.record.get_many(keys)
        results: list[Entry | None] = [None] * len(keys)
        leases: dict[int, str | None] = {}
        now = utcnow()
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

    async def _fill(self, items: list[tuple[Key, Entry, str]]) -> None:
        ttl = min(self._ttl_for(entry) for _, entry, _ in items)
        landed = await self._call(self.cache.fill(items, ttl=ttl))
        if landed is not FAILED:
            self._fills += landed
            self._fill_dropped += len(items) - landed

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
        """Restore into the system of record, then drop the keys from the cache (a restored
        entry may be older by stamp than a cached one, so it is not written through)."""
        keys = [key for key, _ in items]
        try:
            written = await self.record.restore(items)
        except BaseException:
            for key in keys:
                self._mark_dirty(key)
            raise
        for start in range(0, len(keys), REPAIR_CHUNK):
            chunk = keys[start : start + REPAIR_CHUNK]
            if not await self._usable() or (
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
            await self._update_cache(
                key,
                writes,
                entry.stamp,
                lambda: self.cache.write(key, entry, ttl=self._ttl_for(entry)),
            )
        finally:
            self._end_write(key, writes)
        return entry

    async def delete(self, key: Key, *, expected_version: int | None = None) -> bool:
        writes = self._begin_write(key)
        try:
            removed = await self._committed(
                key, self.record.delete(key, expected_version=expected_version)
            )
            stamp = (utcnow(), 0)
            await self._update_cache(
                key,
                writes,
                stamp,
                lambda: self.cache.tombstone(key, stamp, ttl=self.cache_ttl),
                tombstone=True,
            )
        finally:
            self._end_write(key, writes)
        return removed

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
            if not await self._usable() or (
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
        self,
        key: Key,
        writes: _KeyWrites,
        stamp: tuple[datetime, int],
        update: Callable[[], Awaitable[object]],
        *,
        tombstone: bool = False,
    ) -> None:
        """Apply a committed write (its entry or tombstone has ``stamp``) to the cache. Any
        failure (error, timeout, cancellation) marks the key dirty before the write is
        acknowledged."""
        guard = stamp if tombstone else None
        try:
            if not self._breaker.closed and not await self._usable():
                self._bypassed += 1
                self._mark_dirty(key, guard)
                return
            async with asyncio.timeout(self.cache_timeout), writes.lock:
                if writes.applied is not None and stamp <= writes.applied:
                    return  # a newer write of this key is in the cache already
                await update()
                writes.applied = stamp
        except BaseException as exc:
            self._mark_dirty(key, guard)
            if not isinstance(exc, Exception):
                raise
            self._failure(exc)
        else:
            self._breaker.succeeded()

    def _ttl_for(self, entry: Entry) -> float:
        if entry.expires_at is None:
            return self.cache_ttl
        remaining = (entry.expires_at - utcnow()).total_seconds()
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

    def _mark_dirty(self, key: Key, tombstone: tuple[datetime, int] | None = None) -> None:
        self._dirty[key] = (self._next_seq(), tombstone)

    def _mark_owner_dirty(self, owner: str) -> None:
        self._dirty_owners[owner] = self._next_seq()

    def _is_dirty(self, key: Key) -> bool:
        return key in self._dirty or key.owner in self._dirty_owners

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
            # themselves, and an unordered repair could be overtaken by an older one after a
            # flush. The rest is repaired a bounded batch per call, oldest marks first.
            idle = ((k, m) for k, m in self._dirty.items() if k not in self._key_writes)
            marks = list(itertools.islice(idle, REPAIR_BATCH))
            for start in range(0, len(marks), REPAIR_CHUNK):
                if not await self._repair_keys(marks[start : start + REPAIR_CHUNK]):
                    return False
            return True
        finally:
            self._repairing = False

    async def _repair_keys(
        self, marks: Sequence[tuple[Key, tuple[int, tuple[datetime, int] | None]]]
    ) -> bool:
        read_at = utcnow()
        try:
            entries = await self.record.get_many([key for key, _ in marks])
        except KVStoreError:
            return False  # the system of record fails too: stay dirty, try again later
        updates: list[Awaitable[object]] = []
        for (key, (_, tombstone)), entry in zip(marks, entries, strict=True):
            if entry is not None:
                updates.append(self.cache.write(key, entry, ttl=self._ttl_for(entry)))
            else:
                stamp = max(tombstone, (read_at, 0)) if tombstone else (read_at, 0)
                updates.append(self.cache.tombstone(key, stamp, ttl=self.cache_ttl))
        if await self._call(asyncio.gather(*updates)) is FAILED:
            return False
        for key, (seq, _) in marks:
            current = self._dirty.get(key)
            if current is not None and current[0] == seq:
                del self._dirty[key]
        return True

    # -- warm and verify ------------------------------------------------------------------

    async def warm(
        self, namespace: str = "state", *, owner: str | None = None, limit: int = 1000
    ) -> int:
        """Load the ``limit`` most recently updated records of ``namespace`` (of ``owner``
        if given) into the cache; return how many landed.

        Fills go through leases like any read after a miss (the records are read again from
        the system of record once the leases are held), so warming never overwrites a newer
        entry or resurrects a deleted one. The newest records come from ``recent()`` of the
        system of record (:class:`RecentSource`, e.g. SQL: one indexed query); one without
        it is scanned once.
        """
        rows = await self._recent(namespace, owner, limit)
        keys = [key for key, _ in rows if not self._is_dirty(key)]
        if not keys or not await self._usable():
            return 0
        lookups = await self._call(self.cache.lookup(keys, lease_ttl=self.lease_ttl))
        if lookups is FAILED:
            return 0
        leased = [(k, a.lease) for k, a in zip(keys, lookups, strict=True) if a.lease]
        if not leased:
            return 0
        entries = await self.record.get_many([key for key, _ in leased])
        items = [
            (key, entry, lease)
            for (key, lease), entry in zip(leased, entries, strict=True)
            if entry is not None and lease is not None
        ]
        before = self._fills
        if items:
            await self._fill(items)
        return self._fills - before

    async def verify(
        self, namespace: str, owner: str | None = None, *, repair: bool = False, limit: int = 10_000
    ) -> VerifyReport:
        """Compare the cache with the system of record for ``namespace`` (or one owner's
        records in it), at most ``limit`` records; report stale and extra cache entries and,
        with ``repair``, invalidate them.

        Reading the cache here takes no lasting lease (leases of misses expire at once).
        Extra entries (cached but deleted in the system of record) are only found if the
        cache can list its keys (:class:`ScannableCache`).
        """
        truth: dict[Key, Entry | None] = dict(await self._recent(namespace, owner, limit))
        if isinstance(self.cache, ScannableCache):
            scanned = await self._call(self.cache.cached_keys(namespace, owner))
            if scanned is FAILED:
                raise BackendUnavailableError("the cache did not answer; nothing was verified")
            others = [key for key in scanned if key not in truth]
            truth.update(zip(others, await self.record.get_many(others), strict=True))
        keys = [*truth]
        if not keys:
            return VerifyReport(checked=0, repaired=repair)
        lookups = await self._call(self.cache.lookup(keys, lease_ttl=VERIFY_LEASE_TTL))
        if lookups is FAILED:
            raise BackendUnavailableError("the cache did not answer; nothing was verified")
        stale: list[Key] = []
        extra: list[Key] = []
        missing = 0
        for key, answer in zip(keys, lookups, strict=True):
            cached, stored = answer.entry, truth[key]
            if cached is None:
                missing += stored is not None
            elif stored is None:
                extra.append(key)
            elif cached.stamp != stored.stamp or not _same_value(cached.value, stored.value):
                stale.append(key)
        wrong = stale + extra
        if repair and wrong and await self._call(self.cache.invalidate(wrong)) is FAILED:
            raise BackendUnavailableError("the cache did not answer; nothing was repaired")
        return VerifyReport(
            checked=len(keys), stale=stale, extra=extra, missing=missing, repaired=repair
        )

    async def _recent(
        self, namespace: str, owner: str | None, limit: int
    ) -> Sequence[tuple[Key, Entry]]:
        if limit <= 0:
            raise ConfigurationError("limit must be positive")
        if isinstance(self.record, RecentSource):
            return await self.record.recent(namespace, owner=owner, limit=limit)
        if self.record.capabilities.bulk:
            entries = self.record.scan(namespace=namespace, owner=owner)
        else:
            raise ConfigurationError(
                f"{type(self.record).__name__} can neither list by recency nor stream"
            )
        newest: list[tuple[datetime, int, Key, Entry]] = []
        tiebreak = itertools.count()
        async for key, entry in entries:
            item = (entry.updated_at, next(tiebreak), key, entry)
            if len(newest) < limit:
                heapq.heappush(newest, item)
            elif item[0] > newest[0][0]:
                heapq.heapreplace(newest, item)
        return [(key, entry) for _, _, key, entry in sorted(newest, reverse=True)]

    # -- cache calls and the circuit breaker -------------------------------------------------

    async def _usable(self) -> bool:
        """Whether to use the cache now; runs the probe when the breaker is due for one."""
        if self._breaker.closed:
            return True
        if self._breaker.probe_due():
            return await self._probe()
        return False

    async def _probe(self) -> bool:
        """Ping the cache and repair the dirty keys; the breaker closes if both succeed."""
        self._breaker.start_probe()
        healthy = False
        try:
            healthy = (
                (self._cache_ready or await self._init_cache())
                and await self._call(self.cache.ping(), count=False) is not FAILED
                and await self._repair()
            )
        finally:
            self._breaker.finish_probe(healthy)
        return healthy

    async def _init_cache(self) -> bool:
        assert isinstance(self.cache, Backend)
        if await self._call(self.cache.initialize(), count=False) is FAILED:
            return False
        self._cache_ready = True
        return True

    async def _call(self, operation: Awaitable[T], *, count: bool = True) -> T | _Failed:
        """``operation`` under the cache deadline; ``FAILED`` if it failed or timed out (the
        failure is counted toward the breaker). Cancellation propagates."""
        try:
            async with asyncio.timeout(self.cache_timeout):
                result = await operation
        except Exception as exc:  # noqa: BLE001 - a failing cache never fails the store
            if count:
                self._failure(exc)
            else:
                self._cache_errors += 1
            return FAILED
        self._breaker.succeeded()
        return result

    def _failure(self, exc: Exception) -> None:
        self._cache_errors += 1
        self._breaker.failed(exc)


def _same_value(cached: bytes, stored: bytes) -> bool:
    """Equal bytes, or equal JSON (a system of record may normalize JSON it stores)."""
    if cached == stored:
        return True
    try:
        return bool(orjson.loads(cached) == orjson.loads(stored))
    except orjson.JSONDecodeError:
        return False


def build_tiered_backend(
    record_url: str | None, options: DatabaseOptions
) -> tuple[TieredBackend, str]:
    """The tiered backend ``create_database`` builds, and its description (no secrets).

    ``record_url`` is the system of record: a SQL URL, or ``"memory://"`` (a
    :class:`~backends.memory.MemoryBackend`, for tests). The cache is ``redis_client`` if
    given, else ``cache_url``: ``"redis://..."`` (also ``rediss://``, ``unix://``) or
    ``"memory://"`` (a per-process :class:`~backends.memory_cache.MemoryCache`).
    """
    from kvstore.options import REDIS_OPTIONS, SQL_OPTIONS, TIERED_OPTIONS

    if record_url is None:
        raise ConfigurationError("the tiered database needs connection_string (a SQL URL)")
    given: Mapping[str, object] = options
    sql_options = {name: given[name] for name in SQL_OPTIONS if name in given}
    redis_options = {name: given[name] for name in REDIS_OPTIONS if name in given}
    unknown = set(options) - SQL_OPTIONS - REDIS_OPTIONS - TIERED_OPTIONS
    if unknown:
        raise ConfigurationError(f"tiered database does not take: {', '.join(sorted(unknown))}")
    record, record_description = _build_record(record_url, sql_options)
    cache, cache_description = _build_cache(options, redis_options)
    backend = TieredBackend(
        record,
        cache,
        cache_ttl=options.get("cache_ttl", DEFAULT_CACHE_TTL),
        cache_timeout=options.get("cache_timeout", DEFAULT_CACHE_TIMEOUT),
        lease_ttl=options.get("lease_ttl", DEFAULT_LEASE_TTL),
        breaker_threshold=options.get("breaker_threshold", DEFAULT_BREAKER_THRESHOLD),
        breaker_reset_after=options.get("breaker_reset_after", DEFAULT_BREAKER_RESET_AFTER),
        invalidate_before_write=options.get("invalidate_before_write", False),
    )
    return backend, f"tiered({record_description} + {cache_description})"


def _build_record(url: str, sql_options: dict[str, object]) -> tuple[Backend, str]:
    if url == "memory://":
        if sql_options:
            raise ConfigurationError("a memory:// system of record takes no SQL options")
        from backends.memory import MemoryBackend

        return MemoryBackend(), "memory://"
    from backends.sql import build_sql_backend

    backend = build_sql_backend(url, cast("SQLOptions", sql_options))
    return backend, backend.config.masked_url


def _build_cache(
    options: DatabaseOptions, redis_options: dict[str, object]
) -> tuple[VersionedCache, str]:
    url = options.get("cache_url")
    if url == "memory://" and "redis_client" not in options:
        if redis_options:
            raise ConfigurationError(
                f"a memory:// cache does not take: {', '.join(sorted(redis_options))}"
            )
        from backends.memory_cache import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, MemoryCache

        memory = MemoryCache(
            max_entries=options.get("cache_max_entries", DEFAULT_MAX_ENTRIES),
            max_bytes=options.get("cache_max_bytes", DEFAULT_MAX_BYTES),
            default_ttl=options.get("cache_ttl", DEFAULT_CACHE_TTL),
        )
        return memory, "memory://"
    if url is None and "redis_client" not in options:
        raise ConfigurationError(
            'the tiered database needs cache_url ("redis://..." or "memory://") or redis_client'
        )
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigurationError(
            f'cache_url must be "redis://...", "rediss://...", "unix://..." or "memory://", '
            f"got {mask_url(url)}"
        )
    for name in ("cache_max_entries", "cache_max_bytes"):
        if name in options:
            raise ConfigurationError(f"{name} bounds the memory:// cache; Redis has maxmemory")
    from backends.redis import build_redis_backend

    cache = build_redis_backend(
        url,
        cast("RedisOptions", redis_options),
        cache_ttl=options.get("cache_ttl", DEFAULT_CACHE_TTL),
    )
    return cache, cache.description
