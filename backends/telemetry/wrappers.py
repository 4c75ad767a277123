"""Backends and caches with a span and a duration measurement around each operation.

A traced method returns the inner tier's coroutine itself while nothing records (no SDK
set: :meth:`Instruments.idle`), so the request path pays one attribute check, not a frame
and a context manager per tier; otherwise the coroutine runs inside the operation's span
and measurement.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, ParamSpec, TypeVar

from backends.base import Backend
from backends.cache_base import VersionedCache

if TYPE_CHECKING:
    import builtins
    from collections.abc import AsyncIterator, Callable, Coroutine, Sequence

    from backends.base import Change, Entry, Snapshot
    from backends.cache_base import CacheLookup
    from backends.reports import Stats, VerifyReport, WarmReport
    from backends.telemetry.instruments import Instruments
    from kvstore.keys import Fence, Key


T = TypeVar("T")
P = ParamSpec("P")


async def _traced(
    instruments: Instruments,
    where: tuple[str, str, str, str | None],
    function: Callable[P, Coroutine[Any, Any, T]],
    /,
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """``function(*args, **kwargs)`` inside the span and measurement of operation ``where``
    (system, tier, operation, namespace). The inner coroutine is made here, once this one
    runs: a task cancelled before its first step leaves no coroutine that never ran."""
    with instruments.operation(*where):
        return await function(*args, **kwargs)


def _namespace(keys: Sequence[Key]) -> str | None:
    """The namespace of ``keys`` if they share one (a batch of one collection)."""
    if len(keys) == 1:
        return keys[0].namespace  # the common case, without a generator
    first = keys[0].namespace if keys else None
    return first if all(key.namespace == first for key in keys) else None


class _Traced:
    """What both traced tiers share: an operation's call, traced or handed back."""

    _instruments: Instruments
    _system: str
    _tier: str

    def _run(
        self,
        name: str,
        namespace: str | None,
        function: Callable[P, Coroutine[Any, Any, T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Coroutine[Any, Any, T]:
        """``function(*args, **kwargs)`` itself while nothing records, else inside operation
        ``name``'s span and measurement."""
        if self._instruments.idle():
            return function(*args, **kwargs)
        return _traced(
            self._instruments,
            (self._system, self._tier, name, namespace),
            function,
            *args,
            **kwargs,
        )


class TracedBackend(_Traced, Backend):
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

    async def initialize(self) -> None:
        await self.inner.initialize()

    async def close(self) -> None:
        await self.inner.close()

    def get(self, key: Key) -> Coroutine[Any, Any, Entry | None]:
        return self._run("get", key.namespace, self.inner.get, key)

    def get_many(self, keys: Sequence[Key]) -> Coroutine[Any, Any, list[Entry | None]]:
        return self._run("get_many", _namespace(keys), self.inner.get_many, keys)

    def put(
        self,
        key: Key,
        value: bytes,
        *,
        expected_version: int | None = None,
        ttl: float | None = None,
        fence: Fence | None = None,
    ) -> Coroutine[Any, Any, Entry]:
        return self._run(
            "put",
            key.namespace,
            self.inner.put,
            key,
            value,
            expected_version=expected_version,
            ttl=ttl,
            fence=fence,
        )

    def delete(
        self, key: Key, *, expected_version: int | None = None, fence: Fence | None = None
    ) -> Coroutine[Any, Any, int]:
        return self._run(
            "delete",
            key.namespace,
            self.inner.delete,
            key,
            expected_version=expected_version,
            fence=fence,
        )

    def lock_ticket(self, owner: str, name: str, *, hold: float) -> Coroutine[Any, Any, int]:
        return self._run("lock_ticket", None, self.inner.lock_ticket, owner, name, hold=hold)

    def lock_turn(
        self, owner: str, name: str, ticket: int, *, hold: float, lease: float
    ) -> Coroutine[Any, Any, bool | None]:
        return self._run(
            "lock_turn", None, self.inner.lock_turn, owner, name, ticket, hold=hold, lease=lease
        )

    def lock_release(self, owner: str, name: str, ticket: int) -> Coroutine[Any, Any, None]:
        return self._run("lock_release", None, self.inner.lock_release, owner, name, ticket)

    def list(
        self,
        namespace: str,
        prefix: tuple[str, ...],
        *,
        after: tuple[str, ...] | None = None,
        limit: int = 100,
    ) -> Coroutine[Any, Any, builtins.list[tuple[Key, Entry]]]:
        return self._run(
            "list", namespace, self.inner.list, namespace, prefix, after=after, limit=limit
        )

    def delete_owner(self, owner: str) -> Coroutine[Any, Any, int]:
        return self._run("delete_owner", None, self.inner.delete_owner, owner)

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


class TracedCache(_Traced, VersionedCache):
    """A cache tier with a span and a duration measurement around each request-path call."""

    def __init__(self, inner: VersionedCache, instruments: Instruments) -> None:
        self.inner = inner
        self.system = self._system = inner.system
        self.lists_keys = inner.lists_keys
        self._instruments = instruments
        self._tier = "cache"

    def __repr__(self) -> str:
        return f"TracedCache({self.inner!r})"

    async def close(self) -> None:
        await self.inner.close()

    async def cached_keys(self, namespace: str, owner: str | None = None) -> list[Key]:
        return await self.inner.cached_keys(namespace, owner)

    def lookup(
        self, keys: Sequence[Key], *, lease_ttl: float
    ) -> Coroutine[Any, Any, list[CacheLookup]]:
        return self._run("lookup", _namespace(keys), self.inner.lookup, keys, lease_ttl=lease_ttl)

    def fill(
        self, items: Sequence[tuple[Key, Entry, str]], *, ttl: float | None = None
    ) -> Coroutine[Any, Any, int]:
        if self._instruments.idle():
            return self.inner.fill(items, ttl=ttl)
        namespace = _namespace([key for key, _, _ in items])
        return self._run("fill", namespace, self.inner.fill, items, ttl=ttl)

    def write(
        self, key: Key, entry: Entry, *, ttl: float | None = None
    ) -> Coroutine[Any, Any, bool]:
        return self._run("write", key.namespace, self.inner.write, key, entry, ttl=ttl)

    def tombstones(
        self, items: Sequence[tuple[Key, int]], *, ttl: float | None = None
    ) -> Coroutine[Any, Any, None]:
        if self._instruments.idle():
            return self.inner.tombstones(items, ttl=ttl)
        namespace = _namespace([key for key, _ in items])
        return self._run("tombstones", namespace, self.inner.tombstones, items, ttl=ttl)

    def invalidate(self, keys: Sequence[Key]) -> Coroutine[Any, Any, None]:
        return self._run("invalidate", _namespace(keys), self.inner.invalidate, keys)

    def invalidate_owner(self, owner: str) -> Coroutine[Any, Any, None]:
        return self._run("invalidate_owner", None, self.inner.invalidate_owner, owner)

    def ping(self) -> Coroutine[Any, Any, None]:
        return self._run("ping", None, self.inner.ping)

    async def incarnation(self) -> str:
        return await self.inner.incarnation()

    def use_generation(self, incarnation: str, generation: int) -> None:
        self.inner.use_generation(incarnation, generation)

    @property
    def seen_incarnation(self) -> str | None:
        return self.inner.seen_incarnation

    async def claim_generation(self) -> bool:
        return await self.inner.claim_generation()
