"""Dirty keys and their repair.

A cache update that fails, times out or is cancelled marks its key *dirty* before the write
is acknowledged (an erasure whose cache invalidation failed marks its owner). Dirty keys are
read from the system of record until repaired; repair runs in the background, never on a
caller's path, a bounded batch at a time, and rewrites each key from the system of record
(not just invalidates it: a cache command that timed out may still run later, a frozen
server thawing, and only a newer entry or tombstone fences it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import TYPE_CHECKING

from backends.tiered.guard import FAILED
from kvstore.errors import KVStoreError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from backends.base import Backend, Entry
    from backends.cache_base import VersionedCache
    from backends.tiered.guard import CacheGuard
    from backends.tiered.writes import WritesInFlight
    from kvstore.keys import Key

REPAIR_CHUNK = 64
"""Dirty keys repaired per system-of-record query and cache round trip."""
REPAIR_BATCH = 256
"""Dirty keys one repair pass takes at most: a long outage's backlog is worked off pass
after pass (dirty keys bypass the cache meanwhile)."""


class DirtyKeys:
    """Keys and owners whose cache entries may be stale, each with the sequence number of
    its newest mark (a repair forgets only marks that did not change meanwhile)."""

    def __init__(self) -> None:
        self.keys: dict[Key, tuple[int, int]] = {}
        """Key -> (mark sequence, newest revision written)."""
        self.owners: dict[str, int] = {}
        """Owner -> mark sequence."""
        self._seq = 0

    def __len__(self) -> int:
        return len(self.keys) + len(self.owners)

    def __contains__(self, key: Key) -> bool:
        return key in self.keys or key.owner in self.owners

    def mark(self, key: Key, revision: int = 0) -> None:
        """Mark ``key`` dirty; ``revision`` is the newest this process wrote of it."""
        held = self.keys.get(key)
        self.keys[key] = (self._next(), max(revision, held[1] if held else 0))

    def mark_owner(self, owner: str) -> None:
        """Mark every key of ``owner`` dirty."""
        self.owners[owner] = self._next()

    def _next(self) -> int:
        self._seq += 1
        return self._seq


class Repairer:
    """Repairs one tiered store's dirty keys in the background."""

    def __init__(
        self,
        dirty: DirtyKeys,
        writes: WritesInFlight,
        record: Backend,
        cache: VersionedCache,
        guard: CacheGuard,
        *,
        head: Callable[[], int],
        ttl_for: Callable[[Entry], float],
        cache_ttl: float,
    ) -> None:
        self._dirty = dirty
        self._writes = writes
        self._record = record
        self._cache = cache
        self._guard = guard
        self._head = head
        self._ttl_for = ttl_for
        self._cache_ttl = cache_ttl
        self._running = False
        self._passes = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def passes(self) -> tuple[int, bool]:
        """Repair passes begun so far, and whether one is running: compare before and after
        a cache call to tell whether a pass (whose writes may land late) overlapped it."""
        return self._passes, self._running

    def soon(self) -> None:
        """Start repairing in the background, unless that is under way already."""
        if self._task is None and not self._closing:
            self._task = asyncio.get_running_loop().create_task(self._repair_all())

    async def repaired(self) -> int:
        """Wait for the repair under way (if any) to finish; return how many keys and
        owners are still dirty."""
        task = self._task
        if task is not None:
            await asyncio.shield(task)
        return len(self._dirty)

    async def close(self) -> None:
        """Stop repairing."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _repair_all(self) -> None:
        """Repair batch after batch while the cache is in use; stop at a failure, or when
        only keys with writes in flight are left (the next read that finds dirty keys
        starts again)."""
        try:
            while self._dirty and self._guard.breaker.closed and not self._closing:
                before = len(self._dirty)
                if self._guard.lost or not await self._repair():
                    return
                if len(self._dirty) >= before:
                    return
        finally:
            self._task = None

    async def _repair(self) -> bool:
        """Bring dirty keys' cache entries up to the system of record (every dirty owner and
        up to :data:`REPAIR_BATCH` keys), then forget the marks that did not change meanwhile.
        Returns whether the cache answered every call."""
        if self._running:
            return False
        self._running = True
        self._passes += 1
        try:
            owners = self._dirty.owners
            for owner, seq in dict(owners).items():
                if await self._guard.call(self._cache.invalidate_owner(owner)) is FAILED:
                    return False
                if owners.get(owner) == seq:
                    del owners[owner]
            # A key with writes in flight stays dirty: their cache updates are ordered among
            # themselves. The rest is repaired a bounded batch per pass, oldest marks first.
            idle = ((k, m) for k, m in self._dirty.keys.items() if k not in self._writes)
            marks = list(itertools.islice(idle, REPAIR_BATCH))
            for start in range(0, len(marks), REPAIR_CHUNK):
                if not await self._repair_keys(marks[start : start + REPAIR_CHUNK]):
                    return False
            return True
        finally:
            self._running = False

    async def _repair_keys(self, marks: Sequence[tuple[Key, tuple[int, int]]]) -> bool:
        try:
            entries = await self._record.get_many([key for key, _ in marks])
            head = self._head()
        except KVStoreError:
            return False  # the system of record fails too: stay dirty, try again later
        writes: list[Awaitable[object]] = []
        tombstones: list[tuple[Key, int]] = []
        for (key, (_, revision)), entry in zip(marks, entries, strict=True):
            if entry is not None:
                writes.append(self._cache.write(key, entry, ttl=self._ttl_for(entry)))
            else:
                # absent: a tombstone at least as new as anything this process wrote; too new
                # a tombstone only costs misses (fills below it are refused), never staleness
                tombstones.append((key, max(revision + 1, head)))
        if tombstones:
            writes.append(self._cache.tombstones(tombstones, ttl=self._cache_ttl))
        if await self._guard.call(asyncio.gather(*writes)) is FAILED:
            return False
        keys = self._dirty.keys
        for key, (seq, _) in marks:
            current = keys.get(key)
            if current is not None and current[0] == seq:
                del keys[key]
        return True
