"""Reads through the caches: the near cache in the process (if any) first, then the shared
cache; misses from the system of record, filled back through leases (a fill without a
valid lease is dropped by the cache).

Keys marked dirty are read from the system of record until repaired; a cache that is out of
use (breaker open, lost) is bypassed. Every key read is counted once: as a hit, a miss or a
bypass.

A near-cache hit needs no I/O, so it would never give the event loop a turn: a task that
reads in a loop would starve every other. The reads yield to the loop once every
:data:`NEAR_HITS_PER_TURN` near-cache hits (a few microseconds in all), so concurrent
readers take turns.

Single-key reads of concurrent tasks share one cache lookup (:mod:`backends.coalesce`):
one deadline, one call through the guard and one ``MGET`` for all of them. A read whose
caller's span is being recorded (telemetry) does its own lookup, so that its trace shows
its own lookup span.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from backends.coalesce import Coalesced
from backends.tiered.guard import FAILED
from kvstore.errors import BackendUnavailableError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from backends.base import Backend, Entry
    from backends.cache_base import CacheLookup, VersionedCache
    from backends.tiered.gate import CacheGate
    from backends.tiered.guard import CacheGuard, _Failed
    from backends.tiered.near import NearCache
    from backends.tiered.repair import DirtyKeys
    from kvstore.clock import Clock
    from kvstore.keys import Key


NEAR_HITS_PER_TURN: Final = 16
"""Near-cache hits served before the reads yield to the event loop once."""


class ReadThrough:
    """The tiered store's reads of the shared cache, and their counters."""

    def __init__(
        self,
        record: Backend,
        cache: VersionedCache,
        guard: CacheGuard,
        gate: CacheGate,
        dirty: DirtyKeys,
        *,
        lease_ttl: float,
        ttl_for: Callable[[Entry], float],
        repair_soon: Callable[[], None],
        clock: Clock,
        near: NearCache | None = None,
        coalesce: bool | Callable[[], bool] = True,
    ) -> None:
        """``coalesce``: whether concurrent single-key reads share one lookup (see the
        module); a function is asked per read."""
        self._near = near
        self._near_hits_this_turn = 0
        self._coalesced = Coalesced(self._lookup_each) if coalesce else None
        self._may_share = None if isinstance(coalesce, bool) else coalesce
        self._record = record
        self._cache = cache
        self._guard = guard
        self._gate = gate
        self._dirty = dirty
        self._lease_ttl = lease_ttl
        self._ttl_for = ttl_for
        self._repair_soon = repair_soon
        self._clock = clock
        self.reads = self.hits = self.misses = self.bypassed = 0
        self.fills = self.fill_dropped = self.near_hits = 0

    async def get(self, key: Key) -> Entry | None:
        """The entry of one key: :meth:`get_many` without its lists (the request path's
        common case)."""
        near = self._near
        if near is not None:
            entry = near.get(key)
            if entry is not None:
                await self._served_near(1)
                return entry
        elif self._guard.breaker.closed and not self._guard.lost:
            return await self._one(key)
        return (await self.get_many((key,)))[0]

    async def get_many(self, keys: Sequence[Key]) -> list[Entry | None]:
        """Entries of ``keys`` (``None`` where absent): from the near cache, then the shared
        cache, misses from the system of record (and filled)."""
        near = self._near
        if near is None:
            return await self._shared(keys)
        stamp = near.stamp()
        found = [near.get(key) for key in keys]
        rest = [i for i, entry in enumerate(found) if entry is None]
        if not rest:
            await self._served_near(len(keys))
            return found
        self._count_near(len(keys) - len(rest))
        fetched = await self._shared([keys[i] for i in rest])
        for i, entry in zip(rest, fetched, strict=True):
            found[i] = entry
            if entry is not None:
                near.offer(keys[i], entry, stamp)
        return found

    def _count_near(self, hits: int) -> None:
        """Count keys the near cache answered."""
        self.reads += hits
        self.hits += hits
        self.near_hits += hits

    async def _served_near(self, hits: int) -> None:
        """Count a read the near cache answered whole; now and then let other tasks run
        (see the module docstring)."""
        self._count_near(hits)
        self._near_hits_this_turn += hits
        if self._near_hits_this_turn >= NEAR_HITS_PER_TURN:
            self._near_hits_this_turn = 0
            await asyncio.sleep(0)

    async def _shared(self, keys: Sequence[Key]) -> list[Entry | None]:
        """Entries of ``keys`` from the shared cache, misses from the system of record."""
        if len(keys) == 1 and self._guard.breaker.closed and not self._guard.lost:
            return [await self._one(keys[0])]
        self.reads += len(keys)
        if not await self._gate.usable():
            self.bypassed += len(keys)
            return await self._record.get_many(keys)
        dirty = self._dirty
        if dirty:
            self._repair_soon()
        cached = [i for i, key in enumerate(keys) if key not in dirty]
        self.bypassed += len(keys) - len(cached)
        if not cached:
            return await self._record.get_many(keys)
        lookups = await self._lookup([keys[i] for i in cached])
        if lookups is FAILED:
            self.bypassed += len(cached)
            return await self._record.get_many(keys)
        results: list[Entry | None] = [None] * len(keys)
        leases: dict[int, str | None] = {}
        now = self._clock.now()
        for index, answer in zip(cached, lookups, strict=True):
            entry = answer.entry
            if entry is not None and (entry.expires_at is None or entry.expires_at > now):
                results[index] = entry
            else:
                leases[index] = answer.lease
        self.hits += len(cached) - len(leases)
        self.misses += len(leases)
        missing = [i for i in range(len(keys)) if i in leases or i not in cached]
        if not missing:
            return results
        fetched = await self._record.get_many([keys[i] for i in missing])
        fills: dict[Key, tuple[Key, Entry, str]] = {}
        for index, entry in zip(missing, fetched, strict=True):
            results[index] = entry
            lease = leases.get(index)
            if entry is not None and lease is not None:
                fills.setdefault(keys[index], (keys[index], entry, lease))
        if fills:
            await self.fill(list(fills.values()))
        return results

    async def _one(self, key: Key) -> Entry | None:
        """One key while the cache is in use: :meth:`_shared`'s path without its lists (a
        single get is the request path's common case)."""
        self.reads += 1
        dirty = self._dirty
        if dirty:
            self._repair_soon()
            if key in dirty:
                self.bypassed += 1
                return (await self._record.get_many((key,)))[0]
        coalesced = self._coalesced
        if coalesced is not None and (self._may_share is None or self._may_share()):
            answer = await coalesced.call(key)
        else:
            lookups = await self._lookup((key,))
            answer = FAILED if lookups is FAILED else lookups[0]
        if answer is FAILED:
            self.bypassed += 1
            return (await self._record.get_many((key,)))[0]
        entry = answer.entry
        if entry is not None and (entry.expires_at is None or entry.expires_at > self._clock.now()):
            self.hits += 1
            return entry
        self.misses += 1
        entry = (await self._record.get_many((key,)))[0]
        if entry is not None and answer.lease is not None:
            await self.fill([(key, entry, answer.lease)])
        return entry

    async def _lookup(self, keys: Sequence[Key]) -> list[CacheLookup] | _Failed:
        """One cache lookup of ``keys`` through the guard (a failure counts once toward
        the breaker, however many callers it served: one saturated shared lookup must not
        look like hundreds of failed ones); asked once more if it timed out while the cache
        answered others: the caller is then what is behind, and reading the system of
        record instead would add load where there is too much already."""
        guard = self._guard
        busy = guard.busy_timeouts
        lookup, lease_ttl = self._cache.lookup, self._lease_ttl
        lookups = await guard.call(lookup(keys, lease_ttl=lease_ttl))
        if lookups is FAILED and guard.busy_timeouts > busy:
            lookups = await guard.call(lookup(keys, lease_ttl=lease_ttl))
        return lookups

    async def _lookup_each(self, keys: Sequence[Key]) -> list[CacheLookup | _Failed]:
        """A coalesced lookup: one key per caller, each answered or ``FAILED``."""
        lookups = await self._lookup(keys)
        return [FAILED] * len(keys) if lookups is FAILED else list(lookups)

    async def close(self) -> None:
        """Wait for the coalesced lookups already sent."""
        if self._coalesced is not None:
            await self._coalesced.aclose()

    async def fill(self, items: list[tuple[Key, Entry, str]]) -> int | None:
        """Fill ``items`` through their leases; how many landed, ``None`` if the cache
        did not answer."""
        ttl = min(self._ttl_for(entry) for _, entry, _ in items)
        landed = await self._guard.call(self._cache.fill(items, ttl=ttl))
        if landed is FAILED:
            return None
        self.fills += landed
        self.fill_dropped += len(items) - landed
        return landed

    async def fill_keys(self, keys: Sequence[Key]) -> int:
        """Fill ``keys`` from the system of record through leases (as misses do); return how
        many landed. Dirty keys and keys held by other leases are skipped. Raises
        :class:`BackendUnavailableError` if the cache does not answer."""
        keys = [key for key in keys if key not in self._dirty]
        if not keys:
            return 0
        for _ in range(2):  # once more if the cache turns out lost and a new generation begins
            if not await self._gate.usable(patient=True):
                raise BackendUnavailableError("the cache is out of use (breaker open)")
            lookups = await self._guard.call(self._cache.lookup(keys, lease_ttl=self._lease_ttl))
            if lookups is not FAILED:
                break
        else:
            raise BackendUnavailableError("the cache did not answer")
        leased = [(k, a.lease) for k, a in zip(keys, lookups, strict=True) if a.lease]
        if not leased:
            return 0
        entries = await self._record.get_many([key for key, _ in leased])
        items = [
            (key, entry, lease)
            for (key, lease), entry in zip(leased, entries, strict=True)
            if entry is not None and lease is not None
        ]
        if not items:
            return 0
        landed = await self.fill(items)
        if landed is None:
            raise BackendUnavailableError("the cache did not answer")
        return landed
