"""The dict cache tier: a bounded, per-process LRU implementing :class:`VersionedCache`.

It has the same semantics as the Redis cache tier (forward-only by :attr:`Entry.revision`,
leased fills, tombstones, invalidation) but lives inside one process: several processes
each get their own cache and never see each other's writes, so a save in one process is
not visible through another process's dict cache until that entry expires. With more than
one process, use Redis as the cache.

Bounds: at most ``max_entries`` slots and about ``max_bytes`` bytes (values plus a fixed
per-slot overhead); the least recently used slot is evicted first. Every slot also has a
TTL. Every operation runs without awaiting, so each is atomic under the tasks of one loop.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backends.cache_base import CacheLookup, VersionedCache, lands
from kvstore.clock import SYSTEM_CLOCK
from kvstore.errors import ConfigurationError
from kvstore.keys import check_component

if TYPE_CHECKING:
    from collections.abc import Sequence

    from backends.base import Entry
    from kvstore.clock import Clock
    from kvstore.keys import Key

DEFAULT_TTL = 900.0
DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
SLOT_OVERHEAD = 200
"""Bytes counted per slot beside its value: key, metadata, dict and list overhead."""


@dataclass(slots=True)
class _Slot:
    """What one key holds: an entry, a tombstone's revision, or nothing, plus maybe a
    lease."""

    entry: Entry | None
    tombstone: int | None
    expires: float
    lease: str | None = None
    lease_expires: float = 0.0

    def takes(self, revision: int, *, tombstone: bool) -> bool:
        """Whether a write of ``revision`` lands here (:func:`backends.cache_base.lands`)."""
        if self.entry is not None:
            return lands(revision, tombstone, self.entry.revision, held_tombstone=False)
        return lands(revision, tombstone, self.tombstone, held_tombstone=True)

    @property
    def size(self) -> int:
        return SLOT_OVERHEAD + (len(self.entry.value) if self.entry is not None else 0)


class MemoryCache(VersionedCache):
    """A bounded in-process LRU cache with TTL, leases and tombstones (one process only)."""

    system = "memory"
    lists_keys = True

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        default_ttl: float = DEFAULT_TTL,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if max_entries <= 0 or max_bytes <= 0 or default_ttl <= 0:
            raise ConfigurationError("cache_max_entries, cache_max_bytes and ttl must be > 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.default_ttl = default_ttl
        self._clock = clock
        self._incarnation = secrets.token_hex(8)
        self._slots: OrderedDict[Key, _Slot] = OrderedDict()
        self._by_owner: dict[str, set[Key]] = {}
        self._bytes = 0
        self.evictions = 0

    def __repr__(self) -> str:
        return f"MemoryCache(entries={len(self._slots)}, bytes={self._bytes})"

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def size_bytes(self) -> int:
        """Bytes currently counted against ``max_bytes``."""
        return self._bytes

    async def close(self) -> None:
        """Drop everything (the cache lives only as long as this object)."""
        self._slots.clear()
        self._by_owner.clear()
        self._bytes = 0

    async def lookup(self, keys: Sequence[Key], *, lease_ttl: float) -> list[CacheLookup]:
        now = self._clock.monotonic()
        answers: list[CacheLookup] = []
        for key in keys:
            slot = self._live(key, now)
            if slot is not None and slot.entry is not None:
                self._slots.move_to_end(key)
                answers.append(CacheLookup(slot.entry))
                continue
            if slot is not None and slot.lease is not None and slot.lease_expires > now:
                answers.append(CacheLookup(None))
                continue
            token = secrets.token_hex(8)
            if slot is None:
                slot = _Slot(None, None, expires=now + lease_ttl)
                self._store(key, slot)
            slot.lease, slot.lease_expires = token, now + lease_ttl
            slot.expires = max(slot.expires, slot.lease_expires)
            answers.append(CacheLookup(None, token))
        self._evict()
        return answers

    async def fill(
        self, items: Sequence[tuple[Key, Entry, str]], *, ttl: float | None = None
    ) -> int:
        now = self._clock.monotonic()
        landed = 0
        for key, entry, lease in items:
            slot = self._live(key, now)
            if slot is None or slot.lease != lease or slot.lease_expires <= now:
                continue
            if not slot.takes(entry.revision, tombstone=False):
                continue
            self._replace(key, _Slot(entry, None, now + self._ttl(ttl)))
            landed += 1
        self._evict()
        return landed

    async def write(self, key: Key, entry: Entry, *, ttl: float | None = None) -> bool:
        now = self._clock.monotonic()
        slot = self._live(key, now)
        if slot is not None and not slot.takes(entry.revision, tombstone=False):
            slot.lease = None
            return False
        self._replace(key, _Slot(entry, None, now + self._ttl(ttl)))
        self._evict()
        return True

    async def tombstones(
        self, items: Sequence[tuple[Key, int]], *, ttl: float | None = None
    ) -> None:
        now = self._clock.monotonic()
        for key, revision in items:
            slot = self._live(key, now)
            if slot is not None and not slot.takes(revision, tombstone=True):
                slot.lease = None
                continue
            self._replace(key, _Slot(None, revision, now + self._ttl(ttl)))
        self._evict()

    async def invalidate(self, keys: Sequence[Key]) -> None:
        for key in keys:
            self._drop(key)

    async def invalidate_owner(self, owner: str) -> None:
        check_component(owner, "owner")
        for key in list(self._by_owner.get(owner, ())):
            self._drop(key)

    async def ping(self) -> None:
        """Always answers: the cache is in this process."""

    async def incarnation(self) -> str:
        """The cache's one life: it lives and dies with this object."""
        return self._incarnation

    def use_generation(self, incarnation: str, generation: int) -> None:
        """Nothing to move: this cache never outlives what it holds."""

    @property
    def seen_incarnation(self) -> str:
        return self._incarnation

    async def claim_generation(self) -> bool:
        return True

    async def cached_keys(self, namespace: str, owner: str | None = None) -> list[Key]:
        """Keys holding a live entry in ``namespace`` (of ``owner`` if given), for
        :meth:`TieredBackend.verify` to find entries the system of record lacks."""
        now = self._clock.monotonic()
        candidates = self._by_owner.get(owner, set()) if owner is not None else self._slots
        return [
            key
            for key in list(candidates)
            if key.namespace == namespace
            and (slot := self._live(key, now)) is not None
            and slot.entry is not None
        ]

    def _ttl(self, ttl: float | None) -> float:
        return self.default_ttl if ttl is None else ttl

    def _live(self, key: Key, now: float) -> _Slot | None:
        slot = self._slots.get(key)
        if slot is None:
            return None
        if slot.expires <= now:
            self._drop(key)
            return None
        return slot

    def _store(self, key: Key, slot: _Slot) -> None:
        self._slots[key] = slot
        self._bytes += slot.size
        self._by_owner.setdefault(key.owner, set()).add(key)

    def _replace(self, key: Key, slot: _Slot) -> None:
        self._drop(key)
        self._store(key, slot)

    def _drop(self, key: Key) -> None:
        slot = self._slots.pop(key, None)
        if slot is None:
            return
        self._bytes -= slot.size
        keys = self._by_owner[key.owner]
        keys.discard(key)
        if not keys:
            del self._by_owner[key.owner]

    def _evict(self) -> None:
        while self._slots and (len(self._slots) > self.max_entries or self._bytes > self.max_bytes):
            key = next(iter(self._slots))
            self._drop(key)
            self.evictions += 1
