"""Writes in flight in one tiered store: their cache updates are ordered per key, and a
write that overlaps a ``delete_owner`` of its owner is repaired afterwards."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backends.tiered.repair import DirtyKeys
    from kvstore.keys import Key


@dataclass(slots=True)
class KeyWrites:
    """Writes of one key in flight: their cache updates run one at a time (``lock``), and
    one older than the update already applied (``applied``, a revision) is skipped."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    count: int = 0
    applied: int = 0


@dataclass(slots=True)
class _OwnerWrites:
    """Writes of one owner in flight, and whether a ``delete_owner`` overlapped them."""

    count: int = 0
    wiped: bool = False


class WritesInFlight:
    """Bookkeeping of the writes between their start and their acknowledgement."""

    def __init__(self, dirty: DirtyKeys) -> None:
        self._dirty = dirty
        self._owners: dict[str, _OwnerWrites] = {}
        self._keys: dict[Key, KeyWrites] = {}
        self._wiping: dict[str, int] = {}

    def __contains__(self, key: Key) -> bool:
        """Whether a write of ``key`` is in flight."""
        return key in self._keys

    def begin(self, key: Key) -> KeyWrites:
        """A write of ``key`` starts; pass what this returns to :meth:`end`."""
        owner = self._owners.get(key.owner)
        if owner is None:
            owner = self._owners[key.owner] = _OwnerWrites()
        owner.count += 1
        if key.owner in self._wiping:
            owner.wiped = True
        writes = self._keys.get(key)
        if writes is None:
            writes = self._keys[key] = KeyWrites()
        writes.count += 1
        return writes

    def end(self, key: Key, writes: KeyWrites) -> None:
        """A write of ``key`` ends. One whose cache update may have landed after an
        overlapping ``delete_owner`` invalidated the owner is marked dirty."""
        owner = self._owners[key.owner]
        if owner.wiped:
            self._dirty.mark(key)
        owner.count -= 1
        if not owner.count:
            del self._owners[key.owner]
        writes.count -= 1
        if not writes.count:
            del self._keys[key]

    def begin_wipe(self, owner: str) -> None:
        """A ``delete_owner`` of ``owner`` starts: writes of the owner in flight or
        starting before :meth:`end_wipe` are repaired when they end."""
        self._wiping[owner] = self._wiping.get(owner, 0) + 1
        writes = self._owners.get(owner)
        if writes is not None:
            writes.wiped = True

    def end_wipe(self, owner: str) -> None:
        """The ``delete_owner`` of ``owner`` ends."""
        self._wiping[owner] -= 1
        if not self._wiping[owner]:
            del self._wiping[owner]
