"""A fault-injecting :class:`VersionedCache` wrapper for the tiered store's tests.

Modes, switchable at any time:

* ``"ok"``: calls pass through.
* ``"down"``: calls raise :class:`BackendUnavailableError` and change nothing.
* ``"lost_reply"``: calls are applied, then raise (the reply was lost).
* ``"frozen"``: calls hang (the caller's deadline ends them) and are queued; :meth:`thaw`
  applies the queued calls in order, late, like a server resumed after SIGSTOP.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Literal, TypeVar

from backends.base import Entry
from backends.cache_base import CacheLookup, VersionedCache
from backends.memory import MemoryBackend
from kvstore.errors import BackendUnavailableError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from kvstore.keys import Fence, Key

T = TypeVar("T")
Mode = Literal["ok", "down", "lost_reply", "frozen"]


class FaultyCache(VersionedCache):
    """Wraps ``inner`` and misbehaves as :attr:`mode` says."""

    def __init__(self, inner: VersionedCache, *, jitter: random.Random | None = None) -> None:
        self.inner = inner
        self.lists_keys = inner.lists_keys
        self.jitter = jitter
        self.mode: Mode = "ok"
        self.plan: list[bool] = []
        """Whether each of the next calls fails (and changes nothing), whatever the mode."""
        self.calls = 0
        self._queued: list[Callable[[], Awaitable[object]]] = []
        self._thawed = asyncio.Event()
        self.stuck = asyncio.Event()
        """Set when a call gets stuck in the frozen cache."""

    async def thaw(self) -> None:
        """Apply every call queued while frozen, in order, and pass through again."""
        self.mode = "ok"
        queued, self._queued = self._queued, []
        for call in queued:
            await call()
        self._thawed.set()
        self._thawed = asyncio.Event()

    async def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        self.calls += 1
        planned = self.plan.pop(0) if self.plan else False
        if self.mode == "down" or planned:
            raise BackendUnavailableError("injected: cache down")
        if self.mode == "frozen":
            self._queued.append(call)
            self.stuck.set()
            await self._thawed.wait()
            raise BackendUnavailableError("injected: connection reset after the freeze")
        await _yield(self.jitter)
        result = await call()
        await _yield(self.jitter)
        if self.mode == "lost_reply":
            raise BackendUnavailableError("injected: reply lost")
        return result

    async def lookup(self, keys: Sequence[Key], *, lease_ttl: float) -> list[CacheLookup]:
        keys = list(keys)
        return await self._run(lambda: self.inner.lookup(keys, lease_ttl=lease_ttl))

    async def fill(
        self, items: Sequence[tuple[Key, Entry, str]], *, ttl: float | None = None
    ) -> int:
        items = list(items)
        return await self._run(lambda: self.inner.fill(items, ttl=ttl))

    async def write(self, key: Key, entry: Entry, *, ttl: float | None = None) -> bool:
        return await self._run(lambda: self.inner.write(key, entry, ttl=ttl))

    async def tombstones(
        self, items: Sequence[tuple[Key, int]], *, ttl: float | None = None
    ) -> None:
        items = list(items)
        await self._run(lambda: self.inner.tombstones(items, ttl=ttl))

    async def invalidate(self, keys: Sequence[Key]) -> None:
        keys = list(keys)
        await self._run(lambda: self.inner.invalidate(keys))

    async def invalidate_owner(self, owner: str) -> None:
        await self._run(lambda: self.inner.invalidate_owner(owner))

    async def ping(self) -> None:
        await self._run(self.inner.ping)

    async def incarnation(self) -> str:
        return await self._run(self.inner.incarnation)

    def use_generation(self, incarnation: str, generation: int) -> None:
        self.inner.use_generation(incarnation, generation)

    @property
    def seen_incarnation(self) -> str | None:
        return self.inner.seen_incarnation

    async def claim_generation(self) -> bool:
        return await self._run(self.inner.claim_generation)

    async def cached_keys(self, namespace: str, owner: str | None = None) -> list[Key]:
        return await self._run(lambda: self.inner.cached_keys(namespace, owner))


class JitteryBackend(MemoryBackend):
    """A memory system of record whose reads and writes yield to other tasks a random number
    of times before and after acting, so that the orderings a slow SQL server allows (a read
    returning after a newer write committed) happen in memory too."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng

    async def get_many(self, keys: Sequence[Key]) -> list[Entry | None]:
        await _yield(self.rng)
        entries = await super().get_many(keys)
        await _yield(self.rng)
        return entries

    async def put(
        self,
        key: Key,
        value: bytes,
        *,
        expected_version: int | None = None,
        ttl: float | None = None,
        fence: Fence | None = None,
    ) -> Entry:
        await _yield(self.rng)
        entry = await super().put(
            key, value, expected_version=expected_version, ttl=ttl, fence=fence
        )
        await _yield(self.rng)
        return entry


async def _yield(rng: random.Random | None) -> None:
    if rng is not None:
        for _ in range(rng.randrange(4)):
            await asyncio.sleep(0)
