"""The memory backend's store: a dict of serialized bytes, for tests and development.

It behaves like a remote store: it keeps bytes (callers can't mutate what is stored), honours
versions and TTL, and lists in key order. Keys are kept as ordered bytes
(:func:`kvstore.keys.encode_key`) in a sorted list beside the dict, so listings are a bisect
plus a slice. Every operation runs without awaiting, so each is atomic under concurrent
tasks of one event loop. Nothing persists; nothing is shared between processes.
"""

from __future__ import annotations

import bisect
import dataclasses
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

from backends.base import (
    Backend,
    Capabilities,
    Entry,
    check_fence,
    check_listing,
    check_lock,
    fenced,
    version_conflict,
)
from kvstore.clock import SYSTEM_CLOCK
from kvstore.keys import (
    DEFAULT_PAGE_SIZE,
    Fence,
    Key,
    check_component,
    decode_key,
    encode_key,
    prefix_range,
)

if TYPE_CHECKING:
    import builtins
    from collections.abc import AsyncIterator, Sequence

    from kvstore.clock import Clock


class MemoryBackend(Backend):
    """Entries in a dict keyed by ordered key bytes."""

    kind: ClassVar[str] = "memory"
    system = "memory"
    capabilities = Capabilities(persistent=False, shared=False, bulk=True)

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._revision = 0
        self._entries: dict[bytes, Entry] = {}
        self._order: list[bytes] = []
        self._namespaces: set[str] = set()
        self._tickets: dict[tuple[str, str], dict[int, float]] = {}
        """Per lock, its queued tickets and when each expires (monotonic seconds)."""
        self._fences: dict[tuple[str, str], int] = {}
        """Per lock, the token of its newest grant."""
        self._last_ticket = 0

    def __repr__(self) -> str:
        return f"MemoryBackend(entries={len(self._entries)})"

    async def close(self) -> None:
        """Nothing to release; the data stays until the object is dropped."""

    async def get(self, key: Key) -> Entry | None:
        return self._live(encode_key(key))

    async def get_many(self, keys: Sequence[Key]) -> list[Entry | None]:
        return [self._live(encode_key(key)) for key in keys]

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
        self._check_fence(fence)
        encoded = encode_key(key)
        current = self._live(encoded)
        current_version = current.version if current else 0
        if expected_version is not None and expected_version != current_version:
            raise version_conflict(expected_version, current_version)
        now = self.clock.now()
        entry = Entry(
            value=bytes(value),
            version=current_version + 1,
            created_at=current.created_at if current else now,
            updated_at=now,
            expires_at=now + timedelta(seconds=ttl) if ttl is not None else None,
            revision=self._next_revision(),
        )
        self._store(key, encoded, entry)
        return entry

    def _next_revision(self) -> int:
        self._revision += 1
        return self._revision

    async def delete(
        self, key: Key, *, expected_version: int | None = None, fence: Fence | None = None
    ) -> int:
        check_fence(key, fence)
        self._check_fence(fence)
        encoded = encode_key(key)
        current = self._live(encoded)
        current_version = current.version if current else 0
        if expected_version is not None and expected_version != current_version:
            raise version_conflict(expected_version, current_version)
        if current is None:
            return 0
        self._remove(encoded)
        return self._next_revision()

    def _check_fence(self, fence: Fence | None) -> None:
        if fence is not None:
            newest = self._fences.get((fence.owner, fence.name), 0)
            if newest > fence.token:
                raise fenced(fence, newest)

    # -- session locks ---------------------------------------------------------------------

    async def lock_ticket(self, owner: str, name: str, *, hold: float) -> int:
        check_lock(owner, name, hold)
        self._last_ticket += 1
        queue = self._tickets.setdefault((owner, name), {})
        queue[self._last_ticket] = self.clock.monotonic() + hold
        return self._last_ticket

    async def lock_turn(
        self, owner: str, name: str, ticket: int, *, hold: float, lease: float
    ) -> bool | None:
        check_lock(owner, name, hold, lease)
        now = self.clock.monotonic()
        queue = self._tickets.get((owner, name), {})
        for expired in [t for t, until in queue.items() if until <= now]:
            del queue[expired]
        if ticket not in queue:
            return None
        if ticket != min(queue):
            queue[ticket] = now + hold
            return False
        queue[ticket] = now + lease
        lock = (owner, name)
        self._fences[lock] = max(self._fences.get(lock, 0), ticket)
        return True

    async def lock_release(self, owner: str, name: str, ticket: int) -> None:
        check_lock(owner, name)
        queue = self._tickets.get((owner, name))
        if queue is not None:
            queue.pop(ticket, None)
            if not queue:
                del self._tickets[(owner, name)]

    async def list(
        self,
        namespace: str,
        prefix: tuple[str, ...],
        *,
        after: tuple[str, ...] | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> list[tuple[Key, Entry]]:
        check_listing(namespace, prefix, after, limit)
        return self._page(namespace, prefix, after, limit)

    async def delete_owner(self, owner: str) -> int:
        check_component(owner, "owner")
        removed = 0
        for namespace in list(self._namespaces):
            low, high = prefix_range(namespace, (owner,))
            start = bisect.bisect_left(self._order, low)
            end = bisect.bisect_left(self._order, high)
            now = self.clock.now()
            for encoded in self._order[start:end]:
                removed += not _expired(self._entries.pop(encoded), now)
            del self._order[start:end]
        for lock in [lock for lock in (*self._tickets, *self._fences) if lock[0] == owner]:
            self._tickets.pop(lock, None)
            self._fences.pop(lock, None)
        return removed

    async def scan(
        self,
        *,
        namespace: str | None = None,
        owner: str | None = None,
        batch_size: int = 1000,
    ) -> AsyncIterator[tuple[Key, Entry]]:
        namespaces = sorted(self._namespaces) if namespace is None else [namespace]
        for name in namespaces:
            after: tuple[str, ...] | None = None
            while True:
                prefix = () if owner is None else (owner,)
                page = self._page(name, prefix, after, batch_size)
                for item in page:
                    yield item
                if len(page) < batch_size:
                    break
                after = page[-1][0].components

    async def restore(self, items: Sequence[tuple[Key, Entry]]) -> int:
        written = 0
        for key, entry in items:
            encoded = encode_key(key)
            current = self._live(encoded)
            if current is not None and current.version >= entry.version:
                continue
            self._store(key, encoded, dataclasses.replace(entry, revision=self._next_revision()))
            written += 1
        return written

    def _page(
        self, namespace: str, prefix: tuple[str, ...], after: tuple[str, ...] | None, limit: int
    ) -> builtins.list[tuple[Key, Entry]]:
        """Up to ``limit`` live entries under ``prefix`` after ``after``, in key order;
        expired ones met on the way are dropped."""
        low, high = prefix_range(namespace, prefix)
        start = bisect.bisect_left(self._order, low)
        if after is not None:
            start = max(start, bisect.bisect_right(self._order, encode_key(Key(namespace, after))))
        page: builtins.list[tuple[Key, Entry]] = []
        expired: builtins.list[bytes] = []
        now = self.clock.now()
        for index in range(start, len(self._order)):
            encoded = self._order[index]
            if encoded >= high or len(page) == limit:
                break
            entry = self._entries[encoded]
            if _expired(entry, now):
                expired.append(encoded)
            else:
                page.append((decode_key(encoded), entry))
        for encoded in expired:
            self._remove(encoded)
        return page

    def _store(self, key: Key, encoded: bytes, entry: Entry) -> None:
        if encoded not in self._entries:
            bisect.insort(self._order, encoded)
            self._namespaces.add(key.namespace)
        self._entries[encoded] = entry

    def _live(self, encoded: bytes) -> Entry | None:
        entry = self._entries.get(encoded)
        if entry is None:
            return None
        if _expired(entry, self.clock.now()):
            self._remove(encoded)
            return None
        return entry

    def _remove(self, encoded: bytes) -> None:
        del self._entries[encoded]
        index = bisect.bisect_left(self._order, encoded)
        del self._order[index]


def _expired(entry: Entry, now: datetime) -> bool:
    return entry.expires_at is not None and entry.expires_at <= now
