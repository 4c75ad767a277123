"""Backends and caches with a span and a duration measurement around each operation."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from backends.base import Backend
from backends.cache_base import VersionedCache

if TYPE_CHECKING:
    import builtins
    from collections.abc import AsyncIterator, Callable, Sequence
    from contextlib import AbstractContextManager

    from backends.base import Change, Entry, Snapshot
    from backends.cache_base import CacheLookup
    from backends.reports import Stats, VerifyReport, WarmReport
    from backends.telemetry.instruments import Instruments
    from kvstore.keys import Fence, Key


def _namespace(keys: Sequence[Key]) -> str | None:
    """The namespace of ``keys`` if they share one (a batch of one collection)."""
    if len(keys) == 1:
        return keys[0].namespace  # the common case, without a generator
    first = keys[0].namespace if keys else None
    return first if all(key.namespace == first for key in keys) else None


class TracedBackend(Backend):
    """``inner`` with a span and a duration measurement around each operation."""

    kind: ClassVar[str] = "traced"

    def __init__(self, inner: Backend, instruments: Instruments, *, tier: str = "store") -> None:
        self.inner = inner
        self.capabilities = inner.capabilities
        self.clock = inner.clock
        self._instruments = instruments
        self._tier = tier
        self._system = inner.system

    def __repr__(self) -> str:
        return f"TracedBackend({self.inner!r})"

    def _traced(self, name: str, namespace: str | None) -> AbstractContextManager[None]:
        """The span and measurement of one operation (a ``with`` in each method, not a
        coroutine around it: one frame less on every call)."""
        return self._instruments.operation(self._system, self._tier, name, namespace)

    async def initialize(self) -> None:
        await self.inner.initialize()

    async def close(self) -> None:
        await self.inner.close()

    async def get(self, key: Key) -> Entry | None:
        with self._traced("get", key.namespace):
            return await self.inner.get(key)

    async def get_many(self, keys: Sequence[Key]) -> list[Entry | None]:
        with self._traced("get_many", _namespace(keys)):
            return await self.inner.get_many(keys)

    async def put(
        self,
        key: Key,
        value: bytes,
        *,
        expected_version: int | None = None,
        ttl: float | None = None,
        fence: Fence | None = None,
    ) -> Entry:
        with self._traced("put", key.namespace):
            return await self.inner.put(
                key, value, expected_version=expected_version, ttl=ttl, fence=fence
            )

    async def delete(
        self, key: Key, *, expected_version: int | None = None, fence: Fence | None = None
    ) -> int:
        with self._traced("delete", key.namespace):
            return await self.inner.delete(key, expected_version=expected_version, fence=fence)

    async def lock_ticket(self, owner: str, name: str, *, hold: float) -> int:
        with self._traced("lock_ticket", None):
            return await self.inner.lock_ticket(owner, name, hold=hold)

    async def lock_turn(
        self, owner: str, name: str, ticket: int, *, hold: float, lease: float
    ) -> bool | None:
        with self._traced("lock_turn", None):
            return await self.inner.lock_turn(owner, name, ticket, hold=hold, lease=lease)

    async def lock_release(self, owner: str, name: str, ticket: int) -> None:
        with self._traced("lock_release", None):
            await self.inner.lock_release(owner, name, ticket)

    async def list(
        self,
        namespace: str,
        prefix: tuple[str, ...],
        *,
        after: tuple[str, ...] | None = None,
        limit: int = 100,
    ) -> builtins.list[tuple[Key, Entry]]:
        with self._traced("list", namespace):
            return await self.inner.list(namespace, prefix, after=after, limit=limit)

    async def delete_owner(self, owner: str) -> int:
        with self._traced("delete_owner", None):
            return await self.inner.delete_owner(owner)

    # -- the rest: delegated untraced (bulk, upkeep and the change feed) ------------------

    def stats(self) -> Stats:
        return self.inner.stats()

    async def recent(
        self, namespace: str, *, owner: str | None = None, limit: int = 100
    ) -> builtins.list[tuple[Key, Entry]]:
        return await self.inner.recent(namespace, owner=owner, limit=limit)

    async def warm(
        self,
        namespace: str,
        *,
        owner: str | None = None,
        limit: int = 1000,
        progress: Callable[[int], None] | None = None,
    ) -> WarmReport:
        return await self.inner.warm(namespace, owner=owner, limit=limit, progress=progress)

    async def verify(
        self,
        namespace: str,
        *,
        owner: str | None = None,
        repair: bool = False,
        limit: int = 10_000,
        progress: Callable[[int], None] | None = None,
    ) -> VerifyReport:
        return await self.inner.verify(
            namespace, owner=owner, repair=repair, limit=limit, progress=progress
        )

    def scan(
        self,
        *,
        namespace: str | None = None,
        owner: str | None = None,
        batch_size: int = 1000,
    ) -> AsyncIterator[tuple[Key, Entry]]:
        return self.inner.scan(namespace=namespace, owner=owner, batch_size=batch_size)

    async def restore(self, items: Sequence[tuple[Key, Entry]]) -> int:
        return await self.inner.restore(items)

    async def read_changes(
        self, after: int, limit: int
    ) -> tuple[builtins.list[Change], Snapshot | None]:
        return await self.inner.read_changes(after, limit)

    async def head(self) -> tuple[int, Snapshot | None]:
        return await self.inner.head()

    async def read_generation(self, cache: str) -> tuple[int, str] | None:
        return await self.inner.read_generation(cache)

    async def advance_generation(
        self, cache: str, incarnation: str, *, current: int | None, to: int
    ) -> bool:
        return await self.inner.advance_generation(cache, incarnation, current=current, to=to)


class TracedCache(VersionedCache):
    """A cache tier with a span and a duration measurement around each request-path call."""

    def __init__(self, inner: VersionedCache, instruments: Instruments) -> None:
        self.inner = inner
        self.system = inner.system
        self.lists_keys = inner.lists_keys
        self._instruments = instruments

    def __repr__(self) -> str:
        return f"TracedCache({self.inner!r})"

    def _traced(self, name: str, namespace: str | None) -> AbstractContextManager[None]:
        return self._instruments.operation(self.system, "cache", name, namespace)

    async def close(self) -> None:
        await self.inner.close()

    async def cached_keys(self, namespace: str, owner: str | None = None) -> list[Key]:
        return await self.inner.cached_keys(namespace, owner)

    async def lookup(self, keys: Sequence[Key], *, lease_ttl: float) -> list[CacheLookup]:
        with self._traced("lookup", _namespace(keys)):
            return await self.inner.lookup(keys, lease_ttl=lease_ttl)

    async def fill(
        self, items: Sequence[tuple[Key, Entry, str]], *, ttl: float | None = None
    ) -> int:
        namespace = _namespace([key for key, _, _ in items])
        with self._traced("fill", namespace):
            return await self.inner.fill(items, ttl=ttl)

    async def write(self, key: Key, entry: Entry, *, ttl: float | None = None) -> bool:
        with self._traced("write", key.namespace):
            return await self.inner.write(key, entry, ttl=ttl)

    async def tombstones(
        self, items: Sequence[tuple[Key, int]], *, ttl: float | None = None
    ) -> None:
        namespace = _namespace([key for key, _ in items])
        with self._traced("tombstones", namespace):
            await self.inner.tombstones(items, ttl=ttl)

    async def invalidate(self, keys: Sequence[Key]) -> None:
        with self._traced("invalidate", _namespace(keys)):
            await self.inner.invalidate(keys)

    async def invalidate_owner(self, owner: str) -> None:
        with self._traced("invalidate_owner", None):
            await self.inner.invalidate_owner(owner)

    async def ping(self) -> None:
        with self._traced("ping", None):
            await self.inner.ping()

    async def incarnation(self) -> str:
        return await self.inner.incarnation()

    def use_generation(self, incarnation: str, generation: int) -> None:
        self.inner.use_generation(incarnation, generation)

    @property
    def seen_incarnation(self) -> str | None:
        return self.inner.seen_incarnation

    async def claim_generation(self) -> bool:
        return await self.inner.claim_generation()
