"""The Redis store: the :class:`~backends.base.Backend` role, over a shared
:class:`~backends.redis.client.RedisClient`.

Reads are a plain GET / MGET of a packed string (:mod:`.format`); every write is one Lua
script (:mod:`.lua`), atomic per key, that draws the change's revision from the owner's
counter. A per-(owner, namespace) sorted set indexes the owner's keys for ordered listings
and erasure, so no operation but a whole-store :meth:`RedisStore.scan` ever walks the
keyspace (no KEYS; SCAN only there, to find the owners). Expired means absent, by the
store's clock.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING, ClassVar, Final

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
from backends.redis import lua
from backends.redis.client import DRIVER_ERRORS
from backends.redis.format import from_us, member, member_key, pack, to_us, unpack
from kvstore.errors import InvalidRecordError
from kvstore.keys import (
    DEFAULT_PAGE_SIZE,
    Fence,
    Key,
    check_component,
    check_namespace,
    decode_redis_key,
)

if TYPE_CHECKING:
    import builtins
    from collections.abc import AsyncIterator, Sequence

    from redis.typing import EncodableT

    from backends.redis.client import RedisClient

Stale = list[tuple[bytes, str]]


FENCE_TTL: Final = 7 * 86400.0
"""Seconds a lock's fencing token is kept after its last grant (the key expires then, so an
erased user's locks do not stay forever); a holder never pauses that long."""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisStore(Backend):
    """Entries as packed strings in Redis, indexed per owner and namespace."""

    kind: ClassVar[str] = "redis"
    system = "redis"
    capabilities = Capabilities(persistent=True, shared=True, bulk=True)

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        self.clock = redis.clock
        self.description = redis.description

    def __repr__(self) -> str:
        return f"RedisStore({self.description})"

    async def initialize(self) -> None:
        """Build the client if needed and check the server answers."""
        await self.redis.ping()

    async def close(self) -> None:
        await self.redis.close()

    # -- reads -----------------------------------------------------------------------------

    async def get(self, key: Key) -> Entry | None:
        """Concurrent gets share one ``MGET`` (see :meth:`RedisClient.read_values`)."""
        (data,) = await self.redis.read_values((key,))
        return self._current(data)

    async def get_many(self, keys: Sequence[Key]) -> list[Entry | None]:
        if not keys:
            return []
        values = await self.redis.read_values(keys)
        return [self._current(data) for data in values]

    def _current(self, data: bytes | None) -> Entry | None:
        """The entry ``data`` holds, or ``None`` for nothing, a tombstone, or an entry past
        its ``expires_at`` (Redis's own expiry is whole milliseconds, and the store's clock
        decides: expired means absent, on every backend)."""
        if data is None:
            return None
        entry = unpack(data)
        if entry is None or entry.expires_at is None or entry.expires_at > self.clock.now():
            return entry
        return None

    # -- writes ----------------------------------------------------------------------------

    async def put(
        self,
        key: Key,
        value: bytes,
        *,
        expected_version: int | None = None,
        ttl: float | None = None,
        fence: Fence | None = None,
    ) -> Entry:
        if expected_version is not None and expected_version < 0:
            raise InvalidRecordError("expected_version must be >= 0")
        check_fence(key, fence)
        now = self.clock.now()
        expires_at = None
        px = 0
        if ttl is not None:
            if not ttl > 0:
                raise InvalidRecordError("ttl must be positive seconds")
            expires_at = now + timedelta(seconds=ttl)
            px = max(1, round(ttl * 1000))
        layout = self.redis.layout
        keys: tuple[str, ...] = (
            layout.record(key),
            *layout.owner_keys(key.owner, key.namespace),
            layout.revision_counter(key.owner),
        )
        meta = b"%d:%d:%d:%d" % (
            to_us(now),
            -1 if expected_version is None else expected_version,
            px,
            to_us(expires_at) if expires_at is not None else 0,
        )
        args: tuple[EncodableT, ...] = (meta, value, member(key.rest), key.namespace)
        if fence is not None:
            keys, args = (*keys, layout.lock(fence.owner, fence.name)[2]), (*args, fence.token)
        pipe = self.redis.ready()
        ok, version, created, revision = await self.redis.once(
            "put", lambda: pipe.script(lua.PUT, keys, args)
        )
        if ok == -1 and fence is not None:
            raise fenced(fence, int(version))
        if not ok:
            assert expected_version is not None
            raise version_conflict(expected_version, version)
        return Entry(bytes(value), version, from_us(int(created)), now, expires_at, revision)

    async def delete(
        self, key: Key, *, expected_version: int | None = None, fence: Fence | None = None
    ) -> int:
        if expected_version is not None and expected_version < 0:
            raise InvalidRecordError("expected_version must be >= 0")
        check_fence(key, fence)
        layout = self.redis.layout
        keys: tuple[str, ...] = (
            layout.record(key),
            layout.owner_keys(key.owner, key.namespace)[0],
            layout.revision_counter(key.owner),
        )
        args: tuple[EncodableT, ...] = (
            -1 if expected_version is None else expected_version,
            member(key.rest),
        )
        if fence is not None:
            keys, args = (*keys, layout.lock(fence.owner, fence.name)[2]), (*args, fence.token)
        pipe = self.redis.ready()
        ok, version, revision = await self.redis.once(
            "delete", lambda: pipe.script(lua.DELETE, keys, args)
        )
        if ok == -1 and fence is not None:
            raise fenced(fence, int(version))
        if not ok:
            assert expected_version is not None
            raise version_conflict(expected_version, version)
        return int(revision)

    # -- session locks: a queue per lock, on the server's clock (backends.redis.lua) -------

    async def lock_ticket(self, owner: str, name: str, *, hold: float) -> int:
        check_lock(owner, name, hold)
        layout = self.redis.layout
        keys = (*layout.lock(owner, name), layout.lock_counter(owner))
        pipe = self.redis.ready()
        ticket = await self.redis.once(
            "lock", lambda: pipe.script(lua.LOCK_TICKET, keys, (_ms(hold),))
        )
        return int(ticket)

    async def lock_turn(
        self, owner: str, name: str, ticket: int, *, hold: float, lease: float
    ) -> bool | None:
        check_lock(owner, name, hold, lease)
        keys = self.redis.layout.lock(owner, name)
        args = (ticket, _ms(hold), _ms(lease), _ms(FENCE_TTL))
        pipe = self.redis.ready()
        turn = int(await self.redis.once("lock", lambda: pipe.script(lua.LOCK_TURN, keys, args)))
        return None if turn < 0 else turn == 1

    async def lock_release(self, owner: str, name: str, ticket: int) -> None:
        check_lock(owner, name)
        keys = self.redis.layout.lock(owner, name)[:2]
        pipe = self.redis.ready()
        await self.redis.once("unlock", lambda: pipe.script(lua.LOCK_RELEASE, keys, (ticket,)))

    async def delete_owner(self, owner: str) -> int:
        check_component(owner, "owner")
        return await self.redis.erase(owner, "delete_owner")

    # -- listings --------------------------------------------------------------------------

    async def list(
        self,
        namespace: str,
        prefix: tuple[str, ...],
        *,
        after: tuple[str, ...] | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> list[tuple[Key, Entry]]:
        check_listing(namespace, prefix, after, limit)
        owner = prefix[0]
        low = member(prefix[1:])
        start = b"[" + low
        if after is not None:
            mine = member(prefix[:1])
            encoded_after = member(after)
            if encoded_after.startswith(mine):
                if encoded_after[len(mine) :] >= low:
                    start = b"(" + encoded_after[len(mine) :]
            elif encoded_after > mine:
                return []
        stop = b"(" + low + b"\xff"
        index = self.redis.layout.index(owner, namespace)
        pipe = self.redis.ready()
        page: list[tuple[Key, Entry]] = []
        while len(page) < limit:
            want = limit - len(page)
            command = ("ZRANGEBYLEX", index, start, stop, "LIMIT", 0, want)
            members: list[bytes] = await self.redis.idempotent(
                "list",
                lambda command=command: pipe.call(*command),  # type: ignore[misc]
            )
            if not members:
                break
            keys = [member_key(owner, namespace, item) for item in members]
            names = [self.redis.layout.record(key) for key in keys]
            values = await self.redis.idempotent(
                "list",
                lambda names=names: pipe.call("MGET", *names),  # type: ignore[misc]
            )
            stale: Stale = []
            for item, key, name, data in zip(members, keys, names, values, strict=True):
                if data is None:
                    stale.append((item, name))
                    continue
                entry = self._current(data)
                if entry is not None:
                    page.append((key, entry))
            if stale:
                await self._forget(index, stale)
            if len(members) < want:
                break
            start = b"(" + members[-1]
        return page

    async def _forget(self, index: str, stale: Sequence[tuple[bytes, str]]) -> None:
        """Drop index members whose record and lease are gone (expired)."""
        layout = self.redis.layout
        calls = [(lua.FORGET, (index, name, layout.lease(name)), (item,)) for item, name in stale]
        pipe = self.redis.ready()
        self.redis.checked("list", await self.redis.once("list", lambda: pipe.scripts(calls)))

    # -- bulk export and import ------------------------------------------------------------

    async def scan(
        self,
        *,
        namespace: str | None = None,
        owner: str | None = None,
        batch_size: int = 1000,
    ) -> AsyncIterator[tuple[Key, Entry]]:
        """Every live entry in key order (namespace, owner, rest). With ``owner`` it reads
        that owner's index; without, it first finds every owner by SCAN for the owners'
        namespace-set keys (the one place SCAN is used; the pattern has no user input) and
        keeps the owner ids in memory, never the entries."""
        if batch_size <= 0:
            raise InvalidRecordError("batch_size must be positive")
        if namespace is not None:
            check_namespace(namespace)
        owners = [check_component(owner, "owner")] if owner is not None else await self._owners()
        pipe = self.redis.ready()
        sets = [self.redis.layout.namespaces(name) for name in owners]
        found: builtins.list[builtins.list[bytes]] = []
        for start in range(0, len(sets), batch_size):
            chunk = [("SMEMBERS", name) for name in sets[start : start + batch_size]]
            found += self.redis.checked(
                "scan",
                await self.redis.idempotent(
                    "scan",
                    lambda chunk=chunk: pipe.batch(chunk),  # type: ignore[misc]
                ),
            )
        by_namespace: dict[str, builtins.list[str]] = {}
        for name, namespaces in zip(owners, found, strict=True):
            for raw in namespaces:
                by_namespace.setdefault(raw.decode(), []).append(name)
        wanted = sorted(by_namespace) if namespace is None else [namespace]
        for space in wanted:
            for name in sorted(by_namespace.get(space, []), key=str.encode):
                after: tuple[str, ...] | None = None
                while True:
                    page = await self.list(space, (name,), after=after, limit=batch_size)
                    for item in page:
                        yield item
                    if len(page) < batch_size:
                        break
                    after = page[-1][0].components

    async def _owners(self) -> builtins.list[str]:
        """Every owner that has a namespace set, found by SCAN on every (primary) node."""
        prefix = self.redis.layout.prefix
        pattern = f"{prefix}{{*}}\\*n"
        client = self.redis.ready().client
        owners: set[str] = set()
        try:
            async with asyncio.timeout(self.redis.timeout * 100):
                async for name in client.scan_iter(match=pattern, count=1000):
                    text = name.decode() if isinstance(name, bytes) else str(name)
                    owners.add(decode_redis_key(text[: -len("*n")] + ":x", prefix).owner)
        except DRIVER_ERRORS as exc:
            raise self.redis.unavailable("scan", exc) from exc
        return sorted(owners, key=str.encode)

    async def restore(self, items: Sequence[tuple[Key, Entry]]) -> int:
        """Write entries as given (version, timestamps, expiry) where the key is absent or
        holds an older version; pipelines of one script per entry. Idempotent."""
        calls: builtins.list[tuple[lua.Script, tuple[str, ...], tuple[EncodableT, ...]]] = []
        layout = self.redis.layout
        for key, entry in items:
            px = 0  # Redis expiry in ms: until expires_at (an expired entry gets 1 ms)
            if entry.expires_at is not None:
                left = (entry.expires_at - self.clock.now()).total_seconds()
                px = max(1, round(left * 1000))
            keys = (
                layout.record(key),
                *layout.owner_keys(key.owner, key.namespace),
                layout.revision_counter(key.owner),
            )
            unrevised = pack(entry).split(b":", 2)[2]
            args = (unrevised, px, entry.version, member(key.rest), key.namespace)
            calls.append((lua.RESTORE, keys, args))
        written = 0
        pipe = self.redis.ready()
        for start in range(0, len(calls), 500):
            chunk = calls[start : start + 500]
            results = self.redis.checked(
                "restore",
                await self.redis.idempotent(
                    "restore",
                    lambda chunk=chunk: pipe.scripts(chunk),  # type: ignore[misc]
                ),
            )
            written += sum(1 for result in results if result == 1)
        return written
