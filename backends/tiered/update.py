"""The write-through step: a committed write goes to the cache, ordered by its revision.

A cache update that fails, times out or is cancelled marks the key dirty before the write
is acknowledged (:mod:`.repair` repairs it); a cache found lost moves every process to a new
generation and the update is tried there once more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvstore.errors import CacheLostError

if TYPE_CHECKING:
    from collections.abc import Callable

    from backends.base import Entry
    from backends.cache_base import Generation, VersionedCache
    from backends.tiered.gate import CacheGate
    from backends.tiered.guard import CacheGuard
    from backends.tiered.repair import DirtyKeys
    from backends.tiered.writes import KeyWrites
    from kvstore.keys import Key


class CacheUpdater:
    """Applies committed writes of one tiered store to its cache."""

    def __init__(
        self,
        cache: VersionedCache,
        guard: CacheGuard,
        gate: CacheGate,
        dirty: DirtyKeys,
        *,
        cache_ttl: float,
        ttl_for: Callable[[Entry], float],
        landed: Callable[[int, Generation], None],
    ) -> None:
        """``landed`` learns of every revision written to the cache in a generation (the
        change feed then skips it)."""
        self._cache = cache
        self._guard = guard
        self._gate = gate
        self._dirty = dirty
        self._cache_ttl = cache_ttl
        self._ttl_for = ttl_for
        self._landed = landed

    async def apply(self, key: Key, writes: KeyWrites, revision: int, entry: Entry | None) -> None:
        """Apply a committed write of ``revision`` (``entry``, or a delete) to the cache.
        It is tried even while the breaker is open; a revision from before the cache
        generation began only tombstones. Never raises but for cancellation (after marking
        the key dirty)."""
        guard = self._guard
        for last_try in (False, True):
            generation = guard.generation
            answered = guard.answered
            try:
                if not await self._gate.usable(writing=True):
                    self._dirty.mark(key, revision)
                    return
                generation = guard.generation
                async with guard.deadline(), writes.lock:
                    if revision <= writes.applied:
                        return  # a newer write of this key is in the cache already
                    if entry is None or generation is None or revision <= generation.floor:
                        await self._cache.tombstones([(key, revision)], ttl=self._cache_ttl)
                    else:
                        await self._cache.write(key, entry, ttl=self._ttl_for(entry))
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
                    self._landed(revision, generation)
                return
